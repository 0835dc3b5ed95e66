"""The FedAvg CNN trains on mnist-5k through the engine, several clients per client actor."""

import math

import pytest

from raysim.config import load_config
from raysim.runner import run

pytestmark = pytest.mark.ray


def test_cnn_learns_mnist_5k_on_ray_actors(ray_session, tmp_path):
    cfg = load_config("datasets/mnist-5k-cnn.toml", [
        "run.rounds=3", "data.n_clients=6", "data.max_samples=600", "participation.rate=1.0",
        "algorithm.name='fedavg'", "algorithm.batch_size=20",
        "cluster.clients_per_actor=3", "cluster.num_cpus=0.25", "run.progress=false", "run.plots=false",
        f"run.run_dir='{tmp_path / 'cnn'}'"])
    res = run(cfg)
    assert res.summary["n_actors"] == 2 and res.summary["p"] > 1_600_000
    df = res.metrics
    assert df["n_reported"].tolist() == [6, 6, 6]
    # it starts at chance (log loss ln 10 = 2.303) and the test loss goes down round after round
    assert df["log_loss"].iloc[0] < math.log(10) + 0.05
    assert (df["log_loss"].diff().dropna() < 0).all()
    assert df["log_loss"].iloc[-1] < df["log_loss"].iloc[0] - 0.01
