"""Replication study: the papers' claims about FLoPS and its baselines, measured fairly.

Protocol (the same for every method in a scenario):

1. Tuning: ``--trials`` trials of ``raysim tune`` (TPE, seed 0) on the scenario at seed 0,
   scored on a validation split (never the test set). Every method gets the same number of
   trials over its own learning-rate knobs (see ``SPACES``).
2. Evaluation: the best trial's configuration on ``--seeds`` fresh seeds (1, 2, ...), which
   draw new data, new participation and new training noise; test-set metrics.
3. Comparison at equal communication ROUNDS (the final evaluation: every method runs the
   scenario's rounds), at equal BYTES (each run's metric at the last evaluation whose
   cumulative upload + download is within the smallest total any method of the scenario
   used) and at equal CLIENT COMPUTE (the same with cumulative local mini-batch steps).
   Mean +- std over seeds; a paired t-test (same seeds) of each method against the claim's
   reference method.

Everything runs in process (``cluster.backend = "local"``): identical metrics to the Ray
backend, no actor start-up. The script is resumable: studies continue from their journals
and finished seed runs are reused.

    python scripts/replicate.py --out results/replication            # everything
    python scripts/replicate.py --out results/replication --only lg   # one scenario
    python scripts/replicate.py --out results/replication --report    # tables and plots only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

#: scenario name -> (scenario file, overrides, test metric, higher is better, has true support)
SCENARIOS: dict[str, dict[str, Any]] = {
    "lr": {"file": "datasets/synthetic-lr.toml", "set": {}, "metric": "r2", "support": True},
    "lg": {"file": "datasets/synthetic-lg.toml", "set": {}, "metric": "accuracy", "support": True},
    "mc": {"file": "datasets/synthetic-mc.toml", "set": {}, "metric": "accuracy", "support": True},
    "mlc": {"file": "datasets/synthetic-mlc.toml", "set": {}, "metric": "micro_f1", "support": True},
    "scarce": {"file": "datasets/synthetic-lr-scarce.toml", "set": {}, "metric": "r2", "support": True},
    "lr-rho0.005": {"file": "datasets/synthetic-lr.toml",
                    "set": {"data.p": 4000, "data.rho_true": 0.005, "algorithm.rho": 0.005},
                    "metric": "r2", "support": True},
    "lr-p5000": {"file": "datasets/synthetic-lr-p5000.toml", "set": {}, "metric": "r2", "support": True},
    "lr-hetero": {"file": "datasets/synthetic-lr-hetero.toml", "set": {}, "metric": "r2", "support": True},
    "mnist5k": {"file": "datasets/mnist-5k-dirichlet-1.0.toml", "set": {}, "metric": "accuracy", "support": False},
    "mnist5k-skew": {"file": "datasets/mnist-5k-dirichlet-0.1.toml", "set": {}, "metric": "accuracy",
                     "support": False},
}

#: the claims: hypothesis, reference method, competitors, scenarios, and what decides it
CLAIMS: list[dict[str, Any]] = [
    {"id": "C1", "hypothesis": "FLoPS recovers the support and predicts at least as well as FedIter-HT, Fed-HT and "
                               "FedAvg + magnitude pruning at the same density",
     "ref": "flops", "others": ["fediter-ht", "fed-ht", "fedavg-prune"],
     "scenarios": ["lr", "lg", "mc", "mlc", "scarce", "lr-rho0.005", "mnist5k"],
     "measures": ["metric", "f1"]},
    {"id": "C2", "hypothesis": "FLoPS-PA reaches FLoPS' accuracy with fewer bytes",
     "ref": "flops-pa", "others": ["flops"], "scenarios": ["lr", "lg", "mc"], "measures": ["metric"]},
    {"id": "C3", "hypothesis": "entropy-regularised gates (flops-ent) recover the support better than plain FLoPS "
                               "when d >> N",
     "ref": "flops-ent", "others": ["flops"], "scenarios": ["scarce"], "measures": ["f1", "metric"]},
    {"id": "C4", "hypothesis": "FedEBA+ lowers the spread of the clients' accuracies compared with FedAvg",
     "ref": "fedeba", "others": ["fedavg"], "scenarios": ["mnist5k-skew"],
     "measures": ["fair_std", "metric"]},
    {"id": "C5", "hypothesis": "SER improves on FedAvg and FedProx under label skew",
     "ref": "ser", "others": ["fedavg", "fedprox"], "scenarios": ["mnist5k-skew"], "measures": ["metric"]},
]

_FLOPS_SPACE = {   # the ranges of the per-task defaults studies (tuning/defaults-*.toml)
    "eta_theta": {"key": "algorithm.eta_theta", "low": 0.01, "high": 30.0, "log": True},
    "eta_ratio": {"kind": "eta_phi_ratio", "low": 0.1, "high": 100.0},
    "eta_lambda": {"kind": "eta_lambda", "low": 1e-6, "high": 1.0},
    "prune_start": {"kind": "prune_start", "low": 0.2, "high": 0.8},
}
_DENSE = {"eta_local": {"key": "algorithm.eta_local", "low": 1e-4, "high": 30.0, "log": True}}

#: each method's tuned knobs (same number of trials for every method)
SPACES: dict[str, dict[str, Any]] = {
    "flops": _FLOPS_SPACE,
    "flops-pa": _FLOPS_SPACE,
    "flops-ent": {**_FLOPS_SPACE, "tau0": {"key": "algorithm.tau0", "low": 1e-3, "high": 1.0, "log": True}},
    "fedavg": _DENSE, "fedavg-prune": _DENSE, "fed-ht": _DENSE, "fediter-ht": _DENSE,
    "fedprox": {**_DENSE, "mu": {"key": "algorithm.mu", "low": 1e-3, "high": 1.0, "log": True}},
    "ser": {**_DENSE, "rho_s": {"key": "algorithm.rho_s", "low": 1e-3, "high": 1.0, "log": True}},
    "fedeba": {**_DENSE, "temp": {"key": "algorithm.eba_temperature", "low": 0.1, "high": 10.0, "log": True}},
}

LOWER_IS_BETTER = {"fair_std", "mse", "log_loss", "hamming_loss"}


#: the order scenarios are run in (so that an interrupted study has covered every claim first)
PRIORITY = ["lr", "lg", "mc", "mlc", "scarce", "mnist5k-skew", "lr-rho0.005", "mnist5k"]


def units() -> list[tuple[str, str]]:
    """Every (scenario, method) pair the claims need, each tuned and evaluated once."""
    out: list[tuple[str, str]] = []
    for c in CLAIMS:
        for s in c["scenarios"]:
            for m in [c["ref"], *c["others"]]:
                if (s, m) not in out:
                    out.append((s, m))
    rank = {s: i for i, s in enumerate(PRIORITY)}
    return sorted(out, key=lambda u: rank.get(u[0], len(rank)))


def _val_metric(scen: dict[str, Any]) -> str:
    return "val_" + scen["metric"]


def run_unit(out: str, scen_name: str, method: str, trials: int, seeds: list[int]) -> dict[str, Any]:
    """Tune one method on one scenario, then run its best config on the fresh seeds."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import optuna

    from raysim.runner import run
    from raysim.tuning.spec import spec_from_dict
    from raysim.tuning.study import run_study

    scen = SCENARIOS[scen_name]
    root = Path(out)
    t0 = time.perf_counter()
    name = f"{scen_name}--{method}"
    spec = spec_from_dict({
        "study": {"name": name, "n_trials": trials, "sampler": "tpe", "pruner": "none",
                  "n_startup_trials": max(1, trials // 2), "seed": 0},
        "scenario": {"config": scen["file"], "algorithm": method, "base": {"cluster": {"backend": "local"}}},
        "fixed": {"run.seed": 0, "run.eval_every": 10, **scen["set"]},
        "space": SPACES[method],
        "objective": {"metric": _val_metric(scen), "direction": "maximize", "val_samples": 2000},
    })
    res = run_study(spec, out=root / "studies" / name, progress=False, report=False)
    done = [t for t in res.study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return {"scenario": scen_name, "method": method, "error": "no trial completed"}
    best = max(done, key=lambda t: (t.value, -t.number))
    best_cfg = best.user_attrs["config"]
    rows = []
    for seed in seeds:
        run_dir = root / "runs" / scen_name / method / f"seed-{seed}"
        summ = run_dir / "summary.json"
        if not summ.exists():
            overrides = {**best_cfg}
            overrides["run"] = {**best_cfg["run"], "seed": seed, "eval_every": 1, "run_dir": str(run_dir),
                                "progress": False, "plots": False}
            overrides["data"] = {**best_cfg["data"], "val_samples": 0}
            from raysim.config import validate

            cfg = validate(overrides, source=f"{name} seed {seed}")
            try:
                run(cfg, console_output=False)
            except Exception as exc:  # noqa: BLE001 - a failed seed is recorded, the study goes on
                rows.append({"seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                continue
        rows.append({"seed": seed, "run_dir": str(run_dir)})
    return {"scenario": scen_name, "method": method, "best_trial": best.number, "best_val": best.value,
            "params": best.params, "seeds": rows, "wall_s": time.perf_counter() - t0}


# -- analysis ------------------------------------------------------------------------------

def load_curves(root: Path):
    import pandas as pd

    frames = []
    for mfile in sorted((root / "runs").glob("*/*/seed-*/metrics.csv")):
        seed_dir = mfile.parent
        df = pd.read_csv(mfile)
        df["scenario"], df["method"] = seed_dir.parent.parent.name, seed_dir.parent.name
        df["seed"] = int(seed_dir.name.split("-")[1])
        s = json.loads((seed_dir / "summary.json").read_text()) if (seed_dir / "summary.json").exists() else {}
        df["status"] = s.get("status", "ok" if s else "unfinished")
        df["cum_bytes"] = df["cum_bytes_up"] + df["cum_bytes_down"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _at_budget(df, col: str, budget: float, metric: str) -> float:
    """The metric at the last evaluation whose cumulative ``col`` is within ``budget``."""
    ok = df[df[col] <= budget * (1 + 1e-9)]
    if ok.empty:
        return float("nan")
    return float(ok.iloc[-1][metric])


def measure_table(curves, scen_name: str):
    """One row per (method, seed): final values at the scenario's common round budget."""
    import pandas as pd

    metric = SCENARIOS[scen_name]["metric"]
    d = curves[curves["scenario"] == scen_name]
    rows = []
    for (method, seed), g in d.sort_values("round").groupby(["method", "seed"]):
        f = g.iloc[-1]
        row = {"scenario": scen_name, "method": method, "seed": seed, "rounds": int(f["round"]),
               "status": f.get("status", "ok"),
               "metric": float(f[metric]) if metric in f and pd.notna(f[metric]) else float("nan"),
               "bytes": float(f["cum_bytes"]),
               "client_steps": float(f.get("cum_client_steps", float("nan"))),
               "fair_std": float(f.get("fair_std", float("nan"))), "density": float(f.get("density", float("nan")))}
        for k in ("tdr", "tpr", "f1"):
            row[k] = float(f[k]) if k in f and pd.notna(f[k]) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def paired_test(a, b) -> float:
    """Two-sided paired t-test p-value over the seeds both have (nan if fewer than 3 pairs)."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    if np.allclose(a[ok], b[ok]):
        return 1.0
    return float(stats.ttest_rel(a[ok], b[ok]).pvalue)


def _pair_values(curves, scen: str, ref: str, other: str, budget: str, measure: str):
    """Per seed, the two methods' values of ``measure`` at equal rounds (final), or at equal bytes /
    client compute: each pair is compared at the smaller of the two runs' totals."""
    import numpy as np

    metric = SCENARIOS[scen]["metric"] if measure == "metric" else measure
    d = curves[curves["scenario"] == scen].sort_values("round")
    col = {"bytes": "cum_bytes", "compute": "cum_client_steps"}.get(budget)
    a, b, seeds = [], [], []
    for seed in sorted(set(d[d.method == ref].seed) & set(d[d.method == other].seed)):
        ga, gb = d[(d.method == ref) & (d.seed == seed)], d[(d.method == other) & (d.seed == seed)]
        if col is None:
            va, vb = float(ga.iloc[-1][metric]), float(gb.iloc[-1][metric])
        else:
            lim = min(float(ga.iloc[-1][col]), float(gb.iloc[-1][col]))
            va, vb = _at_budget(ga, col, lim, metric), _at_budget(gb, col, lim, metric)
        a.append(va), b.append(vb), seeds.append(seed)
    return np.asarray(a, float), np.asarray(b, float), seeds


def claim_rows(claim: dict[str, Any], curves) -> list[dict[str, Any]]:
    """For each scenario x competitor x measure x budget: ref mean+-std, other mean+-std, p, verdict."""
    import warnings

    import numpy as np

    out = []
    for s in claim["scenarios"]:
        if curves[curves["scenario"] == s].empty:
            continue
        for measure in claim["measures"]:
            if measure == "f1" and not SCENARIOS[s]["support"]:
                continue
            budgets = ["rounds", "bytes", "compute"] if measure == "metric" else ["rounds"]
            for budget in budgets:
                for other in claim["others"]:
                    a, b, seeds = _pair_values(curves, s, claim["ref"], other, budget, measure)
                    if not seeds:
                        continue
                    p = paired_test(a, b)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        diff = np.nanmean(a) - np.nanmean(b)
                        stats_ = (np.nanmean(a), np.nanstd(a, ddof=1), np.nanmean(b), np.nanstd(b, ddof=1))
                    better = (diff < 0) if measure in LOWER_IS_BETTER else (diff > 0)
                    if not np.isfinite(diff) or not np.isfinite(p):
                        verdict = "n/a"
                    elif p < 0.05:
                        verdict = "holds" if better else "reversed"
                    else:
                        verdict = "no significant difference"
                    name = SCENARIOS[s]["metric"] if measure == "metric" else measure
                    out.append({"claim": claim["id"], "scenario": s, "measure": name, "budget": budget,
                                "ref": claim["ref"], "other": other, "n": len(seeds),
                                "ref_mean": stats_[0], "ref_std": stats_[1], "other_mean": stats_[2],
                                "other_std": stats_[3], "p": p, "verdict": verdict})
    return out


def plot_scenario(curves, scen_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scen = SCENARIOS[scen_name]
    metric = scen["metric"]
    d = curves[curves["scenario"] == scen_name]
    if d.empty or metric not in d:
        return
    xs = [("round", "communication rounds"), ("cum_bytes", "bytes (up + down)"),
          ("cum_client_steps", "client mini-batch steps")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    markers = "osD^v<>ph*"
    styles = ["-", "--", "-.", ":"]
    for i, (method, g) in enumerate(sorted(d.groupby("method"), key=lambda kv: kv[0])):
        curve = g.groupby("round").agg({metric: ["mean", "std"], "cum_bytes": "mean", "cum_client_steps": "mean"})
        for ax, (xcol, label) in zip(axes, xs):
            x = curve.index.to_numpy() if xcol == "round" else curve[(xcol, "mean")].to_numpy()
            m, sd = curve[(metric, "mean")].to_numpy(), curve[(metric, "std")].fillna(0).to_numpy()
            ax.plot(x, m, linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                    markevery=max(1, len(x) // 8), label=method, color=f"C{i}")
            ax.fill_between(x, m - sd, m + sd, alpha=0.15, color=f"C{i}")
            ax.set_xlabel(label)
            ax.set_ylabel(f"test {metric}")
            if xcol != "round":
                ax.set_xscale("log")
    lo = np.nanpercentile(d[metric], 5)
    for ax in axes:
        ax.set_ylim(bottom=max(lo, -1.0) if np.isfinite(lo) else None)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{scen_name}: test {metric}, mean +- std over seeds")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(root: Path) -> None:
    import pandas as pd

    curves = load_curves(root)
    if curves.empty:
        print("no finished runs yet")
        return
    (root / "tables").mkdir(parents=True, exist_ok=True)
    (root / "plots").mkdir(parents=True, exist_ok=True)
    curves.to_csv(root / "tables" / "curves.csv.gz", index=False)
    tables = {s: measure_table(curves, s) for s in SCENARIOS}
    per_run = pd.concat([t for t in tables.values() if not t.empty], ignore_index=True)
    per_run.to_csv(root / "tables" / "per_run.csv", index=False)
    agg = (per_run.groupby(["scenario", "method"])
           .agg(n=("seed", "count"), metric_mean=("metric", "mean"), metric_std=("metric", "std"),
                tdr=("tdr", "mean"), f1_mean=("f1", "mean"), f1_std=("f1", "std"), fair_std=("fair_std", "mean"),
                mbytes=("bytes", lambda b: b.mean() / 1e6), ksteps=("client_steps", lambda b: b.mean() / 1e3),
                diverged=("status", lambda s: int((s == "diverged").sum())))
           .reset_index())
    agg.to_csv(root / "tables" / "by_method.csv", index=False)
    claims = pd.DataFrame([r for c in CLAIMS for r in claim_rows(c, curves)])
    claims.to_csv(root / "tables" / "claims.csv", index=False)
    for s in SCENARIOS:
        plot_scenario(curves, s, root / "plots" / f"{s}.png")
    md = ["| scenario | method | n | test metric (final) | MB (up + down) | client steps (k) | support F1 | client std |",
          "|---|---|---|---|---|---|---|---|"]
    for _, r in agg.iterrows():
        md.append(f"| {r.scenario} | {r.method} | {r.n} | {r.metric_mean:.3f} +- {r.metric_std:.3f} | "
                  f"{r.mbytes:.2f} | {r.ksteps:.1f} | "
                  f"{'' if pd.isna(r.f1_mean) else f'{r.f1_mean:.3f} +- {r.f1_std:.3f}'} | {r.fair_std:.3f} |"
                  + (f" diverged in {r.diverged}" if r.diverged else ""))
    (root / "tables" / "by_method.md").write_text("\n".join(md) + "\n")
    cm = ["| claim | scenario | measure | budget | ref | vs | ref mean +- std | other mean +- std | p | verdict |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in claims.iterrows():
        cm.append(f"| {r.claim} | {r.scenario} | {r.measure} | {r.budget} | {r.ref} | {r.other} | "
                  f"{r.ref_mean:.3f} +- {r.ref_std:.3f} | {r.other_mean:.3f} +- {r.other_std:.3f} | "
                  f"{r.p:.3g} | {r.verdict} |")
    (root / "tables" / "claims.md").write_text("\n".join(cm) + "\n")
    print("\n".join(md))
    print()
    print("\n".join(cm))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/replication")
    ap.add_argument("--trials", type=int, default=16, help="tuning trials per method and scenario")
    ap.add_argument("--mnist-trials", type=int, default=8, help="tuning trials per method on mnist-5k scenarios")
    ap.add_argument("--seeds", type=int, default=5, help="fresh seeds 1..N for the evaluation")
    ap.add_argument("--workers", type=int, default=2, help="(scenario, method) units run at once")
    ap.add_argument("--only", nargs="*", help="scenarios to run (default all)")
    ap.add_argument("--methods", nargs="*", help="methods to run (default all)")
    ap.add_argument("--report", action="store_true", help="only redraw tables and plots")
    args = ap.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if not args.report:
        todo = [(s, m) for s, m in units()
                if (not args.only or s in args.only) and (not args.methods or m in args.methods)]
        seeds = list(range(1, args.seeds + 1))
        log = root / "units.jsonl"
        print(f"{len(todo)} (scenario, method) units, {args.trials} trials each "
              f"({args.mnist_trials} on mnist-5k), seeds {seeds}", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as ex:
            futs = {ex.submit(run_unit, str(root), s, m,
                              args.mnist_trials if s.startswith("mnist") else args.trials, seeds): (s, m)
                    for s, m in todo}
            for i, f in enumerate(as_completed(futs), 1):
                s, m = futs[f]
                try:
                    r = f.result()
                except Exception as exc:  # noqa: BLE001
                    r = {"scenario": s, "method": m, "error": f"{type(exc).__name__}: {exc}"}
                with log.open("a") as fh:
                    fh.write(json.dumps(r, default=str) + "\n")
                print(f"[{i}/{len(todo)}] {s} {m}: " + (r.get("error") or
                      f"best val {r['best_val']:.4f} in {r['wall_s']:.0f} s"), flush=True)
        if log.exists():   # keep the newest line of each (scenario, method)
            last = {}
            for line in log.read_text().splitlines():
                r = json.loads(line)
                last[(r["scenario"], r["method"])] = r
            log.write_text("".join(json.dumps(v, default=str) + "\n" for v in last.values()))
    report(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
