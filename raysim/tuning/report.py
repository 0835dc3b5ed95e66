"""Study reports: tables, importances, plots and the best configuration as a runnable TOML.

``<study_dir>/report/`` holds::

    trials.csv            every trial: state, objective(s), parameters, feasibility, error
    best_trials.csv/.md   feasible trials best first (one objective) or the Pareto front (several)
    importances.csv/.png  parameter importances (fANOVA) per objective
    history.png           objective per trial, best feasible so far, infeasible/pruned marked
    intermediate.png      per-round intermediate values (what the pruner saw)
    pareto_front.png      several objectives: all trials and the feasible Pareto front
    best_config.toml      the best feasible trial's config; `raysim run best_config.toml` repeats it
    report.md             summary: counts by state, best trial, wall time and trials per hour
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
from raysim.report import _save


def _metric_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    return list(names) if names else [f"objective_{i}" for i in range(len(study.directions))]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, objective value(s), parameters and the trial facts."""
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
        row["status"] = ua.get("status") or ("interrupted" if ua.get("requeued") else
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


def write_report(study: optuna.Study, study_dir: str | Path, session: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``<study_dir>/report/`` (see the module docstring); returns a summary dict."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
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
    importances = _importances(study, names, out)
    plots = [_history(study, names, out)]
    if not multi:
        p = _intermediate(study, names[0], out)
        if p:
            plots.append(p)
    else:
        plots.append(_pareto(study, names, out))
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


def _report_md(study: optuna.Study, s: dict[str, Any], best_df: pd.DataFrame, imp: pd.DataFrame | None,
               names: list[str]) -> str:
    lines = [f"# Study `{study.study_name}`", ""]
    lines.append("Objective(s): " + ", ".join(f"{k} ({v})" for k, v in s["objectives"].items()) + ".")
    lines.append(f"Trials: {s['trials']} (" + ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items())
                 + f"); complete but infeasible: {s['infeasible_complete']}.")
    if s.get("first_start_to_last_end_s"):
        lines.append(f"First trial start to last trial end: {s['first_start_to_last_end_s']:.0f} s, "
                     f"{s['trials_per_hour']:.0f} trials per hour.")
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
    for f in ("history.png", "intermediate.png", "pareto_front.png", "importances.png"):
        if f in s.get("files", ()):
            lines.append(f"![{f}]({f})")
    return "\n".join(lines) + "\n"


def _importances(study: optuna.Study, names: list[str], out: Path) -> pd.DataFrame | None:
    rows = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return None
    for i, n in enumerate(names):
        if len({t.values[i] for t in complete}) < 2:   # a constant objective has no importances
            continue
        try:
            imp = optuna.importance.get_param_importances(
                study, target=(lambda t, i=i: t.values[i]), evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # too few distinct trials
            warnings.warn(f"parameter importances for {n}: {exc}")
            continue
        rows += [{"objective": n, "param": k, "importance": v} for k, v in imp.items()]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df.to_csv(out / "importances.csv", index=False)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 0.5 + 0.45 * df["param"].nunique()), squeeze=False)
    for ax, n in zip(axes[0], names):
        d = df[df["objective"] == n].sort_values("importance")
        ax.barh(d["param"], d["importance"], color="tab:blue")
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title(n)
    _save(fig, out / "importances.png")
    return df


def _history(study: optuna.Study, names: list[str], out: Path) -> Path:
    trials = study.get_trials(deepcopy=False)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for i, (ax, n) in enumerate(zip(axes[0], names)):
        maximize = study.directions[i] == optuna.study.StudyDirection.MAXIMIZE
        feas = [(t.number, t.values[i]) for t in trials if t.state == TrialState.COMPLETE and is_feasible(t)]
        infeas = [(t.number, t.values[i]) for t in trials if t.state == TrialState.COMPLETE and not is_feasible(t)]
        pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
                  if t.state == TrialState.PRUNED and t.intermediate_values and i == 0]
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        if feas:
            ax.scatter(*zip(*feas), color="tab:blue", s=22, label="complete (feasible)", zorder=3)
            best, xs, ys = None, [], []
            for num, v in sorted(feas):
                best = v if best is None else (max(best, v) if maximize else min(best, v))
                xs.append(num)
                ys.append(best)
            ax.step(xs, ys, where="post", color="tab:red", label="best feasible so far")
        if infeas:
            ax.scatter(*zip(*infeas), color="lightgrey", edgecolor="grey", s=22, label="infeasible (density)")
        if pruned:
            ax.scatter(*zip(*pruned), marker="x", color="tab:orange", s=22, label="pruned (last value)")
        for j, num in enumerate(failed):
            ax.axvline(num, color="black", alpha=0.25, lw=1, ls=":", label="failed" if j == 0 else None)
        ax.set_xlabel("trial")
        ax.set_ylabel(n)
        ax.legend(fontsize=8)
        ax.set_title(f"Optimization history: {n} ({'max' if maximize else 'min'})")
    return _save(fig, out / "history.png")


def _intermediate(study: optuna.Study, name: str, out: Path) -> Path | None:
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {TrialState.COMPLETE: "tab:blue", TrialState.PRUNED: "tab:orange", TrialState.FAIL: "black",
              TrialState.RUNNING: "tab:green"}
    seen = set()
    for t in trials:
        steps = sorted(t.intermediate_values)
        lab = t.state.name.lower() if t.state not in seen else None
        seen.add(t.state)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], color=colors.get(t.state, "grey"),
                alpha=0.6, lw=1, label=lab)
    vals = [v for t in trials for v in t.intermediate_values.values() if math.isfinite(v)]
    if vals and name.endswith("r2"):
        lo = max(min(vals), -1.0)
        ax.set_ylim(lo - 0.05, max(vals) + 0.05)
    ax.set_xlabel("round")
    ax.set_ylabel(name)
    ax.legend(fontsize=8)
    ax.set_title(f"Intermediate values ({name}) per trial")
    return _save(fig, out / "intermediate.png")


def _pareto(study: optuna.Study, names: list[str], out: Path) -> Path:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    front = best_trials(study)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    feas = [t for t in trials if is_feasible(t)]
    infeas = [t for t in trials if not is_feasible(t)]
    if feas:
        ax.scatter([t.values[0] for t in feas], [t.values[1] for t in feas], color="tab:blue", s=22,
                   label="feasible")
    if infeas:
        ax.scatter([t.values[0] for t in infeas], [t.values[1] for t in infeas], color="lightgrey",
                   edgecolor="grey", s=22, label="infeasible (density)")
    if front:
        f = sorted(front, key=lambda t: t.values[0])
        ax.plot([t.values[0] for t in f], [t.values[1] for t in f], "o-", color="tab:red", ms=6,
                label="Pareto front")
        for t in f:
            ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    d = [dd.name.lower() for dd in study.directions]
    ax.set_xlabel(f"{names[0]} ({d[0]})")
    ax.set_ylabel(f"{names[1]} ({d[1]})")
    ax.legend(fontsize=8)
    ax.set_title("Pareto front" + (" (first two objectives)" if len(names) > 2 else ""))
    return _save(fig, out / "pareto_front.png")
