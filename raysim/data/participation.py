"""Participation models (docs/data.md section 4): who is selected in a step, who reports, how much work.

A model is a pure function of ``(seed, step)`` (and of client ids for per-client traits),
so the same clients take part whatever the Ray layout, and a resumed run continues the
same sequence.

Three layers, each optional and combinable (``[participation]`` config section):

* **selection** (``kind``): ``uniform`` samples round(q N) clients among all of them;
  ``availability`` first lets each client be available with its own probability a_k
  (a_k ~ Beta(a, b), or the two-tier variant: a fraction ``rare_frac`` of rare clients with
  a_k = ``rare_avail``, the others ``common_avail``), then samples round(q N) among the
  available ones (all of them if fewer are available).
* **dropout** (``dropout`` = d): a selected client fails to report with probability d_k.
  Independent dropout has d_k = d; correlated dropout (``dropout_corr`` = c > 0) makes slow
  clients drop more: d_k = d s_k^-c / E[s^-c] (clipped to 1), whose mean over clients is d.
* **stragglers** (``speed_sigma``, ``deadline``): client speeds s_k ~ LogNormal(0, sigma_s)
  are fixed per client; with a deadline D (in units of the time a speed-1 client needs for
  its full local work) a client completes the fraction min(1, s_k D) of its local work.
  ``straggler_policy = "partial"`` reports that partial work (FedProx-style); ``"drop"``
  drops the clients that miss the deadline (FedAvg-style).

How an algorithm honours ``work``: multi-step algorithms run ``work`` times their local
steps; the per-step algorithms (FLoPS), whose local work is one mini-batch gradient, compute
it on the first ceil(work b_k) examples of the client's mini-batch (the part processed by the
deadline) and count ``work`` steps (see ``raysim.algorithms.base.partial_work_mask``).

Per-client traits (a_k, s_k, rare or common) are counter-based draws keyed by
(seed, purpose, client id), so they do not depend on the number of clients.
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

    def candidates(self, step: int) -> np.ndarray | None:
        """Clients that can be selected in ``step`` (None: all)."""
        return None

    def select(self, step: int) -> Selection:
        g = rngmod.generator(self.seed, "participation", step)
        cand = self.candidates(step)
        if cand is None:
            ids = np.arange(self.n_clients) if self.k == self.n_clients else \
                g.choice(self.n_clients, size=self.k, replace=False)
        elif cand.size <= self.k:
            ids = cand
        else:
            ids = cand[g.choice(cand.size, size=self.k, replace=False)]
        return self.outcome(step, np.sort(np.asarray(ids, dtype=np.int64)))

    # -- per-client traits (counter-based: client k's trait depends on (seed, k) only) ----------
    def speeds(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Client speeds s_k ~ LogNormal(0, speed_sigma) (all 1 when speed_sigma = 0)."""
        ids = np.arange(self.n_clients) if ids is None else np.asarray(ids, dtype=np.int64)
        sigma = float(getattr(self.cfg, "speed_sigma", 0.0))
        if sigma == 0:
            return np.ones(ids.size)
        return np.exp(sigma * rngmod.normal(self.seed, "speed", ids, 0, 1)[:, 0])

    def dropout_probs(self, ids: np.ndarray | None = None) -> np.ndarray:
        """d_k: d for independent dropout; d s_k^-c / E[s^-c] (clipped to 1) when correlated."""
        ids = np.arange(self.n_clients) if ids is None else np.asarray(ids, dtype=np.int64)
        d = float(getattr(self.cfg, "dropout", 0.0))
        c = float(getattr(self.cfg, "dropout_corr", 0.0))
        if d == 0:
            return np.zeros(ids.size)
        if c == 0:
            return np.full(ids.size, d)
        sigma = float(self.cfg.speed_sigma)
        # E[s^-c] = exp(c^2 sigma^2 / 2) for s ~ LogNormal(0, sigma): the mean of d_k is d (before clipping)
        return np.minimum(1.0, d * self.speeds(ids) ** (-c) * np.exp(-0.5 * c * c * sigma * sigma))

    def work_fractions(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Fraction of its local work a client completes by the deadline: min(1, s_k D)."""
        ids = np.arange(self.n_clients) if ids is None else np.asarray(ids, dtype=np.int64)
        deadline = getattr(self.cfg, "deadline", None)
        if deadline is None:
            return np.ones(ids.size)
        return np.minimum(1.0, self.speeds(ids) * float(deadline))

    def outcome(self, step: int, selected: np.ndarray) -> Selection:
        """Dropout and stragglers applied to the selected clients of ``step``."""
        reported = np.ones(selected.size, dtype=bool)
        work = np.ones(selected.size)
        if selected.size == 0:
            return Selection(selected, reported, work)
        d = self.dropout_probs(selected)
        if np.any(d > 0):
            reported &= rngmod.uniform(self.seed, "dropout", selected, step, 1)[:, 0] >= d
        if getattr(self.cfg, "deadline", None) is not None:
            work = self.work_fractions(selected)
            if getattr(self.cfg, "straggler_policy", "partial") == "drop":
                reported &= work >= 1.0
        return Selection(selected, reported, work)


class Availability(Uniform):
    """availability: client k is available in a step with probability a_k, then round(q N) are
    sampled among the available clients (docs/data.md section 4)."""

    def availabilities(self, ids: np.ndarray | None = None) -> np.ndarray:
        """a_k: Beta(avail_a, avail_b) by inverse CDF of a counter-based uniform, or two-tier."""
        ids = np.arange(self.n_clients) if ids is None else np.asarray(ids, dtype=np.int64)
        c = self.cfg
        if c.rare_frac > 0:
            rare = rngmod.uniform(self.seed, "rare-client", ids, 0, 1)[:, 0] < c.rare_frac
            return np.where(rare, c.rare_avail, c.common_avail)
        from scipy.stats import beta

        u = rngmod.uniform(self.seed, "availability", ids, 0, 1, eps=1e-12)[:, 0]
        return beta.ppf(u, c.avail_a, c.avail_b)

    def __init__(self, cfg: Any, n_clients: int, seed: int):
        super().__init__(cfg, n_clients, seed)
        self.a = self.availabilities()

    def candidates(self, step: int) -> np.ndarray:
        u = rngmod.uniform(self.seed, "available", np.arange(self.n_clients), step, 1)[:, 0]
        return np.flatnonzero(u < self.a)


PARTICIPATION: dict[str, type[Participation]] = {"uniform": Uniform, "availability": Availability}


def build_participation(cfg: Any, n_clients: int, seed: int) -> Participation:
    return PARTICIPATION[cfg.kind](cfg, n_clients, seed)
