"""Metrics of docs/algorithms.md sections 8 and 9: support recovery, stability, fairness, bytes."""

from __future__ import annotations

import math

import numpy as np

from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)

FLOAT_BYTES = 4
INDEX_BYTES = 4


def support_metrics(selected: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """TDR, TPR and F1 of a selected support against the true one (boolean masks).

    TDR = |S_hat & S*| / |S_hat| (0 when S_hat is empty), TPR = |S_hat & S*| / |S*|.
    """
    selected = np.asarray(selected, dtype=bool)
    true = np.asarray(true, dtype=bool)
    hit = int(np.sum(selected & true))
    n_sel, n_true = int(selected.sum()), int(true.sum())
    tdr = hit / n_sel if n_sel else 0.0
    tpr = hit / n_true if n_true else 0.0
    f1 = 2 * tdr * tpr / (tdr + tpr) if tdr + tpr > 0 else 0.0
    return {"tdr": tdr, "tpr": tpr, "f1": f1}


def soft_iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """sum_j min(a_j, b_j) / sum_j max(a_j, b_j) between two gate-probability vectors."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    den = float(torch.maximum(a, b).sum())
    return float(torch.minimum(a, b).sum()) / den if den > 0 else 1.0


def tensor_bytes(n: int, nnz: int | None = None) -> int:
    """Bytes to send a float32 tensor of n entries (section 9).

    Dense: 4 n. Sparse (nnz given): min(COO = 8 nnz, bitmap = ceil(n/8) + 4 nnz).
    """
    if nnz is None:
        return FLOAT_BYTES * n
    return min((FLOAT_BYTES + INDEX_BYTES) * nnz, math.ceil(n / 8) + FLOAT_BYTES * nnz)


def fairness(scores: np.ndarray) -> dict[str, float]:
    """Mean, std, worst 5% and best 5% (means of the tails) of per-client scores."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        nan = float("nan")
        return {"fair_mean": nan, "fair_std": nan, "fair_worst5": nan, "fair_best5": nan}
    srt = np.sort(s)
    k = max(1, int(math.ceil(0.05 * s.size)))
    return {"fair_mean": float(s.mean()), "fair_std": float(s.std()),
            "fair_worst5": float(srt[:k].mean()), "fair_best5": float(srt[-k:].mean())}


def fairness_from_scores(scores: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The fairness metrics of the per-client scores gathered from the client actors
    (``[(client ids, scores)]``, one pair per actor)."""
    return fairness(np.concatenate([s for _, s in scores]) if scores else np.zeros(0))


#: the headline test metric of each task (higher is better)
TEST_METRIC = {"lr": "r2", "lg": "accuracy", "mc": "accuracy", "cnn": "accuracy", "mlc": "micro_f1"}
