"""FedAvg, FedProx and FedAvg + magnitude pruning (docs/algorithms.md section 6).

* **fedavg** (McMahan et al. 2017): E local epochs of dense mini-batch SGD from the global
  model, then the weighted average of the client models (``theta += server_lr * mean delta``).
* **fedprox** (Li et al. 2020): the local objective adds ``(mu / 2) ||w - w_global||^2``.
* **fedavg-prune**: FedAvg; after the last dense round the server keeps the m = floor(rho p)
  gated weights of largest |theta| (one global magnitude ranking over all gated tensors) and
  zeroes the rest. With ``fine_tune_rounds = F > 0`` the mask is taken after round R - F and
  the last F rounds train with it fixed (the masked weights stay zero). Until the mask exists
  the deployed model is dense; the final exported model always has at most m non-zeros.

Knobs: ``local_epochs``, ``batch_size``, ``eta_local``, ``server_lr``, ``weighting``
(:class:`~raysim.algorithms.local.LocalSGDParams`), ``mu`` (fedprox), ``fine_tune_rounds``
(fedavg-prune). Every other dense baseline is built on :class:`FedAvg` (a subclass), so an
``[algorithm.fedavg]`` table of a shared scenario file applies to all of them
(docs/algorithms.md section 10).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from raysim.algorithms.base import Aggregate, State, StepContext
from raysim.algorithms.local import LocalSGDParams, LocalTraining, sparse_model_bytes, top_m_mask
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.metrics import FLOAT_BYTES, tensor_bytes
from raysim.registry import register


@register("fedavg")
class FedAvg(LocalTraining):
    """FedAvg: dense local SGD, weighted model averaging."""

    Params = LocalSGDParams


class FedProxParams(LocalSGDParams):
    mu: float = Field(0.01, ge=0, description="Proximal strength mu of (mu / 2) ||w - w_global||^2.")


@register("fedprox")
class FedProx(FedAvg):
    """FedProx: local loss + (mu / 2) ||w - w_global||^2 (``algorithm.mu``)."""

    Params = FedProxParams

    def local_objective(self, th, xb, yb, mask, anchor):
        loss = self.model.client_loss(th, xb, yb, mask)
        if self.cfg.mu > 0:
            loss = loss + 0.5 * self.cfg.mu * ((th - anchor) ** 2).sum(1)
        return loss


class FedAvgPruneParams(LocalSGDParams):
    fine_tune_rounds: int = Field(0, ge=0, description="The last this many rounds train with the top-m mask fixed.")


@register("fedavg-prune")
class FedAvgPrune(FedAvg):
    """FedAvg, then a global top-m magnitude mask (optionally fine-tuned with the mask fixed)."""

    Params = FedAvgPruneParams

    def prune_round(self) -> int:
        """Index of the round after whose server update the mask is taken."""
        total = self.schedule.total_steps
        return max(0, total - 1 - int(self.cfg.fine_tune_rounds))

    def broadcast(self, state: State) -> dict[str, Any]:
        out = {"theta": state["theta"].numpy()}
        if state.get("mask") is not None:
            out["mask"] = state["mask"].numpy()
        return out

    def grad_mask(self, payload, dev):
        if "mask" not in payload:
            return None
        m = torch.ones(self.model.P, device=dev)
        m[: self.model.p] = torch.as_tensor(payload["mask"], device=dev).float()
        return m

    def server_step(self, state: State, theta: torch.Tensor, agg: Aggregate, ctx: StepContext) -> State:
        p = self.model.p
        mask = state.get("mask")
        if mask is None and ctx.step >= self.prune_round():
            mask = top_m_mask(theta[:p], self.m)
        if mask is not None:
            theta = theta.clone()
            theta[:p] = torch.where(mask, theta[:p], torch.zeros_like(theta[:p]))
        return {**state, "theta": theta, "mask": mask}

    def deployed(self, state: State, final: bool = False) -> torch.Tensor:
        theta = state["theta"].clone()
        mask = state.get("mask")
        if mask is None and final:
            mask = top_m_mask(theta[: self.model.p], self.m)
        if mask is not None:
            theta[: self.model.p] = torch.where(mask, theta[: self.model.p], torch.zeros_like(theta[: self.model.p]))
        return theta

    def down_bytes(self, state: State) -> int:
        if state.get("mask") is None:
            return tensor_bytes(self.model.P)
        return sparse_model_bytes(state["theta"], self.model.p)

    def upload_bytes(self, payload, theta_k, delta_k) -> int:
        # With the mask fixed (known to both sides) only its entries and the ungated tensors move.
        k = int(theta_k.shape[0])
        p, P = self.model.p, self.model.P
        if "mask" in payload:
            nnz = int(payload["mask"].sum())
            return k * (tensor_bytes(nnz) + tensor_bytes(P - p) + FLOAT_BYTES)
        return k * (tensor_bytes(P) + FLOAT_BYTES)

    def state_metrics(self, state: State) -> dict[str, float]:
        return {"pruned": float(state.get("mask") is not None)}
