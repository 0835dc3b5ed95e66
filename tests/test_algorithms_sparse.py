"""flops-pa, the entropy variants, fed-ht and fediter-ht (docs/algorithms.md sections 4-6, 9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim import gates
from raysim.algorithms.local import hard_threshold
from raysim.config import load_config
from raysim.engine import ClientCohort, ServerCore
from raysim.metrics import tensor_bytes
from raysim.reference import run_reference

BASE = ["data.p=40", "data.n_clients=8", "data.n_per_client=16", "data.test_samples=300", "data.rho_true=0.1",
        "algorithm.rho=0.1", "run.rounds=6", "run.progress=false", "run.plots=false"]


def cfg_of(*extra):
    return load_config(None, BASE + list(extra))


def test_entropy_gradient_matches_autograd():
    phi = torch.linspace(-8, 8, 101, dtype=torch.float64).requires_grad_(True)
    (g,) = torch.autograd.grad(gates.entropy(phi), phi)
    torch.testing.assert_close(gates.entropy_grad(phi.detach()), g)


@pytest.mark.parametrize("prune", ["none", "now"])
def test_flops_pa_one_local_full_batch_step_equals_a_flops_step(prune):
    """Full participation, one local full-batch step: a FLoPS-PA round is a FLoPS step
    (same gate noise, same mini-batch = all data, lambda and tau held fixed)."""
    extra = ["participation.rate=1.0", "algorithm.batch_size=1000", "data.sigma_q=0.5", "algorithm.tau0=0.3",
             "algorithm.eta_lambda=0.5", "algorithm.rho_init=0.6", "run.steps_per_round=1"]
    if prune == "now":
        extra += ["algorithm.prune_start=0", "algorithm.prune_start_unit='steps'"]
    ref = ServerCore(cfg_of("algorithm.name='flops'", *extra))
    pa = ServerCore(cfg_of("algorithm.name='flops-pa'", *extra))
    for core in (ref, pa):
        # start from non-zero weights and a positive lambda so that every term matters
        core.state["theta"] = 0.2 * torch.randn(core.comp.model.P, generator=torch.Generator().manual_seed(2))
        core.state["lam"] = 0.7
        cohort = ClientCohort(core.cfg, np.arange(8))
        core.apply(0, 8, [cohort.train(0, core.payload(), np.arange(8))])
    for key in ("theta", "phi"):
        torch.testing.assert_close(pa.state[key], ref.state[key], rtol=1e-5, atol=1e-6)
    assert pa.state["lam"] == pytest.approx(ref.state["lam"])
    if prune == "now":
        assert torch.equal(pa.state["active"], ref.state["active"])


def test_flops_pa_trains_only_the_active_set_and_saves_bytes():
    common = ["participation.rate=0.5", "run.rounds=8", "algorithm.prune_start=0.5", "algorithm.batch_size=8"]
    flops, frows, _ = run_reference(cfg_of("algorithm.name='flops'", *common))
    assert flops.comp.schedule.steps_per_round == 2 and frows[0]["step"] == 2
    pa, rows, _ = run_reference(cfg_of("algorithm.name='flops-pa'", "algorithm.local_epochs=2", *common))
    p, P, m = pa.comp.model.p, pa.comp.model.P, pa.comp.algo.m
    k = 4
    # before prune_start: dense theta, phi (+ lambda, tau) down, dense deltas (+ n_k) up, once a round
    assert rows[0]["bytes_down"] == k * (4 * P + 4 * p + 8)
    assert rows[0]["bytes_up"] == k * (4 * P + 4 * p + 4)
    # FLoPS sends the same every step (2 steps a round)
    assert frows[0]["bytes_up"] == 2 * k * (4 * P + 4 * p + 4)
    # after prune_start only T travels
    mt = int(pa.state["active"].sum())
    assert mt <= m
    assert rows[-1]["bytes_up"] == k * (2 * 4 * mt + 4 * (P - p) + 4)
    assert rows[-1]["bytes_down"] == k * (tensor_bytes(p, mt) + 4 * mt + 4 * (P - p) + 8)
    assert rows[-1]["cum_bytes_up"] < 0.4 * frows[-1]["cum_bytes_up"]
    assert rows[-1]["nnz"] <= m
    # the clients trained only T: phi outside T moved only by the server's gate scaling
    assert rows[-1]["density"] <= 0.1 + 1e-9


def test_entropy_variants_default_tau0_and_schedule():
    core, rows, _ = run_reference(cfg_of("algorithm.name='flops-ent'", "run.steps_per_round=1"))
    assert core.comp.algo.tau0 == 0.05
    taus = [r["tau"] for r in rows]
    assert taus[0] == pytest.approx(0.05) and taus[-1] == 0.0
    pa, rows, _ = run_reference(cfg_of("algorithm.name='flops-pa-ent'", "algorithm.tau0=0.2"))
    assert pa.comp.algo.tau0 == 0.2
    assert rows[0]["tau"] == pytest.approx(0.2) and rows[-1]["tau"] == 0.0


def test_hard_threshold_keeps_the_m_largest_per_row():
    v = torch.tensor([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -1.0, 0.2]])
    out = hard_threshold(v, 2)
    assert out.tolist() == [[0.0, -3.0, 2.0, 0.0], [4.0, 0.0, -1.0, 0.0]]


@pytest.mark.parametrize("name", ["fed-ht", "fediter-ht"])
def test_hard_thresholding_models_have_at_most_m_nonzeros_every_round(name):
    cfg = cfg_of(f"algorithm.name='{name}'", "participation.rate=0.5", "algorithm.local_epochs=2",
                 "algorithm.batch_size=4", "data.task='mc'", "data.n_classes=3")
    core = ServerCore(cfg)
    cohort = ClientCohort(cfg, np.arange(8))
    from raysim.data.participation import build_participation

    part = build_participation(cfg.participation, 8, cfg.run.seed)
    m, p = core.comp.algo.m, core.comp.model.p
    assert int(torch.count_nonzero(core.state["theta"][:p])) <= m
    for step in range(cfg.run.rounds):
        sel = part.select(step)
        partial = cohort.train(step, core.payload(), sel.selected)
        core.apply(step, sel.n_selected, [partial])
        nnz = int(np.count_nonzero(core.deployed()[:p]))
        assert 0 < nnz <= m
        row = core.end_round()
        if name == "fediter-ht":
            # every client uploads its own m-sparse model
            assert row["bytes_up"] <= sel.n_selected * (tensor_bytes(p, m) + 4 * (core.comp.model.P - p) + 4)
        else:
            assert row["bytes_up"] == sel.n_selected * (4 * core.comp.model.P + 4)
        assert row["bytes_down"] <= sel.n_selected * (tensor_bytes(p, m) + 4 * (core.comp.model.P - p))


def test_fed_ht_is_h_m_of_the_fedavg_average_and_fediter_thresholds_each_local_step():
    common = ["participation.rate=1.0", "algorithm.local_epochs=2", "algorithm.batch_size=4", "run.rounds=1"]
    avg, _, _ = run_reference(cfg_of("algorithm.name='fedavg'", *common), evaluate=False)
    ht, _, _ = run_reference(cfg_of("algorithm.name='fed-ht'", *common), evaluate=False)
    p, m = ht.comp.model.p, ht.comp.algo.m
    expected = avg.state["theta"].clone()
    expected[:p] = hard_threshold(expected[:p], m)
    torch.testing.assert_close(ht.state["theta"], expected)
    # FedIter-HT: an independent loop over one client's local steps with H_m after each
    cfg = cfg_of("algorithm.name='fediter-ht'", *common, "algorithm.eta_local=0.05")
    core = ServerCore(cfg)
    cohort = ClientCohort(cfg, np.array([3]))
    algo = core.comp.algo
    payload = core.payload()
    from raysim.algorithms.base import StepContext

    plan = algo.local_plan(cohort.data, torch.tensor([0]), StepContext(0, 0, algo.schedule), None)
    w = torch.as_tensor(payload["theta"]).clone()
    for s in range(int(plan["steps"][0])):
        xb, yb, mask, _ = algo.local_batch(cohort.data, torch.tensor([0]), plan, s)
        xv, yv = xb[0][mask[0]], yb[0][mask[0]]
        w = w.clone().requires_grad_(True)
        loss = ((xv @ w[:p] + w[p] - yv) ** 2).mean()
        (g,) = torch.autograd.grad(loss, w)
        w = w.detach() - 0.05 * g
        w[:p] = hard_threshold(w[:p], m)
    partial = cohort.train(0, payload, np.array([3]))
    torch.testing.assert_close(torch.from_numpy(partial.sums["delta"]).float() / partial.weight,
                               w - torch.as_tensor(payload["theta"]), rtol=1e-5, atol=1e-6)
