"""``raysim compare COMPARE.toml``: several algorithms on one scenario over several seeds.

A comparison file is an ordinary run configuration (``[run]``, ``[data]``, ``[participation]``,
``[algorithm]``, ``[cluster]``: the shared scenario and defaults) plus a ``[compare]`` table::

    [compare]
    algorithms = ["flops", "flops-pa", "fed-ht", "fedavg"]   # algorithm.name of each arm
    seeds = [0, 1, 2]                                       # run.seed of each repetition
    out_dir = "results/compare/lr"                          # where everything is written
    max_parallel = 2                                        # runs at once (default: what fits)

    [compare.per_algorithm.fedavg]                          # optional overrides of one arm
    algorithm = { local_epochs = 2 }

The shared ``[algorithm]`` table applies to every arm, so its top-level keys must be knobs
every arm has (``rho``, ``batch_size``, ``weighting``): a knob one arm lacks is an error that
names that arm's knobs. Knobs of a family go in ``[algorithm.flops]`` / ``[algorithm.fedavg]``
sub-tables, which apply only to the arms built on that algorithm (docs/algorithms.md section 10).

Every (algorithm, seed) pair is one full raysim run; they run side by side
(:func:`raysim.many.run_many`: on warm pools of actors, or each with its server and client
actors reserved up front with ``--cold``, or one after the other in this process with
``cluster.backend = "local"``). The runs are the cells of a plan
(``raysim.experiments``: plan, collect, plots, shared options; docs/architecture.md,
"Experiments"); this module holds the comparison file and its tables. The output folder holds::

    runs/<algorithm>-s<seed>/   the run directories
    table.csv, table.md         mean and standard deviation over seeds of the final metrics
    runs.csv                    the final metrics of every run
    <metric>_rounds.png, <metric>_bytes.png, tdr_rounds.png, tdr_bytes.png
                                mean over seeds, one line per algorithm, against rounds and
                                against cumulative bytes (up + down)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.commands import command
from raysim.config import Config, ConfigError, _deep_merge, apply_overrides, read_toml, validate
from raysim.experiments.cli import add_experiment_options, overrides_of
from raysim.experiments.plan import FAILED, Cell, Plan, run_cells

#: final metrics of the table (those a run does not have are left out)
TABLE_METRICS = ["density", "nnz", "tdr", "tpr", "f1", "tdr_weight", "r2", "mse", "accuracy", "log_loss", "auc",
                 "micro_f1", "macro_f1", "hamming_loss", "fair_mean", "fair_worst5", "cum_bytes_up",
                 "cum_bytes_down", "wall_s"]


def load_compare(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], list[Config]]:
    """Read a comparison file: the ``[compare]`` table and the config of every run."""
    spec, plan_ = load_plan(path, overrides)
    return spec, [c.cfg for c in plan_.cells]


def load_plan(path: str | Path, overrides: list[str] | None = None,
              out_dir: str | Path | None = None) -> tuple[dict[str, Any], Plan]:
    """Read a comparison file into its spec and a :class:`raysim.experiments.plan.Plan`: one
    cell per (algorithm, seed), run directory ``<out_dir>/runs/<algorithm>-s<seed>``.
    ``out_dir`` (``--out``) replaces ``compare.out_dir``."""
    data = apply_overrides(read_toml(path), overrides)
    spec = data.pop("compare", None)
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: no [compare] table; add one with algorithms = [...] and seeds = [...]")
    allowed = {"algorithms", "seeds", "out_dir", "max_parallel", "per_algorithm", "name"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [compare]: {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(allowed))}")
    algos = spec.get("algorithms")
    if not algos or not isinstance(algos, list):
        raise ConfigError(f"{path}: compare.algorithms must be a non-empty list of algorithm names")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: compare.seeds must be a non-empty list of non-negative integers")
    per_algo = spec.get("per_algorithm", {}) or {}
    for a in per_algo:
        if a not in algos:
            raise ConfigError(f"{path}: compare.per_algorithm.{a} names an algorithm that is not in compare.algorithms")
    name = spec.get("name") or Path(path).stem
    out = Path(out_dir if out_dir is not None else (spec.get("out_dir") or Path("results") / "compare" / name))
    cells = []
    for a in algos:
        for s in seeds:
            d = _deep_merge(copy.deepcopy(data), per_algo.get(a, {}))
            d.setdefault("algorithm", {})["name"] = a
            run_dir = out / "runs" / f"{a}-s{s}"
            d.setdefault("run", {}).update(seed=s, name=f"{a}-s{s}", run_dir=str(run_dir), progress=False)
            cells.append(Cell(a, s, validate(d, source=f"{path} (algorithm {a}, seed {s})"), run_dir))
    spec = {"name": name, "algorithms": algos, "seeds": seeds, "out_dir": out,
            "max_parallel": spec.get("max_parallel")}
    return spec, Plan(name, out, cells, spec["max_parallel"])


def collect(cells: list[Cell]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(final metrics per run, metrics.csv rows of all runs) from the run directories
    (:mod:`raysim.experiments.collect`).

    Every run has a row with its ``status`` (``raysim.outcome``: ok, diverged, empty_model,
    no_participation, or failed for a run that raised)."""
    from raysim.experiments import collect as col

    finals = col.finals(cells)
    for c, r in zip(cells, finals.itertuples()):
        if r.outcome == "failed":
            print(f"raysim compare: run {c.name} failed: {c.error or 'no summary.json'}")
    curves = col.curves(cells)
    if curves.empty:
        raise RuntimeError("every run of the comparison failed")
    # runs.csv: algorithm, seed, status (the run's outcome), the final metrics, wall_s, error (if any failed)
    finals = finals.drop(columns=["status", "run_dir"]).rename(columns={"outcome": "status"})
    failed = finals["status"] == "failed"
    finals["error"] = [str(e)[:300] if f else None for e, f in zip(finals["error"], failed)]
    cols = ["algorithm", "seed", "status"] + [c for c in finals if c not in ("algorithm", "seed", "status", "wall_s",
                                                                             "error")] + ["wall_s"]
    return finals[cols + (["error"] if failed.any() else [])], curves


