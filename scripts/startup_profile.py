"""Where the seconds before round 1 of a `raysim run` go.

    python scripts/startup_profile.py                      # the default scenario (`raysim run`)
    python scripts/startup_profile.py --set data.n_clients=1000 --repeat 3

Runs, in a fresh process each time (``--repeat``), the steps of ``raysim.runner.run`` one by one
and prints the time of each: imports (the CLI and the runner), the config, ``ray.init``, the
simulation's start-up (server actor, client actors, data building; the split is the one
``RaySimulation`` records in ``startup``), and the first round. The median of the repeats is
printed last. Ray is started and shut down by each repeat, as ``raysim run`` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import raysim.cli  # noqa: F401  (what `raysim run` imports first)
from raysim.runner import run  # noqa: F401
t_import = time.perf_counter()
from raysim.config import load_config
cfg = load_config(None, json.loads(sys.argv[1]) + ["run.progress=false", "run.plots=false", "run.out_dir='/tmp/raysim-startup'"])
t_cfg = time.perf_counter()
from raysim.cluster.driver import RaySimulation, init_ray
init_ray(cfg)
t_ray = time.perf_counter()
sim = RaySimulation(cfg)
t_sim = time.perf_counter()
sim.run_round()
t_round = time.perf_counter()
out = {"imports_s": t_import - t0, "config_s": t_cfg - t_import, "ray_init_s": t_ray - t_cfg,
       "simulation_s": t_sim - t_ray, **{f"  {k}": v for k, v in getattr(sim, "startup", {}).items()},
       "first_round_s": t_round - t_sim, "before_round1_s": t_sim - t0}
sim.close()
import ray
ray.shutdown()
print("STARTUP " + json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    import os

    runs = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args.overrides)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("STARTUP ")), None)
        if p.returncode != 0 or line is None:
            print(p.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(line[len("STARTUP "):])
        r["process_wall_s"] = wall
        runs.append(r)
        la = os.getloadavg()
        print(f"repeat {i + 1} (load average {la[0]:.2f}):")
        for k, v in r.items():
            print(f"  {k:<22} {v:8.2f} s")
    if len(runs) > 1:
        print("median:")
        for k in runs[0]:
            print(f"  {k:<22} {statistics.median(r[k] for r in runs):8.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
