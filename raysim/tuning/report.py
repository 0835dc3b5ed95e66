"""Study reports: tables, importances, plots and the best configuration as a runnable TOML.

``<study_dir>/report/`` holds (plots in ``run.plot_format`` of the study's trials, or the
``--plot-format`` of ``raysim tune-report``; drawn by ``optuna.visualization.matplotlib``)::

    trials.csv            every trial: state, objective(s), parameters, feasibility, error
    best_trials.csv/.md   feasible trials best first (one objective) or the Pareto front (several)
    importances.csv/.png  parameter importances (fANOVA) per objective, only from
                          MIN_IMPORTANCE_TRIALS complete trials on (report.md says why not)
    history.png           objective per trial (integer trial ticks), best feasible so far,
                          infeasible greyed by Optuna, pruned/failed trials marked
    intermediate.png      per-round intermediate values (what the pruner saw)
    slice.png, contour.png, parallel_coordinate.png
                          objective against each parameter, parameter pairs, all parameters
    pareto_front.png      several objectives: all trials and the feasible Pareto front
    best_config.toml      the best feasible trial's config; `raysim run best_config.toml` repeats it
    report.md             summary: counts by state, best trial, wall time and trials per hour,
                          and the plots left out with the reason
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import tomli_w  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from raysim.config import validate  # noqa: E402
from raysim.tuning.objectives import best_trials, is_feasible  # noqa: E402
from raysim.plotstyle import check_format, save, style  # noqa: E402

#: fANOVA importances are drawn only from this many complete trials on: below it, a random
#: forest on a handful of points ranks parameters by noise
MIN_IMPORTANCE_TRIALS = 10
#: contour plots: at most this many parameters (the most important ones), n * (n - 1) panels
MAX_CONTOUR_PARAMS = 4


def _metric_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    return list(names) if names else [f"objective_{i}" for i in range(len(study.directions))]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, objective value(s), parameters and the trial facts."""
    from raysim.tuning.study import interrupted

    names = _metric_names(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        for i, n in enumerate(names):
            row[n] = t.values[i] if t.values is not None else None
        if t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            row[names[0]] = t.intermediate_values[step]
        for k, v in t.params.items():
            row[f"param_{k}"] = v
        ua = t.user_attrs
        cfg = ua.get("config", {}).get("algorithm", {})
        for k in ("eta_theta", "eta_phi", "eta_lambda", "prune_start", "tau0", "rho_init", "rho"):
            if k in cfg:
                row[f"cfg_{k}"] = cfg[k]
        row["feasible"] = is_feasible(t) if t.state == TrialState.COMPLETE else None
        for k in ("nnz", "m_target", "density", "final_tdr", "final_r2", "final_val_r2", "final_cum_bytes_up",
                  "pruned_at_round", "wall_s"):
            if k in ua:
                row[k] = ua[k]
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else None
        # run outcome (raysim.outcome): ok, diverged, empty_model, no_participation; interrupted trials
        # that were queued again say so
        row["status"] = ua.get("status") or ("interrupted" if interrupted(t) else
                                             ("ok" if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None))
        row["error"] = ua.get("error")
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def best_config(trial: FrozenTrial, name: str) -> dict[str, Any]:
    """The trial's exact config, ready for ``raysim run`` (output settings reset; same seed)."""
    cfg = json.loads(json.dumps(trial.user_attrs["config"]))
    run = cfg.setdefault("run", {})
    run.pop("run_dir", None)
    run.update({"name": name, "progress": True, "plots": True})
    validate(cfg, source=f"config of trial {trial.number}")
    return cfg


def report_format(study: optuna.Study) -> str:
    """``run.plot_format`` of the study's trials (their recorded configs), png when none says."""
    for t in study.get_trials(deepcopy=False):
        fmt = (t.user_attrs.get("config") or {}).get("run", {}).get("plot_format")
        if fmt:
            return str(fmt)
    return "png"


def write_report(study: optuna.Study, study_dir: str | Path, session: dict[str, Any] | None = None,
                 fmt: str | None = None) -> dict[str, Any]:
    """Write ``<study_dir>/report/`` (see the module docstring); returns a summary dict."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    fmt = check_format(fmt or report_format(study))
    out = Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = _metric_names(study)
    multi = len(names) > 1
    df = trials_frame(study)
    df.to_csv(out / "trials.csv", index=False)
    best = best_trials(study)
    best_ids = [t.number for t in best]
    best_df = df[df["trial"].isin(best_ids)].set_index("trial").loc[best_ids].reset_index() if best else df.head(0)
    cols = [c for c in best_df.columns if c not in ("state", "error", "feasible", "status")]
    best_df = best_df[cols].head(10 if not multi else len(best_df))
    best_df.to_csv(out / "best_trials.csv", index=False)
    # the Markdown table leaves out what is the same for every trial (kept in the CSV)
    varying = [c for c in best_df.columns
               if c in ("trial", *names) or (c in df and df[c].astype(str).nunique(dropna=True) > 1
                                              and best_df[c].notna().any())]
    best_md = best_df[varying]
    (out / "best_trials.md").write_text(_markdown(best_md))
    skipped: dict[str, str] = {}
    with style(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        importances = _importances(study, names, out, fmt, skipped)
        plots = _optuna_plots(study, names, out, fmt, skipped, importances)
        if importances is not None:
            plots += sorted(out.glob(f"importances*.{fmt}"))
    exported = []
    if best:
        cfg = best_config(best[0], f"{study.study_name}-best")
        (out / "best_config.toml").write_text(tomli_w.dumps(cfg))
        exported.append("best_config.toml")
        if multi:
            (out / "pareto_configs").mkdir(exist_ok=True)
            for t in best:
                (out / "pareto_configs" / f"trial-{t.number:05d}.toml").write_text(
                    tomli_w.dumps(best_config(t, f"{study.study_name}-trial-{t.number}")))
    summary = _summary(study, df, best, names, session or {})
    summary["plots"] = [p.name for p in plots]
    summary["skipped_plots"] = skipped
    summary["files"] = sorted(p.name for p in out.iterdir())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(_report_md(study, summary, best_md, importances, names))
    return summary


def _summary(study: optuna.Study, df: pd.DataFrame, best: list[FrozenTrial], names: list[str],
             session: dict[str, Any]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    out: dict[str, Any] = {
        "study": study.study_name, "objectives": dict(zip(names, [d.name.lower() for d in study.directions])),
        "trials": len(trials), "states": {k: v for k, v in counts.items() if v},
        "infeasible_complete": int(sum(1 for t in trials if t.state == TrialState.COMPLETE and not is_feasible(t))),
        "first_start_to_last_end_s": span,
        "trials_per_hour": finished / span * 3600 if span else None,
    }
    if session:
        out["last_session"] = dict(session)
        if session.get("wall_s"):
            out["last_session"]["trials_per_hour"] = session.get("new_trials", 0) / session["wall_s"] * 3600
    if best:
        b = best[0]
        out["best"] = {"trial": b.number, "values": dict(zip(names, b.values)), "params": b.params,
                       "run_dir": b.user_attrs.get("run_dir")}
        if len(names) > 1:
            out["pareto_front"] = [t.number for t in best]
    return out


def time_split(timing: dict[str, Any]) -> str:
    """Where a study session's wall time went, in words (``StudyResult.timing``; ``warm``:
    the session ran on warm pools, whose start is then listed)."""
    parts = [f"Ray start {timing.get('ray_start_s', 0):.1f} s"]
    if timing.get("warm"):
        parts.append(f"warm pools' start {timing.get('pools_start_s', 0):.1f} s")
    parts += [f"trials {timing.get('trials_s', 0):.1f} s", f"stop {timing.get('ray_stop_s', 0):.1f} s"]
    return ", ".join(parts)


def _report_md(study: optuna.Study, s: dict[str, Any], best_df: pd.DataFrame, imp: pd.DataFrame | None,
               names: list[str]) -> str:
    lines = [f"# Study `{study.study_name}`", ""]
    lines.append("Objective(s): " + ", ".join(f"{k} ({v})" for k, v in s["objectives"].items()) + ".")
    lines.append(f"Trials: {s['trials']} (" + ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items())
                 + f"); complete but infeasible: {s['infeasible_complete']}.")
    if s.get("first_start_to_last_end_s"):
        lines.append(f"First trial start to last trial end: {s['first_start_to_last_end_s']:.0f} s, "
                     f"{s['trials_per_hour']:.0f} trials per hour.")
    ls = s.get("last_session") or {}
    if ls.get("wall_s") and "trials_s" in ls:
        lines.append(f"Last session: {ls.get('new_trials', 0)} trials in {ls['wall_s']:.1f} s "
                     f"({'warm' if ls.get('warm') else 'cold'}, {ls.get('parallel', 1)} at a time): "
                     + time_split(ls) + ".")
    if "best" in s:
        b = s["best"]
        vals = ", ".join(f"{k} = {v:.5g}" for k, v in b["values"].items())
        lines += ["", f"Best feasible trial: **{b['trial']}** ({vals}); its config is `best_config.toml` "
                      "(`raysim run best_config.toml` repeats it with the same seed)."]
    else:
        lines += ["", "No complete feasible trial yet."]
    title = "Pareto front (feasible)" if len(names) > 1 else "Best feasible trials"
    lines += ["", f"## {title}", "", _markdown(best_df)]
    if imp is not None and len(imp):
        lines += ["## Parameter importances (fANOVA)", "", _markdown(imp)]
    lines += ["## Plots", ""]
    for f in s.get("plots", ()):
        lines.append(f"![{f}]({f})")
    if s.get("skipped_plots"):
        lines += ["", "Not drawn:", ""]
        lines += [f"- {k}: {v}" for k, v in s["skipped_plots"].items()]
    return "\n".join(lines) + "\n"


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def _target(i: int):
    return lambda t: t.values[i]


def _fig(ax: Any):
    """The figure of what an optuna.visualization.matplotlib function returned (Axes or array)."""
    import numpy as np

    first = np.asarray(ax, dtype=object).ravel()[0] if not hasattr(ax, "figure") else ax
    return first.figure


def _tidy(ax: Any) -> None:
    """Optuna draws in its own (ggplot) style; bring titles and labels to raysim's sizes."""
    import numpy as np

    for a in np.asarray(ax, dtype=object).ravel() if not hasattr(ax, "figure") else [ax]:
        a.title.set_fontsize(10)
        a.xaxis.label.set_fontsize(9)
        a.yaxis.label.set_fontsize(9)


