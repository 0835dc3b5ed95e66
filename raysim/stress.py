"""Heterogeneity stress tests: ``raysim stress GRID.toml`` (docs/data.md section 4, last point).

A grid file is a scenario (the usual ``[run]``, ``[data]``, ``[partition]``,
``[participation]``, ``[algorithm]``, ``[cluster]`` sections, optionally on top of a ``base``
scenario file) plus a ``[stress]`` table::

    [stress]
    name = "hetero"                      # output folder name (default: the grid file's stem)
    base = "../synthetic-lr.toml"        # optional scenario the grid's own sections override
    out_dir = "results/stress/hetero"    # default: runs/stress/<name>
    algorithms = ["flops", "fedavg"]     # or a table of labelled variants, see below
    seeds = [0, 1]
    metric = "r2"                        # the heatmaps' metric (a column of results.csv)
    diff = ["flops", "fedavg"]           # heatmap of their difference (default: first two)
    max_parallel = 2                     # runs at once (default: what the Ray cluster holds)

    [stress.axes]                        # any dotted config keys; the first two are the heatmap axes
    "data.h_coef" = [0.0, 0.5, 1.0]
    "data.h_cov" = [0.0, 0.5, 1.0]

    [stress.algorithms.flops-ent]        # labelled variants: dotted keys set for that label
    "algorithm.name" = "flops"
    "algorithm.tau0" = 0.05

Every cell's ``[algorithm]`` table must hold only knobs of the cell's algorithm (an axis or a
scenario key that one of the algorithms lacks is an error naming its knobs); knobs of one
family go in ``[algorithm.flops]`` / ``[algorithm.fedavg]`` sub-tables, also as axes
(``"algorithm.flops.eta_theta" = [...]``), and apply only to the algorithms built on it
(docs/algorithms.md section 10).

Every cell (axis values x algorithm x seed) is one whole raysim run in its own run
directory ``<out>/runs/<algorithm>/<axis=value,...>/seed=<s>``; the cells run side by side
on Ray (:func:`raysim.many.run_many`). A cell whose ``summary.json`` exists and
whose ``config.toml`` matches the cell's resolved configuration (the Ray layout and output
settings aside) is not run again, so an interrupted grid resumes where it stopped.

Outputs in ``<out>``: ``results.csv`` (one tidy row per cell: axes, algorithm, seed, status,
final metrics and the federation's heterogeneity statistics as ``fed_*`` columns),
``heatmap_<metric>_<algorithm>.png`` (mean over seeds and any further axes),
``heatmap_<metric>_<a>-minus-<b>.png``, ``heatmaps_<metric>.png`` (all panels) and
``grid.json`` (the grid, counts and wall time).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.commands import command
from raysim.config import Config, ConfigError, _deep_merge, read_toml, set_dotted, validate

#: settings of a cell that do not change its results (ignored when deciding to resume)
_RUN_IGNORED = ("run_dir", "out_dir", "name", "progress", "plots", "plot_format", "checkpoint_every")

_STRESS_KEYS = {"name", "base", "out_dir", "algorithms", "seeds", "metric", "diff", "max_parallel", "axes"}


@dataclass
class Cell:
    axes: dict[str, Any]
    algorithm: str
    seed: int
    run_dir: Path
    cfg: Config
    status: str = "pending"     # pending | done | ran | failed
    error: str = ""


@dataclass
class Grid:
    name: str
    out_dir: Path
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    algorithms: dict[str, dict[str, Any]]
    seeds: list[int]
    metric: str | None
    diff: tuple[str, str] | None
    max_parallel: int | None
    source: Path
    cells: list[Cell] = field(default_factory=list)


def _algorithm_names() -> tuple[str, ...]:
    from raysim.registry import names

    return tuple(names())


# ---- grid file -----------------------------------------------------------------------------------

def _set_dotted(d: dict[str, Any], key: str, value: Any, where: str) -> None:
    if len(key.split(".")) < 2:
        raise ConfigError(f"{where}: {key!r} is not a dotted config key like 'data.h_coef' or 'partition.alpha'")
    set_dotted(d, key, value, where)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", s)


def load_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None) -> Grid:
    """Read a grid file into a :class:`Grid` with every cell's validated configuration."""
    from raysim.config import apply_overrides

    path = Path(path)
    raw = read_toml(path)
    spec = raw.pop("stress", None)
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a grid file needs a [stress] table (axes, algorithms, seeds); "
                          "see `raysim stress --help` or datasets/stress/")
    unknown = set(spec) - _STRESS_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [stress]: {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(_STRESS_KEYS))}")
    base: dict[str, Any] = {}
    if spec.get("base"):
        bpath = (path.parent / spec["base"]) if not Path(spec["base"]).is_absolute() else Path(spec["base"])
        base = read_toml(bpath)
    base = apply_overrides(_deep_merge(base, raw), overrides)
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{path}: [stress.axes] must map dotted config keys to lists of values, "
                          "e.g. \"partition.alpha\" = [0.1, 1.0, 10.0]")
    for k, vals in axes.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{path}: stress.axes.{k!r} must be a non-empty list of values")
    algos_raw = spec.get("algorithms", [base.get("algorithm", {}).get("name", "flops")])
    if isinstance(algos_raw, list):
        algorithms = {str(a): {"algorithm.name": str(a)} for a in algos_raw}
    elif isinstance(algos_raw, dict):
        algorithms = {}
        for label, sets in algos_raw.items():
            if not isinstance(sets, dict):
                raise ConfigError(f"{path}: stress.algorithms.{label} must be a table of dotted keys")
            # a variant named like an algorithm runs that algorithm unless it says otherwise;
            # any other label keeps the base scenario's algorithm.name
            algorithms[str(label)] = ({"algorithm.name": str(label)} if str(label) in _algorithm_names() else {}) | sets
    else:
        raise ConfigError(f"{path}: stress.algorithms must be a list of algorithm names or a table of variants")
    seeds_raw = spec.get("seeds", [base.get("run", {}).get("seed", 0)])
    if (not isinstance(seeds_raw, list) or not seeds_raw
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds_raw)):
        raise ConfigError(f"{path}: stress.seeds = {seeds_raw!r} must be a non-empty list of non-negative integers, "
                          "e.g. seeds = [0, 1, 2]")
    if len(set(seeds_raw)) != len(seeds_raw):
        raise ConfigError(f"{path}: stress.seeds = {seeds_raw!r} repeats a seed; list each seed once")
    seeds = [int(x) for x in seeds_raw]
    name = str(spec.get("name") or path.stem)
    try:
        from raysim.config import check_name

        check_name(name, "stress.name")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out_dir = Path(out or spec.get("out_dir") or Path("runs") / "stress" / name)
    diff = spec.get("diff")
    labels = list(algorithms)
    if diff is None and len(labels) >= 2:
        diff = labels[:2]
    if diff is not None:
        if len(diff) != 2 or any(d not in algorithms for d in diff):
            raise ConfigError(f"{path}: stress.diff = {diff!r} must name two of the algorithms {labels}")
        diff = (str(diff[0]), str(diff[1]))
    grid = Grid(name, out_dir, base, {k: list(v) for k, v in axes.items()}, algorithms, seeds,
                spec.get("metric"), diff, spec.get("max_parallel"), path)
    grid.cells = _expand(grid)
    return grid


