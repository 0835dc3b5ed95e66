"""Load balancing: which client actor hosts which virtual clients.

A step is as slow as its slowest client actor, so clients are spread over the actors to make
the *expected work per step* even (docs/architecture.md, "The Ray design": one actor trains all of
its selected clients in one pass). The expected work of client k is

    E[work_k] = P(k selected in a step) x E[fraction of local work done | selected] x cost_k

* the participation terms are measured on the participation model itself: it is a pure
  function of (seed, step) (docs/data.md section 4), so its selections over the run's first steps
  are replayed (no random draw is consumed, nothing changes in the run); uneven
  participation (availability, stragglers) is therefore taken into account whatever the model;
* cost_k is the number of samples a client processes per step: min(b, n_k) for per-step
  algorithms (one mini-batch per step, FLoPS) and n_k for algorithms that run local epochs.

The clients are then assigned greedily (longest processing time first): heaviest expected
work first, each to the actor with the least work so far (ties: fewer clients, then the lower
actor index). Everything is deterministic. Results do not depend on the layout (partials are
summed in float64 and every random stream is keyed by client id), so balancing changes the
speed, never the metrics beyond float rounding.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

#: steps replayed to estimate participation frequencies (bounded: cheap even for 100k clients)
REPLAY_STEPS = 256
#: pseudo-steps of the uniform prior the replayed frequencies are shrunk towards
PRIOR_STEPS = 16.0


def contiguous_blocks(n_clients: int, n_actors: int) -> list[np.ndarray]:
    """Contiguous, equal-size blocks of client ids, one per actor."""
    n_actors = max(1, min(n_actors, n_clients))
    return [b for b in np.array_split(np.arange(n_clients, dtype=np.int64), n_actors) if b.size]


def greedy_balance(work: np.ndarray, n_actors: int) -> list[np.ndarray]:
    """Assign items of the given work to ``n_actors`` bins, heaviest first to the lightest bin.

    Deterministic (stable sort by decreasing work, then by id). Returns the sorted ids of each
    non-empty bin. With equal work this is a round-robin, so counts are equal too.
    """
    work = np.asarray(work, dtype=np.float64)
    n = work.size
    n_actors = max(1, min(n_actors, n))
    order = np.lexsort((np.arange(n), -work))       # decreasing work, ties by id
    heap = [(0.0, 0, a) for a in range(n_actors)]   # (load, count, actor)
    owner = np.empty(n, dtype=np.int64)
    for k in order:
        load, cnt, a = heapq.heappop(heap)
        owner[k] = a
        heapq.heappush(heap, (load + float(work[k]), cnt + 1, a))
    return [np.flatnonzero(owner == a).astype(np.int64) for a in range(n_actors)
            if np.any(owner == a)]


def participation_rates(participation: Any, n_clients: int, total_steps: int,
                        replay_steps: int = REPLAY_STEPS, prior_steps: float = PRIOR_STEPS) -> np.ndarray:
    """Per-client expected (selected and reporting) x (work fraction) per step, estimated by
    replaying the participation model's first ``min(total_steps, replay_steps)`` steps.

    The frequencies are shrunk towards the mean rate with ``prior_steps`` pseudo-steps, so a
    short replay (few steps, low participation) does not turn sampling noise into imbalance:
    rate_k = (sum_t work_kt + prior_steps * mean rate) / (steps + prior_steps).
    """
    steps = max(1, min(int(total_steps), replay_steps))
    acc = np.zeros(n_clients, dtype=np.float64)
    for t in range(steps):
        sel = participation.select(t)
        rep = sel.reported
        np.add.at(acc, sel.selected[rep], np.asarray(sel.work, dtype=np.float64)[rep])
    mean = acc.sum() / (steps * max(n_clients, 1))
    return (acc + prior_steps * mean) / (steps + prior_steps)


def client_costs(sizes: np.ndarray, per_step: bool, batch_size: int | None) -> np.ndarray:
    """Samples processed per step by each client when selected."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if per_step and batch_size:
        return np.minimum(sizes, float(batch_size))
    return sizes


def expected_work(participation: Any, sizes: np.ndarray, total_steps: int, per_step: bool,
                  batch_size: int | None) -> np.ndarray:
    """E[work_k] per step for every client (see the module docstring)."""
    rates = participation_rates(participation, len(sizes), total_steps)
    # A client that never reports (rate 0) still holds memory and is evaluated: a small floor
    # spreads such clients evenly instead of piling them onto one actor.
    floor = 1e-3 * (rates[rates > 0].min() if np.any(rates > 0) else 1.0)
    return np.maximum(rates, floor) * client_costs(sizes, per_step, batch_size)


def imbalance(work: np.ndarray, blocks: list[np.ndarray]) -> float:
    """max over actors of the work per step / the mean work per actor (1.0 is perfect)."""
    loads = np.array([float(np.sum(work[b])) for b in blocks])
    return float(loads.max() / loads.mean()) if loads.size and loads.mean() > 0 else 1.0
