"""Trials per hour of a tuning study, and cells per hour of a small stress grid, run warm and
batched (the default) and cold (``--cold``: fresh actors in a placement group per trial/cell).

    python scripts/bench_study.py                                   # lr-ratios: 48 trials each way
    python scripts/bench_study.py --warm-trials 48 --cold-trials 8 --parallel 8 --cold-parallel 2
    python scripts/bench_study.py --skip-stress                     # the study only
    python scripts/bench_study.py --long-trials 480                 # and a 480-trial warm study

Both modes run the same number of trials by default: with its own Ray, a mode's one-off costs
(Ray's start and stop, the warm pool's start) are spread over its trials, so a cold study of
fewer trials would look slower per trial than a cold study of the same size (``--cold-trials``
shortens the cold mode, at that cost in fairness; it matters little with ``--ray shared``).

Each mode runs in a fresh study folder under ``--out`` (default: a temporary folder), in this
process. ``--ray own`` (as ``raysim tune`` on a laptop): each mode starts and stops its own local
Ray, and the wall time counts everything from the call to the end of the last trial (Ray start
and stop, actors, data, trials), not the report. ``--ray shared`` (as on a running cluster, e.g.
``ray job submit``): the script starts one local Ray instance first and both modes run on it;
Ray's own start and stop (about 4 s on a 2-core laptop, paid once by either mode) are then not
counted. ``--ray both`` (the default) prints both. The
machine's load (``os.getloadavg``) is printed with the numbers: they mean little on a busy machine
unless both modes ran under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: a small stress grid whose cells share their data: 2 algorithms x 2 rho x 2 eta_theta (flops's knob, set in
#: [algorithm.flops]: the fedavg cells of the two values are the same run), one seed
STRESS = {
    "run": {"rounds": 10, "progress": False, "plots": False},
    "data": {"p": 100, "rho_true": 0.1, "n_clients": 500, "n_per_client": 20, "test_samples": 1000, "h_coef": 0.3},
    "participation": {"rate": 0.05},
    "algorithm": {"name": "flops", "rho": 0.1, "batch_size": 10},
    "cluster": {"clients_per_actor": 250, "num_cpus": 0.5, "server_num_cpus": 0.5},
    "stress": {"name": "bench", "algorithms": ["flops", "fedavg"], "seeds": [0], "metric": "r2",
               "axes": {"algorithm.rho": [0.05, 0.1], "algorithm.flops.eta_theta": [0.05, 0.2]}},
}


def load() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {os.cpu_count()} cores"


def bench_study(study: str, n: int, parallel: int, cold: bool, out: Path) -> dict:
    from raysim.tuning.spec import load_spec
    from raysim.tuning.study import run_study

    spec = load_spec(study)
    before = load()
    t0 = time.perf_counter()
    res = run_study(spec, n_trials=n, parallel=parallel, out=out, progress=False, report=False, cold=cold)
    wall = time.perf_counter() - t0
    states: dict[str, int] = {}
    for t in res.study.get_trials():
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"mode": "cold" if cold else "warm", "trials": res.n_new, "parallel": parallel, "wall_s": round(wall, 1),
            "per_hour": round(res.n_new / wall * 3600, 1), "states": states, "timing": res.timing,
            "load_before": before, "load_after": load()}


def _split(r: dict) -> str:
    """Where a study's wall time went (``StudyResult.timing``)."""
    from raysim.tuning.report import time_split

    return time_split({**(r.get("timing") or {}), "warm": r["mode"] == "warm"})


def bench_stress(cold: bool, parallel: int, out: Path) -> dict:
    from raysim.stress import load_grid, run_grid

    path = out / "bench-stress.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(STRESS))
    grid = load_grid(path, out=str(out / "grid"))
    before = load()
    t0 = time.perf_counter()
    info = run_grid(grid, max_parallel=parallel, progress=False, warm=not cold)
    wall = time.perf_counter() - t0
    return {"mode": "cold" if cold else "warm", "cells": info["ran"], "failed": info["failed"],
            "parallel": parallel, "wall_s": round(wall, 1), "per_hour": round(info["ran"] / wall * 3600, 1),
            "load_before": before, "load_after": load()}