def _expand(grid: Grid) -> list[Cell]:
    import itertools

    keys = list(grid.axes)
    cells = []
    for values in itertools.product(*(grid.axes[k] for k in keys)):
        point = dict(zip(keys, values))
        for label, sets in grid.algorithms.items():
            for seed in grid.seeds:
                d = copy.deepcopy(grid.base)
                where = f"cell {label} {point} seed {seed}"
                for k, v in sets.items():
                    _set_dotted(d, k, v, where)
                for k, v in point.items():
                    _set_dotted(d, k, v, where)
                rel = Path("runs") / _slug(label) / (_slug(",".join(f"{k}={_fmt(v)}" for k, v in point.items()))
                                                     or "base") / f"seed={seed}"
                run_dir = grid.out_dir / rel
                _set_dotted(d, "run.seed", seed, where)
                _set_dotted(d, "run.run_dir", str(run_dir), where)
                _set_dotted(d, "run.name", f"{grid.name}-{label}", where)
                _set_dotted(d, "run.progress", False, where)
                d.setdefault("run", {}).setdefault("plots", False)
                cfg = validate(d, source=f"grid {grid.source} ({where})")
                cells.append(Cell(point, label, seed, run_dir, cfg))
    return cells


# ---- resume ----------------------------------------------------------------------------------------

