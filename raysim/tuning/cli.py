"""``raysim tune`` and ``raysim tune-report`` (registered through ``raysim.commands.PLUGINS``).

    raysim tune tuning/STUDY.toml [--n-trials N] [--timeout S] [--parallel K] [--storage URL]
                                  [--out DIR] [--set KEY=VALUE ...] [--check | --dry-run]
                                  [--no-progress] [--plot-format png|pdf|svg]
    raysim tune-report STUDY_DIR [--storage URL] [--plot-format png|pdf|svg]
"""

from __future__ import annotations

import argparse
import json

from raysim.commands import command
from raysim.config import parse_override
from raysim.experiments.cli import add_experiment_options


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study file (TOML), e.g. tuning/lr-ratios.toml")
    p.add_argument("--n-trials", type=int, help="total trials (finished ones in the storage count; default study.n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after S seconds")
    p.add_argument("--storage", help="Optuna storage: RDB URL (postgresql://..., mysql://..., sqlite:///...) "
                                     "or journal file path (default <out>/study.journal)")
    add_experiment_options(
        p, runs="trials", parallel_flag="--parallel", parallel_help="trials at once on Ray (default study.parallel)",
        out_help="study folder (default <study.out_dir>/<study.name>)",
        set_help="fix a config key for every trial, on top of [fixed] (repeatable)",
        plot_help="file format of the report's plots (sets run.plot_format for every trial)",
        dry_run_flags=("--check", "--dry-run"), dry_run_dest="check",
        dry_run_help="validate the study file, print the space and how many trials would run where; "
                     "start nothing (no Ray), exit 0",
        progress_help="no progress bar or per-trial lines")


@command("tune", "run (or resume) an Optuna study whose trials are raysim runs")(_tune_args)
def cmd_tune(args: argparse.Namespace) -> int:
    from raysim.config import ConfigError
    from raysim.tuning.spec import load_spec, param_distributions

    for name, val in (("--n-trials", args.n_trials), ("--parallel", args.parallel)):
        if val is not None and val < 1:
            raise ConfigError(f"{name} = {val}: must be at least 1")
    spec = load_spec(args.study)
    overrides = {".".join(k): v for k, v in (parse_override(o) for o in args.overrides)}
    if args.plot_format:
        overrides["run.plot_format"] = args.plot_format
    if args.check:
        from raysim.tuning.space import check_spec

        cfg, problems = check_spec(spec, overrides)
        print(f"study {spec.study.name}: OK ({spec.study.n_trials} trials, objective "
              f"{spec.objective.metrics} {spec.objective.directions})")
        for name, dist in param_distributions(spec).items():
            p = spec.space.get(name)
            where = f" -> {p.key}" + (f" (x {p.times})" if p.times else "") + (f" (/ {p.per})" if p.per else "") if p else " (switch)"
            print(f"  {name}: {dist}{where}")
        print(f"  scenario: {cfg.data.n_clients} clients, p = {cfg.data.p}, {cfg.run.rounds} rounds, "
              f"algorithm {cfg.algorithm.name}")
        for w in problems:
            print(f"  warning: {w}")
        print(_dry_run_plan(spec, args))
        return 0
    from raysim.tuning.study import run_study

    res = run_study(spec, n_trials=args.n_trials, timeout=args.timeout, parallel=args.parallel,
                    storage=args.storage, out=args.out, overrides=overrides, progress=not args.no_progress,
                    cold=args.cold)
    _print_summary(res.report, res.study_dir)
    return _exit_code(res.study)


def _exit_code(study) -> int:
    """0 when at least one trial of the study finished COMPLETE or PRUNED, else EXIT_ALL_FAILED (6)."""
    import sys

    from optuna.trial import TrialState

    from raysim.outcome import EXIT_ALL_FAILED

    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        return 0
    errors = [str(t.user_attrs.get("error", ""))[:200] for t in trials if t.state == TrialState.FAIL]
    print(f"raysim tune: every trial failed ({len(errors)}); first error: {errors[0] if errors else '-'} "
          f"(exit code {EXIT_ALL_FAILED})", file=sys.stderr)
    return EXIT_ALL_FAILED


def _dry_run_plan(spec, args: argparse.Namespace) -> str:
    """Where the study would be stored and how many new trials would run (reads the storage
    if it exists; starts no Ray)."""
    from pathlib import Path

    from raysim.tuning.study import FINISHED, constant_liar, open_storage, storage_location, study_dir_for

    study_dir = study_dir_for(spec, args.out)
    location = storage_location(spec, study_dir, args.storage)
    total = args.n_trials or spec.study.n_trials
    done = 0
    if "://" in location or Path(location).exists():
        import optuna

        try:
            st = optuna.load_study(study_name=spec.study.name, storage=open_storage(location))
            done = len(st.get_trials(deepcopy=False, states=FINISHED))
        except KeyError:   # the storage holds no study of that name yet
            done = 0
    k = args.parallel or spec.study.parallel
    s = spec.study
    sampler = s.sampler
    if s.sampler == "tpe":
        sampler += f" (constant liar {'on' if constant_liar(spec, k) else 'off'})"
    return (f"would run {max(total - done, 0)} new trial(s) ({done} of {total} already finished), "
            f"{k} at a time; sampler {sampler}, pruner {s.pruner if not spec.objective.multi else 'none'}\n"
            f"  storage: {location}\n  study folder: {study_dir}\ndry run: nothing started")


def _print_summary(summary: dict, study_dir) -> None:
    from rich.console import Console

    c = Console()
    states = ", ".join(f"{k.lower()} {v}" for k, v in summary.get("states", {}).items())
    c.print(f"study {summary.get('study')}: {summary.get('trials')} trials ({states})")
    sess = summary.get("last_session", {})
    if sess.get("wall_s"):
        c.print(f"this session: {sess.get('new_trials')} trials in {sess['wall_s']:.0f} s "
                f"({sess.get('trials_per_hour', 0):.0f} trials/hour, {sess.get('parallel')} at a time)")
        if "trials_s" in sess:
            from raysim.tuning.report import time_split

            c.print(f"  time: {time_split(sess)}")
    if "best" in summary:
        b = summary["best"]
        vals = ", ".join(f"{k}={v:.5g}" for k, v in b["values"].items())
        c.print(f"best feasible trial {b['trial']}: {vals}  params {json.dumps(b['params'], default=str)}")
    c.print(f"report: {study_dir / 'report'}")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study_dir", help="a study folder written by `raysim tune` (holds study.json)")
    p.add_argument("--storage", help="storage URL or journal path (default: the one in study.json)")
    p.add_argument("--plot-format", choices=["png", "pdf", "svg"], default=None,
                   help="file format of the plots (default: run.plot_format of the study's trials)")


@command("tune-report", "write the report of a study folder (tables, importances, plots, best config)")(_report_args)
def cmd_tune_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raysim.tuning.report import write_report
    from raysim.tuning.study import load_from_dir

    study = load_from_dir(args.study_dir, args.storage)
    summary = write_report(study, args.study_dir, fmt=args.plot_format)
    _print_summary(summary, Path(args.study_dir))
    return 0
