"""Plots and tables from a run directory (metrics.csv + summary.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from raysim.plotstyle import COLORS, LINESTYLES, MARKERS, check_format, markevery, save, styled  # noqa: E402

#: headline test metric per task (higher is better unless listed in LOWER_IS_BETTER)
from raysim.metrics import TEST_METRIC  # noqa: E402,F401 - re-exported
LOWER_IS_BETTER = {"mse", "log_loss", "hamming_loss"}


def _line(ax, df: pd.DataFrame, col: str, label: str | None = None, **kw) -> bool:
    if col in df and df[col].notna().any():
        d = df[["round", col]].dropna()
        kw.setdefault("markevery", markevery(len(d)))
        ax.plot(d["round"], d[col], label=label or col, **kw)
        return True
    return False


def _save(fig, path: Path, fmt: str = "png") -> Path:
    """Write a figure (``path``'s suffix is replaced by ``fmt``: png, pdf or svg) and close it."""
    fig.tight_layout()
    return save(fig, path, fmt)


def _run_config(run_dir: Path) -> dict[str, Any]:
    from raysim.config import ConfigError, read_toml

    try:
        return read_toml(run_dir / "config.toml")
    except ConfigError:  # no or unreadable config.toml (a hand-made run directory): defaults apply
        return {}


def run_plot_format(run_dir: str | Path) -> str:
    """``run.plot_format`` of a run directory's config.toml (png when it has none)."""
    return str(_run_config(Path(run_dir)).get("run", {}).get("plot_format", "png"))


def target_density(run_dir: Path, summary: dict[str, Any] | None = None) -> float | None:
    """The density target rho of a run: ``algorithm.rho`` of its config, else m / p of its summary."""
    rho = _run_config(run_dir).get("algorithm", {}).get("rho")
    if rho is not None:
        return float(rho)
    summary = summary if summary is not None else _read_json(run_dir / "summary.json")
    if summary.get("m") and summary.get("p"):
        return float(summary["m"]) / float(summary["p"])
    return None


@styled
def density_lambda_figure(df: pd.DataFrame, rho: float | None = None, prune_round: int | None = None):
    """Expected density D(phi), deployed density, the target rho (horizontal line) and lambda on a
    second axis, with ONE legend for all of them: the constraint binds where the expected density
    sits on the rho line while lambda is positive. Returns the figure (not yet saved)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _line(ax, df, "expected_density", "expected density D(phi)", color=COLORS[0], marker="o")
    _line(ax, df, "density", "deployed density", color=COLORS[2], ls="--", marker="s")
    if rho is not None:
        ax.axhline(rho, color="black", ls=":", lw=1.2, label=f"target rho = {rho:g}")
    if prune_round is not None:
        ax.axvline(prune_round, color="grey", ls=(0, (1, 3)), lw=1, label="prune_start")
    ax.set_xlabel("round")
    ax.set_ylabel("density (fraction of p)")
    handles, labels = ax.get_legend_handles_labels()
    if "lambda" in df and df["lambda"].notna().any():
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        d = df[["round", "lambda"]].dropna()
        ax2.plot(d["round"], d["lambda"], color=COLORS[1], ls="-.", marker="^", markevery=markevery(len(d)),
                 label="lambda (dual, right axis)")
        ax2.set_ylabel("lambda", color=COLORS[1])
        ax2.tick_params(axis="y", colors=COLORS[1])
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # one legend for both axes, below the plot so that it never covers a curve
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.set_title("Density constraint and dual variable")
    return fig


@styled
def bytes_figure(df: pd.DataFrame):
    """Cumulative uplink and downlink (MB): two styled lines with markers on a log scale, so
    neither hides under the other. Returns the figure, or None without byte counters."""
    cols = [(c, lab) for c, lab in (("cum_bytes_up", "uplink (clients to server)"),
                                     ("cum_bytes_down", "downlink (server to clients)")) if c in df]
    if not cols:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    # uplink wide and solid underneath, downlink narrow and dashed on top, markers interleaved:
    # both stay visible where the two counts coincide
    for i, ((c, lab), color, ls, mk, lw) in enumerate(zip(cols, (COLORS[0], COLORS[1]), ("-", "--"), ("o", "s"),
                                                          (3.0, 1.4))):
        d = df[["round", c]].dropna()
        k = markevery(len(d))
        ax.plot(d["round"], d[c] / 1e6, label=lab, color=color, ls=ls, lw=lw, marker=mk,
                markevery=(i * (k // 2), k), zorder=2 + i)
    if all(df[c].gt(0).any() for c, _ in cols):
        ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative MB (log scale)" if ax.get_yscale() == "log" else "cumulative MB")
    ax.legend(loc="best")
    title = "Communication"
    if len(cols) == 2:
        up, down = (float(df[c].dropna().iloc[-1]) if df[c].notna().any() else 0.0 for c, _ in cols)
        if down > 0:
            title += f" (final uplink / downlink = {up / down:.3g})"
    ax.set_title(title)
    return fig


@styled
def plot_run(run_dir: str | Path, task: str | None = None, fmt: str | None = None) -> list[Path]:
    """Write the standard plots of a run in ``fmt`` (default: the run's ``run.plot_format``)."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / "metrics.csv")
    summary = _read_json(run_dir / "summary.json")
    if task is None:
        task = summary.get("task", "lr")
    fmt = check_format(fmt or run_plot_format(run_dir), "run.plot_format")
    out: list[Path] = []
    prune_round = summary.get("prune_start_round")

    def mark(ax):
        if prune_round is not None:
            ax.axvline(prune_round, color="grey", ls=(0, (1, 3)), lw=1, label="prune_start")

    fig = density_lambda_figure(df, target_density(run_dir, summary), prune_round)
    out.append(_save(fig, run_dir / "density_lambda.png", fmt))

    metric = TEST_METRIC.get(task, "accuracy")
    fig, ax = plt.subplots(figsize=(6, 4))
    _line(ax, df, metric, f"test {metric}", color=COLORS[0], marker="o")
    _line(ax, df, "fair_mean", f"client mean {metric}", color=COLORS[2], ls="--", marker="s")
    _line(ax, df, "fair_worst5", "worst 5% clients", color=COLORS[1], ls=":", marker="v")
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    mark(ax)
    ax.legend(loc="best")
    ax.set_title(f"Test {metric} of the deployed model")
    out.append(_save(fig, run_dir / f"test_{metric}.png", fmt))

    if "tdr" in df:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (c, lab), color, ls, mk in zip((("tdr", "TDR"), ("tpr", "TPR"), ("f1", "support F1")),
                                           COLORS, LINESTYLES, MARKERS):
            _line(ax, df, c, lab, color=color, ls=ls, marker=mk)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("round")
        ax.set_ylabel("support recovery (rate)")
        mark(ax)
        ax.legend(loc="best")
        ax.set_title("Support recovery")
        out.append(_save(fig, run_dir / "support.png", fmt))

    if "soft_iou" in df and df["soft_iou"].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4))
        _line(ax, df, "soft_iou", "soft IoU (pi, round to round)", color=COLORS[0], marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel("soft IoU of consecutive supports")
        mark(ax)
        ax.legend(loc="best")
        ax.set_title("Support stability")
        out.append(_save(fig, run_dir / "soft_iou.png", fmt))

    fig = bytes_figure(df)
    if fig is not None:
        out.append(_save(fig, run_dir / "bytes.png", fmt))

    label_plot = plot_label_heatmap(run_dir, fmt)
    if label_plot is not None:
        out.append(label_plot)
    return out


@styled
def plot_label_heatmap(run_dir: str | Path, fmt: str | None = None) -> Path | None:
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
    return _save(fig, run_dir / "label_heatmap.png", fmt or run_plot_format(run_dir))


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
