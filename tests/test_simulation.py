"""The Simulation interface and its backends as the run loop opens them (docs/architecture.md,
"Layers" and "Backends"): the Ray backend ends the Ray instance it started, and a run on real
data reads its files once in the driver."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_ray_run_reads_real_data_once_in_the_driver(ray_session, tmp_path, monkeypatch):
    """runner.run checks the data (raysim.preflight.check_run) and opens the Ray backend with
    the check done: the driver builds the real federation once, not again in RaySimulation."""
    from raysim.config import load_config
    from raysim.data import real
    from raysim.runner import run

    built = []
    init = real.RealFederation.__init__

    def counting(self, *a, **kw):
        built.append(1)
        init(self, *a, **kw)

    monkeypatch.setattr(real.RealFederation, "__init__", counting)
    cfg = load_config(None, ["data.kind='real'", "data.dataset='digits'", "data.task='mc'", "data.n_clients=8",
                             "run.rounds=2", "run.plots=false", "run.progress=false", "cluster.num_actors=1",
                             "cluster.num_cpus=0.5", "cluster.server_num_cpus=0.5",
                             f"run.run_dir='{tmp_path / 'run'}'"])
    res = run(cfg, console_output=False)
    assert res.summary["status"] == "ok" and res.summary["n_actors"] == 1
    assert len(built) == 1, f"the driver built the real federation {len(built)} times"


def test_ray_backend_ends_the_ray_instance_it_started(tmp_path):
    """open_simulation starts Ray when none runs; the simulation's close() ends it (the run
    loop itself never touches Ray)."""
    code = f"""
import ray
from raysim.config import load_config
from raysim.simulation import open_simulation
cfg = load_config(None, ["data.p=30", "data.n_clients=6", "data.n_per_client=10", "data.test_samples=100",
                         "run.rounds=1", "cluster.num_actors=1", "cluster.num_cpus=0.5", "cluster.server_num_cpus=0.5"])
sim = open_simulation(cfg)
up = ray.is_initialized()
row = sim.run_round()
sim.close()
print(up, row["round"], ray.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["True", "1", "False"], out.stdout


def test_a_local_ray_instance_is_stopped_whole_monitor_first(tmp_path):
    """stop_local_ray kills Ray's autoscaler monitor before ray.shutdown (which stops the GCS
    first; the monitor then waited on it until a SIGTERM timeout, a second per local run), and
    no process of the instance outlives it. Fails if Ray's private node object changes shape
    (stop_local_ray then falls back to the plain, slower shutdown)."""
    code = """
import os, ray
from raysim.cluster.driver import start_local_ray, stop_local_ray
start_local_ray(1.0, logging_level="ERROR", log_to_driver=False)
node = ray._private.worker._global_node
procs = {t: [i.process for i in infos] for t, infos in node.all_processes.items()}
monitor = procs["monitor"][0]
seen = {}
real = ray.shutdown
def shutdown(*a, **k):
    seen["monitor_alive"] = monitor.poll() is None
    return real(*a, **k)
ray.shutdown = shutdown
stop_local_ray()
alive = [t for t, ps in procs.items() for p in ps if p.poll() is None]
print(seen["monitor_alive"], ray.is_initialized(), alive)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False False []", out.stdout
