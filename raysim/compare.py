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
``cluster.backend = "local"``). The output folder holds::

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
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.commands import command
from raysim.config import Config, ConfigError, _deep_merge, apply_overrides, read_toml, validate

#: final metrics of the table (those a run does not have are left out)
TABLE_METRICS = ["density", "nnz", "tdr", "tpr", "f1", "tdr_weight", "r2", "mse", "accuracy", "log_loss", "auc",
                 "micro_f1", "macro_f1", "hamming_loss", "fair_mean", "fair_worst5", "cum_bytes_up",
                 "cum_bytes_down", "wall_s"]


def load_compare(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], list[Config]]:
    """Read a comparison file: the ``[compare]`` table and the config of every run."""
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
    out_dir = Path(spec.get("out_dir") or Path("results") / "compare" / name)
    cfgs = []
    for a in algos:
        for s in seeds:
            d = _deep_merge(copy.deepcopy(data), per_algo.get(a, {}))
            d.setdefault("algorithm", {})["name"] = a
            run = d.setdefault("run", {})
            run.update(seed=s, name=f"{a}-s{s}", run_dir=str(out_dir / "runs" / f"{a}-s{s}"), progress=False)
            cfgs.append(validate(d, source=f"{path} (algorithm {a}, seed {s})"))
    spec = {"name": name, "algorithms": algos, "seeds": seeds, "out_dir": out_dir,
            "max_parallel": spec.get("max_parallel")}
    return spec, cfgs


def run_all(cfgs: list[Config], max_parallel: int | None, progress: bool = True, warm: bool = True) -> list[Any]:
    """Every run, in parallel (``raysim.many.run_many``: warm pools, or one placement group per
    run with ``warm=False``, or in this process with ``cluster.backend = "local"``)."""
    from raysim.many import run_many

    return run_many(cfgs, max_parallel=max_parallel, progress=progress, warm=warm)


def collect(spec: dict[str, Any], cfgs: list[Config], results: list[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(final metrics per run, metrics.csv rows of all runs) from the run directories.

    Every run has a row with its ``status`` (``raysim.outcome``: ok, diverged, empty_model,
    no_participation, or failed for a run that raised)."""
    from raysim.outcome import FAILED, status_of

    finals, curves = [], []
    for cfg, res in zip(cfgs, results):
        run_dir = Path(cfg.run.run_dir)
        if isinstance(res, Exception) or not (run_dir / "summary.json").exists():
            print(f"raysim compare: run {cfg.run.name} failed: {res}")
            finals.append({"algorithm": cfg.algorithm.name, "seed": cfg.run.seed, "status": FAILED,
                           "error": str(res).splitlines()[0][:300] if str(res) else type(res).__name__})
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {"algorithm": cfg.algorithm.name, "seed": cfg.run.seed, "status": status_of(summary),
               **{k: v for k, v in summary["final"].items() if k != "status"}, "wall_s": summary.get("wall_s")}
        finals.append(row)
        df = pd.read_csv(run_dir / "metrics.csv")
        df.insert(0, "seed", cfg.run.seed)
        df.insert(0, "algorithm", cfg.algorithm.name)
        curves.append(df)
    if not curves:
        raise RuntimeError("every run of the comparison failed")
    return pd.DataFrame(finals), pd.concat(curves, ignore_index=True)


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


def plan(path: str | Path, overrides: list[str] | None = None,
         out_dir: str | None = None) -> tuple[dict[str, Any], list[Config]]:
    """The comparison's spec and run configs, with ``out_dir`` (--out) applied."""
    spec, cfgs = load_compare(path, overrides)
    if out_dir is not None:
        new = Path(out_dir)
        cfgs = [c.model_copy(update={"run": c.run.model_copy(update={
            "run_dir": str(new / "runs" / Path(c.run.run_dir).name)})}) for c in cfgs]
        spec["out_dir"] = new
    return spec, cfgs


def compare(path: str | Path, overrides: list[str] | None = None, out_dir: str | None = None,
            max_parallel: int | None = None, progress: bool = True, warm: bool = True) -> tuple[pd.DataFrame, Path]:
    """Run a comparison file and write its table and plots; returns (table, output folder).

    ``warm``: runs that share their data (the algorithms of one seed) run batched on a warm
    pool of actors (``raysim.cluster.warm``); ``False``: every run with fresh actors."""
    from raysim.metrics import TEST_METRIC

    spec, cfgs = plan(path, overrides, out_dir)
    out = Path(spec["out_dir"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"compare output {out} is a file; give --out (compare.out_dir) a folder")
    out.mkdir(parents=True, exist_ok=True)
    # a comparison owns its run folders: running it again replaces them (one run never mixes with another)
    import shutil

    for c in cfgs:
        if Path(c.run.run_dir).is_dir():
            shutil.rmtree(c.run.run_dir)
    if progress:
        print(f"raysim compare: {len(cfgs)} runs ({len(spec['algorithms'])} algorithms x {len(spec['seeds'])} seeds) "
              f"-> {out}", flush=True)
    results = run_all(cfgs, max_parallel or spec["max_parallel"], progress, warm=warm)
    finals, curves = collect(spec, cfgs, results)
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
    plot_curves(curves, out, metric, spec["algorithms"], c0.run.plot_format)
    failed = [c.run.name for c, r in zip(cfgs, results) if isinstance(r, Exception)]
    if failed:
        print(f"raysim compare: {len(failed)} run(s) failed: {', '.join(failed)}")
    return table, out


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="comparison TOML: a run config plus a [compare] table (algorithms, seeds)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value for every run, e.g. --set run.rounds=50 (repeatable)")
    p.add_argument("--out", help="output folder (default: compare.out_dir)")
    p.add_argument("--max-parallel", type=int, default=None, help="runs at once (default: compare.max_parallel)")
    p.add_argument("--cold", action="store_true",
                   help="every run with fresh actors in its own placement group (default: runs that share their "
                        "data run batched on a warm pool of actors)")
    p.add_argument("--plot-format", choices=["png", "pdf", "svg"], default=None,
                   help="file format of the plots (default: run.plot_format of the comparison file)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the file and list the runs (algorithm, seed, run directory); start nothing")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar or status lines; print the table and the output folder only")


@command("compare", "run several algorithms on one scenario over several seeds; write a table and plots")(_compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    from raysim.outcome import EXIT_ALL_FAILED, OK

    overrides = list(args.overrides) + ([f"run.plot_format={json.dumps(args.plot_format)}"] if args.plot_format else [])
    if args.dry_run:
        spec, cfgs = plan(args.config, overrides, args.out)
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
