"""FLoPS: federated SGD with an L0 density constraint via probabilistic gates.

Source: Huthasana, Olama, Lundell, "Federated Learning With L0 Constraint Via Probabilistic
Gates For Sparsity", arXiv 2512.23071; entropy term from "Entropy-Regularized Probabilistic
Gates for Sparse Model Discovery in Scarce-Data Federated Learning", arXiv 2607.00275.

One communication step (docs/algorithms.md section 2):

* clients draw a mini-batch and their own gate noise and return the gradients of their
  mini-batch loss at ``theta_tilde * z`` with respect to ``theta_tilde`` and ``phi``;
* the server averages them (weights n_k / sum n or uniform), takes the primal step
  ``theta -= eta_theta g_theta``, ``phi -= eta_phi (g_phi + lambda pi (1 - pi) - tau_t dH/dphi)``
  (lambda prices the expected COUNT of non-zero gates, sum_j pi_j, so its pull on a gate does
  not shrink with p), the dual step ``lambda = max(0, lambda + eta_lambda (D(phi) - rho))`` on
  the count constraint normalised by p (D is the expected density), with the restart
  ``lambda = 0`` whenever ``D(phi) <= rho``. One eta_lambda therefore behaves alike for
  p = 100 and p = 10^6;
* from ``prune_start`` on, the gate scaling of section 3 keeps the deployed model at
  m = floor(rho p) non-zeros or fewer.

The entropy schedule tau_t (section 4) is zero for plain FLoPS (``tau0 = 0``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from raysim import defaults, gates
from raysim import rng as rngmod
from raysim.algorithms.base import (Aggregate, Algorithm, Partial, State, StepContext, client_weights,
                                    minibatch_from_uniform, partial_work_mask)
from raysim.config import AlgorithmSection
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.metrics import tensor_bytes
from raysim.registry import register


class FLoPSParams(AlgorithmSection):
    """Knobs of flops and the algorithms built on it (flops-ent, flops-pa, flops-pa-ent)."""

    eta_theta: Optional[float] = Field(None, gt=0, description="Learning rate of the weights theta_tilde. "
                                                               + defaults.describe("algorithm.eta_theta"))
    eta_phi: Optional[float] = Field(None, gt=0, description="Learning rate of the gate parameters phi. "
                                                             + defaults.describe("algorithm.eta_phi"))
    eta_lambda: Optional[float] = Field(
        None, gt=0, description="Dual step size. lambda prices the expected NUMBER of open gates (its pull on a gate is "
                                "lambda pi (1 - pi), whatever p) and moves by eta_lambda (D(phi) - rho) per step, D the "
                                "expected density: one value behaves alike for any p. "
                                + defaults.describe("algorithm.eta_lambda"))
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Server optimizer for the primal step.")
    prune_start: Optional[float] = Field(None, ge=0, description="When the exact density starts (see prune_start_unit). "
                                                                 + defaults.describe("algorithm.prune_start"))
    prune_start_unit: Literal["fraction", "steps", "rounds"] = Field(
        "fraction", description="prune_start as a fraction of all steps, a step count, or a round count.")
    gate_decay: float = Field(0.9, gt=0, lt=1, description="Gate scaling decay r after prune_start.")
    rho_init: Optional[float] = Field(
        None, gt=0, lt=1, description="Initial P(z != 0) of every gate: phi ~ N(logit(rho_init) + beta log(-gamma/zeta), "
                                      "0.01). " + defaults.describe("algorithm.rho_init"))
    gamma: float = Field(-0.1, lt=0, description="Hard concrete stretch lower bound.")
    zeta: float = Field(1.1, gt=1, description="Hard concrete stretch upper bound.")
    beta: float = Field(2.0 / 3.0, gt=0, description="Hard concrete temperature.")
    tau0: float = Field(0.0, ge=0, description="Entropy strength tau_0 (per gate); 0 is plain FLoPS. flops-ent and "
                                               "flops-pa-ent use 0.05 when it is left at 0.")
    tau_schedule: Literal["linear", "constant", "cosine"] = Field("linear", description="Entropy schedule up to t_end.")
    tau_end: Optional[float] = Field(None, ge=0, description="t_end in steps; default prune_start.")

    @model_validator(mode="after")
    def _check(self) -> "FLoPSParams":
        if self.prune_start_unit == "fraction" and self.prune_start is not None and self.prune_start > 1:
            raise ValueError(
                f"prune_start = {self.prune_start} with prune_start_unit = 'fraction' must be in [0, 1]; "
                "use prune_start_unit = 'steps' or 'rounds' for a count")
        return self


def tau_at(step: int, tau0: float, t_end: int, schedule: str) -> float:
    """Entropy strength tau_t (section 4): linear, constant-then-0 or cosine decay to t_end."""
    if tau0 <= 0 or t_end <= 0 or step >= t_end:
        return 0.0
    frac = step / t_end
    if schedule == "linear":
        return tau0 * (1.0 - frac)
    if schedule == "constant":
        return tau0
    return tau0 * 0.5 * (1.0 + math.cos(math.pi * frac))


class _Adam:
    """Plain Adam on a dict of tensors, state kept explicitly in the algorithm state."""

    b1, b2, eps = 0.9, 0.999, 1e-8

    @classmethod
    def init(cls, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        st = {f"m_{k}": torch.zeros_like(v) for k, v in params.items()}
        st.update({f"v_{k}": torch.zeros_like(v) for k, v in params.items()})
        return st

    @classmethod
    def direction(cls, st: dict[str, torch.Tensor], k: str, g: torch.Tensor, t: int) -> torch.Tensor:
        st[f"m_{k}"] = cls.b1 * st[f"m_{k}"] + (1 - cls.b1) * g
        st[f"v_{k}"] = cls.b2 * st[f"v_{k}"] + (1 - cls.b2) * g * g
        mh = st[f"m_{k}"] / (1 - cls.b1 ** t)
        vh = st[f"v_{k}"] / (1 - cls.b2 ** t)
        return mh / (vh.sqrt() + cls.eps)


@register("flops")
class FLoPS(Algorithm):
    """FLoPS (and FLoPS with entropy-regularised gates when ``tau0 > 0``)."""

    Params = FLoPSParams
    per_step = True

    def __init__(self, cfg: Any, model, schedule):
        super().__init__(cfg, model, schedule)
        self.gp = gates.GateParams(gamma=cfg.gamma, zeta=cfg.zeta, beta=cfg.beta)
        self.eta_lambda = cfg.eta_lambda
        #: entropy strength tau_0 (section 4); the entropy variants replace a 0 by DEFAULT_TAU0
        self.tau0 = cfg.tau0

    # -- state ---------------------------------------------------------------------------
    def init_state(self, seed: int) -> State:
        g = rngmod.generator(seed, "init")
        theta = self.model.init_params(g).float()
        phi = gates.init_phi(self.model.p, self.cfg.rho_init, rngmod.generator(seed, "init-gates"), g=self.gp)
        state: State = {"theta": theta, "phi": phi, "lam": 0.0, "t": 0,
                        "active": None}
        if self.cfg.optimizer == "adam":
            state["opt"] = _Adam.init({"theta": theta, "phi": phi})
        return state

    def broadcast(self, state: State) -> dict[str, Any]:
        return {"theta": state["theta"].numpy(), "phi": state["phi"].numpy()}

    # -- client --------------------------------------------------------------------------
    def client_update(self, payload, data, idx, ctx: StepContext, work=None) -> Partial:
        return self.client_update_many([(self, payload, data, idx, ctx, work)])[0]

    def fuse_key(self) -> tuple | None:
        """Runs whose client steps can share one vectorised pass (same model object and
        mini-batch size, same gate family): see :meth:`client_update_many`. A subclass with
        its own ``client_update`` (and not its own ``client_update_many``) is trained alone:
        the fused pass computes FLoPS's client step, not the subclass's."""
        cls = type(self)
        if cls.client_update is not FLoPS.client_update and cls.client_update_many is FLoPS.client_update_many:
            return None
        return (cls.client_update_many, id(self.model), self.cfg.batch_size, self.gp)

    @staticmethod
    def client_update_many(jobs: list[tuple]) -> list[Partial]:
        """One client step of several runs in ONE forward/backward pass.

        ``jobs[i] = (algo, payload, data, idx, ctx, work)``: runs with the same
        :meth:`fuse_key` (e.g. the trials of a tuning study on one warm pool, which differ
        in learning rates and so in their broadcast theta, phi and step). Each run's clients
        get their own rows (their run's theta and phi, their own mini-batches and gate noise,
        keyed by (seed, client, step) exactly as in a solo run); one autograd pass returns
        per-row gradients, summed per run in float64 in the same order as a solo run, so
        every run's partial equals the one it computes alone.
        """
        t0 = time.perf_counter()
        lead = jobs[0][0]
        model, p, gp = lead.model, lead.model.p, lead.gp
        data = jobs[0][2]                     # one cohort's data (part of the fuse key's contract)
        dev = data.x.device
        ths, phs, cs, meta, kb, kg, masks_work = [], [], [], [], [], [], []
        for algo, payload, d, idx, ctx, work in jobs:
            theta = torch.as_tensor(payload["theta"], device=dev)
            phi = torch.as_tensor(payload["phi"], device=dev)
            ids = d.ids[idx.cpu().numpy()]
            k = ids.size
            # each row's random streams keyed by (seed, client, its run's step), as alone
            kb.append(rngmod.row_keys(ctx.seed, "batch", ids, ctx.step))
            kg.append(rngmod.row_keys(ctx.seed, "gate-noise", ids, ctx.step))
            # per-client copies so autograd returns per-client gradients
            ths.append(theta.expand(k, -1))
            phs.append(phi.expand(k, -1))
            n = d.n[idx]
            cs.append(client_weights(n, algo.cfg.weighting).to(dev))
            meta.append((k, ids, n, idx))
            masks_work.append(work)
        idx_all = torch.cat([m[3] for m in meta])
        xb, yb, mask = minibatch_from_uniform(data, idx_all, rngmod.uniform_rows(np.concatenate(kb), data.x.shape[1]),
                                              lead.cfg.batch_size)
        steps_of, a = [], 0
        if any(w is not None for w in masks_work):      # stragglers: part of the mini-batch
            parts = []
            for (k, _, _, _), work in zip(meta, masks_work):
                mk, steps = partial_work_mask(mask[a: a + k], work)
                parts.append(mk)
                steps_of.append(steps)
                a += k
            mask = torch.cat(parts)
        else:
            steps_of = [np.ones(k) for k, _, _, _ in meta]
        u = torch.from_numpy(rngmod.uniform_rows(np.concatenate(kg), p, eps=gp.eps)).to(device=dev, dtype=ths[0].dtype)
        th = torch.cat(ths).requires_grad_(True)
        ph = torch.cat(phs).requires_grad_(True)
        z = gates.sample(ph, u, gp)
        w = torch.cat([th[:, :p] * z, th[:, p:]], dim=1)
        loss = model.client_loss(w, xb, yb, mask)
        c = torch.cat(cs)
        g_th, g_ph = torch.autograd.grad((c * loss).sum(), [th, ph])
        loss = loss.detach().cpu().numpy()
        g_th, g_ph, c = g_th.double(), g_ph.double(), c.double()
        out, a = [], 0
        for (k, ids, n, _), steps in zip(meta, steps_of):
            # summed in float64 per run: independent of how clients are grouped into actors
            out.append(Partial(
                sums={"theta": g_th[a: a + k].sum(0).cpu().numpy(), "phi": g_ph[a: a + k].sum(0).cpu().numpy()},
                weight=float(c[a: a + k].sum()), client_ids=ids, client_loss=loss[a: a + k],
                client_n=n.cpu().numpy(), client_steps=steps))
            a += k
        dt = time.perf_counter() - t0
        for part in out:
            part.compute_s = dt
        return out

    # -- server --------------------------------------------------------------------------
    def server_update(self, state: State, agg: Aggregate, ctx: StepContext) -> State:
        """A new state (the broadcast one, and its optimiser buffers, are left as they were)."""
        cfg = self.cfg
        state = dict(state)
        theta, phi, lam = state["theta"], state["phi"], float(state["lam"])
        t = ctx.step
        tau = tau_at(t, self.tau0, ctx.schedule.tau_end, cfg.tau_schedule)
        if agg.weight > 0:
            g_th = agg.mean["theta"]
            g_ph = agg.mean["phi"] + lam * gates.count_grad(phi, self.gp)
            if tau > 0:
                g_ph = g_ph - tau * gates.entropy_grad(phi, self.gp)
            if cfg.optimizer == "adam":
                n_upd = int(state.get("n_upd", 0)) + 1
                opt = dict(state["opt"])
                state.update(n_upd=n_upd, opt=opt)
                g_th = _Adam.direction(opt, "theta", g_th, n_upd)
                g_ph = _Adam.direction(opt, "phi", g_ph, n_upd)
            theta = theta - cfg.eta_theta * g_th
            phi = (phi - cfg.eta_phi * g_ph).clamp(-gates.PHI_LIMIT, gates.PHI_LIMIT)
        state["tau"] = tau
        return self.dual_and_prune(state, theta, phi, ctx)

    def dual_and_prune(self, state: State, theta: torch.Tensor, phi: torch.Tensor, ctx: StepContext) -> State:
        """Dual step with restart (section 2, step 6), then gate scaling from prune_start (section 3)."""
        cfg, p, t = self.cfg, self.model.p, ctx.step
        lam = float(state["lam"])
        c = float(gates.expected_density(phi.double(), self.gp)) - cfg.rho
        lam = 0.0 if c <= 0 else max(0.0, lam + self.eta_lambda * c)
        active = state.get("active")
        if t >= ctx.schedule.prune_start:
            active = gates.top_m(phi, theta[:p], self.m, self.gp)
            phi = gates.scale(phi, active, cfg.gate_decay, self.gp)
        return {**state, "theta": theta, "phi": phi, "lam": lam, "t": t + 1, "active": active}

    def deployed(self, state: State, final: bool = False) -> torch.Tensor:
        """theta_tilde * zhat, restricted to the active set T after prune_start (section 3).

        With ``final=True`` the top-m restriction is applied even if pruning never started, so
        an exported model always has at most m non-zeros.
        """
        p = self.model.p
        theta, phi = state["theta"], state["phi"]
        out = theta.clone()
        out[:p] = theta[:p] * gates.deterministic(phi, self.gp)
        active = state.get("active")
        if active is None and final:
            active = gates.top_m(phi, theta[:p], self.m, self.gp)
        if active is not None:
            out[:p] = torch.where(active, out[:p], torch.zeros_like(out[:p]))
        return out

    def comm_bytes(self, state: State, agg: Aggregate, n_selected: int) -> tuple[int, int]:
        P, p = self.model.P, self.model.p
        down = tensor_bytes(P) + tensor_bytes(p)              # theta_tilde and phi
        up = tensor_bytes(P) + tensor_bytes(p) + 4            # two gradients and n_k
        return n_selected * down, agg.n_reported * up

    def state_metrics(self, state: State) -> dict[str, float]:
        phi = state["phi"].double()
        return {"expected_density": float(gates.expected_density(phi, self.gp)),
                "lambda": float(state["lam"]),
                "mean_entropy": float(gates.entropy(phi, self.gp)) / self.model.p,
                "tau": float(state.get("tau", 0.0))}

    def gate_probs(self, state: State) -> torch.Tensor:
        return gates.prob_nonzero(state["phi"].double(), self.gp)


#: tau_0 used by flops-ent and flops-pa-ent when ``algorithm.tau0`` is left at 0
DEFAULT_TAU0 = 0.05


@register("flops-ent")
class FLoPSEnt(FLoPS):
    """FLoPS with entropy-regularised gates (section 4): tau_0 defaults to DEFAULT_TAU0 = 0.05
    (per gate, the middle of the useful range 1e-3..1 on a log scale) when ``tau0`` is 0."""

    def __init__(self, cfg: Any, model, schedule):
        super().__init__(cfg, model, schedule)
        self.tau0 = cfg.tau0 if cfg.tau0 > 0 else DEFAULT_TAU0
