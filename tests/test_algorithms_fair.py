"""ser (sign-entropy, double backprop) and fedeba (FedEBA+ aggregation) (docs/algorithms.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.algorithms.ser import sign_entropy
from raysim.config import load_config
from raysim.engine import ClientCohort, ServerCore
from raysim.reference import run_reference

BASE = ["data.p=30", "data.n_clients=8", "data.n_per_client=16", "data.test_samples=300", "data.rho_true=0.1",
        "algorithm.rho=0.1", "run.rounds=3", "run.progress=false", "run.plots=false", "participation.rate=0.5",
        "algorithm.local_epochs=2", "algorithm.batch_size=5", "data.sigma_q=0.5"]


def cfg_of(*extra):
    return load_config(None, BASE + list(extra))


@pytest.mark.parametrize("base,mu", [("fedavg", 0.0), ("fedprox", 0.3)])
def test_ser_with_rho_s_zero_is_its_base(base, mu):
    ref_name = "fedavg" if base == "fedavg" else "fedprox"
    ref_mu = [f"algorithm.mu={mu}"] if ref_name == "fedprox" else []      # fedavg has no mu
    ref, _, _ = run_reference(cfg_of(f"algorithm.name='{ref_name}'", *ref_mu), evaluate=False)
    ser, _, _ = run_reference(cfg_of("algorithm.name='ser'", f"algorithm.ser_base='{base}'", f"algorithm.mu={mu}",
                                     "algorithm.rho_s=0.0"), evaluate=False)
    torch.testing.assert_close(ser.state["theta"], ref.state["theta"], rtol=1e-6, atol=1e-7)
    on, _, _ = run_reference(cfg_of("algorithm.name='ser'", "algorithm.rho_s=1.0"), evaluate=False)
    assert not torch.allclose(on.state["theta"], ref.state["theta"])


def test_ser_local_step_differentiates_through_the_gradient():
    """One local step of one client against torch.func: grad of loss + rho_s H_sign(grad loss)."""
    cfg = cfg_of("algorithm.name='ser'", "algorithm.rho_s=0.5", "algorithm.kappa=3.0", "algorithm.local_epochs=1",
                 "algorithm.batch_size=1000", "algorithm.eta_local=0.1", "data.task='lg'")
    core = ServerCore(cfg)
    core.state["theta"] = 0.3 * torch.randn(core.comp.model.P, generator=torch.Generator().manual_seed(0))
    cohort = ClientCohort(cfg, np.array([2]))
    partial = cohort.train(0, core.payload(), np.array([2]))
    d = core.comp.fed.client_data(2)
    x, y = torch.from_numpy(d.x).double(), torch.from_numpy(d.y).double()
    p = cfg.data.p

    def loss(w):
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:p] + w[p], y)

    def objective(w):
        g = torch.func.grad(loss)(w)
        q = torch.sigmoid(3.0 * g)
        h = -(q * torch.log(q) + (1 - q) * torch.log(1 - q)).mean()
        return loss(w) + 0.5 * h

    w0 = core.state["theta"].double()
    expected = -0.1 * torch.func.grad(objective)(w0)
    got = torch.from_numpy(partial.sums["delta"]) / partial.weight
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # and the regulariser really changes the step
    plain = -0.1 * torch.func.grad(loss)(w0)
    assert (got - plain).abs().max() > 1e-4


def test_sign_entropy_is_the_mean_bernoulli_entropy():
    g = torch.tensor([[0.0, 3.0, -0.2]], dtype=torch.float64)
    q = torch.sigmoid(2.0 * g)
    ref = (-(q * q.log() + (1 - q) * (1 - q).log())).mean(-1)
    torch.testing.assert_close(sign_entropy(g, 2.0), ref)


def test_fedeba_with_no_alignment_and_huge_temperature_is_fedavg():
    ref, _, _ = run_reference(cfg_of("algorithm.name='fedavg'"), evaluate=False)
    eba, _, _ = run_reference(cfg_of("algorithm.name='fedeba'", "algorithm.eba_alignment=0.0",
                                     "algorithm.eba_temperature=1e12"), evaluate=False)
    torch.testing.assert_close(eba.state["theta"], ref.state["theta"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("a", [0.0, 0.3])
def test_fedeba_weights_are_a_softmax_of_the_losses_over_all_actors(a):
    """The server's update equals an independent computation from per-client deltas and losses,
    whether the clients come in one message or split over three actors."""
    T = 0.7
    cfg = cfg_of("algorithm.name='fedeba'", f"algorithm.eba_alignment={a}", f"algorithm.eba_temperature={T}",
                 "data.task='lg'", "data.h_coef=1.0")
    core = ServerCore(cfg)
    core.state["theta"] = 0.2 * torch.randn(core.comp.model.P, generator=torch.Generator().manual_seed(4))
    payload = core.payload()
    ids = np.arange(8)
    singles = [ClientCohort(cfg, np.array([k])).train(0, payload, np.array([k])) for k in ids]
    n = np.array([s.client_n[0] for s in singles], dtype=np.float64)
    F = np.array([s.client_loss[0] for s in singles], dtype=np.float64)
    deltas = np.stack([s.sums["delta"] / s.weight for s in singles])
    q = n / n.sum()
    pk = q * np.exp(F / T)
    pk /= pk.sum()
    assert np.ptp(F) > 0.05                       # the weights really differ from q
    expected = core.state["theta"].double().numpy() + (1 - a) * pk @ deltas + a * q @ deltas
    for split in ([ids], [ids[:3], ids[3:5], ids[5:]]):
        c = ServerCore(cfg)
        c.state["theta"] = core.state["theta"].clone()
        parts = [ClientCohort(cfg, b).train(0, payload, b) for b in split]
        c.apply(0, 8, parts)
        np.testing.assert_allclose(c.state["theta"].numpy(), expected, rtol=1e-5, atol=1e-6)
    # losses are at the broadcast model, on all the client's training data
    d = core.comp.fed.client_data(5)
    z = torch.from_numpy(d.x) @ core.state["theta"][:30] + core.state["theta"][30]
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(d.y))
    assert F[5] == pytest.approx(float(ref), rel=1e-5)
