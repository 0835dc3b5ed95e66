"""The algorithm interface: small objects with pure functions and explicit state (optax-style).

An algorithm never touches Ray. The engine calls, per communication step t:

1. ``broadcast(state)``          -> payload (numpy arrays) put once in the object store;
2. ``client_update(payload, data, idx, ctx)`` on every client actor, for all its selected
   clients at once (vectorised) -> a :class:`Partial`: weighted sums plus per-client scalars;
3. :func:`aggregate` of the partials (sum of sums, sum of weights), in float64;
4. ``server_update(state, agg, ctx)`` -> new state.

``deployed(state)`` is the model that is evaluated, checkpointed and exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raysim import rng as rngmod
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)

if TYPE_CHECKING:
    from raysim.data.federation import StackedClients
    from raysim.models import Model

State = dict[str, Any]


@dataclass(frozen=True)
class Schedule:
    """Step bookkeeping shared by the server and the clients."""

    total_steps: int
    steps_per_round: int
    prune_start: int       # first step at which the exact density is enforced
    tau_end: int           # t_end of the entropy schedule

    def round_of(self, step: int) -> int:
        return step // self.steps_per_round


def make_schedule(cfg: Any, fed: Any) -> Schedule:
    """Steps per round, total steps, prune_start and t_end in steps (``fed``: anything with
    ``client_sizes()``). No torch: the driver sizes runs with it."""
    from raysim.registry import algorithm_class

    a = cfg.algorithm
    per_step = algorithm_class(a.name).per_step
    if cfg.run.steps_per_round is not None:
        spr = cfg.run.steps_per_round
    elif per_step:
        spr = max(1, math.ceil(float(np.median(fed.client_sizes())) / a.batch_size))
    else:
        spr = 1
    total = cfg.run.rounds * spr
    if getattr(a, "prune_start", None) is None:      # an algorithm without the knob: never
        ps = total
    elif a.prune_start_unit == "fraction":
        ps = int(math.floor(a.prune_start * total))
    elif a.prune_start_unit == "rounds":
        ps = int(a.prune_start) * spr
    else:
        ps = int(a.prune_start)
    tau_end = int(a.tau_end) if getattr(a, "tau_end", None) is not None else ps
    return Schedule(total_steps=total, steps_per_round=spr, prune_start=ps, tau_end=tau_end)


@dataclass
class StepContext:
    seed: int
    step: int
    schedule: Schedule


@dataclass
class Partial:
    """One actor's pre-aggregated contribution to a step."""

    sums: dict[str, np.ndarray]           # sum_k c_k * quantity_k, float64
    weight: float                          # sum_k c_k
    client_ids: np.ndarray                 # [K]
    client_loss: np.ndarray                # [K] mini-batch loss at the broadcast model
    client_n: np.ndarray                   # [K] samples n_k
    client_steps: np.ndarray               # [K] local steps done
    compute_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Aggregate:
    """Sum of the partials of one step, ``mean[name] = sums[name] / weight``."""

    mean: dict[str, torch.Tensor]
    weight: float
    n_reported: int
    client_ids: np.ndarray
    client_loss: np.ndarray
    client_n: np.ndarray
    client_steps: np.ndarray
    compute_s: float
    extra: list[dict[str, Any]]


def aggregate(partials: list[Partial], dtype: torch.dtype | None = None) -> Aggregate:
    """Combine the actors' partial sums (float64, fixed order), then divide by the total weight
    (the means in ``dtype``, default float32)."""
    dtype = torch.float32 if dtype is None else dtype
    parts = [p for p in partials if p is not None and p.client_ids.size]
    weight = float(sum(p.weight for p in parts))
    mean: dict[str, torch.Tensor] = {}
    if parts and weight > 0:
        for name in parts[0].sums:
            total = np.zeros_like(parts[0].sums[name], dtype=np.float64)
            for p in parts:
                total += p.sums[name]
            mean[name] = torch.from_numpy(total / weight).to(dtype)
    cat = (lambda key: np.concatenate([getattr(p, key) for p in parts]) if parts else np.zeros(0))
    return Aggregate(mean=mean, weight=weight, n_reported=int(sum(p.client_ids.size for p in parts)),
                     client_ids=cat("client_ids"), client_loss=cat("client_loss"), client_n=cat("client_n"),
                     client_steps=cat("client_steps"),
                     compute_s=max((p.compute_s for p in partials if p is not None), default=0.0),
                     extra=[p.extra for p in parts])


