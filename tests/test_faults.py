"""Fault tolerance: client actors killed mid-round, runs killed and resumed, bad checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysim import checkpoint as ckpt
from raysim.config import load_config

#: columns that measure time, not results
TIMING = {"round_s", "client_compute_s", "aggregation_s", "evaluation_s", "clients_per_s", "wall_s"}


#: a tiny scenario with quantity skew (so the work balancing is not trivial)
SMALL = ["data.p=60", "data.n_clients=12", "data.n_per_client=20", "data.test_samples=500",
         "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=10", "participation.rate=0.5",
         "run.progress=false", "run.plots=false", "data.sigma_q=0.8", "run.rounds=8", "run.checkpoint_every=2"]


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SMALL, f"run.run_dir='{tmp_path}'", *extra])


def assert_same_metrics(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-5) -> None:
    assert list(a["round"]) == list(b["round"])
    cols = [c for c in a.columns if c not in TIMING and c in b.columns and c != "status"]
    if "status" in a.columns and "status" in b.columns:
        assert list(a["status"]) == list(b["status"])
    assert "r2" in cols and "density" in cols and "lambda" in cols
    for c in cols:
        x, y = a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7, equal_nan=True, err_msg=c)


@pytest.fixture(scope="module")
def baseline(ray_session, tmp_path_factory):
    """An undisturbed run of the fault-test scenario."""
    from raysim.runner import run

    res = run(_cfg(tmp_path_factory.mktemp("baseline")))
    return res


# -- checkpoint files (no Ray) ------------------------------------------------------------------

def test_checkpoint_atomic_keep_and_corruption(tmp_path):
    for rnd in (2, 4, 6):
        ckpt.save(tmp_path, rnd, {"x": np.arange(rnd), "rows": [{"round": rnd}]})
    assert [r for r, _ in ckpt.list_checkpoints(tmp_path)] == [6, 4]          # previous good one kept
    assert not [f for f in ckpt.checkpoint_dir(tmp_path).iterdir() if ".tmp" in f.name]
    obj, path = ckpt.load_latest(tmp_path)
    assert obj["round"] == 6 and path.name == "round-000006.ckpt"
    # truncated newest (a kill mid-copy, a full disk): detected, previous good one used
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load(path)
    obj, path2 = ckpt.load_latest(tmp_path)
    assert obj["round"] == 4 and np.array_equal(obj["x"], np.arange(4))
    # a flipped byte: checksum mismatch
    raw = bytearray(path2.read_bytes())
    raw[-3] ^= 0xFF
    path2.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load(path2)
    assert ckpt.load_latest(tmp_path) is None
    # a header-only stub is not a checkpoint
    path2.write_bytes(b"RAYSIM")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path2)


# -- client actor killed mid-round ------------------------------------------------------------

def _drive(cfg, kill_round: int | None = None):
    """Run a simulation round by round; optionally SIGKILL a client actor's process right
    after a round's steps were submitted (its tasks are in flight or queued)."""
    import ray

    from raysim.cluster.driver import RaySimulation

    sim = RaySimulation(cfg)
    rows, pids = [], []
    try:
        for rnd in range(1, sim.total_rounds + 1):
            sub = sim.submit_round()
            if rnd == kill_round:
                pid = sim.actor_info[0]["pid"]
                os.kill(pid, signal.SIGKILL)
                pids.append(pid)
            row = sim.finish_round(sub)
            row.update(sim.evaluate(final=rnd == sim.total_rounds))
            rows.append(row)
        pids.append(ray.get(sim.actors[0].ready.remote())["pid"])
    finally:
        sim.close()
    return pd.DataFrame(rows), pids


@pytest.mark.ray
def test_client_actor_killed_mid_round_same_metrics(baseline, tmp_path):
    cfg = _cfg(tmp_path, "cluster.num_actors=2")
    killed, pids = _drive(cfg, kill_round=3)
    assert pids[0] != pids[1], "the client actor was not restarted in a new process"
    assert_same_metrics(baseline.metrics, killed)


# -- run killed and resumed ---------------------------------------------------------------------

class _Crash(RuntimeError):
    pass


def _crash_at(rnd_crash: int):
    def hook(rnd, row):
        if rnd == rnd_crash:
            raise _Crash(f"simulated crash after round {rnd}")
    return hook


@pytest.mark.ray
def test_crash_truncated_checkpoint_resume_same_metrics(baseline, tmp_path):
    """A run dies after round 5; its newest checkpoint (round 4) was cut short; the resumed
    run detects it, continues from round 2 and ends with the metrics of the undisturbed run
    (which used another actor layout and the work balancing)."""
    from raysim.runner import load_resume_config, run

    cfg = _cfg(tmp_path, "cluster.num_actors=3", "cluster.balance='contiguous'")
    with pytest.raises(_Crash):
        run(cfg, on_eval=_crash_at(5))
    assert [r for r, _ in ckpt.list_checkpoints(tmp_path)] == [4, 2]
    assert not (tmp_path / "summary.json").exists()
    newest = ckpt.checkpoint_dir(tmp_path) / "round-000004.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])                    # killed mid-write
    obj, _ = ckpt.load_latest(tmp_path)
    assert obj["round"] == 2 and len(obj["rows"]) == 2
    res = run(load_resume_config(tmp_path), resume=True)
    assert_same_metrics(baseline.metrics, res.metrics)
    assert res.summary["final"]["r2"] == pytest.approx(baseline.summary["final"]["r2"], rel=1e-5)
    assert list(pd.read_csv(tmp_path / "metrics.csv")["round"]) == list(range(1, 9))
    assert [r for r, _ in ckpt.list_checkpoints(tmp_path)] == [6, 4]   # the bad file was replaced


@pytest.mark.ray
def test_sigkilled_run_resumes_from_cli(baseline, ray_session, tmp_path):
    """A real `raysim run` process killed with SIGKILL, then `raysim run --resume`."""
    import ray

    cfg_args = [a for o in SMALL for a in ("--set", o)]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "raysim", "run", *cfg_args, "--set", "run.eval_every=1",
           "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.list_checkpoints(tmp_path):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert ckpt.list_checkpoints(tmp_path)
    assert not (tmp_path / "summary.json").exists()
    from raysim.cli import main

    assert main(["run", "--resume", str(tmp_path), "--no-progress"]) == 0   # joins the test's Ray
    resumed = pd.read_csv(tmp_path / "metrics.csv")
    assert_same_metrics(baseline.metrics.reset_index(drop=True), resumed)
    assert (tmp_path / "summary.json").exists()
