"""FLoPS (docs/algorithms.md sections 2-3): one engine step against the same step by hand,
the dual step and its restart, and the exact density after prune_start."""

import math

import numpy as np
import pytest
import torch

from raysim import gates
from raysim import rng as rngmod
from raysim.algorithms import Aggregate
from raysim.config import load_config
from raysim.engine import ClientCohort, ServerCore, build_components
from raysim.data.participation import build_participation

SMALL = ["data.p=30", "data.n_clients=6", "data.n_per_client=9", "data.sigma_q=0.6", "data.n_min=3",
         "data.test_samples=50", "data.rho_true=0.2", "algorithm.rho=0.2", "algorithm.batch_size=4",
         "participation.rate=0.5", "run.rounds=4", "algorithm.eta_lambda=0.5"]


def hand_step(cfg, theta, phi, lam, step):
    """One FLoPS step in plain torch with analytic gradients, one client at a time."""
    comp = build_components(cfg)
    fed = comp.fed
    p, g = cfg.data.p, gates.DEFAULT
    sel = build_participation(cfg.participation, fed.n_clients, cfg.run.seed).select(step).reporting
    n_max = int(fed.client_sizes().max())
    gth = torch.zeros(p + 1, dtype=torch.float64)
    gph = torch.zeros(p, dtype=torch.float64)
    total_n = 0
    for k in sel:
        d = fed.client_data(int(k))
        n_k = d.x.shape[0]
        keys = rngmod.uniform(cfg.run.seed, "batch", [k], step, n_max)[0][:n_k]
        b = min(cfg.algorithm.batch_size, n_k)
        rows = np.argsort(keys, kind="stable")[:b]
        x = torch.tensor(d.x[rows], dtype=torch.float64)
        y = torch.tensor(d.y[rows], dtype=torch.float64)
        u = torch.tensor(rngmod.uniform(cfg.run.seed, "gate-noise", [k], step, p, eps=g.eps)[0])
        s = torch.sigmoid((u.log() - (1 - u).log() + phi) / g.beta)
        zr = s * (g.zeta - g.gamma) + g.gamma
        z = zr.clamp(0, 1)
        w_eff = theta[:p] * z
        resid = x @ w_eff + theta[p] - y
        d_weff = 2.0 / b * (x.T @ resid)
        d_b = 2.0 / b * resid.sum()
        dz_dphi = torch.where((zr > 0) & (zr < 1), (g.zeta - g.gamma) * s * (1 - s) / g.beta, torch.zeros_like(s))
        gth[:p] += n_k * d_weff * z
        gth[p] += n_k * d_b
        gph += n_k * d_weff * theta[:p] * dz_dphi
        total_n += n_k
    gth /= total_n
    gph /= total_n
    a = cfg.algorithm
    pi = torch.sigmoid(phi - g.shift)
    theta_new = theta - a.eta_theta * gth
    phi_new = phi - a.eta_phi * (gph + lam * pi * (1 - pi))
    c = float(torch.sigmoid(phi_new - g.shift).mean()) - a.rho
    lam_new = 0.0 if c <= 0 else max(0.0, lam + a.eta_lambda * c)
    return theta_new, phi_new, lam_new


@pytest.mark.parametrize("step_state", ["initial", "trained"])
def test_engine_step_equals_hand_computation(step_state):
    cfg = load_config(None, SMALL)
    server = ServerCore(cfg)
    cohort = ClientCohort(cfg, np.arange(cfg.data.n_clients))
    part = build_participation(cfg.participation, cfg.data.n_clients, cfg.run.seed)
    step = 0
    if step_state == "trained":  # move away from theta = 0 so every gradient term is exercised
        server.state["theta"] = torch.linspace(-1, 1, cfg.data.p + 1)
        server.state["phi"] = torch.linspace(-2, 3, cfg.data.p)
        server.state["lam"] = 0.7
    theta0 = server.state["theta"].double().clone()
    phi0 = server.state["phi"].double().clone()
    lam0 = float(server.state["lam"])
    sel = part.select(step)
    partial = cohort.train(step, server.payload(), sel.reporting)
    server.apply(step, sel.n_selected, [partial])
    th, ph, lam = hand_step(cfg, theta0, phi0, lam0, step)
    assert torch.allclose(server.state["theta"].double(), th, rtol=1e-4, atol=1e-6)
    assert torch.allclose(server.state["phi"].double(), ph, rtol=1e-4, atol=1e-6)
    assert server.state["lam"] == pytest.approx(lam, rel=1e-5, abs=1e-9)


