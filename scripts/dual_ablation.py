"""Does a binding dual help FLoPS? The tuned dual step against an inert one and stronger ones.

For each shipped synthetic scenario, FLoPS at the per-task defaults is run on fresh seeds with
``algorithm.eta_lambda`` at: the default, 1e-7 (inert: lambda stays ~0 and the exact density
comes from gate scaling alone), 10x and 100x the default. Reported per setting: whether the
constraint binds before prune_start (the expected density at prune_start and the largest
lambda), support F1 / TDR and the test metric, mean +- std over seeds, and a paired t-test
against the default.

    python scripts/dual_ablation.py --out results/defaults/dual_ablation --seeds 5
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SCEN = {"lr": ("datasets/synthetic-lr.toml", "r2"), "lg": ("datasets/synthetic-lg.toml", "accuracy"),
        "mc": ("datasets/synthetic-mc.toml", "accuracy"), "mlc": ("datasets/synthetic-mlc.toml", "micro_f1")}


def one(out: str, scen: str, label: str, factor: float | None, seed: int) -> dict:

    from raysim.config import load_config
    from raysim.runner import run

    path, metric = SCEN[scen]
    cfg = load_config(path, ["cluster.backend='local'", "run.progress=false", "run.plots=false",
                             f"run.seed={seed}", "run.eval_every=5",
                             f"run.run_dir='{out}/runs/{scen}/{label}/seed-{seed}'"])
    default = cfg.algorithm.eta_lambda
    eta = 1e-7 if factor is None else default * factor
    cfg = load_config(path, ["cluster.backend='local'", "run.progress=false", "run.plots=false",
                             f"run.seed={seed}", "run.eval_every=5", f"algorithm.eta_lambda={eta}",
                             f"run.run_dir='{out}/runs/{scen}/{label}/seed-{seed}'"])
    res = run(cfg, console_output=False)
    m = res.metrics
    ps_round = res.summary["prune_start_round"]
    before = m[m["round"] <= ps_round]
    f = res.summary["final"]
    return {"scenario": scen, "setting": label, "eta_lambda": eta, "seed": seed,
            "D_at_prune_start": float(before["expected_density"].iloc[-1]) if len(before) else float("nan"),
            "max_lambda": float(m["lambda"].max()), "rho": cfg.algorithm.rho,
            "tdr": f.get("tdr"), "f1": f.get("f1"), "metric": f.get(metric), "metric_name": metric}


def main() -> int:
    import numpy as np
    import pandas as pd
    from scipy import stats

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/defaults/dual_ablation")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = [("default", 1.0), ("inert", None), ("x10", 10.0), ("x100", 100.0)]
    jobs = [(str(out), s, lab, fac, seed) for s in SCEN if not args.only or s in args.only
            for lab, fac in settings for seed in range(1, args.seeds + 1)]
    with ProcessPoolExecutor(args.workers) as ex:
        rows = list(ex.map(one, *zip(*jobs)))
    df = pd.DataFrame(rows)
    df.to_csv(out / "runs.csv", index=False)
    lines = ["| scenario | eta_lambda setting | E[density] at prune_start (rho) | max lambda | support F1 | TDR | "
             "test metric | p vs default (F1 / metric) |", "|---|---|---|---|---|---|---|---|"]
    for s, g in df.groupby("scenario", sort=False):
        ref = g[g.setting == "default"].set_index("seed")
        for lab, h in g.groupby("setting", sort=False):
            h = h.set_index("seed")
            def pv(col):
                a, b = h[col].astype(float), ref[col].astype(float)
                if lab == "default" or np.allclose(a, b):
                    return "-"
                return f"{stats.ttest_rel(a, b).pvalue:.2g}"
            lines.append(f"| {s} | {lab} ({h.eta_lambda.iloc[0]:.2g}) | {h.D_at_prune_start.mean():.3f} "
                         f"({h.rho.iloc[0]:g}) | {h.max_lambda.mean():.3g} | {h.f1.mean():.3f} +- {h.f1.std():.3f} | "
                         f"{h.tdr.mean():.3f} | {h.metric.mean():.3f} +- {h.metric.std():.3f} "
                         f"({h.metric_name.iloc[0]}) | {pv('f1')} / {pv('metric')} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