def _fingerprint(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict reduced to what decides the results (TOML round-trip normalised)."""
    import tomli_w

    from raysim.config import tomllib

    d = tomllib.loads(tomli_w.dumps(d))
    d.pop("cluster", None)
    run = d.get("run", {})
    for k in _RUN_IGNORED:
        run.pop(k, None)
    return d


def cell_done(cell: Cell) -> bool:
    """True when the cell's run directory holds a finished run of the same configuration."""
    summ, conf = cell.run_dir / "summary.json", cell.run_dir / "config.toml"
    if not (summ.is_file() and conf.is_file()):
        return False
    try:
        old = read_toml(conf)
        json.loads(summ.read_text())
    except (ConfigError, ValueError):
        return False
    return _fingerprint(old) == _fingerprint(cell.cfg.to_toml_dict())


# ---- results -----------------------------------------------------------------------------------------

_FED_KEYS = ("label_tv_mean", "label_js_mean", "classes_per_client_mean", "label_entropy_ratio",
             "size_cv", "size_gini", "size_min", "size_max")


def _cell_row(cell: Cell) -> dict[str, Any]:
    row: dict[str, Any] = {**{k: v for k, v in cell.axes.items()}, "algorithm": cell.algorithm, "seed": cell.seed,
                           "status": cell.status, "error": cell.error, "run_dir": str(cell.run_dir)}
    summ = cell.run_dir / "summary.json"
    row["outcome"] = "failed" if cell.status == "failed" else "unfinished"
    if cell.status in ("done", "ran") and summ.is_file():
        from raysim.outcome import status_of

        s = json.loads(summ.read_text())
        row["outcome"] = status_of(s)      # ok | diverged | empty_model | no_participation
        row["wall_s"] = s.get("wall_s")
        for k, v in (s.get("final") or {}).items():
            if k not in row and k != "status" and not isinstance(v, (list, dict)):
                row[k] = v
        fed_path = cell.run_dir / "federation.json"
        if fed_path.is_file():
            fed = json.loads(fed_path.read_text())
            for k in _FED_KEYS:
                if k in fed:
                    row[f"fed_{k}"] = fed[k]
    return row


def results_table(grid: Grid) -> pd.DataFrame:
    return pd.DataFrame([_cell_row(c) for c in grid.cells])


def default_metric(grid: Grid, df: pd.DataFrame) -> str:
    from raysim.metrics import TEST_METRIC

    task = grid.cells[0].cfg.data.task if grid.cells else "lr"
    m = grid.metric or TEST_METRIC.get(task, "accuracy")
    return m


def _per_seed(df: pd.DataFrame, axes: list[str], metric: str) -> pd.Series:
    """``metric`` per (axis 0, axis 1, seed), averaged over any further axes."""
    d = df.copy()
    d[metric] = pd.to_numeric(d[metric], errors="coerce")
    if len(axes) == 1:
        d["_"] = ""
        axes = [axes[0], "_"]
    return d.groupby([axes[0], axes[1], "seed"], dropna=False)[metric].mean()


def _pivot(df: pd.DataFrame, axes: list[str], metric: str) -> pd.DataFrame:
    """Mean of ``metric`` over seeds (and axes beyond the first two): rows axis 0, columns axis 1."""
    return _spread(_per_seed(df, axes, metric))[0]


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
    ax.set_xticklabels([_fmt(c) for c in p.columns], fontsize=8)
    ax.set_yticks(range(p.shape[0]))
    ax.set_yticklabels([_fmt(i) for i in p.index], fontsize=8)
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


def write_heatmaps(grid: Grid, df: pd.DataFrame, metric: str, fmt: str | None = None) -> list[Path]:
    """One heatmap per algorithm, one for the difference of ``grid.diff``, and all panels in one figure.

    Cells show the mean ± standard deviation over seeds (the difference is taken per seed, so its
    spread is that of the paired difference); the colorbar is labelled with the metric."""
    from raysim.plotstyle import style

    fmt = fmt or (grid.cells[0].cfg.run.plot_format if grid.cells else "png")
    with style():
        return _write_heatmaps(grid, df, metric, fmt)


def _write_heatmaps(grid: Grid, df: pd.DataFrame, metric: str, fmt: str) -> list[Path]:
    import matplotlib.pyplot as plt

    from raysim.plotstyle import save

    finished = df[df["status"].isin(["done", "ran"])]
    if metric not in finished.columns or finished.empty:
        return []
    if "outcome" in finished:   # a diverged / empty / no-participation run is not a number: masked, noted
        finished = finished.assign(**{metric: pd.to_numeric(finished[metric], errors="coerce")
                                      .where(finished["outcome"] == "ok")})
    axes = list(grid.axes)
    seeds = sorted(finished["seed"].unique())
    notes: dict[str, dict[tuple[Any, Any], str]] = {}
    more = (f" (mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
            f"{'; mean over ' + ', '.join(axes[2:]) if len(axes) > 2 else ''})")
    panels: list[tuple[str, pd.DataFrame, pd.DataFrame, bool, str]] = []
    per_seed: dict[str, pd.Series] = {}
    for label in grid.algorithms:
        sub = finished[finished["algorithm"] == label]
        if not sub.empty:
            per_seed[label] = _per_seed(sub, axes, metric)
            mean, std, _ = _spread(per_seed[label])
            panels.append((f"{label}: {metric}", mean, std, False, metric))
            notes[f"{label}: {metric}"] = _notes(sub, axes)
    if grid.diff is not None:
        a, b = grid.diff
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
        paths.append(save(fig, grid.out_dir / f"heatmap_{_slug(metric)}_{_slug(label)}.png", fmt))
    if panels:
        fig, axs = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.9), squeeze=False)
        for ax, (title, p, sd, div, cbar) in zip(axs[0], panels):
            nd = _decimals(p.to_numpy(dtype=float)) if div else nd_abs
            im = _draw(ax, p, title, div, sd, nd, notes.get(title))
            fig.colorbar(im, ax=ax, fraction=0.046, label=cbar)
        fig.suptitle(f"{grid.name}: {metric}{more}", fontsize=10)
        fig.tight_layout()
        paths.append(save(fig, grid.out_dir / f"heatmaps_{_slug(metric)}.png", fmt))
    return paths


