"""What batching costs a study's search: the best objective a study finds with its trials run
one at a time, against K at a time (batched on a warm pool), with and without Optuna's
constant liar.

    python scripts/study_quality.py                                   # lr-ratios, 48 trials, seeds 0-5
    python scripts/study_quality.py --trials 48 --seeds 0 1 2 3 4 5 6 7 --parallel 8
    python scripts/study_quality.py --json results/tuning/batching.json

Trials asked at the same time are sampled from the same history: TPE without the constant
liar may draw K similar points, so a batched study explores less per trial than a sequential
one, and more trials per hour would buy less. Each setting runs the same study (the data and
everything but the sampler seed fixed) once per sampler seed, on one local Ray instance
started here, warm. Printed per setting: the mean, median and worst over seeds of the best
objective value found, and the mean of each study's five best; higher is better for a
maximised objective. The seeds are paired: setting A beats setting B on seed s when its best
value is higher on that seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def settings(parallel: int) -> list[tuple[str, int, bool]]:
    return [("one at a time", 1, False), (f"{parallel} at a time", parallel, False),
            (f"{parallel} at a time, constant liar", parallel, True)]


def one_study(spec, seed: int, k: int, liar: bool, n: int, out: Path) -> dict:
    import optuna

    from raysim.tuning.study import run_study

    name = f"{spec.study.name}-k{k}-{'liar' if liar else 'plain'}-s{seed}"
    s = spec.model_copy(update={"study": spec.study.model_copy(
        update={"seed": seed, "constant_liar": liar, "name": name})})
    t0 = time.perf_counter()
    res = run_study(s, n_trials=n, parallel=k, out=out / name, progress=False, report=False)
    wall = time.perf_counter() - t0
    sign = 1.0 if s.objective.directions[0] == "maximize" else -1.0
    vals = sorted((t.values[0] for t in res.study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and t.values), key=lambda v: -sign * v)
    return {"seed": seed, "parallel": k, "constant_liar": liar, "wall_s": round(wall, 1),
            "complete": len(vals), "best": vals[0] if vals else None,
            "top5_mean": statistics.mean(vals[:5]) if vals else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=str(ROOT / "tuning" / "lr-ratios.toml"))
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--parallel", type=int, default=8, help="K, the batched settings' trials at a time")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from raysim.cluster.parallel import init_ray_for, shutdown_ray
    from raysim.tuning.space import check_spec
    from raysim.tuning.spec import load_spec

    spec = load_spec(args.study)
    if spec.objective.multi:
        raise SystemExit("study_quality: a single-objective study is needed (its best value is compared)")
    base, _ = check_spec(spec, {})
    out = Path(tempfile.mkdtemp(prefix="raysim-study-quality-"))
    print(f"study_quality: {Path(args.study).name}, {args.trials} trials, seeds {args.seeds}, objective "
          f"{spec.objective.metrics[0]} ({spec.objective.directions[0]}); output in {out}", flush=True)
    started = init_ray_for([base], 1)
    rows = []
    try:
        for seed in args.seeds:
            for label, k, liar in settings(args.parallel):
                r = one_study(spec, seed, k, liar, args.trials, out)
                r["setting"] = label
                rows.append(r)
                print(f"  seed {seed}  {label:<32} best {r['best']:.4f}  top-5 mean {r['top5_mean']:.4f}  "
                      f"{r['complete']} complete  {r['wall_s']} s", flush=True)
    finally:
        if started:
            shutdown_ray()
    summary = []
    ref = {r["seed"]: r["best"] for r in rows if r["parallel"] == 1}
    sign = 1.0 if spec.objective.directions[0] == "maximize" else -1.0
    print(f"\n{'setting':<34} {'mean best':>10} {'median':>8} {'worst':>8} {'top-5':>8} {'beats 1-at-a-time':>18}")
    for label, k, liar in settings(args.parallel):
        mine = [r for r in rows if r["setting"] == label]
        best = [r["best"] for r in mine]
        s = {"setting": label, "parallel": k, "constant_liar": liar, "mean_best": statistics.mean(best),
             "median_best": statistics.median(best), "worst_best": min(best, key=lambda v: sign * v),
             "mean_top5": statistics.mean(r["top5_mean"] for r in mine),
             "wins_vs_sequential": sum(sign * r["best"] > sign * ref[r["seed"]] for r in mine),
             "mean_wall_s": statistics.mean(r["wall_s"] for r in mine)}
        summary.append(s)
        wins = "-" if k == 1 else f"{s['wins_vs_sequential']} of {len(mine)}"
        print(f"{label:<34} {s['mean_best']:>10.4f} {s['median_best']:>8.4f} {s['worst_best']:>8.4f} "
              f"{s['mean_top5']:>8.4f} {wins:>18}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"study": Path(args.study).name, "trials": args.trials,
                                               "seeds": args.seeds, "runs": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