def _status_text(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items()) if set(counts.index) != {"ok"} else "ok"


def summary_table(finals: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds per algorithm (columns ``<metric>_mean/_std``).

    Only runs with status ``ok`` enter the means (a diverged run is not a number); the
    ``status`` column counts the runs per status (``ok`` when all are) and ``seeds`` the ok ones."""
    from raysim.outcome import OK

    if "status" not in finals:
        finals = finals.assign(status=OK)
    algos = [a for a in order if a in set(finals["algorithm"])]
    ok = finals[finals["status"] == OK]
    cols = [c for c in TABLE_METRICS if c in finals and ok[c].notna().any()] if len(ok) else []
    g = ok.groupby("algorithm")[cols]
    mean, std = g.mean(), g.std(ddof=1)
    out = pd.DataFrame(index=algos)
    out["seeds"] = ok.groupby("algorithm")["seed"].count().reindex(algos).fillna(0).astype(int)
    out["status"] = finals.groupby("algorithm")["status"].agg(_status_text).reindex(algos)
    for c in cols:
        out[f"{c}_mean"] = mean[c].reindex(algos)
        out[f"{c}_std"] = std[c].reindex(algos)
    out.index.name = "algorithm"
    return out


def _fmt(mean: float, std: float, col: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if "bytes" in col:
        return f"{mean / 1e6:.3g} ± {0 if np.isnan(std) else std / 1e6:.2g}"
    if col == "nnz":
        return f"{mean:.1f} ± {0 if np.isnan(std) else std:.1f}"
    if col == "wall_s":
        return f"{mean:.1f} ± {0 if np.isnan(std) else std:.1f}"
    return f"{mean:.4f} ± {0 if np.isnan(std) else std:.4f}"


def markdown_table(table: pd.DataFrame, title: str) -> str:
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean")]
    status = table["status"] if "status" in table else pd.Series("ok", index=table.index)
    show_status = bool((status != "ok").any())
    head = ["algorithm", "seeds"] + (["status"] if show_status else []) + [
        m.replace("cum_bytes_up", "MB up").replace("cum_bytes_down", "MB down").replace("wall_s", "wall s")
        for m in metrics]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for algo, r in table.iterrows():
        if int(r["seeds"]) == 0:       # no ok run: the status, not a number
            word = " / ".join(part.split(" ", 1)[-1] for part in str(status[algo]).split(", "))
            vals = [word] * len(metrics)
        else:
            vals = [_fmt(r[f"{m}_mean"], r[f"{m}_std"], m) for m in metrics]
        cells = [str(algo), str(int(r["seeds"]))] + ([str(status[algo])] if show_status else []) + vals
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± standard deviation over seeds of the final round (bytes in MB, cumulative).")
    if show_status:
        lines.append("Only runs with status ok enter the means; `seeds` counts them (diverged: loss or weights "
                     "NaN/inf or above run.divergence_limit; empty_model; no_participation; failed: the run raised).")
    return "\n".join(lines) + "\n"


def compare(path: str | Path, overrides: list[str] | None = None, out_dir: str | None = None,
            max_parallel: int | None = None, progress: bool = True, warm: bool = True) -> tuple[pd.DataFrame, Path]:
    """Run a comparison file and write its table and plots; returns (table, output folder).

    ``warm``: runs that share their data (the algorithms of one seed) run batched on a warm
    pool of actors (``raysim.cluster.warm``); ``False``: every run with fresh actors."""
    from raysim.metrics import TEST_METRIC

    spec, p = load_plan(path, overrides, out_dir)
    cfgs = [c.cfg for c in p.cells]
    out = Path(spec["out_dir"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"compare output {out} is a file; give --out (compare.out_dir) a folder")
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"raysim compare: {len(cfgs)} runs ({len(spec['algorithms'])} algorithms x {len(spec['seeds'])} seeds) "
              f"-> {out}", flush=True)
    # a comparison owns its run folders: running it again replaces them (one run never mixes with another)
    run_cells(p.cells, max_parallel or spec["max_parallel"], progress, warm=warm, resume=False)
    finals, curves = collect(p.cells)
    task = cfgs[0].data.task
    metric = TEST_METRIC.get(task, "accuracy")
    table = summary_table(finals, spec["algorithms"])
    finals.to_csv(out / "runs.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    table.to_csv(out / "table.csv")
    c0 = cfgs[0]
    title = (f"{spec['name']}: task {task}, p = {c0.data.p}, rho = {c0.algorithm.rho}, {c0.data.n_clients} clients, "
             f"{c0.run.rounds} rounds, seeds {', '.join(map(str, spec['seeds']))}")
    (out / "table.md").write_text(markdown_table(table, title))
    from raysim.experiments.plots import plot_curves

    plot_curves(curves, out, metric, spec["algorithms"], c0.run.plot_format)
    failed = [c.name for c in p.cells if c.status == FAILED]
    if failed:
        print(f"raysim compare: {len(failed)} run(s) failed: {', '.join(failed)}")
    return table, out


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="comparison TOML: a run config plus a [compare] table (algorithms, seeds)")
    add_experiment_options(
        p, set_help="override a value for every run, e.g. --set run.rounds=50 (repeatable)",
        out_help="output folder (default: compare.out_dir)",
        parallel_help="runs at once (default: compare.max_parallel)",
        plot_help="file format of the plots (default: run.plot_format of the comparison file)",
        dry_run_help="validate the file and list the runs (algorithm, seed, run directory); start nothing",
        progress_help="no progress bar or status lines; print the table and the output folder only")


@command("compare", "run several algorithms on one scenario over several seeds; write a table and plots")(_compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    from raysim.outcome import EXIT_ALL_FAILED, OK

    overrides = overrides_of(args)
    if args.dry_run:
        spec, p = load_plan(args.config, overrides, args.out)
        cfgs = [c.cfg for c in p.cells]
        c0 = cfgs[0]
        print(f"would run {len(cfgs)} runs ({len(spec['algorithms'])} algorithms x {len(spec['seeds'])} seeds) of "
              f"task {c0.data.task}, {c0.data.n_clients} clients, {c0.run.rounds} rounds, "
              f"max_parallel {args.max_parallel or spec['max_parallel'] or 'what fits'} -> {spec['out_dir']}")
        for c in cfgs:
            print(f"  {c.algorithm.name:<14} seed={c.run.seed:<3} {c.run.run_dir}")
        print("dry run: nothing started")
        return 0
    try:
        table, out = compare(args.config, overrides, args.out, args.max_parallel, progress=not args.no_progress,
                             warm=not args.cold)
    except RuntimeError as exc:
        if "every run" not in str(exc):
            raise
        print(f"raysim compare: error: {exc}", file=sys.stderr)
        return EXIT_ALL_FAILED
    print((out / "table.md").read_text())
    print(f"written: {out}/table.csv, table.md, runs.csv, curves.csv and plots")
    runs = pd.read_csv(out / "runs.csv")
    bad = runs[runs["status"] != OK]
    if len(bad):
        print(f"raysim compare: {len(bad)} of {len(runs)} runs did not end ok: "
              + ", ".join(f"{r.algorithm} seed {r.seed}: {r.status}" for r in bad.itertuples()), file=sys.stderr)
    return EXIT_ALL_FAILED if len(bad) == len(runs) else 0