class _ray_for:
    """``shared``: one local Ray instance for the modes run inside (sized for the cold mode's
    parallel runs, as ``raysim tune --cold`` sizes its own); ``own``: nothing (each mode starts
    and stops its own)."""

    def __init__(self, mode: str, args: argparse.Namespace):
        self.mode, self.args = mode, args

    def __enter__(self):
        if self.mode == "shared":
            from raysim.cluster.parallel import init_ray_for
            from raysim.tuning.space import check_spec
            from raysim.tuning.spec import load_spec

            cfg, _ = check_spec(load_spec(self.args.study), {})
            self.started = init_ray_for([cfg], max(self.args.cold_parallel, 1))
        return self

    def __exit__(self, *exc):
        if self.mode == "shared" and self.started:
            from raysim.cluster.parallel import shutdown_ray

            shutdown_ray()
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=str(ROOT / "tuning" / "lr-ratios.toml"))
    ap.add_argument("--warm-trials", type=int, default=48)
    ap.add_argument("--cold-trials", type=int, default=None, help="default: as many as --warm-trials")
    ap.add_argument("--parallel", type=int, default=8, help="warm: trials batched together")
    ap.add_argument("--cold-parallel", type=int, default=2, help="cold: trials at once (placement groups)")
    ap.add_argument("--skip-study", action="store_true")
    ap.add_argument("--skip-stress", action="store_true")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--ray", choices=("own", "shared", "both"), default="both",
                    help="own: each mode starts its own local Ray (counted); shared: both modes on one Ray "
                         "instance started first (not counted); both (default)")
    ap.add_argument("--long-trials", type=int, default=0,
                    help="also run a warm study of this many trials with its own Ray, and compare its rate "
                         "with the cold own-Ray rate of this run (how the ratio grows with the study's size)")
    ap.add_argument("--out", help="folder for the studies and grids (default: a temporary folder)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.cold_trials is None:
        args.cold_trials = args.warm_trials
    out = Path(args.out or tempfile.mkdtemp(prefix="raysim-bench-study-"))
    results: dict = {"machine": load(), "out": str(out)}
    print(f"bench_study: {results['machine']}; output in {out}", flush=True)
    if not args.skip_study:
        modes = ["own", "shared"] if args.ray == "both" else [args.ray]
        for ray_mode in modes:
            with _ray_for(ray_mode, args):
                rows = [bench_study(args.study, args.warm_trials, args.parallel, False, out / f"study-warm-{ray_mode}")]
                print(json.dumps(rows[-1]), flush=True)
                if not args.skip_cold:
                    rows.append(bench_study(args.study, args.cold_trials, args.cold_parallel, True,
                                            out / f"study-cold-{ray_mode}"))
                    print(json.dumps(rows[-1]), flush=True)
            results[f"study_{ray_mode}_ray"] = rows
            what = ("each mode starts and stops its own Ray (counted)" if ray_mode == "own"
                    else "both modes on one running Ray instance (its start not counted)")
            print(f"\nstudy {Path(args.study).name}: {what}")
            for r in rows:
                print(f"  {r['mode']:<5} {r['trials']:>4} trials  {r['parallel']} at a time  {r['wall_s']:>8.1f} s  "
                      f"{r['per_hour']:>9.1f} trials/hour   ({r['load_before']})")
                print(f"        {_split(r)}")
            if len(rows) == 2:
                results[f"study_speedup_{ray_mode}_ray"] = rows[0]["per_hour"] / rows[1]["per_hour"]
                print(f"  warm / cold: {results[f'study_speedup_{ray_mode}_ray']:.1f}x trials/hour", flush=True)
        if args.long_trials:
            r = bench_study(args.study, args.long_trials, args.parallel, False, out / "study-warm-long")
            print(json.dumps(r), flush=True)
            results["study_long_own_ray"] = r
            print(f"\nstudy {Path(args.study).name}, a longer warm study with its own Ray (counted)")
            print(f"  warm  {r['trials']:>4} trials  {r['parallel']} at a time  {r['wall_s']:>8.1f} s  "
                  f"{r['per_hour']:>9.1f} trials/hour   ({r['load_before']})")
            print(f"        {_split(r)}")
            cold = [x for x in results.get("study_own_ray", []) if x["mode"] == "cold"]
            if cold:
                results["study_long_speedup_own_ray"] = r["per_hour"] / cold[0]["per_hour"]
                print(f"  against the cold own-Ray rate above ({cold[0]['per_hour']:.1f} trials/hour, "
                      f"{cold[0]['trials']} trials): {results['study_long_speedup_own_ray']:.1f}x", flush=True)
    if not args.skip_stress:
        rows = [bench_stress(False, args.parallel, out / "stress-warm")]
        print(json.dumps(rows[-1]), flush=True)
        if not args.skip_cold:
            rows.append(bench_stress(True, args.cold_parallel, out / "stress-cold"))
            print(json.dumps(rows[-1]), flush=True)
        results["stress"] = rows
        print("\nstress grid (2 algorithms x 2 rho x 2 eta_theta, 500 clients, 10 rounds)")
        for r in rows:
            print(f"  {r['mode']:<5} {r['cells']:>4} cells  {r['parallel']} at a time  {r['wall_s']:>8.1f} s  "
                  f"{r['per_hour']:>9.1f} cells/hour   ({r['load_before']})")
        if len(rows) == 2:
            results["stress_speedup"] = rows[0]["per_hour"] / rows[1]["per_hour"]
            print(f"  warm / cold: {results['stress_speedup']:.1f}x cells/hour")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