def write_outputs(grid: Grid, metric: str | None = None) -> tuple[pd.DataFrame, list[Path]]:
    grid.out_dir.mkdir(parents=True, exist_ok=True)
    df = results_table(grid)
    df.to_csv(grid.out_dir / "results.csv", index=False)
    m = metric or default_metric(grid, df)
    return df, write_heatmaps(grid, df, m)


# ---- running -------------------------------------------------------------------------------------

def run_grid(grid: Grid, max_parallel: int | None = None, progress: bool = True,
             metric: str | None = None, warm: bool = True) -> dict[str, Any]:
    """Run the cells that are not finished yet (in parallel on Ray) and write the outputs.

    ``warm``: cells that share their data run batched on one warm pool of actors
    (``raysim.cluster.warm``); ``False``: every cell with fresh actors (the cold path)."""
    from raysim.many import run_many

    t0 = time.perf_counter()
    todo = []
    for c in grid.cells:
        if cell_done(c):
            c.status = "done"
        else:
            if c.run_dir.exists():      # a partial or different run: start the cell afresh
                shutil.rmtree(c.run_dir)
            todo.append(c)
    grid.out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"raysim stress {grid.name}: {len(grid.cells)} cells, {len(grid.cells) - len(todo)} already done, "
              f"{len(todo)} to run -> {grid.out_dir}", file=sys.stderr, flush=True)

    def on_result(i: int, res: Any) -> None:
        c = todo[i]
        if isinstance(res, Exception):
            c.status, c.error = "failed", str(res).splitlines()[0][:500]
        else:
            c.status = "ran"
        results_table(grid).to_csv(grid.out_dir / "results.csv", index=False)

    if todo:
        run_many([c.cfg for c in todo], max_parallel=max_parallel or grid.max_parallel, on_result=on_result,
                 progress=progress, description=f"stress {grid.name}", warm=warm)
    df, plots = write_outputs(grid, metric)
    info = {"grid": str(grid.source), "name": grid.name, "axes": grid.axes, "algorithms": grid.algorithms,
            "seeds": grid.seeds, "cells": len(grid.cells), "ran": len(todo),
            "skipped": len(grid.cells) - len(todo),
            "failed": int(sum(c.status == "failed" for c in grid.cells)),
            "wall_s": time.perf_counter() - t0, "plots": [str(p) for p in plots]}
    # every invocation is kept, so the runtime of the run that did the work is not lost on resume
    history = []
    try:
        history = json.loads((grid.out_dir / "grid.json").read_text()).get("history", [])
    except (OSError, ValueError):
        pass
    history.append({k: info[k] for k in ("ran", "skipped", "failed", "wall_s")}
                   | {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "max_parallel": max_parallel or grid.max_parallel})
    (grid.out_dir / "grid.json").write_text(json.dumps({**info, "history": history}, indent=2, default=str))
    return info


