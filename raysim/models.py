"""Task families as functional models over a flat parameter vector (ALGORITHMS.md section 7).

A model's parameters live in one flat vector ``theta`` of length P. The gated tensors come
first, so the gated parameters are exactly ``theta[:p]`` and the gate vector ``phi`` has
length p. Models are evaluated *batched over clients*: ``forward`` takes parameters with a
leading cohort axis K (``[K, P]``) and inputs ``[K, B, ...]`` and returns ``[K, B, ...]``, so
a whole cohort of virtual clients trains in one pass with no Python loop over clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    gated: bool

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


class Model:
    """Base class: a parameter layout plus batched forward, loss and evaluation."""

    name: str = "model"
    #: name of the headline test metric (higher is better) and the per-client fairness metric
    test_metric: str = "accuracy"

    def __init__(self, specs: list[TensorSpec]):
        gated = [s for s in specs if s.gated]
        rest = [s for s in specs if not s.gated]
        self.specs = gated + rest
        self.p = sum(s.numel for s in gated)
        self.P = sum(s.numel for s in self.specs)
        offsets, o = {}, 0
        for s in self.specs:
            offsets[s.name] = (o, o + s.numel)
            o += s.numel
        self.offsets = offsets

    # -- layout ------------------------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``[..., P]`` into named tensors ``[..., *shape]`` (views)."""
        lead = theta.shape[:-1]
        return {s.name: theta[..., a:b].reshape(*lead, *s.shape)
                for s in self.specs for (a, b) in [self.offsets[s.name]]}

    def init_params(self, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    # -- computation -------------------------------------------------------------------
    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """theta ``[K, P]``, x ``[K, B, ...]`` -> outputs ``[K, B, ...]``."""
        raise NotImplementedError

    def example_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss ``[K, B]``."""
        raise NotImplementedError

    def client_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """Mean loss over the valid (``mask``) examples of each client: ``[K]``."""
        le = self.example_loss(self.forward(theta, x), y)
        m = mask.to(le.dtype)
        return (le * m).sum(1) / m.sum(1).clamp_min(1.0)

    def evaluate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Test metrics of one (unbatched, ``[P]``) model on a data set."""
        raise NotImplementedError

    def client_scores(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Per-client fairness score ``[K]`` of one model ``[P]`` on padded held-out data."""
        raise NotImplementedError

    def gated_feature_index(self) -> np.ndarray | None:
        """For each gated weight, the input feature it reads (support recovery per feature)."""
        return None


class LinearRegression(Model):
    """lr: y = x . w + b with squared loss; w is gated, the bias is not."""

    name = "lr"
    test_metric = "r2"

    def __init__(self, p_in: int):
        self.p_in = p_in
        super().__init__([TensorSpec("w", (p_in,), True), TensorSpec("b", (), False)])

    def init_params(self, rng: np.random.Generator) -> torch.Tensor:
        # Linear models start at zero (as Fed-HT prescribes); the gates carry the randomness.
        return torch.zeros(self.P)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w = theta[..., : self.p_in]
        b = theta[..., self.p_in]
        return torch.bmm(x, w.unsqueeze(-1)).squeeze(-1) + b.unsqueeze(-1)

    def example_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out - y) ** 2

    def evaluate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        pred = x @ theta[: self.p_in] + theta[self.p_in]
        mse = float(((pred - y) ** 2).mean())
        var = float(((y - y.mean()) ** 2).mean())
        return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan")}

    def client_scores(self, theta, x, y, mask):
        pred = x @ theta[: self.p_in] + theta[self.p_in]
        m = mask.to(pred.dtype)
        cnt = m.sum(1).clamp_min(1.0)
        mean_y = (y * m).sum(1) / cnt
        sse = (((pred - y) ** 2) * m).sum(1)
        sst = (((y - mean_y[:, None]) ** 2) * m).sum(1)
        return torch.where(sst > 0, 1.0 - sse / sst.clamp_min(1e-12), torch.full_like(sse, float("nan")))

    def gated_feature_index(self) -> np.ndarray:
        return np.arange(self.p_in)


MODELS: dict[str, Callable[..., Model]] = {"lr": LinearRegression}


def build_model(task: str, input_shape: tuple[int, ...], n_outputs: int = 1) -> Model:
    """The model of a task family for inputs of ``input_shape``."""
    if task not in MODELS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(MODELS)}")
    if task == "lr":
        return LinearRegression(int(math.prod(input_shape)))
    return MODELS[task](input_shape, n_outputs)
