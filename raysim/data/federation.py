"""The federation interface shared by the server, the client actors and the reference.

A :class:`Federation` knows how to build any client's data *from the client id alone*
(seeded by ``(seed, purpose, client id)``), so the data a client holds never depends on the
number of clients, the number of actors or the order of construction, and a restarted actor
rebuilds exactly the same shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from raysim.lazy import torch  # imported on first use: the driver of a Ray run never needs it


@dataclass
class ClientData:
    """One client's training samples and its held-out split (for fairness metrics)."""

    x: np.ndarray
    y: np.ndarray
    x_hold: np.ndarray
    y_hold: np.ndarray


def split_holdout_size(frac: float, n_k: int) -> int:
    """Held-out samples of a client with n_k samples when data is split per client (real and
    custom data, docs/data.md): round(frac n_k), at least 1 and at most n_k - 1, none when
    frac is 0 or the client has fewer than 2 samples."""
    if frac <= 0 or n_k < 2:
        return 0
    return int(min(n_k - 1, max(1, round(frac * n_k))))


class Federation:
    """Base class of data sources. Subclasses fill the attributes and the three methods."""

    task: str
    input_shape: tuple[int, ...]
    n_outputs: int = 1
    n_clients: int
    #: true support as a boolean mask over input features (synthetic data), else None
    true_support: np.ndarray | None = None

    def client_sizes(self) -> np.ndarray:
        """Training samples n_k of every client, ``[N]`` (cheap; no data is built)."""
        raise NotImplementedError

    def client_data(self, k: int) -> ClientData:
        raise NotImplementedError

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def label_counts(self) -> np.ndarray | None:
        """``[clients, labels]`` training-label counts where cheap to know (partitioned data), else None."""
        return None

    def label_names(self) -> list[str]:
        return []

    def val_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A validation set of ``n`` samples drawn independently of the test set (for tuning)."""
        raise NotImplementedError(f"{type(self).__name__} has no validation split; set data.val_samples = 0")

    def stats(self) -> dict[str, Any]:
        """Heterogeneity statistics of the federation (recorded in the run directory).

        Size spread always; with :meth:`label_counts`, the label skew of docs/data.md section 3
        (``raysim.data.partition.label_heterogeneity``) and the count matrix of the first
        ``MAX_LABEL_ROWS`` clients (``label_counts``, drawn as a clients x labels heatmap).
        """
        sizes = self.client_sizes()
        out: dict[str, Any] = {
            "n_clients": int(self.n_clients), "samples_total": int(sizes.sum()),
            "size_mean": float(sizes.mean()), "size_std": float(sizes.std()),
            "size_min": int(sizes.min()), "size_max": int(sizes.max()),
            "size_cv": float(sizes.std() / max(sizes.mean(), 1e-12)),
            "size_gini": _gini(sizes)}
        counts = self.label_counts()
        if counts is not None:
            from raysim.data.partition import label_heterogeneity

            out.update(label_heterogeneity(counts))
            out["label_names"] = [str(n) for n in self.label_names()]
            out["label_counts"] = counts[:MAX_LABEL_ROWS].tolist()
        return out


#: clients whose label counts are stored in federation.json (enough for the heatmap)
MAX_LABEL_ROWS = 1000


def _gini(x: np.ndarray) -> float:
    """Gini coefficient of client sizes (0: all equal)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    if x.size == 0 or x.sum() <= 0:
        return 0.0
    i = np.arange(1, x.size + 1)
    return float((2 * i - x.size - 1) @ x / (x.size * x.sum()))


@dataclass
class StackedClients:
    """Padded, stacked shards of a cohort of clients (the client actor's resident data)."""

    ids: np.ndarray            # [C] global client ids
    x: torch.Tensor            # [C, n_max, ...]
    y: torch.Tensor            # [C, n_max, ...]
    n: torch.Tensor            # [C] samples per client
    x_hold: torch.Tensor       # [C, h_max, ...]
    y_hold: torch.Tensor
    n_hold: torch.Tensor

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.x, self.y, self.x_hold, self.y_hold))


