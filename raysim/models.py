"""Task families as functional models over a flat parameter vector (docs/algorithms.md section 7).

A model's parameters live in one flat vector ``theta`` of length P. The gated tensors come
first, so the gated parameters are exactly ``theta[:p]`` and the gate vector ``phi`` has
length p. Models are evaluated *batched over clients*: ``forward`` takes parameters with a
leading cohort axis K (``[K, P]``) and inputs ``[K, B, ...]`` and returns ``[K, B, ...]``, so
a whole cohort of virtual clients trains in one pass with no Python loop over clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from raysim.lazy import torch  # imported on first use: the driver sizes models without it


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
        return {s.name: theta[..., a:b].reshape(tuple(lead) + tuple(s.shape))   # () for a scalar
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

    def client_scores_many(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
        """:meth:`client_scores` of several models ``[S, P]`` at once: ``[S, K]`` (the warm
        pools evaluate the runs of a batch together; models may vectorise it)."""
        return torch.stack([self.client_scores(th, x, y, mask) for th in thetas])

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
        return _regression_metrics(x @ theta[: self.p_in] + theta[self.p_in], y)

    def client_scores(self, theta, x, y, mask):
        return _regression_scores(x @ theta[: self.p_in] + theta[self.p_in], y, mask)

    def client_scores_segments(self, thetas, xf, yf, seg, k):
        """:meth:`client_scores_many` on the held-out samples laid end to end (``xf [N, p]``,
        ``yf [N]``, client ``seg [N]`` in ``range(k)``): no work on padding, which the
        largest client makes most of a skewed federation's padded held-out block."""
        pred = xf @ thetas[:, : self.p_in].T + thetas[:, self.p_in]            # [N, S]
        cnt = torch.bincount(seg, minlength=k).to(yf.dtype).clamp_min(1.0)
        mean_y = yf.new_zeros(k).index_add_(0, seg, yf) / cnt
        sst = yf.new_zeros(k).index_add_(0, seg, (yf - mean_y[seg]) ** 2)
        sse = pred.new_zeros(k, thetas.shape[0]).index_add_(0, seg, (pred - yf[:, None]) ** 2)
        r2 = torch.where(sst[:, None] > 0, 1.0 - sse / sst.clamp_min(1e-12)[:, None], torch.full_like(sse, float("nan")))
        return r2.T

    def gated_feature_index(self) -> np.ndarray:
        return np.arange(self.p_in)


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(v.dtype)
    return (v * m).sum(1) / m.sum(1).clamp_min(1.0)


# -- metrics of each task, from the model's outputs (docs/algorithms.md section 8) -------------

def _regression_metrics(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """lr test metrics: MSE and R^2 = 1 - MSE / Var(y)."""
    mse = float(((pred - y) ** 2).mean())
    var = float(((y - y.mean()) ** 2).mean())
    return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan")}


def _regression_scores(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-client R^2 on padded held-out data ``[K, H]``."""
    m = mask.to(pred.dtype)
    cnt = m.sum(1).clamp_min(1.0)
    mean_y = (y * m).sum(1) / cnt
    sse = (((pred - y) ** 2) * m).sum(1)
    sst = (((y - mean_y[:, None]) ** 2) * m).sum(1)
    return torch.where(sst > 0, 1.0 - sse / sst.clamp_min(1e-12), torch.full_like(sse, float("nan")))


def _binary_metrics(z: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """lg test metrics from the logits ``z``: accuracy, log loss, AUC."""
    from sklearn.metrics import roc_auc_score

    z = z.double()
    yd = y.double()
    acc = float(((z > 0).double() == yd).double().mean())
    ll = float(torch.nn.functional.binary_cross_entropy_with_logits(z, yd))
    yn = yd.numpy()
    auc = float(roc_auc_score(yn, z.numpy())) if 0 < yn.sum() < yn.size else float("nan")
    return {"accuracy": acc, "log_loss": ll, "auc": auc}


def _multilabel_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """mlc test metrics: micro-F1, macro-F1, Hamming loss."""
    pred = logits > 0
    yt = y > 0.5
    tp = (pred & yt).sum(0).double()
    fp = (pred & ~yt).sum(0).double()
    fn = (~pred & yt).sum(0).double()
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1e-12))
    den = 2 * tp + fp + fn
    per_label = torch.where(den > 0, 2 * tp / den.clamp_min(1e-12), torch.ones_like(den))
    return {"micro_f1": micro, "macro_f1": float(per_label.mean()),
            "hamming_loss": float((pred != yt).double().mean())}


def _multilabel_scores(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-client micro-F1 on padded held-out data ``[K, H, L]``."""
    pred = logits > 0
    yt = y > 0.5
    m = mask[..., None]
    tp = (pred & yt & m).sum((1, 2)).double()
    fp = (pred & ~yt & m).sum((1, 2)).double()
    fn = (~pred & yt & m).sum((1, 2)).double()
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1e-12), torch.ones_like(den)).float()