def _integer_trials(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _importances(study: optuna.Study, names: list[str], out: Path, fmt: str,
                 skipped: dict[str, str]) -> pd.DataFrame | None:
    """fANOVA importances per objective (CSV + one plot per objective), from MIN_IMPORTANCE_TRIALS
    complete trials on; the reason for leaving them out goes to ``skipped``."""
    complete = _complete(study)
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        skipped["importances"] = (f"{len(complete)} complete trial(s); fANOVA importances are drawn from "
                                  f"{MIN_IMPORTANCE_TRIALS} complete trials on")
        return None
    if not complete[0].params:
        skipped["importances"] = "the study has no sampled parameters"
        return None
    rows = []
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    for i, n in enumerate(names):
        if len({t.values[i] for t in complete}) < 2:   # a constant objective has no importances
            skipped[f"importances ({n})"] = f"{n} is the same in every complete trial"
            continue
        try:
            imp = optuna.importance.get_param_importances(study, target=_target(i), evaluator=evaluator)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # too few distinct trials
            skipped[f"importances ({n})"] = str(exc)
            continue
        rows += [{"objective": n, "param": k, "importance": v} for k, v in imp.items()]
        ax = optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=evaluator, target=_target(i), target_name=n)
        ax.set_title(f"Parameter importances (fANOVA) for {n}, {len(complete)} complete trials")
        _tidy(ax)
        fig = _fig(ax)
        fig.set_size_inches(6.5, 0.8 + 0.45 * len(imp))
        fig.tight_layout()
        name = "importances.png" if len(names) == 1 else f"importances_{_slug(n)}.png"
        save(fig, out / name, fmt)
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df.to_csv(out / "importances.csv", index=False)
    return df


