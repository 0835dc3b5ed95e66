"""Single-process reference: the same computation as the engine, with no Ray.

All clients are stacked in one :class:`~raysim.engine.ClientCohort` in this process and the
:class:`~raysim.engine.ServerCore` is called directly. Used by the benchmark (engine/reference
ratio) and by the tests as an independent check of layout independence.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from raysim.config import Config
from raysim.data.participation import build_participation
from raysim.engine import ClientCohort, ServerCore
from raysim.metrics import fairness_from_scores
from raysim.local import local_step


def run_reference(cfg: Config, steps: int | None = None,
                  on_round: Callable[[int, dict[str, Any]], None] | None = None,
                  evaluate: bool = True) -> tuple[ServerCore, list[dict[str, Any]], dict[str, float]]:
    """Run ``steps`` communication steps (default: the whole run) in one process.

    Returns the server core, the per-round rows and timings {"setup_s", "steps_s"}.
    """
    t0 = time.perf_counter()
    server = ServerCore(cfg)
    cohort = ClientCohort(cfg, np.arange(server.comp.fed.n_clients), comp=server.comp)  # data built once
    part = build_participation(cfg.participation, server.comp.fed.n_clients, cfg.run.seed)
    sch = server.comp.schedule
    total = sch.total_steps if steps is None else steps
    setup_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    payload = server.payload()
    t1 = time.perf_counter()
    for step in range(total):
        payload = local_step(server, cohort, part, step, payload)
        if (step + 1) % sch.steps_per_round == 0 or step + 1 == total:
            row = {"round": sch.round_of(step) + 1, **server.end_round()}
            rnd = row["round"]
            if evaluate and (rnd % cfg.run.eval_every == 0 or step + 1 == total):
                final = step + 1 == sch.total_steps
                row.update(server.evaluate(final=final))
                row.update(fairness_from_scores([cohort.evaluate(server.deployed(final=final))]))
            rows.append(row)
            if on_round:
                on_round(rnd, row)
    return server, rows, {"setup_s": setup_s, "steps_s": time.perf_counter() - t1}