def _pad(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    n_max = max(1, max(a.shape[0] for a in arrays))
    tail = arrays[0].shape[1:]
    out = torch.zeros((len(arrays), n_max, *tail), dtype=dtype)
    for i, a in enumerate(arrays):
        if a.shape[0]:
            out[i, : a.shape[0]] = torch.as_tensor(a, dtype=dtype)
    return out


def stack_clients(fed: Federation, ids: np.ndarray, device: torch.device | str = "cpu") -> StackedClients:
    """Build and stack the data of clients ``ids`` (padded to the largest shard).

    The training shards are written into the padded tensor as they are built (its size comes
    from the cheap :meth:`Federation.client_sizes`), so the peak memory is about the stacked
    data itself, not twice it (10,000 clients x 50 samples x p = 1000 is 2 GB of float32).
    """
    ids = np.asarray(ids, dtype=np.int64)
    ydt = torch.float32 if fed.task in ("lr", "lg", "mlc") else torch.int64
    sizes = np.asarray(fed.client_sizes())[ids] if ids.size else np.zeros(1, dtype=np.int64)
    n_max = max(1, int(sizes.max()))
    x = y = None
    n = np.zeros(ids.size, dtype=np.int64)
    hold: list[tuple[np.ndarray, np.ndarray]] = []
    for i, k in enumerate(ids):
        s = fed.client_data(int(k))
        m = s.x.shape[0]
        if x is None:
            x = torch.zeros((ids.size, n_max, *s.x.shape[1:]), dtype=torch.float32)
            y = torch.zeros((ids.size, n_max, *s.y.shape[1:]), dtype=ydt)
        if m > x.shape[1]:  # client_sizes() under-reported: grow (never expected, kept correct)
            x = torch.cat([x, torch.zeros((ids.size, m - x.shape[1], *x.shape[2:]), dtype=x.dtype)], 1)
            y = torch.cat([y, torch.zeros((ids.size, m - y.shape[1], *y.shape[2:]), dtype=y.dtype)], 1)
        if m:
            x[i, :m] = torch.as_tensor(s.x, dtype=torch.float32)
            y[i, :m] = torch.as_tensor(s.y, dtype=ydt)
        n[i] = m
        # copies: a held-out split is often a view that would keep the whole shard alive
        hold.append((np.array(s.x_hold, copy=True), np.array(s.y_hold, copy=True)))
        del s
    if x is None:
        raise ValueError("stack_clients needs at least one client id")
    m_used = max(1, int(n.max()))
    if m_used < x.shape[1]:
        x, y = x[:, :m_used].clone(), y[:, :m_used].clone()
    return StackedClients(
        ids=ids,
        x=x.to(device),
        y=y.to(device),
        n=torch.as_tensor(n, dtype=torch.int64, device=device),
        x_hold=_pad([h[0] for h in hold], torch.float32).to(device),
        y_hold=_pad([h[1] for h in hold], ydt).to(device),
        n_hold=torch.tensor([h[0].shape[0] for h in hold], dtype=torch.int64, device=device),
    )


def build_federation(data_cfg: Any, seed: int, partition_cfg: Any = None) -> Federation:
    """The federation described by the ``[data]`` section (and ``[partition]`` for real data)."""
    if data_cfg.kind == "synthetic":
        from raysim.data.synthetic import SyntheticFederation

        return SyntheticFederation(data_cfg, seed)
    if data_cfg.kind == "real":
        from raysim.config import PartitionSection
        from raysim.data.real import RealFederation

        return RealFederation(data_cfg, seed, partition_cfg if partition_cfg is not None else PartitionSection())
    if data_cfg.kind == "custom":
        from raysim.data.custom import CustomFederation

        return CustomFederation(data_cfg, seed)
    raise ValueError(f"data.kind = {data_cfg.kind!r} is not supported")
