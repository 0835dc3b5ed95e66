"""The plots over many runs, all drawn in the house style (``raysim.plotstyle``):

* :func:`plot_curves`: ``raysim compare``'s mean curves over seeds, one line per algorithm,
  against rounds and against cumulative bytes;
* :func:`heatmaps`: ``raysim stress``'s heatmaps of a metric over the first two axes, one per
  algorithm, one of a paired difference, and all panels in one figure.

Both read the tables of :mod:`raysim.experiments.collect`. The plots of one run are
``raysim.report``'s; the Optuna plots of a study stay in ``raysim.tuning.report``, which draws
them from the study's trials, not from run directories (docs/architecture.md, "Experiments").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.experiments.plan import fmt_value, slug


def plot_curves(curves: pd.DataFrame, out_dir: Path, metric: str, order: list[str], fmt: str = "png") -> list[Path]:
    """Test metric and TDR against rounds and cumulative bytes: mean over seeds, one line per
    algorithm in its own colour, line style and marker (:func:`raysim.plotstyle.algo_style`)."""
    from raysim.plotstyle import style

    with style():
        return _plot_curves(curves, out_dir, metric, order, fmt)


def _plot_curves(curves: pd.DataFrame, out_dir: Path, metric: str, order: list[str], fmt: str) -> list[Path]:
    import matplotlib.pyplot as plt

    from raysim.plotstyle import algo_style, markevery, save

    curves = curves.copy()
    curves["cum_bytes"] = curves["cum_bytes_up"] + curves["cum_bytes_down"]
    n_seeds = curves.groupby("algorithm")["seed"].nunique()
    paths = []
    for col in (metric, "tdr"):
        if col not in curves or curves[col].isna().all():
            continue
        for xcol, xlabel, suffix in (("round", "round", "rounds"), ("cum_bytes", "cumulative bytes (up + down)", "bytes")):
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            for i, algo in enumerate(order):
                d = curves[curves["algorithm"] == algo]
                if d.empty:
                    continue
                g = d.groupby("round").agg(x=(xcol, "mean"), y=(col, "mean"), s=(col, "std")).dropna(subset=["y"])
                st = algo_style(algo)
                ax.plot(g["x"], g["y"], label=algo, markevery=markevery(len(g), 8, i, len(order)), **st)
                ax.fill_between(g["x"], g["y"] - g["s"].fillna(0), g["y"] + g["s"].fillna(0),
                                color=st["color"], alpha=0.12, lw=0)
            if xcol == "cum_bytes":
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(col)
            seeds = sorted(set(n_seeds.reindex(order).dropna().astype(int)))
            ax.set_title(f"{col} of the deployed model (mean ± std over "
                         f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''})")
            ax.legend(ncol=2, loc="best")
            fig.tight_layout()
            paths.append(save(fig, out_dir / f"{col}_{suffix}.png", fmt))
    return paths


def _per_seed(df: pd.DataFrame, axes: list[str], metric: str) -> pd.Series:
    """``metric`` per (axis 0, axis 1, seed), averaged over any further axes."""
    d = df.copy()
    d[metric] = pd.to_numeric(d[metric], errors="coerce")
    if len(axes) == 1:
        d["_"] = ""
        axes = [axes[0], "_"]
    return d.groupby([axes[0], axes[1], "seed"], dropna=False)[metric].mean()


def _spread(per_seed: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, standard deviation, number of seeds) over seeds as axis-0 x axis-1 tables."""
    g = per_seed.groupby(level=[0, 1])
    mean, std, n = (x.unstack(1) for x in (g.mean(), g.std(ddof=1), g.count()))
    return mean, std.reindex_like(mean), n.reindex_like(mean)


def _decimals(vals: np.ndarray) -> int:
    """One number format per figure: decimals from the largest magnitude (3 significant digits)."""
    finite = np.abs(vals[np.isfinite(vals)])
    if finite.size == 0 or finite.max() == 0:
        return 3
    return int(min(4, max(0, 2 - math.floor(math.log10(finite.max())))))


def _notes(df: pd.DataFrame, axes: list[str]) -> dict[tuple[Any, Any], str]:
    """Heatmap cells with runs that did not end ok: (axis-0 value, axis-1 value) -> outcome names."""
    out: dict[tuple[Any, Any], str] = {}
    if "outcome" not in df:
        return out
    bad = df[~df["outcome"].isin(["ok", "unfinished"])]
    for _, r in bad.iterrows():
        key = (r[axes[0]], r[axes[1]] if len(axes) > 1 else "")
        names = set(filter(None, out.get(key, "").split("/"))) | {str(r["outcome"])}
        out[key] = "/".join(sorted(names))
    return out


