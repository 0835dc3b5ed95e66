"""The in-process backend (``cluster.backend = "local"``): the same metrics as the Ray backend,
no Ray started, and tuning studies / many-run layers that run their trials in process."""

import json

import numpy as np
import pytest
import tomli_w

from raysim.config import load_config
from raysim.runner import run

SMALL = ["data.p=60", "data.n_clients=10", "data.n_per_client=20", "data.test_samples=500",
         "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=10", "run.rounds=6",
         "participation.rate=0.5", "run.progress=false", "run.plots=false"]


@pytest.mark.ray
@pytest.mark.parametrize("algo", ["flops", "fedavg-prune"])
def test_local_backend_matches_ray(ray_session, tmp_path, algo):
    """A local run and a Ray run (3 client actors) of one config give the same metrics."""
    ov = SMALL + [f"run.out_dir='{tmp_path}'", f"algorithm.name='{algo}'"]
    a = run(load_config(None, ov + ["cluster.backend='local'", "run.name='local'"]))
    b = run(load_config(None, ov + ["cluster.num_actors=3", "run.name='ray'"]))
    for col in ("r2", "tdr", "density", "fair_mean", "bytes_up"):
        np.testing.assert_allclose(a.metrics[col].to_numpy(float), b.metrics[col].to_numpy(float),
                                   rtol=1e-5, atol=1e-9, err_msg=col)
    assert a.summary["final"]["nnz"] == b.summary["final"]["nnz"] <= a.summary["m"]
    assert (a.run_dir / "clients.csv").exists() and (a.run_dir / "model.npz").exists()


def test_local_run_does_not_start_ray(tmp_path):
    import ray

    was = ray.is_initialized()
    res = run(load_config(None, SMALL + [f"run.out_dir='{tmp_path}'", "cluster.backend='local'"]))
    assert ray.is_initialized() == was
    fed = json.loads((res.run_dir / "federation.json").read_text())
    assert fed["n_actors"] == 1
    assert res.summary["final"]["r2"] is not None


def test_local_study_runs_trials_in_process(tmp_path):
    """A study whose trials use the local backend completes its trials, with pruning, no Ray."""
    import ray

    from raysim.tuning.spec import load_spec
    from raysim.tuning.study import run_study

    d = {"study": {"name": "loc", "n_trials": 4, "sampler": "random", "seed": 0, "pruner": "median",
                   "n_startup_trials": 1, "n_warmup_rounds": 1},
         "scenario": {"algorithm": "flops", "base": {
             "data": {"p": 50, "rho_true": 0.1, "n_clients": 12, "n_per_client": 20, "test_samples": 300},
             "participation": {"rate": 0.5}, "algorithm": {"rho": 0.1, "batch_size": 10},
             "cluster": {"backend": "local"}}},
         "fixed": {"run.rounds": 4},
         "space": {"eta_theta": {"key": "algorithm.eta_theta", "low": 0.01, "high": 0.3, "log": True}},
         "objective": {"metric": "val_r2", "direction": "maximize", "val_samples": 300}}
    path = tmp_path / "loc.toml"
    path.write_text(tomli_w.dumps(d))
    was = ray.is_initialized()
    res = run_study(load_spec(path), out=tmp_path / "study", progress=False, parallel=1)
    assert ray.is_initialized() == was
    trials = res.study.get_trials()
    assert len(trials) == 4
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert done and all(np.isfinite(t.value) for t in done)
    assert all(t.intermediate_values for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
