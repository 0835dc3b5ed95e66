"""Vectorised multi-epoch local training, shared by every algorithm that communicates once
per round (FLoPS-PA and the baselines of docs/algorithms.md sections 5 and 6).

A round (one communication step, ``per_step = False``):

1. the server broadcasts the global model;
2. every selected client of a cohort trains from it for ``local_epochs`` epochs of
   mini-batch SGD. The cohort is trained *together*: the clients' parameters are stacked
   into one ``[K, P]`` tensor and the loop runs over local steps only, never over clients.
   Client k runs ``E * ceil(n_k / b)`` steps (times its participation ``work`` fraction, at
   least one); a client that has finished is masked out of the remaining steps;
3. the cohort returns the float64 weighted sum ``sum_k c_k (theta_k - theta)`` of its deltas
   (``c_k = n_k`` or 1) and ``sum_k c_k``, one message per actor (plus per-client scalars);
4. the server adds ``server_lr`` times the averaged delta and applies its own step.

Mini-batches: each local epoch of client k is a random permutation of its n_k samples
keyed by (seed, "local-batch", client id, round * 2^20 + epoch), cut into consecutive
batches of b (the last one may be smaller). Gate noise (FLoPS-PA) of local step s of round
t is keyed by (seed, "gate-noise", client id, t * 2^20 + s). Both are independent of the
cohort a client is trained with, so results do not depend on the Ray layout.

Communication (section 9): the server records the bytes of what it broadcast
(:meth:`LocalTraining.down_bytes`, per selected client) and every cohort reports the bytes
its clients uploaded (``Partial.extra["up_bytes"]``), so sparse payloads are counted with
their actual number of non-zeros.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from pydantic import Field

from raysim import defaults
from raysim import rng as rngmod
from raysim.algorithms.base import (Aggregate, Algorithm, Partial, State, StepContext, client_weights)
from raysim.config import AlgorithmSection
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.metrics import FLOAT_BYTES, tensor_bytes

if TYPE_CHECKING:
    from raysim.data.federation import StackedClients


class RoundParams(AlgorithmSection):
    """Knobs of every once-per-round algorithm (local epochs, then one aggregation)."""

    local_epochs: int = Field(1, ge=1, description="Local epochs E per round; client k runs E ceil(n_k / batch_size) "
                                                   "local steps.")
    server_lr: float = Field(1.0, gt=0, description="Server learning rate applied to the averaged client delta.")


class LocalSGDParams(RoundParams):
    """Knobs of the dense local-SGD baselines (fedavg and the algorithms built on it)."""

    eta_local: Optional[float] = Field(None, gt=0, description="Local learning rate of the clients' SGD steps. "
                                                               + defaults.describe("algorithm.eta_local"))

#: stride between rounds in the counters of the local random streams (2^20 local steps per round)
LOCAL_STRIDE = 1 << 20


def epoch_keys(ctx: StepContext, ids: np.ndarray, epochs: int) -> list[np.ndarray]:
    """The per-row keys of each local epoch's permutation (seed, client, round, epoch)."""
    return [rngmod.row_keys(ctx.seed, "local-batch", ids, ctx.step * LOCAL_STRIDE + e) for e in range(epochs)]


