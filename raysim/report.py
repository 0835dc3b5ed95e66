"""Plots and tables from a run directory (metrics.csv + summary.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

#: headline test metric per task (higher is better unless listed in LOWER_IS_BETTER)
TEST_METRIC = {"lr": "r2", "lg": "accuracy", "mc": "accuracy", "cnn": "accuracy", "mlc": "micro_f1"}
LOWER_IS_BETTER = {"mse", "log_loss", "hamming_loss"}


def _line(ax, df: pd.DataFrame, col: str, label: str | None = None, **kw) -> bool:
    if col in df and df[col].notna().any():
        d = df[["round", col]].dropna()
        ax.plot(d["round"], d[col], label=label or col, **kw)
        return True
    return False


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, task: str | None = None) -> list[Path]:
    """Write the standard PNG plots of a run; returns their paths."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / "metrics.csv")
    if task is None:
        summary = _read_json(run_dir / "summary.json")
        task = summary.get("task", "lr")
    out: list[Path] = []
    prune_round = _read_json(run_dir / "summary.json").get("prune_start_round")

    def mark(ax):
        if prune_round is not None:
            ax.axvline(prune_round, color="grey", ls=":", lw=1, label="prune_start")

    fig, ax = plt.subplots(figsize=(6, 4))
    _line(ax, df, "density", "density (deployed)")
    _line(ax, df, "expected_density", "expected density D(phi)")
    if "m" in df and "p" in df:
        pass
    ax.set_xlabel("round")
    ax.set_ylabel("density")
    mark(ax)
    if "lambda" in df and df["lambda"].notna().any():
        ax2 = ax.twinx()
        d = df[["round", "lambda"]].dropna()
        ax2.plot(d["round"], d["lambda"], color="tab:red", alpha=0.6, label="lambda")
        ax2.set_ylabel("lambda", color="tab:red")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Density and dual variable")
    out.append(_save(fig, run_dir / "density_lambda.png"))

    metric = TEST_METRIC.get(task, "accuracy")
    fig, ax = plt.subplots(figsize=(6, 4))
    _line(ax, df, metric, f"test {metric}")
    _line(ax, df, "fair_mean", f"client mean {metric}", ls="--")
    _line(ax, df, "fair_worst5", "worst 5% clients", ls=":")
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    mark(ax)
    ax.legend(fontsize=8)
    ax.set_title(f"Test {metric} of the deployed model")
    out.append(_save(fig, run_dir / f"test_{metric}.png"))

    if "tdr" in df:
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in ("tdr", "tpr", "f1"):
            _line(ax, df, c, c.upper() if c != "f1" else "support F1")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("round")
        mark(ax)
        ax.legend(fontsize=8)
        ax.set_title("Support recovery")
        out.append(_save(fig, run_dir / "support.png"))

    if "soft_iou" in df and df["soft_iou"].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4))
        _line(ax, df, "soft_iou", "soft IoU (pi, round to round)")
        ax.set_xlabel("round")
        mark(ax)
        ax.legend(fontsize=8)
        ax.set_title("Support stability")
        out.append(_save(fig, run_dir / "soft_iou.png"))

    if "cum_bytes_up" in df:
        fig, ax = plt.subplots(figsize=(6, 4))
        for c, lab in (("cum_bytes_up", "uplink"), ("cum_bytes_down", "downlink")):
            if c in df:
                ax.plot(df["round"], df[c] / 1e6, label=lab)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative MB")
        ax.legend(fontsize=8)
        ax.set_title("Communication")
        out.append(_save(fig, run_dir / "bytes.png"))

    label_plot = plot_label_heatmap(run_dir)
    if label_plot is not None:
        out.append(label_plot)
    return out


def plot_label_heatmap(run_dir: str | Path) -> Path | None:
    """clients x labels heatmap of the partition (federation.json ``label_counts``), if any.

    Each row is a client's label distribution (share of its training samples per label);
    clients are ordered by their dominant label so that the skew is visible at a glance.
    """
    import numpy as np

    run_dir = Path(run_dir)
    fed = _read_json(run_dir / "federation.json")
    counts = fed.get("label_counts")
    if not counts:
        return None
    c = np.asarray(counts, dtype=float)
    frac = c / np.maximum(c.sum(1, keepdims=True), 1e-12)
    order = np.lexsort((-frac.max(1), frac.argmax(1)))
    names = fed.get("label_names") or [str(i) for i in range(c.shape[1])]
    fig, (ax, axs) = plt.subplots(1, 2, figsize=(8, 5), gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
    im = ax.imshow(frac[order], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("label")
    ax.set_ylabel(f"client (sorted by dominant label; {c.shape[0]} of {fed.get('n_clients', c.shape[0])})")
    if len(names) <= 30:
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90 if max(len(n) for n in names) > 2 else 0, fontsize=7)
    fig.colorbar(im, ax=axs, label="share of the client's samples")
    axs.barh(np.arange(c.shape[0]), c.sum(1)[order], height=1.0, color="grey")
    axs.set_xlabel("samples")
    stats = [f"{k.replace('label_', '')}={fed[k]:.3g}" for k in ("label_tv_mean", "label_js_mean") if k in fed]
    if "size_cv" in fed:
        stats.append(f"size cv={fed['size_cv']:.3g}")
    part = fed.get("partition", "")
    extra = f" alpha={fed['alpha']:g}" if "alpha" in fed else ""
    fig.suptitle(f"{fed.get('dataset', '')} {part}{extra}: {', '.join(stats)}", fontsize=10)
    return _save(fig, run_dir / "label_heatmap.png")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) pairs of the headline results, for the terminal table."""
    final = summary.get("final", {})
    keys = ["density", "nnz", "m", "expected_density", "lambda", "tdr", "tpr", "f1", "soft_iou",
            "r2", "mse", "accuracy", "log_loss", "auc", "micro_f1", "macro_f1", "hamming_loss",
            "fair_mean", "fair_std", "fair_worst5", "fair_best5", "cum_bytes_up", "cum_bytes_down"]
    rows = []
    for k in keys:
        if k in final and final[k] is not None:
            v = final[k]
            if isinstance(v, float):
                s = f"{v:.4g}" if "bytes" not in k else f"{v / 1e6:.2f} MB"
            elif "bytes" in k:
                s = f"{v / 1e6:.2f} MB"
            else:
                s = str(v)
            rows.append((k, s))
    rows.append(("rounds", str(summary.get("rounds"))))
    rows.append(("wall time", f"{summary.get('wall_s', float('nan')):.1f} s"))
    status = summary.get("status")
    if status:
        done = summary.get("rounds_run")
        rows.insert(0, ("status", status if status == "ok" or done is None else f"{status} (round {done})"))
    return rows