def _agg_zero(p):
    return Aggregate(mean={"theta": torch.zeros(p + 1), "phi": torch.zeros(p)}, weight=1.0, n_reported=1,
                     client_ids=np.zeros(1), client_loss=np.zeros(1), client_n=np.ones(1),
                     client_steps=np.ones(1), compute_s=0.0, extra=[])


def test_dual_step_and_restart():
    cfg = load_config(None, ["data.p=100", "algorithm.rho=0.1", "algorithm.eta_lambda=0.3",
                             "algorithm.eta_phi=1e-9", "run.rounds=1000", "algorithm.prune_start=1.0"])
    comp = build_components(cfg)
    algo = comp.algo
    from raysim.algorithms import StepContext

    state = algo.init_state(0)  # rho_init 0.5: D(phi) ~ 0.83 > rho
    d0 = float(gates.expected_density(state["phi"].double()))
    state = algo.server_update(state, _agg_zero(100), StepContext(0, 0, comp.schedule))
    assert state["lam"] == pytest.approx(0.3 * (d0 - 0.1), rel=1e-4)
    lam1 = state["lam"]
    state = algo.server_update(state, _agg_zero(100), StepContext(0, 1, comp.schedule))
    assert state["lam"] == pytest.approx(lam1 + 0.3 * (d0 - 0.1), rel=1e-3)  # keeps growing while violated
    # drive the density below rho: the restart sets lambda to exactly zero
    state["phi"] = torch.full((100,), -8.0)
    state = algo.server_update(state, _agg_zero(100), StepContext(0, 2, comp.schedule))
    assert state["lam"] == 0.0


def test_deployed_model_has_at_most_m_nonzeros_after_prune_start_and_at_the_end():
    from raysim.reference import run_reference

    cfg = load_config(None, ["data.p=200", "data.n_clients=20", "data.test_samples=200", "run.rounds=30",
                             "algorithm.rho=0.07", "algorithm.prune_start=0.3"])
    server, rows, _ = run_reference(cfg)
    m = math.floor(0.07 * 200)
    ps_round = server.comp.schedule.prune_start / server.comp.schedule.steps_per_round
    after = [r for r in rows if r["round"] > ps_round]
    assert after and all(r["nnz"] <= m for r in after)
    assert any(r["nnz"] > m for r in rows if r["round"] <= ps_round)  # dense before: the check can fail
    assert int(np.count_nonzero(server.deployed(final=True)[:200])) <= m


def test_final_export_is_sparse_even_if_pruning_never_started():
    from raysim.reference import run_reference

    cfg = load_config(None, ["data.p=100", "data.n_clients=10", "data.test_samples=100", "run.rounds=3",
                             "algorithm.prune_start=1.0"])
    server, rows, _ = run_reference(cfg)
    assert server.state["active"] is None
    assert int(np.count_nonzero(server.deployed(final=True)[:100])) <= 5
    assert rows[-1]["nnz"] <= 5  # the last row evaluates the exported model


def test_dual_is_scale_free_and_binds():
    """lambda prices the expected COUNT of open gates with a step normalised by p: with no data
    gradient, the same eta_lambda moves the expected density along the same path for p = 100 and
    p = 1.7 million, and the constraint binds (D(phi) is driven down to rho) in both."""
    from raysim.algorithms import StepContext, build_algorithm
    from raysim.algorithms.base import Schedule
    from raysim.models import build_model

    paths = {}
    for p in (100, 1_700_000):
        cfg = load_config(None, ["algorithm.rho=0.05", "algorithm.eta_lambda=0.05", "algorithm.eta_phi=1.0",
                                 "algorithm.rho_init=0.5"])
        model = build_model("lr", (p,), 1)
        sch = Schedule(total_steps=10_000, steps_per_round=1, prune_start=10_000, tau_end=0)
        algo = build_algorithm(cfg.algorithm, model, sch)
        state = algo.init_state(0)
        d, lam = [], []
        for t in range(100):
            state = algo.server_update(state, _agg_zero(p), StepContext(0, t, sch))
            d.append(float(gates.expected_density(state["phi"].double())))
            lam.append(state["lam"])
        paths[p] = (np.array(d), np.array(lam))
    (d1, l1), (d2, l2) = paths[100], paths[1_700_000]
    np.testing.assert_allclose(d1, d2, atol=2e-3)
    np.testing.assert_allclose(l1, l2, atol=2e-3, rtol=1e-2)
    assert d1[0] > 0.45 and d1[-1] < 0.06 and d2[-1] < 0.06      # it binds: 0.5 -> rho