def minibatch(data: StackedClients, idx: torch.Tensor, seed: int, step: int, b: int,
              purpose: str = "batch") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each selected client's mini-batch of min(b, n_k) samples without replacement.

    Drawn for the whole cohort at once from counter-based uniforms keyed by
    (seed, purpose, client id, step); padded rows get key 2 so they are never chosen.
    Returns x ``[K, b, ...]``, y ``[K, b, ...]`` and the validity mask ``[K, b]``.
    """
    ids = data.ids[idx.cpu().numpy()]
    return minibatch_from_uniform(data, idx, rngmod.uniform(seed, purpose, ids, step, data.x.shape[1]), b)


def minibatch_from_uniform(data: StackedClients, idx: torch.Tensor, u: np.ndarray,
                           b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`minibatch` from the clients' uniforms ``u [K, n_max]`` (drawn by the caller,
    e.g. for the rows of several runs at once)."""
    n = data.n[idx]
    n_max = data.x.shape[1]
    keys = torch.from_numpy(u).to(data.x.device)
    pos = torch.arange(n_max, device=data.x.device)
    keys = torch.where(pos[None, :] < n[:, None], keys, torch.full_like(keys, 2.0))
    bb = min(b, n_max)
    order = torch.argsort(keys, dim=1)[:, :bb]
    rows = idx[:, None].expand_as(order)
    mask = torch.arange(bb, device=n.device)[None, :] < torch.clamp(n, max=bb)[:, None]
    return data.x[rows, order], data.y[rows, order], mask


def partial_work_mask(mask: torch.Tensor, work: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray]:
    """Stragglers in a per-step algorithm (docs/data.md section 4): a client that completes the
    fraction ``work`` of its local work by the deadline has processed only the first
    max(1, ceil(work b_k)) examples of its mini-batch of b_k. Returns the reduced validity
    mask and the steps done per client (``work``, or ones)."""
    k = mask.shape[0]
    if work is None:
        return mask, np.ones(k)
    w = np.asarray(work, dtype=np.float64)
    if np.all(w >= 1.0):
        return mask, np.ones(k)
    b_k = mask.sum(1).cpu().numpy()
    keep = np.maximum(1, np.ceil(np.clip(w, 0.0, 1.0) * b_k - 1e-9)).astype(np.int64)
    pos = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return mask & (pos < torch.from_numpy(keep).to(mask.device)[:, None]), np.clip(w, 0.0, 1.0)


def client_weights(n: torch.Tensor, weighting: str) -> torch.Tensor:
    """c_k: n_k for sample weighting, 1 for uniform; w_k = c_k / sum c."""
    return n.to(torch.float32) if weighting == "samples" else torch.ones(n.shape, dtype=torch.float32)


class Algorithm:
    """Base class. Subclasses implement the five functions and may add metrics."""

    name = "algorithm"
    #: True: one mini-batch step per communication step, several steps per round (FLoPS).
    per_step = False

    def __init__(self, cfg: Any, model: Model, schedule: Schedule):
        self.cfg = cfg
        self.model = model
        self.schedule = schedule
        self.m = int(math.floor(cfg.rho * model.p + 1e-9))

    def init_state(self, seed: int) -> State:
        raise NotImplementedError

    def broadcast(self, state: State) -> dict[str, Any]:
        raise NotImplementedError

    def client_update(self, payload: dict[str, Any], data: StackedClients, idx: torch.Tensor,
                      ctx: StepContext, work: np.ndarray | None = None) -> Partial:
        raise NotImplementedError

    def fuse_key(self) -> tuple | None:
        """Runs of one data set whose algorithms return the same non-None key can train their
        selected clients together with ``client_update_many`` (the warm pools' batched
        trials); None (the default): one ``client_update`` per run."""
        return None

    @staticmethod
    def client_update_many(jobs: list[tuple]) -> list[Partial]:
        """``client_update`` of several runs, ``jobs[i] = (algo, payload, data, idx, ctx,
        work)``, for algorithms that share a :meth:`fuse_key`; each result must equal the
        run's own ``client_update``."""
        return [algo.client_update(payload, data, idx, ctx, work) for algo, payload, data, idx, ctx, work in jobs]

    def server_update(self, state: State, agg: Aggregate, ctx: StepContext) -> State:
        raise NotImplementedError

    def deployed(self, state: State, final: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def comm_bytes(self, state: State, agg: Aggregate, n_selected: int) -> tuple[int, int]:
        """(bytes down, bytes up) of one communication step (section 9): ``state`` is the state
        that was broadcast in that step (before ``server_update``), ``agg`` its aggregate
        (``agg.n_reported`` clients reported; per-actor counts may travel in ``agg.extra``)."""
        raise NotImplementedError

    def state_metrics(self, state: State) -> dict[str, float]:
        return {}

    def gate_probs(self, state: State) -> torch.Tensor | None:
        """pi for the soft-IoU stability metric (None for algorithms without gates)."""
        return None
