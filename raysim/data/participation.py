"""Participation models (DATA.md section 4): who is selected in a step, who reports, how much work.

A model is a pure function of ``(seed, step)`` (and of client ids for per-client traits),
so the same clients take part whatever the Ray layout, and a resumed run continues the
same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raysim import rng as rngmod


@dataclass
class Selection:
    """The outcome of one step's participation draw."""

    selected: np.ndarray   # sorted client ids that receive the model (bytes down)
    reported: np.ndarray   # bool [len(selected)]: the client's update reaches the server
    work: np.ndarray       # float [len(selected)] in (0, 1]: fraction of local work done

    @property
    def reporting(self) -> np.ndarray:
        return self.selected[self.reported]

    @property
    def n_selected(self) -> int:
        return int(self.selected.size)

    @property
    def n_reported(self) -> int:
        return int(self.reported.sum())


class Participation:
    """Base class: ``select(step)`` returns the :class:`Selection` of that step."""

    def __init__(self, cfg: Any, n_clients: int, seed: int):
        self.cfg = cfg
        self.n_clients = n_clients
        self.seed = seed

    def select(self, step: int) -> Selection:
        raise NotImplementedError

    @staticmethod
    def _full(ids: np.ndarray) -> Selection:
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        return Selection(ids, np.ones(ids.size, dtype=bool), np.ones(ids.size))


class Uniform(Participation):
    """uniform(q): round(q N) clients (at least 1) without replacement, every step."""

    def __init__(self, cfg: Any, n_clients: int, seed: int):
        super().__init__(cfg, n_clients, seed)
        self.k = max(1, min(n_clients, int(round(cfg.rate * n_clients))))

    def select(self, step: int) -> Selection:
        g = rngmod.generator(self.seed, "participation", step)
        if self.k == self.n_clients:
            return self._full(np.arange(self.n_clients))
        return self._full(g.choice(self.n_clients, size=self.k, replace=False))


PARTICIPATION: dict[str, type[Participation]] = {"uniform": Uniform}


def build_participation(cfg: Any, n_clients: int, seed: int) -> Participation:
    return PARTICIPATION[cfg.kind](cfg, n_clients, seed)