def _try(name: str, skipped: dict[str, str], fn) -> Any:
    """Run one optuna.visualization call; a plot Optuna cannot draw yet is recorded, not raised."""
    try:
        return fn()
    except (ValueError, RuntimeError, IndexError, KeyError) as exc:
        plt.close("all")
        skipped[name] = f"{type(exc).__name__}: {exc}"
        return None


def _optuna_plots(study: optuna.Study, names: list[str], out: Path, fmt: str, skipped: dict[str, str],
                  importances: pd.DataFrame | None) -> list[Path]:
    """history, intermediate values, slice, contour, parallel coordinates and the Pareto front,
    each drawn by ``optuna.visualization.matplotlib``."""
    vis = optuna.visualization.matplotlib
    paths: list[Path] = []
    trials = study.get_trials(deepcopy=False)
    complete = _complete(study)
    params = sorted({k for t in complete for k in t.params})
    multi = len(names) > 1
    if importances is not None and len(importances):
        order = importances.groupby("param")["importance"].max().sort_values(ascending=False).index.tolist()
        params = order + [p for p in params if p not in order]

    for i, n in enumerate(names):
        ax = _try(f"history ({n})", skipped, lambda: vis.plot_optimization_history(
            study, target=_target(i) if multi else None, target_name=n))
        if ax is None:
            continue
        _mark_pruned_failed(ax, trials, i)
        _integer_trials(ax)
        ax.set_xlabel("trial")
        ax.set_ylabel(n)
        maximize = study.directions[i] == optuna.study.StudyDirection.MAXIMIZE
        ax.set_title(f"Optimization history: {n} ({'max' if maximize else 'min'}; grey: infeasible)")
        ax.legend(loc="best")
        _tidy(ax)
        fig = _fig(ax)
        fig.set_size_inches(6.5, 4.2)
        fig.tight_layout()
        paths.append(save(fig, out / ("history.png" if i == 0 else f"history_{_slug(n)}.png"), fmt))

    if not multi:
        if any(t.intermediate_values for t in trials):
            ax = _try("intermediate", skipped, lambda: vis.plot_intermediate_values(study))
            if ax is not None:
                ax.set_xlabel("round")
                ax.set_ylabel(names[0])
                ax.set_title(f"Intermediate values ({names[0]}) per trial: what the pruner saw")
                _integer_trials(ax)
                _tidy(ax)
                fig = _fig(ax)
                fig.set_size_inches(6.5, 4.2)
                paths.append(save(fig, out / "intermediate.png", fmt))
        else:
            skipped["intermediate"] = "no trial reported intermediate values"
    else:
        from raysim.tuning.objectives import constraints_func

        ax = _try("pareto_front", skipped, lambda: vis.plot_pareto_front(
            study, target_names=names[:3] if len(names) <= 3 else names[:2],
            targets=None if len(names) <= 3 else (lambda t: (t.values[0], t.values[1])),
            # Optuna >= 4 reads the trials' own constraints (raysim records them, see
            # objectives.record_constraints); older versions need the function
            constraints_func=None if hasattr(FrozenTrial, "constraints") else constraints_func))
        if ax is not None:
            _tidy(ax)
            fig = _fig(ax)
            fig.set_size_inches(6.5, 4.8)
            paths.append(save(fig, out / "pareto_front.png", fmt))

    target, tname = (_target(0), names[0]) if multi else (None, names[0])
    if not complete or not params:
        for k in ("slice", "contour", "parallel_coordinate"):
            skipped[k] = "no complete trial with sampled parameters yet"
        return paths
    ax = _try("slice", skipped, lambda: vis.plot_slice(study, params=params, target=target, target_name=tname))
    if ax is not None:
        _tidy(ax)
        fig = _fig(ax)
        fig.set_size_inches(max(4.0, 3.2 * len(params)), 3.6)
        paths.append(save(fig, out / "slice.png", fmt))
    if len(params) >= 2:
        sel = params[:MAX_CONTOUR_PARAMS]
        ax = _try("contour", skipped, lambda: vis.plot_contour(study, params=sel, target=target, target_name=tname))
        if ax is not None:
            _tidy(ax)
            fig = _fig(ax)
            side = 3.0 * len(sel) if len(sel) > 2 else 5.5
            fig.set_size_inches(side + 1.0, side)
            paths.append(save(fig, out / "contour.png", fmt))
    else:
        skipped["contour"] = "a contour plot needs at least two sampled parameters"
    ax = _try("parallel_coordinate", skipped, lambda: vis.plot_parallel_coordinate(
        study, params=params, target=target, target_name=tname))
    if ax is not None:
        _tidy(ax)
        fig = _fig(ax)
        fig.set_size_inches(max(6.0, 1.6 * (len(params) + 1)), 4.2)
        paths.append(save(fig, out / "parallel_coordinate.png", fmt))
    return paths


def _mark_pruned_failed(ax: Any, trials: list[FrozenTrial], i: int) -> None:
    """Add pruned trials (their last intermediate value) and failed trials to a history plot."""
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state == TrialState.PRUNED and t.intermediate_values and i == 0]
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", color="#D55E00", s=26, label="pruned (last value)", zorder=3)
    for j, num in enumerate(failed):
        ax.axvline(num, color="black", alpha=0.3, lw=1, ls=":", label="failed" if j == 0 else None)
