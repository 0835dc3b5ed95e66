"""The in-process backend: the whole simulation in the driver's process, no Ray.

``cluster.backend = "local"`` runs the same two compute cores as the Ray backend
(:class:`~raysim.engine.ServerCore` and one :class:`~raysim.engine.ClientCohort` holding every
client) behind the interface the run loop drives (:class:`LocalSimulation` mirrors
``raysim.cluster.driver.RaySimulation``). Because every random draw is keyed by
(seed, purpose, client, step), a local run gives the same metrics as a Ray run of the same
configuration (to float tolerance), whatever the Ray layout.

Use it to debug, in notebooks, and for many small runs (tuning studies, comparisons, stress
grids) where starting actors would cost more than the rounds themselves.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from raysim.config import Config
from raysim.data.participation import build_participation
from raysim.engine import ClientCohort, ServerCore
from raysim.metrics import fairness_from_scores


def local_step(core: ServerCore, cohort: ClientCohort, participation: Any, step: int,
               payload: dict[str, Any]) -> dict[str, Any]:
    """One communication step in this process: select, train the reporting clients of the one
    cohort, aggregate and update on the server. Returns the next broadcast."""
    sel = participation.select(step)
    rep = sel.reporting
    parts: list[Any] = []
    if rep.size:
        out = cohort.train(step, payload, rep, sel.work[sel.reported])
        parts = out if isinstance(out, list) else [out]
    return core.apply(step, sel.n_selected, parts)


class LocalSimulation:
    """One run in this process: a server core, one cohort with all clients, the step loop."""

    def __init__(self, cfg: Config):
        """(No separate data preflight here: in this process a missing or corrupt data file
        raises its clear error while the server core builds, and a second load would double
        the start-up of every real-data run.)"""
        import torch

        self.cfg = cfg
        self._threads = torch.get_num_threads()
        torch.set_num_threads(max(1, cfg.cluster.torch_threads))
        t0 = time.perf_counter()
        self.core = ServerCore(cfg)
        comp = self.core.comp
        n = comp.fed.n_clients
        self.cohort = ClientCohort(cfg, np.arange(n), comp=comp)
        sch = comp.schedule
        self.info = {"pid": os.getpid(), "node": "local", "p": comp.model.p, "P": comp.model.P,
                     "m": comp.algo.m, "total_steps": sch.total_steps, "steps_per_round": sch.steps_per_round,
                     "prune_start": sch.prune_start, "federation": comp.fed.stats()}
        self.participation = build_participation(cfg.participation, n, cfg.run.seed)
        self.steps_per_round = sch.steps_per_round
        self.total_steps = sch.total_steps
        self.blocks = [np.arange(n)]
        self.imbalance = 1.0
        self.actors = [None]          # one in-process cohort stands for the client actors
        self.actor_info = [{**self.cohort.info(), "pid": os.getpid(), "device": "cpu", "node": "local",
                            "setup_s": time.perf_counter() - t0}]
        self.step = 0
        self._payload = self.core.payload()

    @property
    def total_rounds(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_round)

    def run_round(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        end = min(self.step + self.steps_per_round, self.total_steps)
        for step in range(self.step, end):
            self._payload = local_step(self.core, self.cohort, self.participation, step, self._payload)
        row = self.core.end_round()
        self.step = end
        row["round"] = math.ceil(end / self.steps_per_round)
        row["round_s"] = time.perf_counter() - t0
        return row

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self.core.evaluate(final)
        out.update(fairness_from_scores([self.cohort.evaluate(self.core.deployed(final))]))
        out["evaluation_s"] = time.perf_counter() - t0
        return out

    def deployed(self, final: bool = True) -> np.ndarray:
        return self.core.deployed(final)

    def client_scores(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-client held-out scores of the final deployed model: [(client ids, scores)]."""
        return [self.cohort.evaluate(self.core.deployed(True))]

    def state_dict(self) -> dict[str, Any]:
        return {"server": self.core.state_dict(), "step": self.step}

    def restore(self, sd: dict[str, Any]) -> None:
        self.core.load_state_dict(sd["server"])
        if self.core.step != sd["step"]:
            raise RuntimeError(f"checkpoint inconsistent: server at step {self.core.step}, driver at {sd['step']}")
        self.step = int(sd["step"])
        self._payload = self.core.payload()

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads)