class _LinearHead(Model):
    """Shared layout of the linear classifiers: W ``[p_in, C]`` gated (row-major, so weight
    ``j * C + c`` reads feature j) and a bias ``[C]`` that is not gated."""

    def __init__(self, p_in: int, n_out: int):
        self.p_in = p_in
        self.n_out = n_out
        super().__init__([TensorSpec("W", (p_in, n_out), True), TensorSpec("b", (n_out,), False)])

    def init_params(self, rng: np.random.Generator) -> torch.Tensor:
        # Linear models start at zero (as Fed-HT prescribes); the gates carry the randomness.
        return torch.zeros(self.P)

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """theta ``[..., P]`` (with the same leading dims as x minus the sample axis), x ``[..., B, p_in]``."""
        W = theta[..., : self.p].reshape(*theta.shape[:-1], self.p_in, self.n_out)
        b = theta[..., self.p:]
        return torch.matmul(x, W) + b.unsqueeze(-2)

    def gated_feature_index(self) -> np.ndarray:
        return np.repeat(np.arange(self.p_in), self.n_out)


class LogisticRegression(_LinearHead):
    """lg: binary logistic regression, p(y=1|x) = sigmoid(x . w + b), binary cross-entropy
    (docs/algorithms.md section 7). Test metrics: accuracy, log loss, AUC (section 8)."""

    name = "lg"
    test_metric = "accuracy"

    def __init__(self, p_in: int):
        super().__init__(p_in, 1)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.logits(theta, x).squeeze(-1)

    def example_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(out, y.to(out.dtype), reduction="none")

    def evaluate(self, theta, x, y):
        return _binary_metrics(self.logits(theta, x).squeeze(-1), y)

    def client_scores(self, theta, x, y, mask):
        z = self.logits(theta, x).squeeze(-1)
        return _masked_mean(((z > 0).to(y.dtype) == y).float(), mask)


class SoftmaxRegression(_LinearHead):
    """mc: softmax multi-class regression, logits = x W + b with W ``[p_in, C]`` gated and the
    bias not, cross-entropy (section 7). Test metrics: accuracy, log loss (section 8)."""

    name = "mc"
    test_metric = "accuracy"

    def forward(self, theta, x):
        return self.logits(theta, x)

    def example_loss(self, out, y):
        return torch.nn.functional.cross_entropy(out.flatten(0, -2), y.flatten().long(),
                                                 reduction="none").reshape(y.shape)

    def evaluate(self, theta, x, y):
        return _classification_metrics(self.logits(theta, x), y)

    def client_scores(self, theta, x, y, mask):
        return _masked_mean((self.logits(theta, x).argmax(-1) == y).float(), mask)


class MultiLabelLogistic(_LinearHead):
    """mlc: L independent logistic units, logits = x W + b with W ``[p_in, L]`` gated, loss the
    mean binary cross-entropy over the labels (section 7). Test metrics: micro-F1, macro-F1,
    Hamming loss; the per-client fairness score is the client's micro-F1 (section 8)."""

    name = "mlc"
    test_metric = "micro_f1"

    def forward(self, theta, x):
        return self.logits(theta, x)

    def example_loss(self, out, y):
        return torch.nn.functional.binary_cross_entropy_with_logits(out, y.to(out.dtype), reduction="none").mean(-1)

    def evaluate(self, theta, x, y):
        return _multilabel_metrics(self.logits(theta, x), y)

    def client_scores(self, theta, x, y, mask):
        return _multilabel_scores(self.logits(theta, x), y, mask)