def _draw(ax, p: pd.DataFrame, title: str, diverging: bool = False, std: pd.DataFrame | None = None,
          nd: int | None = None, notes: dict[tuple[Any, Any], str] | None = None) -> Any:
    """A heatmap of ``p`` whose cells read ``mean ± std`` (over seeds) in black or white by the
    luminance of the cell colour, all cells in the same number format (``nd`` decimals)."""
    from raysim.plotstyle import text_color

    vals = p.to_numpy(dtype=float)
    if diverging:
        lim = np.nanmax(np.abs(vals)) if np.isfinite(vals).any() else 1.0
        im = ax.imshow(vals, cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, aspect="auto", origin="lower")
    else:
        im = ax.imshow(vals, cmap="viridis", aspect="auto", origin="lower")
    ax.grid(False)
    ax.set_xticks(range(p.shape[1]))
    ax.set_xticklabels([fmt_value(c) for c in p.columns], fontsize=8)
    ax.set_yticks(range(p.shape[0]))
    ax.set_yticklabels([fmt_value(i) for i in p.index], fontsize=8)
    ax.set_xlabel(str(p.columns.name) if p.columns.name != "_" else "")
    ax.set_ylabel(str(p.index.name))
    nd = _decimals(vals) if nd is None else nd
    sd = std.to_numpy(dtype=float) if std is not None else None
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            note = (notes or {}).get((p.index[i], p.columns[j]))
            if np.isfinite(vals[i, j]):
                txt = f"{vals[i, j]:.{nd}f}"
                if sd is not None and np.isfinite(sd[i, j]):
                    txt += f"\n± {sd[i, j]:.{nd}f}"
                if note:
                    txt += f"\n({note})"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7.5,
                        color=text_color(im.cmap(im.norm(vals[i, j]))))
            elif note:      # no ok run in this cell: its outcome, not a number
                ax.text(j, i, note, ha="center", va="center", fontsize=7.5, color="red")
    ax.set_title(title, fontsize=9)
    return im

def heatmaps(df: pd.DataFrame, axes: list[str], labels: list[str], metric: str, out_dir: Path, name: str,
             diff: tuple[str, str] | None = None, fmt: str = "png") -> list[Path]:
    """One heatmap of ``metric`` per label (``df["algorithm"]``), one of the difference ``diff``
    (a - b), and all panels in one figure, over the first two of ``axes`` (rows, columns).

    ``df`` is :func:`raysim.experiments.collect.finals`: only cells with status done or ran and
    outcome ok are numbers; a cell whose runs did not end ok is masked and shows its outcome.
    Cells show the mean ± standard deviation over seeds (the difference is taken per seed, so
    its spread is that of the paired difference); the colorbar is labelled with the metric."""
    from raysim.plotstyle import style

    with style():
        return _heatmaps(df, axes, labels, metric, Path(out_dir), name, diff, fmt)


def _heatmaps(df: pd.DataFrame, axes: list[str], labels: list[str], metric: str, out_dir: Path, name: str,
              diff: tuple[str, str] | None, fmt: str) -> list[Path]:
    import matplotlib.pyplot as plt

    from raysim.plotstyle import save

    finished = df[df["status"].isin(["done", "ran"])]
    if metric not in finished.columns or finished.empty:
        return []
    if "outcome" in finished:   # a diverged / empty / no-participation run is not a number: masked, noted
        finished = finished.assign(**{metric: pd.to_numeric(finished[metric], errors="coerce")
                                      .where(finished["outcome"] == "ok")})
    axes = list(axes)
    seeds = sorted(finished["seed"].unique())
    notes: dict[str, dict[tuple[Any, Any], str]] = {}
    more = (f" (mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
            f"{'; mean over ' + ', '.join(axes[2:]) if len(axes) > 2 else ''})")
    panels: list[tuple[str, pd.DataFrame, pd.DataFrame, bool, str]] = []
    per_seed: dict[str, pd.Series] = {}
    for label in labels:
        sub = finished[finished["algorithm"] == label]
        if not sub.empty:
            per_seed[label] = _per_seed(sub, axes, metric)
            mean, std, _ = _spread(per_seed[label])
            panels.append((f"{label}: {metric}", mean, std, False, metric))
            notes[f"{label}: {metric}"] = _notes(sub, axes)
    if diff is not None:
        a, b = diff
        if a in per_seed and b in per_seed:
            d = (per_seed[a] - per_seed[b]).dropna()   # paired by seed
            if len(d):
                mean, std, _ = _spread(d)
                panels.append((f"{a} - {b}: {metric}", mean, std, True, f"{metric} difference ({a} - {b})"))
    # one number format for every panel of a metric (differences get their own)
    nd_abs = _decimals(np.concatenate([p.to_numpy(dtype=float).ravel() for _, p, _, div, _ in panels if not div])
                       if any(not x[3] for x in panels) else np.array([]))
    paths = []
    for title, p, sd, div, cbar in panels:
        nd = _decimals(p.to_numpy(dtype=float)) if div else nd_abs
        fig, ax = plt.subplots(figsize=(1.3 * p.shape[1] + 2.8, 0.8 * p.shape[0] + 2))
        im = _draw(ax, p, title + more, div, sd, nd, notes.get(title))
        fig.colorbar(im, ax=ax, label=cbar)
        fig.tight_layout()
        label = title.split(":")[0].replace(" - ", "-minus-")
        paths.append(save(fig, out_dir / f"heatmap_{slug(metric)}_{slug(label)}.png", fmt))
    if panels:
        fig, axs = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.9), squeeze=False)
        for ax, (title, p, sd, div, cbar) in zip(axs[0], panels):
            nd = _decimals(p.to_numpy(dtype=float)) if div else nd_abs
            im = _draw(ax, p, title, div, sd, nd, notes.get(title))
            fig.colorbar(im, ax=ax, fraction=0.046, label=cbar)
        fig.suptitle(f"{name}: {metric}{more}", fontsize=10)
        fig.tight_layout()
        paths.append(save(fig, out_dir / f"heatmaps_{slug(metric)}.png", fmt))
    return paths


