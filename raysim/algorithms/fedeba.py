"""FedEBA+ (practical variant): entropy-based aggregation with model alignment
(Wang et al., "Entropy-driven Fair and Effective Federated Learning", arXiv 2301.12407;
docs/algorithms.md section 6).

Each selected client k reports F_k, its loss on all its training data at the broadcast
model (before training), and trains like FedAvg. The server forms

    p_k = q_k exp(F_k / T) / sum_i q_i exp(F_i / T),   q_k = c_k / sum c  (``weighting``),
    delta = (1 - a) sum_k p_k delta_k + a sum_k q_k delta_k,

so clients that the global model serves badly get more weight (fairness), and the
alignment a pulls the update back towards the FedAvg average.

One message per actor: the p_k are a softmax over all reporting clients, which no actor can
normalise alone. Each actor sends its log-shift ``s_a = max_k (F_k / T + log c_k)`` and the
shifted sums ``N_a = sum_k exp(F_k / T + log c_k - s_a) delta_k`` (a [P] vector) and
``Z_a = sum_k exp(F_k / T + log c_k - s_a)``; the server rescales them to the common shift
``s = max_a s_a`` and divides: ``sum_k p_k delta_k = sum_a e^{s_a - s} N_a / sum_a e^{s_a - s} Z_a``
(exact, overflow-free for any T). The plain sums of FedAvg travel in the same message.

Knobs: ``eba_temperature`` T (1.0), ``eba_alignment`` a (0.5), and those of fedavg. With
a = 1, or T -> infinity, it is FedAvg.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from raysim.algorithms.base import Aggregate, State
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.local import LocalSGDParams
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.metrics import FLOAT_BYTES, tensor_bytes
from raysim.registry import register


class FedEBAParams(LocalSGDParams):
    eba_temperature: float = Field(1.0, gt=0, description="Temperature T of the weights p_k ~ q_k exp(F_k / T).")
    eba_alignment: float = Field(0.5, ge=0, le=1, description="Model alignment a (0: pure entropy weights, 1: FedAvg).")


@register("fedeba")
class FedEBA(FedAvg):
    """FedEBA+ practical: exp(F_k / T) aggregation weights and model alignment a."""

    Params = FedEBAParams

    def extra_sums(self, theta0, theta_k, delta, c, loss0, plan):
        logit = loss0.double() / self.cfg.eba_temperature + torch.log(c.double())
        shift = float(logit.max())
        e = torch.exp(logit - shift)
        return {"eba_shift": shift, "eba_num": (e[:, None] * delta.double()).sum(0).cpu().numpy(),
                "eba_den": float(e.sum())}

    def combine(self, agg: Aggregate, state: State) -> torch.Tensor:
        a = self.cfg.eba_alignment
        parts = [e for e in agg.extra if "eba_num" in e]
        s = max(e["eba_shift"] for e in parts)
        num = np.zeros_like(parts[0]["eba_num"])
        den = 0.0
        for e in parts:
            scale = float(np.exp(e["eba_shift"] - s))
            num += scale * e["eba_num"]
            den += scale * e["eba_den"]
        weighted = torch.from_numpy(num / den)
        mean = agg.mean["delta"].double()
        return ((1.0 - a) * weighted + a * mean).float()

    def upload_bytes(self, payload, theta_k, delta_k) -> int:
        # dense delta, n_k and the loss F_k
        return int(theta_k.shape[0]) * (tensor_bytes(self.model.P) + 2 * FLOAT_BYTES)
