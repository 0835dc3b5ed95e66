"""FedAvgM: FedAvg with server momentum (docs/algorithms.md section 6).

Source: Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv 1909.06335 (2019).

The clients train exactly as in FedAvg (E local epochs of dense mini-batch SGD from the
broadcast model). The server keeps a momentum buffer v (zero at the start, never sent) and,
with Delta the weighted mean of the client deltas of the round,

    v <- beta v + Delta,        theta <- theta + server_lr * v.

With ``server_momentum`` beta = 0 this is FedAvg step for step. A round in which no client
reports leaves theta and v unchanged. A steady delta is amplified by 1 / (1 - beta) (10 for
beta = 0.9); Hsu et al. compare settings at the same effective step server_lr / (1 - beta).

Knobs: those of fedavg (``local_epochs``, ``batch_size``, ``eta_local``, ``server_lr``,
``weighting``) and ``server_momentum`` (0.9). Bytes: those of FedAvg (v stays on the server).
"""

from __future__ import annotations

from pydantic import Field

from raysim.algorithms.base import Aggregate, State, StepContext
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.local import LocalSGDParams
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.registry import register


class FedAvgMParams(LocalSGDParams):
    """Knobs of fedavgm: those of fedavg and the server momentum beta."""

    server_momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum beta: v <- beta v + mean delta, "
                                                                "theta <- theta + server_lr v (0: FedAvg).")


@register("fedavgm")
class FedAvgM(FedAvg):
    """FedAvgM (Hsu et al. 2019): FedAvg with a server momentum buffer on the averaged delta."""

    Params = FedAvgMParams

    def init_state(self, seed: int) -> State:
        state = super().init_state(seed)
        return {**state, "momentum": torch.zeros_like(state["theta"])}

    def velocity(self, agg: Aggregate, state: State) -> torch.Tensor:
        """v_{t+1} = beta v_t + the round's weighted mean delta."""
        return self.cfg.server_momentum * state["momentum"] + agg.mean["delta"].to(state["momentum"].dtype)

    def combine(self, agg: Aggregate, state: State) -> torch.Tensor:
        return self.velocity(agg, state)

    def server_step(self, state: State, theta: torch.Tensor, agg: Aggregate, ctx: StepContext) -> State:
        momentum = self.velocity(agg, state) if agg.weight > 0 else state["momentum"]
        return {**state, "theta": theta, "momentum": momentum}


__all__ = ["FedAvgM", "FedAvgMParams"]
