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
whose ``config.toml`` has the fingerprint of the cell's resolved configuration
(:func:`raysim.config.fingerprint`: the Ray layout and output settings aside) is not run
again, so an interrupted grid resumes where it stopped. The cells, the collect step and the
heatmaps are the experiments layer's (``raysim.experiments``; docs/architecture.md,
"Experiments"); this module holds the grid file and its outputs.

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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raysim.commands import command
from raysim.config import ConfigError, _deep_merge, read_toml, set_dotted, validate
from raysim.experiments.cli import add_experiment_options, overrides_of
from raysim.experiments.collect import finals
from raysim.experiments.plan import Cell, Plan, cell_done, fmt_value, mark, run_cells, slug

_STRESS_KEYS = {"name", "base", "out_dir", "algorithms", "seeds", "metric", "diff", "max_parallel", "axes"}


@dataclass(kw_only=True)
class Grid(Plan):
    """A grid file: the plan of its cells (``name``, ``out_dir``, ``cells``, ``max_parallel``)
    and what they were expanded from (the base scenario, the axes, the labelled algorithms)."""

    base: dict[str, Any]
    axes: dict[str, list[Any]]
    algorithms: dict[str, dict[str, Any]]
    seeds: list[int]
    metric: str | None
    diff: tuple[str, str] | None
    source: Path


def _algorithm_names() -> tuple[str, ...]:
    from raysim.registry import names

    return tuple(names())


# ---- grid file -----------------------------------------------------------------------------------

def _set_dotted(d: dict[str, Any], key: str, value: Any, where: str) -> None:
    if len(key.split(".")) < 2:
        raise ConfigError(f"{where}: {key!r} is not a dotted config key like 'data.h_coef' or 'partition.alpha'")
    set_dotted(d, key, value, where)


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
    grid = Grid(name=name, out_dir=out_dir, max_parallel=spec.get("max_parallel"), base=base,
                axes={k: list(v) for k, v in axes.items()}, algorithms=algorithms, seeds=seeds,
                metric=spec.get("metric"), diff=diff, source=path)
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
                rel = Path("runs") / slug(label) / (slug(",".join(f"{k}={fmt_value(v)}" for k, v in point.items()))
                                                     or "base") / f"seed={seed}"
                run_dir = grid.out_dir / rel
                _set_dotted(d, "run.seed", seed, where)
                _set_dotted(d, "run.run_dir", str(run_dir), where)
                _set_dotted(d, "run.name", f"{grid.name}-{label}", where)
                _set_dotted(d, "run.progress", False, where)
                d.setdefault("run", {}).setdefault("plots", False)
                cfg = validate(d, source=f"grid {grid.source} ({where})")
                cells.append(Cell(label, seed, cfg, run_dir, point))
    return cells


# ---- results -----------------------------------------------------------------------------------------

def results_table(grid: Grid) -> pd.DataFrame:
    """One tidy row per cell (:func:`raysim.experiments.collect.finals` with the ``fed_*`` columns)."""
    return finals(grid.cells, federation=True)


def default_metric(grid: Grid, df: pd.DataFrame) -> str:
    from raysim.metrics import TEST_METRIC

    task = grid.cells[0].cfg.data.task if grid.cells else "lr"
    m = grid.metric or TEST_METRIC.get(task, "accuracy")
    return m


def write_heatmaps(grid: Grid, df: pd.DataFrame, metric: str, fmt: str | None = None) -> list[Path]:
    """One heatmap per algorithm, one for the difference of ``grid.diff``, and all panels in one figure.

    Cells show the mean ± standard deviation over seeds (the difference is taken per seed, so its
    spread is that of the paired difference); the colorbar is labelled with the metric."""
    from raysim.experiments.plots import heatmaps

    fmt = fmt or (grid.cells[0].cfg.run.plot_format if grid.cells else "png")
    return heatmaps(df, list(grid.axes), list(grid.algorithms), metric, grid.out_dir, grid.name, grid.diff, fmt)


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
    t0 = time.perf_counter()
    todo = [c for c in grid.cells if not cell_done(c)]
    grid.out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"raysim stress {grid.name}: {len(grid.cells)} cells, {len(grid.cells) - len(todo)} already done, "
              f"{len(todo)} to run -> {grid.out_dir}", file=sys.stderr, flush=True)

    def on_result(cell: Cell, res: Any) -> None:
        results_table(grid).to_csv(grid.out_dir / "results.csv", index=False)

    todo = run_cells(grid.cells, max_parallel or grid.max_parallel, progress, warm=warm,
                     description=f"stress {grid.name}", on_result=on_result)
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
    add_experiment_options(
        p, runs="cells", set_help="override a value of the base scenario for every cell (repeatable)",
        out_help="output folder (default: stress.out_dir, else runs/stress/<name>)",
        parallel_help="runs at once (default: stress.max_parallel, else what fits)",
        plot_help="file format of the heatmaps (default: run.plot_format of the grid file)",
        dry_run_help="list the cells and whether each is done; run nothing")
    p.add_argument("--metric", help="metric of the heatmaps (default: stress.metric, else the task's test metric)")
    p.add_argument("--report", action="store_true", help="only rewrite results.csv and the heatmaps from the cells")


@command("stress", "sweep scenario knobs x algorithms x seeds on Ray; table and heatmaps (resumable)")(_stress_args)
def cmd_stress(args: argparse.Namespace) -> int:
    overrides = overrides_of(args)
    grid = load_grid(args.grid, overrides, args.out)
    if args.dry_run:
        for c in grid.cells:
            print(f"{'done' if cell_done(c) else 'todo'}  {c.algorithm:<14} seed={c.seed}  "
                  f"{', '.join(f'{k}={fmt_value(v)}' for k, v in c.axes.items())}  {c.run_dir}")
        return 0
    if args.report:
        mark(grid.cells)
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
