"""The steady state of a warm pool: what a batched cycle costs, and where the CPU goes.

    python scripts/bench_warm_cycle.py                      # tuning/lr-ratios.toml, K = 1 2 4 8 16
    python scripts/bench_warm_cycle.py --sizes 8 --repeat 4

Starts a local Ray and one warm pool of the study's scenario (its start is not counted), then
runs batches of K runs of the study's base config (20 rounds; eta_theta differs per run so the
runs differ) on the pool, no Optuna, and prints for each K: the batch's wall time, its cycles,
ms per cycle and ms per trial-round; then, at the largest K, the CPU time per trial-round of
the driver, the pool server and each client actor (psutil). A cycle costs about a + b K: a is
what a cycle costs whatever it carries (Ray's calls, the server's and actors' fixed work), b
what one more run in the batch adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=str(ROOT / "tuning" / "lr-ratios.toml"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="runs per batch (K)")
    ap.add_argument("--repeat", type=int, default=2, help="batches per size (the median is printed)")
    args = ap.parse_args()

    import psutil

    from raysim.cluster.parallel import init_ray_for, shutdown_ray
    from raysim.cluster.warm import WarmFederation
    from raysim.runner import run
    from raysim.tuning.space import check_spec
    from raysim.tuning.spec import load_spec

    base, _ = check_spec(load_spec(args.study), {})
    out = Path(tempfile.mkdtemp(prefix="raysim-bench-cycle-"))
    la = os.getloadavg()
    print(f"bench_warm_cycle: {Path(args.study).name}, {base.data.n_clients} clients, {base.run.rounds} rounds, "
          f"load average {la[0]:.2f} on {os.cpu_count()} cores; output in {out}", flush=True)

    def cfg(i: int, tag: str):
        return base.model_copy(update={
            "run": base.run.model_copy(update={"run_dir": str(out / f"{tag}-{i}"), "progress": False, "plots": False}),
            "algorithm": base.algorithm.model_copy(update={"eta_theta": 0.01 * (1 + i)})})

    started = init_ray_for([base], 1)
    fed = WarmFederation()
    try:
        run(cfg(0, "warmup"), simulation=fed.simulation)          # builds the pool
        pool = next(iter(fed.pools.values()))
        pids = {"driver": os.getpid(), "server": pool.server_info["pid"],
                **{f"actor{i}": a["pid"] for i, a in enumerate(pool.actor_info)}}

        def cpu() -> dict[str, float]:
            return {k: sum(psutil.Process(p).cpu_times()[:2]) for k, p in pids.items()}

        split = None
        for k in args.sizes:
            walls, cycles = [], []
            c0 = cpu()
            for j in range(args.repeat):
                n0 = pool.batcher.cycles
                t = time.perf_counter()
                with ThreadPoolExecutor(k) as ex:
                    list(ex.map(lambda i: run(cfg(i, f"k{k}-{j}"), simulation=fed.simulation), range(k)))
                walls.append(time.perf_counter() - t)
                cycles.append(pool.batcher.cycles - n0)
            c1 = cpu()
            wall, cyc = statistics.median(walls), statistics.median(cycles)
            rounds = k * base.run.rounds
            print(f"K={k:>3}: {wall:6.3f} s a batch, {cyc:.0f} cycles, {1000 * wall / cyc:6.1f} ms a cycle, "
                  f"{1000 * wall / rounds:5.2f} ms a trial-round", flush=True)
            split = (k, {p: 1000 * (c1[p] - c0[p]) / (rounds * args.repeat) for p in pids})
        if split is not None:
            k, per = split
            print(f"CPU ms per trial-round at K={k}: " + ", ".join(f"{p} {v:.2f}" for p, v in per.items())
                  + f"; total {sum(per.values()):.2f} on {os.cpu_count()} cores")
    finally:
        fed.shutdown()
        if started:
            shutdown_ray()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
