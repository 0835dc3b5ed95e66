"""The engine on real Ray actors: layout independence, the default scenario, run outputs."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from raysim.config import ConfigError, load_config
from raysim.reference import run_reference
from raysim.runner import run

pytestmark = pytest.mark.ray

TIMING = {"round_s", "client_compute_s", "aggregation_s", "evaluation_s", "clients_per_s", "wall_s"}


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    if "status" in df:                      # the run outcome is a label, not a metric
        assert set(df["status"]) == {"ok"}
    return df[[c for c in df.columns if c not in TIMING and c != "status"]].astype(float)


def test_metrics_do_not_depend_on_the_actor_layout(ray_session, small_overrides):
    base = small_overrides + ["data.n_clients=12", "data.sigma_q=0.5", "run.rounds=8", "algorithm.prune_start=0.4"]
    frames = {}
    for cpa in (12, 5, 2):
        res = run(load_config(None, base + [f"cluster.clients_per_actor={cpa}", "cluster.num_cpus=0.25"]))
        assert res.summary["n_actors"] == math.ceil(12 / cpa)
        frames[cpa] = _numeric(res.metrics)
    server, rows, _ = run_reference(load_config(None, base))
    frames["reference"] = _numeric(pd.DataFrame(rows)[frames[12].columns])
    ref = frames[12]
    assert len(ref) == 8 and ref["nnz"].iloc[-1] <= ref["m"].iloc[-1]
    for key, df in frames.items():
        np.testing.assert_allclose(df.to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-7, err_msg=str(key))


def test_default_scenario_recovers_the_support(ray_session, tmp_path):
    res = run(load_config(None, [f"run.run_dir='{tmp_path / 'default'}'", "run.progress=false"]))
    final = res.summary["final"]
    assert final["nnz"] <= 50 and final["density"] <= 0.05
    assert final["tdr"] >= 0.95 and final["r2"] >= 0.9
    d = res.run_dir
    for name in ("config.toml", "metrics.csv", "summary.json", "clients.csv", "federation.json", "model.npz",
                 "density_lambda.png", "test_r2.png", "support.png", "soft_iou.png", "bytes.png"):
        assert (d / name).exists(), name
    metrics = pd.read_csv(d / "metrics.csv")
    assert len(metrics) == 100 and metrics["round"].tolist() == list(range(1, 101))
    assert (metrics["cum_bytes_up"].diff().dropna() > 0).all()
    theta = np.load(d / "model.npz")["theta"]
    assert np.count_nonzero(theta[:1000]) <= 50
    assert json.loads((d / "summary.json").read_text())["m"] == 50
    clients = pd.read_csv(d / "clients.csv")
    assert len(clients) == 100 and clients["score"].notna().all()


def test_round_rows_carry_bytes_and_timing(ray_session, small_overrides):
    res = run(load_config(None, small_overrides + ["run.eval_every=2", "run.rounds=5"]))
    df = res.metrics
    assert df["round"].tolist() == [2, 4, 5]
    # FLoPS per step: each selected client downloads theta (p+1) and phi (p); uploads both gradients and n_k
    p, steps = 60, res.summary["steps_per_round"]
    per_client_down = 4 * (p + 1) + 4 * p
    assert df["bytes_down"].iloc[0] == 2 * steps * 5 * per_client_down  # 2 rounds x steps x 5 clients
    assert df["bytes_up"].iloc[0] == 2 * steps * 5 * (per_client_down + 4)
    for col in ("round_s", "client_compute_s", "aggregation_s", "evaluation_s"):
        assert (df[col] >= 0).all()


def test_too_many_cpus_requested_fails_with_the_fix(ray_session, small_overrides):
    cfg = load_config(None, small_overrides + ["cluster.num_cpus=3", "cluster.num_actors=2"])
    with pytest.raises(ConfigError, match="lower cluster.num_cpus"):
        run(cfg)


def test_run_many_runs_side_by_side_in_placement_groups(ray_session, small_overrides, tmp_path):
    from raysim.many import run_many

    cfgs = [load_config(None, small_overrides + [f"run.seed={s}", f"run.run_dir='{tmp_path / str(s)}'",
                                                  "cluster.num_cpus=0.25", "cluster.server_num_cpus=0.25"])
            for s in (1, 2)]
    res = run_many(cfgs, max_parallel=2, progress=False)
    assert [r.summary["seed"] for r in res] == [1, 2]
    assert res[0].summary["final"]["r2"] != res[1].summary["final"]["r2"]
    import time

    deadline = time.time() + 30  # placement groups are released asynchronously
    while ray_session.available_resources().get("CPU", 0) < 4.0 - 1e-6 and time.time() < deadline:
        time.sleep(0.2)
    assert ray_session.available_resources().get("CPU", 0) == pytest.approx(4.0)  # groups released