def plan_rows(data: StackedClients, idx: torch.Tensor, ids: np.ndarray, epochs: int, batch_size: int,
              keys: list[np.ndarray], work: np.ndarray | None) -> dict[str, Any]:
    """Steps per row, epoch permutations (from each epoch's row ``keys``) and batch geometry of
    a round's local training; the rows may be the clients of several runs (a fused pass)."""
    dev = data.x.device
    n = data.n[idx]
    n_max = data.x.shape[1]
    b = max(1, min(int(batch_size), n_max))
    spe = torch.clamp((n + b - 1) // b, min=1)
    steps = epochs * spe
    if work is not None:
        w = torch.as_tensor(np.asarray(work, dtype=np.float64), device=dev)
        steps = torch.clamp(torch.ceil(w * steps.double()).long(), min=1, max=None).minimum(steps)
    pos = torch.arange(n_max, device=dev)
    perms = []
    for k in keys:
        u = torch.from_numpy(rngmod.uniform_rows(k, n_max)).to(dev)
        perms.append(torch.argsort(torch.where(pos[None, :] < n[:, None], u, torch.full_like(u, 2.0)), dim=1))
    return {"ids": ids, "n": n, "b": b, "spe": spe, "steps": steps, "perms": torch.stack(perms), "E": epochs}


def delta_partial(c: torch.Tensor, delta: torch.Tensor, ids: np.ndarray, loss0: np.ndarray, n: torch.Tensor,
                  steps: torch.Tensor, extra: dict[str, Any]) -> Partial:
    """One run's partial of a round of local training: its clients' model changes ``delta``
    summed with weights ``c`` (float64), and the per-client facts."""
    return Partial(sums={"delta": (c.double()[:, None] * delta.double()).sum(0).cpu().numpy()},
                   weight=float(c.double().sum()), client_ids=ids, client_loss=loss0, client_n=n.cpu().numpy(),
                   client_steps=steps.cpu().numpy().astype(np.float64), extra=extra)


def hard_threshold(v: torch.Tensor, m: int) -> torch.Tensor:
    """H_m: keep the m largest |v| of each row (of the last axis), zero the rest."""
    if m >= v.shape[-1]:
        return v
    if m <= 0:
        return torch.zeros_like(v)
    idx = torch.topk(v.abs(), m, dim=-1).indices
    mask = torch.zeros_like(v, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where(mask, v, torch.zeros_like(v))


def top_m_mask(v: torch.Tensor, m: int) -> torch.Tensor:
    """Boolean mask of the m largest |v| (ties: smaller index first)."""
    p = v.numel()
    mask = torch.zeros(p, dtype=torch.bool)
    if m <= 0:
        return mask
    mag = v.detach().abs().double().numpy()
    order = np.lexsort((np.arange(p), -mag))
    mask[torch.from_numpy(order[: min(m, p)].copy())] = True
    return mask


def sparse_model_bytes(theta: torch.Tensor, p: int) -> int:
    """Bytes of a model whose gated part is sent sparse (section 9) and the rest dense."""
    nnz = int(torch.count_nonzero(theta[:p]))
    return tensor_bytes(p, nnz) + tensor_bytes(theta.numel() - p)


class LocalTraining(Algorithm):
    """Base class of the once-per-round algorithms: local SGD on stacked client parameters.

    Subclasses override :meth:`local_objective` (the per-client loss that is differentiated),
    :meth:`project` (applied after every local step), :meth:`server_step` and the byte
    counts. Knobs (:class:`LocalSGDParams`): ``local_epochs``, ``batch_size``, ``eta_local``,
    ``server_lr``, ``weighting``.
    """

    per_step = False

    def __init__(self, cfg: Any, model, schedule):
        super().__init__(cfg, model, schedule)
        #: the clients' SGD step (dense baselines; FLoPS-PA has its own eta_theta / eta_phi)
        self.eta = getattr(cfg, "eta_local", None)

    # -- state ---------------------------------------------------------------------------
    def init_state(self, seed: int) -> State:
        theta = self.model.init_params(rngmod.generator(seed, "init")).float()
        return {"theta": theta, "t": 0}

    def broadcast(self, state: State) -> dict[str, Any]:
        return {"theta": state["theta"].numpy()}

    def deployed(self, state: State, final: bool = False) -> torch.Tensor:
        return state["theta"].clone()

    # -- local training machinery ------------------------------------------------------
    def local_plan(self, data: StackedClients, idx: torch.Tensor, ctx: StepContext,
                   work: np.ndarray | None) -> dict[str, Any]:
        """Steps per client, epoch permutations and batch geometry for this round."""
        ids = data.ids[idx.cpu().numpy()]
        E = int(self.cfg.local_epochs)
        return plan_rows(data, idx, ids, E, self.cfg.batch_size, epoch_keys(ctx, ids, E), work)

    def local_batch(self, data: StackedClients, idx: torch.Tensor, plan: dict[str, Any], s: int):
        """Mini-batch of local step s for every client: x ``[K, b, ...]``, y, mask ``[K, b]``, active ``[K]``."""
        dev = data.x.device
        n, b, spe, steps = plan["n"], plan["b"], plan["spe"], plan["steps"]
        k = n.numel()
        n_max = data.x.shape[1]
        active = s < steps
        epoch = torch.clamp(torch.div(s, spe, rounding_mode="floor"), max=plan["E"] - 1)
        pos = s % spe
        perm = plan["perms"][epoch, torch.arange(k, device=dev)]           # [K, n_max]
        cols = pos[:, None] * b + torch.arange(b, device=dev)[None, :]   # [K, b]
        mask = (cols < n[:, None]) & active[:, None]
        order = torch.gather(perm, 1, cols.clamp(max=n_max - 1))
        rows = idx[:, None].expand_as(order)
        return data.x[rows, order], data.y[rows, order], mask, active

    def run_local(self, carry: Any, data: StackedClients, idx: torch.Tensor, plan: dict[str, Any],
                  step_fn: Callable[..., Any]) -> Any:
        """Loop over local steps (not clients): ``carry = step_fn(carry, x, y, mask, active, s)``."""
        for s in range(int(plan["steps"].max())):
            xb, yb, mask, active = self.local_batch(data, idx, plan, s)
            carry = step_fn(carry, xb, yb, mask, active, s)
        return carry

    def full_loss(self, theta: torch.Tensor, data: StackedClients, idx: torch.Tensor) -> torch.Tensor:
        """Each client's loss F_k on all its training data at the broadcast model (``[P]``, or
        one row per client ``[K, P]``): ``[K]``."""
        k = idx.numel()
        n_max = data.x.shape[1]
        mask = torch.arange(n_max, device=data.x.device)[None, :] < data.n[idx][:, None]
        with torch.no_grad():
            return self.model.client_loss(theta.expand(k, -1), data.x[idx], data.y[idx], mask)

    # -- hooks ---------------------------------------------------------------------------
    def local_objective(self, th: torch.Tensor, xb, yb, mask, anchor: torch.Tensor) -> torch.Tensor:
        """The per-client objective ``[K]`` minimised locally (default: the mini-batch loss)."""
        return self.model.client_loss(th, xb, yb, mask)

    def grad_mask(self, payload: dict[str, Any], dev: torch.device) -> torch.Tensor | None:
        """A fixed ``[P]`` mask of trainable parameters (None: all)."""
        return None

    def project(self, th: torch.Tensor) -> torch.Tensor:
        """Applied to the stacked parameters after every local step (default: nothing)."""
        return th

    def upload_bytes(self, payload: dict[str, Any], theta_k: torch.Tensor, delta_k: torch.Tensor) -> int:
        """Bytes all the given clients upload (``[K, P]``), default: dense delta + n_k each."""
        return int(theta_k.shape[0]) * (tensor_bytes(self.model.P) + FLOAT_BYTES)

    def down_bytes(self, state: State) -> int:
        """Bytes of the broadcast to one client (default: the dense model)."""
        return tensor_bytes(self.model.P)

    def extra_sums(self, theta0, theta_k, delta, c, loss0, plan) -> dict[str, Any]:
        """Additional per-actor aggregates (kept in ``Partial.extra``)."""
        return {}

    # -- client --------------------------------------------------------------------------
    def sgd_step(self, anchor: torch.Tensor, gmask: torch.Tensor | None, eta: Any = None):
        """One local SGD step of every client; ``eta``: the learning rate (default
        ``eta_local``; a ``[K, 1]`` tensor gives each row its own)."""
        eta = self.eta if eta is None else eta

        def step(th, xb, yb, mask, active, s):
            th = th.detach().requires_grad_(True)
            obj = self.local_objective(th, xb, yb, mask, anchor)
            g = torch.autograd.grad(obj.sum(), th)[0]
            g = g * active[:, None].to(g.dtype)
            if gmask is not None:
                g = g * gmask
            return self.project(th.detach() - eta * g)
        return step

    def client_update(self, payload, data, idx, ctx: StepContext, work=None) -> Partial:
        t0 = time.perf_counter()
        dev = data.x.device
        theta = torch.as_tensor(payload["theta"], device=dev)
        plan = self.local_plan(data, idx, ctx, work)
        k = idx.numel()
        loss0 = self.full_loss(theta, data, idx)
        th = self.run_local(theta.expand(k, -1).clone(), data, idx, plan,
                            self.sgd_step(theta, self.grad_mask(payload, dev)))
        delta = th - theta
        n = data.n[idx]
        c = client_weights(n, self.cfg.weighting).to(dev)
        extra = {"up_bytes": self.upload_bytes(payload, th, delta)}
        extra.update(self.extra_sums(theta, th, delta, c, loss0, plan))
        part = delta_partial(c, delta, plan["ids"], loss0.cpu().numpy(), n, plan["steps"], extra)
        part.compute_s = time.perf_counter() - t0
        return part

    #: the client-side methods a fused pass reproduces (a subclass overriding any of them is
    #: trained alone: FedProx, SER, FedIter-HT, FedAvg-prune, FedEBA, FLoPS-PA); upload_bytes
    #: is called per run
    _CLIENT_HOOKS = ("client_update", "local_plan", "local_batch", "run_local", "full_loss", "local_objective",
                     "grad_mask", "project", "extra_sums", "sgd_step")

    def fuse_key(self) -> tuple | None:
        """Runs of plain local SGD (fedavg, fedavgm, fed-ht: the server sides may differ) with the same
        model, mini-batch size and local epochs share one vectorised pass; their local
        learning rates may differ (one per row)."""
        cls = type(self)
        if self.eta is None or any(getattr(cls, h) is not getattr(LocalTraining, h) for h in self._CLIENT_HOOKS):
            return None
        return (LocalTraining.client_update_many, id(self.model), int(self.cfg.batch_size), int(self.cfg.local_epochs))

    @staticmethod
    def client_update_many(jobs: list[tuple]) -> list[Partial]:
        """The local training of several runs in ONE loop over local steps.

        ``jobs[i] = (algo, payload, data, idx, ctx, work)`` with one :meth:`fuse_key`. Every
        run's clients are rows with that run's broadcast model and learning rate; their epoch
        permutations are keyed by (seed, client, that run's round) exactly as alone, so each
        row follows the path it follows in a solo run, and each run's partial is summed from
        its own rows (float64, the solo order)."""
        if len(jobs) == 1:
            algo, payload, data, idx, ctx, work = jobs[0]
            return [algo.client_update(payload, data, idx, ctx, work)]
        t0 = time.perf_counter()
        lead, data = jobs[0][0], jobs[0][2]
        dev = data.x.device
        E = int(lead.cfg.local_epochs)
        thetas, etas, ids_l, works, keys = [], [], [], [], [[] for _ in range(E)]
        for algo, payload, d, idx, ctx, work in jobs:
            theta = torch.as_tensor(payload["theta"], device=dev)
            ids = d.ids[idx.cpu().numpy()]
            k = ids.size
            for e, row_keys in enumerate(epoch_keys(ctx, ids, E)):
                keys[e].append(row_keys)
            thetas.append(theta.expand(k, -1))
            etas.append(torch.full((k,), float(algo.eta), dtype=theta.dtype, device=dev))
            ids_l.append(ids)
            works.append(np.ones(k) if work is None else np.asarray(work, dtype=np.float64))
        idx_all = torch.cat([job[3] for job in jobs])
        stragglers = any(job[5] is not None for job in jobs)      # a full share of work changes nothing
        plan = plan_rows(data, idx_all, np.concatenate(ids_l), E, lead.cfg.batch_size,
                         [np.concatenate(k) for k in keys], np.concatenate(works) if stragglers else None)
        theta0 = torch.cat(thetas)
        loss0 = lead.full_loss(theta0, data, idx_all).cpu().numpy()
        # the base client step (fuse_key guarantees these runs use it), one learning rate per row
        th = lead.run_local(theta0.clone(), data, idx_all, plan, lead.sgd_step(theta0, None, torch.cat(etas)[:, None]))
        delta = th - theta0
        out, a = [], 0
        for (algo, payload, d, idx, ctx, work), ids in zip(jobs, ids_l):
            k = ids.size
            steps = plan["steps"][a: a + k]
            n = d.n[idx]
            c = client_weights(n, algo.cfg.weighting).to(dev)
            dk = delta[a: a + k]
            out.append(delta_partial(c, dk, ids, loss0[a: a + k], n, steps,
                                     {"up_bytes": algo.upload_bytes(payload, th[a: a + k], dk)}))
            a += k
        dt = time.perf_counter() - t0
        for part in out:
            part.compute_s = dt
        return out

    # -- server --------------------------------------------------------------------------
    def server_update(self, state: State, agg: Aggregate, ctx: StepContext) -> State:
        theta = state["theta"]
        if agg.weight > 0:
            theta = theta + self.cfg.server_lr * self.combine(agg, state).to(theta.dtype)
        state = self.server_step(state, theta, agg, ctx)
        return {**state, "t": ctx.step + 1}

    def combine(self, agg: Aggregate, state: State) -> torch.Tensor:
        """The aggregated delta (default: the weighted mean sum_k w_k delta_k)."""
        return agg.mean["delta"]

    def server_step(self, state: State, theta: torch.Tensor, agg: Aggregate, ctx: StepContext) -> State:
        """The new state after the aggregated update ``theta`` (returns a new dict; ``state`` is
        the one that was broadcast and is not changed)."""
        return {**state, "theta": theta}

    def comm_bytes(self, state: State, agg: Aggregate, n_selected: int) -> tuple[int, int]:
        """Down: the broadcast ``state`` to each selected client; up: what the clients sent
        (each actor counts its clients' uploads, ``agg.extra``)."""
        return n_selected * int(self.down_bytes(state)), int(sum(e.get("up_bytes", 0) for e in agg.extra))


__all__ = ["LOCAL_STRIDE", "LocalSGDParams", "LocalTraining", "RoundParams", "hard_threshold", "sparse_model_bytes",
           "top_m_mask"]