# ---- command line --------------------------------------------------------------------------------

def _stress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="grid TOML: a scenario plus a [stress] table (axes, algorithms, seeds)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the base scenario for every cell (repeatable)")
    p.add_argument("--out", help="output folder (default: stress.out_dir, else runs/stress/<name>)")
    p.add_argument("--max-parallel", type=int, help="runs at once (default: stress.max_parallel, else what fits)")
    p.add_argument("--metric", help="metric of the heatmaps (default: stress.metric, else the task's test metric)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether each is done; run nothing")
    p.add_argument("--report", action="store_true", help="only rewrite results.csv and the heatmaps from the cells")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cold", action="store_true",
                   help="every cell with fresh actors in its own placement group (default: cells that share "
                        "their data run batched on a warm pool of actors)")
    p.add_argument("--plot-format", choices=["png", "pdf", "svg"], default=None,
                   help="file format of the heatmaps (default: run.plot_format of the grid file)")


@command("stress", "sweep scenario knobs x algorithms x seeds on Ray; table and heatmaps (resumable)")(_stress_args)
def cmd_stress(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"run.plot_format='{args.plot_format}'"] if args.plot_format else [])
    grid = load_grid(args.grid, overrides, args.out)
    if args.dry_run:
        for c in grid.cells:
            print(f"{'done' if cell_done(c) else 'todo'}  {c.algorithm:<14} seed={c.seed}  "
                  f"{', '.join(f'{k}={_fmt(v)}' for k, v in c.axes.items())}  {c.run_dir}")
        return 0
    if args.report:
        for c in grid.cells:
            c.status = "done" if cell_done(c) else "missing"
        df, plots = write_outputs(grid, args.metric)
        print(grid.out_dir / "results.csv")
        for p in plots:
            print(p)
        return 0
    info = run_grid(grid, args.max_parallel, not args.no_progress, args.metric, warm=not args.cold)
    print(f"{info['cells']} cells: {info['ran']} run, {info['skipped']} already done, {info['failed']} failed; "
          f"{info['wall_s']:.1f} s")
    print(grid.out_dir / "results.csv")
    for p in info["plots"]:
        print(p)
    from raysim.outcome import EXIT_ALL_FAILED

    df = pd.read_csv(grid.out_dir / "results.csv")
    not_ok = df[df["outcome"] != "ok"] if "outcome" in df else df.iloc[0:0]
    for r in not_ok.itertuples():
        print(f"{r.outcome}: {r.algorithm} seed={r.seed} {r.run_dir}"
              + (f": {r.error}" if isinstance(r.error, str) and r.error else ""), file=sys.stderr)
    if len(df) and len(not_ok) == len(df):
        print(f"raysim stress: no cell ended ok (exit code {EXIT_ALL_FAILED})", file=sys.stderr)
        return EXIT_ALL_FAILED
    if info["failed"]:
        return 1
    return 0
