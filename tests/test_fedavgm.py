"""FedAvgM, FedAvg with server momentum (docs/algorithms.md section 6): the update rule, beta = 0
is FedAvg exactly, and momentum changes the run and still converges on the default problem."""

from __future__ import annotations

import numpy as np
import torch

from raysim.algorithms import Aggregate, Schedule, StepContext, build_algorithm
from raysim.config import load_config
from raysim.models import build_model
from raysim.reference import run_reference

SMALL = ["data.p=30", "data.n_clients=8", "data.n_per_client=16", "data.test_samples=300", "data.rho_true=0.1",
         "algorithm.rho=0.1", "run.rounds=5", "run.progress=false", "run.plots=false", "participation.rate=0.5",
         "algorithm.local_epochs=2", "algorithm.batch_size=4", "data.sigma_q=0.4"]


def _agg(delta: torch.Tensor, weight: float = 1.0) -> Aggregate:
    z = np.zeros(0)
    return Aggregate(mean={"delta": delta} if weight > 0 else {}, weight=weight, n_reported=int(weight > 0),
                     client_ids=z, client_loss=z, client_n=z, client_steps=z, compute_s=0.0, extra=[])


def test_server_update_is_v_beta_v_plus_delta_then_theta_plus_lr_v():
    beta, lr = 0.7, 0.4
    params = load_config(None, ["algorithm.name='fedavgm'", f"algorithm.server_momentum={beta}",
                                f"algorithm.server_lr={lr}", "data.p=5"]).algorithm
    algo = build_algorithm(params, build_model("lr", (5,), 1), Schedule(3, 1, 3, 3))
    s0 = algo.init_state(0)
    d1, d2 = torch.randn(algo.model.P), torch.randn(algo.model.P)
    ctx = lambda t: StepContext(seed=0, step=t, schedule=algo.schedule)   # noqa: E731
    s1 = algo.server_update(s0, _agg(d1), ctx(0))
    s2 = algo.server_update(s1, _agg(d2), ctx(1))
    v2 = beta * d1 + d2
    torch.testing.assert_close(s1["theta"], s0["theta"] + lr * d1)
    torch.testing.assert_close(s2["momentum"], v2)
    torch.testing.assert_close(s2["theta"], s0["theta"] + lr * d1 + lr * v2)
    assert torch.equal(s0["momentum"], torch.zeros_like(d1))          # the old state is not changed
    # a round in which nobody reports changes neither theta nor v
    s3 = algo.server_update(s2, _agg(torch.zeros(0), weight=0.0), ctx(2))
    assert torch.equal(s3["theta"], s2["theta"]) and torch.equal(s3["momentum"], s2["momentum"])


def test_zero_momentum_is_fedavg_exactly_and_momentum_changes_the_run():
    fedavg, rows_a, _ = run_reference(load_config(None, SMALL + ["algorithm.name='fedavg'"]))
    zero, rows_b, _ = run_reference(load_config(None, SMALL + ["algorithm.name='fedavgm'",
                                                                  "algorithm.server_momentum=0.0"]))
    assert torch.equal(zero.state["theta"], fedavg.state["theta"])
    assert [r["cum_bytes_up"] for r in rows_b] == [r["cum_bytes_up"] for r in rows_a]      # v never travels
    assert [r["cum_bytes_down"] for r in rows_b] == [r["cum_bytes_down"] for r in rows_a]
    moved, _, _ = run_reference(load_config(None, SMALL + ["algorithm.name='fedavgm'",
                                                           "algorithm.server_momentum=0.5"]), evaluate=False)
    assert not torch.allclose(moved.state["theta"], fedavg.state["theta"])


def test_fedavgm_converges_on_the_default_linear_problem(tmp_path):
    """The default scenario (synthetic lr, p = 1000, 100 clients, 10% a round), local backend.
    At its defaults (beta = 0.9, server_lr = 1) the test R^2 rises at every evaluation to well
    above 0.75; at FedAvg's effective step server_lr / (1 - beta) = 1 (Hsu et al.'s comparison)
    it ends where FedAvg ends."""
    from raysim.runner import run

    common = ["cluster.backend='local'", "run.progress=false", "run.plots=false", "run.eval_every=10",
              f"run.out_dir='{tmp_path}'"]

    def r2(*extra):
        res = run(load_config(None, common + list(extra)))
        assert res.summary["status"] == "ok"
        return res.metrics["r2"].dropna().to_numpy()

    default = r2("algorithm.name='fedavgm'")
    assert np.all(np.diff(default) > 0) and default[-1] > 0.75, default
    same_step = r2("algorithm.name='fedavgm'", "algorithm.server_lr=0.1")
    fedavg = r2("algorithm.name='fedavg'")
    assert abs(same_step[-1] - fedavg[-1]) < 0.02, (same_step[-1], fedavg[-1])
