"""Fed-HT and FedIter-HT (Tong et al., "Federated Nonconvex Sparse Learning", arXiv 2101.00052;
docs/algorithms.md section 6).

* **fed-ht**: FedAvg local training; the server applies the hard-thresholding operator H_m
  (keep the m = floor(rho p) largest |theta| over the gated tensors, zero the rest) to the
  averaged model every round. The global model therefore has at most m non-zeros at every
  round, and the broadcast is sent sparse.
* **fediter-ht**: as fed-ht, and every client also applies H_m to its own model after every
  local step, so the clients' uploads are sparse too (each client sends its m-sparse model,
  not a dense delta).

The model starts at H_m(initial model); linear models start at zero. Ungated parameters
(biases) are never thresholded. Knobs: those of fedavg (``local_epochs``, ``batch_size``,
``eta_local``, ``server_lr``, ``weighting``) and ``rho``.
"""

from __future__ import annotations


from raysim.algorithms.base import Aggregate, State, StepContext
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.local import hard_threshold, sparse_model_bytes
from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)
from raysim.metrics import FLOAT_BYTES, tensor_bytes
from raysim.registry import register


@register("fed-ht")
class FedHT(FedAvg):
    """Fed-HT: server-side hard thresholding H_m every round (the knobs of fedavg)."""

    def threshold(self, theta: torch.Tensor) -> torch.Tensor:
        """H_m on the gated part of ``[..., P]``; ungated entries untouched."""
        p = self.model.p
        return torch.cat([hard_threshold(theta[..., :p], self.m), theta[..., p:]], dim=-1)

    def init_state(self, seed: int) -> State:
        state = super().init_state(seed)
        return {**state, "theta": self.threshold(state["theta"])}

    def server_step(self, state: State, theta: torch.Tensor, agg: Aggregate, ctx: StepContext) -> State:
        return {**state, "theta": self.threshold(theta)}

    def down_bytes(self, state: State) -> int:
        return sparse_model_bytes(state["theta"], self.model.p)


@register("fediter-ht")
class FedIterHT(FedHT):
    """FedIter-HT: H_m after every local step on the clients and after aggregation on the server."""

    def project(self, th: torch.Tensor) -> torch.Tensor:
        return self.threshold(th)

    def upload_bytes(self, payload, theta_k, delta_k) -> int:
        # Each client sends its m-sparse local model (and n_k); the server forms the delta.
        p, P = self.model.p, self.model.P
        nnz = torch.count_nonzero(theta_k[:, :p], dim=1).tolist()
        return int(sum(tensor_bytes(p, int(z)) + tensor_bytes(P - p) + FLOAT_BYTES for z in nnz))