def _classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    logits = logits.double()
    y = y.long()
    return {"accuracy": float((logits.argmax(-1) == y).double().mean()),
            "log_loss": float(torch.nn.functional.cross_entropy(logits, y))}


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an image input: (C, H, W), (H, W), or a flat square H*W."""
    if len(input_shape) == 3:
        return tuple(int(v) for v in input_shape)  # type: ignore[return-value]
    if len(input_shape) == 2:
        return (1, int(input_shape[0]), int(input_shape[1]))
    if len(input_shape) == 1:
        s = int(round(math.sqrt(input_shape[0])))
        if s * s == input_shape[0]:
            return (1, s, s)
    raise ValueError(f"the cnn needs image inputs (C, H, W), (H, W) or a flat square H*W; got shape {input_shape}")


def _fedavg_cnn_module(chw: tuple[int, int, int], n_classes: int) -> Any:
    """conv 5x5 (32) - ReLU - maxpool 2 - conv 5x5 (64) - ReLU - maxpool 2 - dense 512 - ReLU - dense C
    (an ``nn.Module``; its class is made on first use, so importing this module does not import torch)."""
    global _CNN_CLASS
    if _CNN_CLASS is None:
        class FedAvgCNNModule(torch.nn.Module):
            def __init__(self, chw: tuple[int, int, int], n_classes: int):
                super().__init__()
                c, h, w = chw
                self.chw = chw
                self.conv1 = torch.nn.Conv2d(c, 32, 5, padding=2)
                self.conv2 = torch.nn.Conv2d(32, 64, 5, padding=2)
                self.flat = 64 * (h // 2 // 2) * (w // 2 // 2)
                self.fc1 = torch.nn.Linear(self.flat, 512)
                self.fc2 = torch.nn.Linear(512, n_classes)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = x.reshape(x.shape[0], *self.chw)
                x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
                x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
                x = torch.relu(self.fc1(x.flatten(1)))
                return self.fc2(x)

        _CNN_CLASS = FedAvgCNNModule
    return _CNN_CLASS(chw, n_classes)


_CNN_CLASS: Any = None


class FedAvgCNN(Model):
    """cnn: the FedAvg CNN of McMahan et al. 2017 (docs/algorithms.md section 7).

    conv 5x5 (32, 'same') - ReLU - maxpool 2 - conv 5x5 (64, 'same') - ReLU - maxpool 2 -
    dense 512 - ReLU - dense C: 1,663,370 parameters on 28x28 inputs with 10 classes. The
    two kernels and the two dense weight matrices are gated, the biases are not. Inputs may
    be (C, H, W), (H, W) or flat H*W (reshaped). The cohort axis is handled with
    ``torch.func.functional_call`` under ``torch.func.vmap``: every client has its own
    parameter row and the whole cohort runs as one batched computation.
    """

    name = "cnn"
    test_metric = "accuracy"
    _gated = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")

    def __init__(self, input_shape: tuple[int, ...], n_classes: int):
        self.chw = image_shape(tuple(input_shape))
        self.n_classes = int(n_classes)
        self.module = _fedavg_cnn_module(self.chw, self.n_classes)
        specs = [TensorSpec(n, tuple(t.shape), n in self._gated) for n, t in self.module.named_parameters()]
        super().__init__(specs)

    def init_params(self, rng: np.random.Generator) -> torch.Tensor:
        """PyTorch's default initialisers, seeded from ``rng`` (layout independent)."""
        torch_gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        out = torch.empty(self.P)
        for s in self.specs:
            a, b = self.offsets[s.name]
            fan_in = int(np.prod(s.shape[1:])) if s.gated else int(np.prod(self._weight_of(s.name).shape[1:]))
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias rule both give 1/sqrt(fan_in)
            out[a:b] = torch.empty(s.numel).uniform_(-bound, bound, generator=torch_gen)
        return out

    def _weight_of(self, bias_name: str) -> torch.Tensor:
        return dict(self.module.named_parameters())[bias_name.replace("bias", "weight")]

    def _apply_one(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.module, params, (x,))

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = self.unflatten(theta)
        return torch.func.vmap(self._apply_one)(params, x)

    def example_loss(self, out, y):
        return torch.nn.functional.cross_entropy(out.flatten(0, -2), y.flatten().long(),
                                                 reduction="none").reshape(y.shape)

    def _logits(self, theta: torch.Tensor, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        params = self.unflatten(theta)
        return torch.cat([self._apply_one(params, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])

    def evaluate(self, theta, x, y):
        return _classification_metrics(self._logits(theta, x), y)

    def client_scores(self, theta, x, y, mask):
        k, h = x.shape[:2]
        pred = self._logits(theta, x.reshape(k * h, *x.shape[2:])).argmax(-1).reshape(k, h)
        return _masked_mean((pred == y).float(), mask)


#: headline test metric of each task (higher is better)
TASK_METRIC = {"lr": "r2", "lg": "accuracy", "mc": "accuracy", "mlc": "micro_f1", "cnn": "accuracy"}


class TorchModuleModel(Model):
    """Your own ``torch.nn.Module`` as a raysim model (docs/algorithms.md section 7, "User models").

    ``factory`` (an ``nn.Module`` class or a function returning a module; ``model.module``) is
    called with ``input_shape`` and ``n_outputs`` when its signature names them, plus
    ``kwargs`` (``model.kwargs``). Its parameters become the flat vector theta, gated tensors
    first: by default (``gate = "weights"``) every parameter tensor with 2 or more dimensions
    (dense matrices, convolution kernels, embeddings) is gated and the 1-D ones (biases, norm
    scales) are not, the convention of the built-in cnn; ``gate = "all"`` gates every tensor,
    ``gated`` (names or glob patterns) picks them by name.

    The cohort axis is handled as in :class:`FedAvgCNN`: ``torch.func.functional_call`` under
    ``torch.func.vmap``, so each client has its own parameter row and the whole cohort runs as
    one batched computation; the module's ``forward`` sees one client's batch ``[B, *input_shape]``
    and must be vmap-compatible (no ``.item()``, no Python branching on tensor values, no
    in-place change of its input). The module runs in eval mode (dropout off); batch-norm
    layers must not track running statistics (``track_running_stats=False``, or GroupNorm /
    LayerNorm), since those are state that is neither trained nor aggregated.

    The loss and the metrics follow ``task`` (section 8): lr squared error (MSE, R^2; output
    ``[B]`` or ``[B, 1]``), lg binary cross-entropy on a logit (accuracy, log loss, AUC), mc and
    cnn cross-entropy on ``n_outputs`` logits (accuracy, log loss), mlc the mean binary
    cross-entropy of ``n_outputs`` logits (micro-/macro-F1, Hamming loss).

    ``init_params`` builds a fresh module under a torch seed drawn from raysim's keyed
    generator, so the module's own initialisation (default or custom) is used and is the same
    in every process.
    """

    name = "torch-module"

    def __init__(self, factory: Callable[..., Any], task: str, input_shape: tuple[int, ...], n_outputs: int = 1,
                 kwargs: dict[str, Any] | None = None, gate: str = "weights", gated: list[str] | None = None,
                 field: str = "model.module"):
        if task not in TASK_METRIC:
            raise ValueError(f"data.task = {task!r} has no loss for a user model; use one of {', '.join(TASK_METRIC)}")
        self.factory, self.task, self.field = factory, task, field
        self.input_shape = tuple(int(v) for v in input_shape)
        self.n_outputs = int(n_outputs)
        self.kwargs = dict(kwargs or {})
        self.test_metric = TASK_METRIC[task]
        module = self._make()
        named = list(module.named_parameters())
        if not named:
            raise ValueError(f"{field}: the module has no parameters to train")
        names = [n for n, _ in named]
        if gated is not None:
            import fnmatch

            for pat in gated:
                if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                    raise ValueError(f"model.gated: {pat!r} matches no parameter of the module; its parameters: "
                                     f"{', '.join(names)}")
            is_gated = {n: any(fnmatch.fnmatchcase(n, pat) for pat in gated) for n in names}
        elif gate == "all":
            is_gated = {n: True for n in names}
        elif gate == "weights":
            is_gated = {n: t.dim() >= 2 for n, t in named}
        else:
            raise ValueError(f"model.gate = {gate!r}: use 'weights' or 'all'")
        if not any(is_gated.values()):
            raise ValueError(f"{field}: no parameter tensor is gated (model.gate = {gate!r}, model.gated = {gated!r}; "
                             f"parameters: {', '.join(f'{n} {tuple(t.shape)}' for n, t in named)}); gate some with "
                             "model.gate = 'all' or model.gated = [names]")
        super().__init__([TensorSpec(n, tuple(t.shape), is_gated[n]) for n, t in named])
        self.module = module
        self._device = torch.device("cpu")
        self._check_forward()

    # -- building ---------------------------------------------------------------------------
    def _make(self) -> torch.nn.Module:
        from raysim.plugins import PluginError, call_with

        try:
            module = call_with(self.factory, {"input_shape": self.input_shape, "n_outputs": self.n_outputs},
                               self.kwargs, self.field)
        except PluginError:
            raise
        except Exception as exc:
            raise ValueError(f"{self.field}: building the module raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"{self.field} returned a {type(module).__name__}; it must be a torch.nn.Module (a "
                             "Module class, or a function returning a Module instance)")
        for name, sub in module.named_modules():
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
                raise ValueError(f"{self.field}: layer {name or type(sub).__name__} ({type(sub).__name__}) tracks "
                                 "running statistics, which are neither trained nor aggregated; build it with "
                                 "track_running_stats=False, or use GroupNorm / LayerNorm")
        module.eval()
        module.float()
        for t in module.parameters():
            t.requires_grad_(False)
        return module

    def _expected_shape(self, b: int) -> tuple[int, ...]:
        return (b,) if self.task in ("lr", "lg") else (b, self.n_outputs)

    def _check_forward(self) -> None:
        """One vectorised forward and backward on zeros: a wrong output shape or a forward that
        vmap cannot vectorise is reported here, naming the module, not deep inside a run."""
        theta = torch.zeros(2, self.P, requires_grad=True)
        x = torch.zeros(2, 3, *self.input_shape)
        try:
            with torch.enable_grad():
                out = self.forward(theta, x)
        except Exception as exc:
            raise ValueError(
                f"{self.field}: running the module on a batch of shape [3, {', '.join(map(str, self.input_shape))}] "
                f"vectorised over clients (torch.func.vmap) failed: {type(exc).__name__}: {exc}. The module must take "
                "one client's batch [B, *input_shape] and be vmap-compatible (no .item(), no Python branching on "
                "tensor values, no in-place change of its input)") from exc
        if tuple(out.shape[1:]) != self._expected_shape(3):
            want = "[B] or [B, 1]" if self.task in ("lr", "lg") else f"[B, n_outputs] = [B, {self.n_outputs}]"
            got = list(self._raw_shape) if self._raw_shape is not None else list(out.shape[1:])
            raise ValueError(f"{self.field}: the module maps a batch [B, *input_shape] to shape {got} (B = 3); "
                             f"data.task = {self.task!r} needs {want}")
        with torch.enable_grad():
            out.float().sum().backward()

    # -- layout and initialisation ------------------------------------------------------------
    def init_params(self, rng: np.random.Generator) -> torch.Tensor:
        """The module's own initialisation, under a torch seed drawn from ``rng``."""
        seed = int(rng.integers(0, 2**62))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = self._make()
        params = dict(fresh.named_parameters())
        out = torch.empty(self.P)
        for s in self.specs:
            a, b = self.offsets[s.name]
            out[a:b] = params[s.name].detach().reshape(-1).float()
        return out

    # -- computation ----------------------------------------------------------------------------
    def _on(self, device: torch.device) -> None:
        if device != self._device:  # buffers (constants) must live where the parameters are
            self.module.to(device)
            self._device = device

    def _apply_one(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.module, params, (x,))

    _raw_shape: tuple[int, ...] | None = None

    def _shape_out(self, out: torch.Tensor, lead: int) -> torch.Tensor:
        """lr / lg: ``[..., B, 1]`` -> ``[..., B]``; other shapes are left to the caller's check."""
        self._raw_shape = tuple(out.shape[lead:])
        if self.task in ("lr", "lg") and out.dim() == lead + 2 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        return out

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self._on(theta.device)
        out = torch.func.vmap(self._apply_one)(self.unflatten(theta), x)
        return self._shape_out(out, 1)

    def outputs(self, theta: torch.Tensor, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Outputs of one model ``[P]`` on ``x`` ``[N, *input_shape]`` (in chunks, no cohort axis)."""
        self._on(theta.device)
        params = self.unflatten(theta)
        out = torch.cat([self._apply_one(params, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        return self._shape_out(out, 0)

    def example_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "lr":
            return (out - y) ** 2
        if self.task == "lg":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y.to(out.dtype), reduction="none")
        if self.task == "mlc":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y.to(out.dtype),
                                                                        reduction="none").mean(-1)
        return torch.nn.functional.cross_entropy(out.flatten(0, -2), y.flatten().long(),
                                                 reduction="none").reshape(y.shape)

    def evaluate(self, theta, x, y):
        out = self.outputs(theta, x)
        if self.task == "lr":
            return _regression_metrics(out, y)
        if self.task == "lg":
            return _binary_metrics(out, y)
        if self.task == "mlc":
            return _multilabel_metrics(out, y)
        return _classification_metrics(out, y)

    def client_scores(self, theta, x, y, mask):
        k, h = x.shape[:2]
        out = self.outputs(theta, x.reshape(k * h, *x.shape[2:]))
        out = out.reshape(k, h, *out.shape[1:])
        if self.task == "lr":
            return _regression_scores(out, y, mask)
        if self.task == "lg":
            return _masked_mean(((out > 0).to(y.dtype) == y).float(), mask)
        if self.task == "mlc":
            return _multilabel_scores(out, y, mask)
        return _masked_mean((out.argmax(-1) == y).float(), mask)


MODELS: dict[str, Callable[..., Model]] = {"lr": LinearRegression, "lg": LogisticRegression,
                                           "mc": SoftmaxRegression, "mlc": MultiLabelLogistic,
                                           "cnn": FedAvgCNN}


def build_model(task: str, input_shape: tuple[int, ...], n_outputs: int = 1) -> Model:
    """The model of a task family for inputs of ``input_shape`` (n_outputs: classes or labels)."""
    if task not in MODELS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(MODELS)}")
    p_in = int(math.prod(input_shape))
    if task == "lr":
        return LinearRegression(p_in)
    if task == "lg":
        return LogisticRegression(p_in)
    if task in ("mc", "mlc"):
        return MODELS[task](p_in, int(n_outputs))
    return FedAvgCNN(tuple(input_shape), int(n_outputs))


def model_for(cfg: Any, fed: Any) -> Model:
    """The model of a run: the user's module (``[model] module``) when set, else the built-in
    model of the federation's task (docs/algorithms.md section 7)."""
    mc = getattr(cfg, "model", None)
    if mc is None or mc.module is None:
        return build_model(fed.task, fed.input_shape, fed.n_outputs)
    from raysim.config import ConfigError
    from raysim.plugins import PluginError, resolve_callable

    try:
        return TorchModuleModel(resolve_callable(mc.module, "model.module"), fed.task, tuple(fed.input_shape),
                                int(fed.n_outputs), kwargs=mc.kwargs, gate=mc.gate, gated=mc.gated)
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"{exc}") from exc
