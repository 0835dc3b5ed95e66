"""FLoPS-PA: FLoPS with local epochs and partial aggregation (docs/algorithms.md section 5),
and its entropy-regularised variant flops-pa-ent (section 4).

Source: Huthasana, Olama, Lundell, arXiv 2512.23071 (FLoPS-PA); entropy term: arXiv 2607.00275.

One round (one communication):

1. The server broadcasts theta_tilde, phi, lambda, tau_t and, after prune_start, the active
   set T (sent sparse: theta_tilde and phi only on T).
2. Every selected client runs E local epochs of mini-batch steps on the Lagrangian
   ``loss(theta_tilde * z) + lambda sum_j pi_j - tau_t H(phi)`` with lambda and tau_t held fixed,
   its own gate noise each step and the local learning rates eta_theta, eta_phi (the cohort
   is trained vectorised; see :mod:`raysim.algorithms.local`). After prune_start the gates
   outside T are frozen closed (z_j = 0, phi_j not updated): only T is trained.
3. The client uploads (theta_tilde_k - theta_tilde, phi_k - phi), after prune_start only the
   entries in T (the server knows T, so no indices travel).
4. The server adds ``server_lr`` times the weighted average of the deltas, then takes the
   dual step with restart (section 2) and the gate scaling (section 3), as FLoPS does.

prune_start and t_end are counted in rounds here (one communication step per round). The
server optimizer setting (``optimizer``) does not apply: the local steps are plain SGD.
With one local full-batch step and full participation a round equals one FLoPS step.

Communication: FLoPS sends the dense theta_tilde and phi down and two dense gradients up at
every *step* (``steps_per_round`` times a round); FLoPS-PA sends them once a round, and after
prune_start only the |T| <= m active entries: this is where its saving shows in
``bytes_up`` / ``bytes_down``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import model_validator

from raysim import gates
from raysim import rng as rngmod
from raysim.algorithms.base import Aggregate, Partial, State, StepContext, client_weights
from raysim.algorithms.flops import DEFAULT_TAU0, FLoPS, FLoPSParams, tau_at
from raysim.algorithms.local import LOCAL_STRIDE, LocalTraining, RoundParams
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.metrics import FLOAT_BYTES, tensor_bytes
from raysim.registry import register


class FLoPSPAParams(FLoPSParams, RoundParams):
    """Knobs of flops-pa: those of flops (eta_theta and eta_phi are the local step sizes) plus
    ``local_epochs`` and ``server_lr``."""

    @model_validator(mode="after")
    def _plain_sgd(self) -> "FLoPSPAParams":
        if self.optimizer != "sgd":
            raise ValueError(f"optimizer = {self.optimizer!r}: {self.name} takes plain SGD steps on the clients; "
                             "the server optimizer applies to the per-step flops only. Leave optimizer = 'sgd'")
        return self


@register("flops-pa")
class FLoPSPA(FLoPS, LocalTraining):
    """FLoPS-PA: local epochs on the Lagrangian, deltas averaged once per round."""

    Params = FLoPSPAParams
    per_step = False

    def broadcast(self, state: State) -> dict[str, Any]:
        tau = tau_at(int(state["t"]), self.tau0, self.schedule.tau_end, self.cfg.tau_schedule)
        out = {"theta": state["theta"].numpy(), "phi": state["phi"].numpy(),
               "lam": float(state["lam"]), "tau": tau}
        if state.get("active") is not None:
            out["active"] = state["active"].numpy()
        return out

    # -- client --------------------------------------------------------------------------
    def client_update(self, payload, data, idx, ctx: StepContext, work=None) -> Partial:
        t0 = time.perf_counter()
        cfg, model, p = self.cfg, self.model, self.model.p
        dev = data.x.device
        theta = torch.as_tensor(payload["theta"], device=dev)
        phi = torch.as_tensor(payload["phi"], device=dev)
        lam, tau = float(payload["lam"]), float(payload["tau"])
        active_set = None
        if "active" in payload:
            active_set = torch.as_tensor(payload["active"], device=dev).to(theta.dtype)
        plan = self.local_plan(data, idx, ctx, work)
        ids = plan["ids"]
        k = idx.numel()
        loss0 = self.full_loss(torch.cat([theta[:p] * gates.deterministic(phi, self.gp), theta[p:]]), data, idx)

        def step(carry, xb, yb, mask, active, s):
            th, ph = (v.detach().requires_grad_(True) for v in carry)
            u = torch.from_numpy(rngmod.uniform(ctx.seed, "gate-noise", ids, ctx.step * LOCAL_STRIDE + s, p,
                                                eps=self.gp.eps)).to(device=dev, dtype=th.dtype)
            z = gates.sample(ph, u, self.gp)
            if active_set is not None:
                z = z * active_set
            w = torch.cat([th[:, :p] * z, th[:, p:]], dim=1)
            loss = model.client_loss(w, xb, yb, mask)
            g_th, g_ph = torch.autograd.grad(loss.sum(), [th, ph])
            ph = ph.detach()
            pi = gates.prob_nonzero(ph, self.gp)
            g_ph = g_ph + lam * pi * (1.0 - pi)                # lambda d(sum pi)/dphi, per client row
            if tau > 0:
                g_ph = g_ph - tau * gates.entropy_grad(ph, self.gp)
            act = active[:, None].to(th.dtype)
            g_th = g_th * act
            g_ph = g_ph * act
            if active_set is not None:
                g_ph = g_ph * active_set
            th = th.detach() - cfg.eta_theta * g_th
            ph = (ph - cfg.eta_phi * g_ph).clamp(-gates.PHI_LIMIT, gates.PHI_LIMIT)
            return th, ph

        th, ph = self.run_local((theta.expand(k, -1).clone(), phi.expand(k, -1).clone()), data, idx, plan, step)
        n = data.n[idx]
        c = client_weights(n, cfg.weighting).to(dev).double()[:, None]
        d_th, d_ph = (th - theta).double(), (ph - phi).double()
        return Partial(
            sums={"theta": (c * d_th).sum(0).cpu().numpy(), "phi": (c * d_ph).sum(0).cpu().numpy()},
            weight=float(c.sum()), client_ids=ids, client_loss=loss0.cpu().numpy(), client_n=n.cpu().numpy(),
            client_steps=plan["steps"].cpu().numpy().astype(np.float64), compute_s=time.perf_counter() - t0,
            extra={"up_bytes": k * self._up_bytes_one(None if active_set is None else int(active_set.sum()))})

    # -- server --------------------------------------------------------------------------
    def server_update(self, state: State, agg: Aggregate, ctx: StepContext) -> State:
        theta, phi = state["theta"], state["phi"]
        if agg.weight > 0:
            theta = theta + self.cfg.server_lr * agg.mean["theta"]
            phi = (phi + self.cfg.server_lr * agg.mean["phi"]).clamp(-gates.PHI_LIMIT, gates.PHI_LIMIT)
        # a new state: the one that was broadcast is left as it was
        state = {**state, "tau": tau_at(ctx.step, self.tau0, ctx.schedule.tau_end, self.cfg.tau_schedule)}
        return self.dual_and_prune(state, theta, phi, ctx)

    def _down_bytes_one(self, state: State) -> int:
        P, p = self.model.P, self.model.p
        active = state.get("active")
        if active is None:
            return tensor_bytes(P) + tensor_bytes(p) + 2 * FLOAT_BYTES
        mt = int(active.sum())
        # theta_tilde on T with its index set, phi on the same index set, the ungated tensors, lambda, tau
        return tensor_bytes(p, mt) + tensor_bytes(mt) + tensor_bytes(P - p) + 2 * FLOAT_BYTES

    def _up_bytes_one(self, n_active: int | None) -> int:
        P, p = self.model.P, self.model.p
        if n_active is None:
            return tensor_bytes(P) + tensor_bytes(p) + FLOAT_BYTES
        return 2 * tensor_bytes(n_active) + tensor_bytes(P - p) + FLOAT_BYTES

    def comm_bytes(self, state: State, agg: Aggregate, n_selected: int) -> tuple[int, int]:
        """Down: the broadcast ``state`` (sparse after prune_start); up: the clients' uploads."""
        return n_selected * int(self._down_bytes_one(state)), int(sum(e.get("up_bytes", 0) for e in agg.extra))


@register("flops-pa-ent")
class FLoPSPAEnt(FLoPSPA):
    """FLoPS-PA with entropy-regularised gates (section 4); tau_0 defaults to 0.05 when 0."""

    def __init__(self, cfg: Any, model, schedule):
        super().__init__(cfg, model, schedule)
        self.tau0 = cfg.tau0 if cfg.tau0 > 0 else DEFAULT_TAU0
