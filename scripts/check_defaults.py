"""Every algorithm at its defaults on every shipped synthetic scenario: converged or diverged?

Runs each (scenario, algorithm) pair once, in process (cluster.backend = "local"), with nothing
set but the scenario file and the algorithm's name, and reports the run's status (ok /
diverged / ...), the test metric, support recovery and the final density.

    python scripts/check_defaults.py --out results/defaults/all_algorithms --seed 5
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raysim.registry import names  # noqa: E402 - every registered algorithm (docs/algorithms.md section 10)

ALGORITHMS = names()
METRIC = {"lr": "r2", "lg": "accuracy", "mc": "accuracy", "mlc": "micro_f1"}


def one(out: str, scen: str, algo: str, seed: int) -> dict:
    import time

    from raysim.config import load_config
    from raysim.runner import run

    name = Path(scen).stem
    run_dir = Path(out) / "runs" / name / algo
    cfg = load_config(scen, ["cluster.backend='local'", "run.progress=false", "run.plots=false",
                             f"run.seed={seed}", f"algorithm.name='{algo}'", "run.eval_every=10",
                             f"run.run_dir='{run_dir}'"])
    t0 = time.perf_counter()
    row = {"scenario": name, "algorithm": algo, "task": cfg.data.task, "rounds": cfg.run.rounds}
    try:
        res = run(cfg, console_output=False)
        s = res.summary
    except Exception as exc:  # noqa: BLE001 - a failing run is a row of the table, not a crash
        summ = run_dir / "summary.json"
        s = json.loads(summ.read_text()) if summ.exists() else {"status": f"error: {type(exc).__name__}: {exc}"}
    f = s.get("final", {})
    row.update({"status": s.get("status", "ok"), "metric_name": METRIC[cfg.data.task],
                "metric": f.get(METRIC[cfg.data.task]), "tdr": f.get("tdr"), "f1": f.get("f1"),
                "density": f.get("density"), "wall_s": round(time.perf_counter() - t0, 1)})
    return row


def main() -> int:
    import pandas as pd

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/defaults/all_algorithms")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scenarios", nargs="*", default=sorted(str(p) for p in Path("datasets").glob("synthetic-*.toml")))
    ap.add_argument("--algorithms", nargs="*", default=ALGORITHMS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), s, a, args.seed) for s in args.scenarios for a in args.algorithms]
    with ProcessPoolExecutor(args.workers) as ex:
        rows = list(ex.map(one, *zip(*jobs)))
    df = pd.DataFrame(rows)
    df.to_csv(out / "table.csv", index=False)
    fmt = lambda v: "" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    lines = [f"seed {args.seed}; command: python scripts/check_defaults.py --out {args.out} --seed {args.seed}", "",
             "| scenario | algorithm | rounds | status | test metric | TDR | F1 | density |", "|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        lines.append(f"| {r.scenario} | {r.algorithm} | {r.rounds} | {r.status} | {fmt(r.metric)} ({r.metric_name}) | "
                     f"{fmt(r.tdr)} | {fmt(r.f1)} | {fmt(r.density)} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = df[df.status != "ok"]
    print(f"\n{len(df) - len(bad)} of {len(df)} runs ok; not ok: {len(bad)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
