"""SER: sign-entropy regularisation (Khan, "Sign-Entropy Regularization for Personalized
Federated Learning", Entropy 27(6):601, 2025; docs/algorithms.md section 6).

The local objective of FedAvg (``ser_base = "fedavg"``) or FedProx (``ser_base = "fedprox"``,
strength ``mu``) gets the term ``rho_s * H_sign(w)``:

    g = grad of the mini-batch loss at w,   q_j = sigmoid(kappa g_j),
    H_sign(w) = (1/d) sum_j [-q_j log q_j - (1 - q_j) log(1 - q_j)],   d = all P parameters.

H_sign is minimised, which pushes every coordinate's gradient sign to be confident. Its
gradient goes through g, so the local step differentiates a gradient (double
backpropagation: the first ``autograd.grad`` keeps its graph). Everything else (local
epochs, aggregation, bytes) is that of the base algorithm. Knobs: ``rho_s`` (0.01),
``kappa`` (10), ``ser_base``, ``mu``; rho_s = 0 reduces to the base algorithm.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raysim.algorithms.fedavg import FedAvg, FedProxParams
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.registry import register


def sign_entropy(g: torch.Tensor, kappa: float) -> torch.Tensor:
    """H_sign per row: mean_j of the Bernoulli entropy of sigmoid(kappa g_j), ``[..., d] -> [...]``."""
    a = kappa * g
    q = torch.sigmoid(a)
    ls = torch.nn.functional.logsigmoid
    return -(q * ls(a) + (1.0 - q) * ls(-a)).mean(-1)


class SERParams(FedProxParams):
    """Knobs of ser: those of fedprox (``mu`` is used with ``ser_base = 'fedprox'``) and the sign entropy's."""

    ser_base: Literal["fedavg", "fedprox"] = Field("fedavg", description="The algorithm the sign-entropy term is added to.")
    rho_s: float = Field(0.01, ge=0, description="Strength of the sign-entropy term rho_s.")
    kappa: float = Field(10.0, gt=0, description="Sharpness kappa of q_j = sigmoid(kappa g_j).")


@register("ser")
class SER(FedAvg):
    """FedAvg or FedProx with the sign-entropy term rho_s H_sign (double backprop)."""

    Params = SERParams

    def local_objective(self, th, xb, yb, mask, anchor):
        cfg = self.cfg
        loss = self.model.client_loss(th, xb, yb, mask)
        g = torch.autograd.grad(loss.sum(), th, create_graph=True)[0]   # per-client rows
        obj = loss + cfg.rho_s * sign_entropy(g, cfg.kappa)
        if cfg.ser_base == "fedprox" and cfg.mu > 0:
            obj = obj + 0.5 * cfg.mu * ((th - anchor) ** 2).sum(1)
        return obj
