"""Hard concrete gate math (docs/algorithms.md section 1) against independent computations."""

import math

import numpy as np
import pytest
import torch

from raysim import gates
from raysim import rng as rngmod

G = gates.DEFAULT


def test_shift_constant():
    assert G.shift == pytest.approx(-1.5986, abs=1e-4)


@pytest.mark.parametrize("phi", [-3.0, -1.0, 0.0, 0.7, 2.5])
def test_pi_matches_monte_carlo_frequency_of_nonzero_gate(phi):
    n = 400_000
    u = torch.from_numpy(rngmod.uniform(7, "mc", [0], 0, n, eps=G.eps)[0])
    z = gates.sample(torch.full((n,), phi, dtype=torch.float64), u)
    freq = float((z > 0).double().mean())
    pi = float(gates.prob_nonzero(torch.tensor(phi, dtype=torch.float64)))
    se = math.sqrt(pi * (1 - pi) / n)
    assert abs(freq - pi) < 5 * se + 1e-4


def test_sample_is_in_unit_interval_and_reaches_both_ends():
    u = torch.from_numpy(rngmod.uniform(1, "s", [0], 0, 10_000, eps=G.eps)[0])
    z = gates.sample(torch.zeros(10_000, dtype=torch.float64), u)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0
    assert bool(((z >= 0) & (z <= 1)).all())


def test_gradient_reaches_phi_through_the_sample():
    phi = torch.zeros(5, requires_grad=True)
    u = torch.full((5,), 0.5)
    gates.sample(phi, u).sum().backward()
    # at u = 0.5, phi = 0: s = 0.5, z = 0.5 (inside (0, 1)), dz/dphi = (zeta - gamma) s (1 - s) / beta
    expected = (G.zeta - G.gamma) * 0.25 / G.beta
    assert torch.allclose(phi.grad, torch.full((5,), expected))


def test_deterministic_gate_formula_and_saturation():
    phi = torch.tensor([-30.0, math.log(1 / 11), 0.0, 2.0, 30.0], dtype=torch.float64)
    zhat = gates.deterministic(phi)
    manual = torch.clamp(torch.sigmoid(phi) * 1.2 - 0.1, 0, 1)
    assert torch.allclose(zhat, manual)
    assert zhat[0] == 0.0 and zhat[-1] == 1.0
    # sigmoid(phi) = 1/12 is the closing point: zhat = 0 there
    assert float(gates.deterministic(torch.tensor(math.log(1 / 11), dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)


def test_entropy_is_bernoulli_sum_and_its_gradient_matches_autograd():
    phi = torch.linspace(-6, 6, 25, dtype=torch.float64, requires_grad=True)
    pi = gates.prob_nonzero(phi)
    manual = (-(pi * pi.log()) - (1 - pi) * (1 - pi).log()).sum()
    h = gates.entropy(phi)
    assert float(h.detach()) == pytest.approx(float(manual.detach()), rel=1e-10)
    (g,) = torch.autograd.grad(h, phi)
    assert torch.allclose(gates.entropy_grad(phi.detach()), g, atol=1e-12)
    # maximal (log 2 per gate) where pi = 1/2, i.e. phi = shift
    one = gates.entropy(torch.tensor([G.shift], dtype=torch.float64))
    assert float(one) == pytest.approx(math.log(2))


def test_entropy_stays_finite_for_saturated_gates():
    phi = torch.tensor([-30.0, 30.0], requires_grad=True)
    h = gates.entropy(phi)
    h.backward()
    assert torch.isfinite(h) and torch.isfinite(phi.grad).all()


def test_density_and_its_gradient():
    phi = torch.randn(50, dtype=torch.float64, requires_grad=True)
    d = gates.expected_density(phi)
    assert float(d.detach()) == pytest.approx(float(torch.sigmoid(phi.detach() - G.shift).mean()))
    (g,) = torch.autograd.grad(d, phi)
    assert torch.allclose(gates.density_grad(phi.detach()), g)
    (gc,) = torch.autograd.grad(gates.prob_nonzero(phi).sum(), phi)
    assert torch.allclose(gates.count_grad(phi.detach()), gc)


def test_phi_from_prob_inverts_pi_and_stays_finite():
    phi = torch.linspace(-10, 10, 21, dtype=torch.float64)
    assert torch.allclose(gates.phi_from_prob(gates.prob_nonzero(phi)), phi, atol=1e-8)
    extreme = gates.phi_from_prob(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.isfinite(extreme).all() and float(extreme.abs().max()) <= gates.PHI_LIMIT


@pytest.mark.parametrize("rho_init", [0.05, 0.3, 0.5, 0.9])
def test_init_phi_starts_every_gate_at_p_nonzero_rho_init(rho_init):
    """rho_init is the initial P(z != 0), measured by sampling the gates, not logit(phi)."""
    phi = gates.init_phi(20_000, rho_init, np.random.default_rng(0))
    assert float(gates.expected_density(phi.double())) == pytest.approx(rho_init, abs=2e-3)
    assert float(phi.std()) == pytest.approx(0.01, rel=0.05)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(1)).clamp(1e-6, 1 - 1e-6)
    freq = float((gates.sample(phi, u) > 0).double().mean())
    assert freq == pytest.approx(rho_init, abs=0.015)


def test_top_m_ranks_by_pi_then_magnitude_then_index():
    phi = torch.tensor([1.0, 3.0, 1.0, 1.0, -2.0, 3.0])
    theta = torch.tensor([0.5, 0.1, 2.0, 0.5, 9.0, 0.1])
    mask = gates.top_m(phi, theta, 3)
    # pi ties at phi=3 (1, 5) go first; then among phi=1: |theta| 2.0 (index 2) beats 0.5
    assert mask.nonzero().flatten().tolist() == [1, 2, 5]
    mask4 = gates.top_m(phi, theta, 4)  # index 0 beats index 3 on the index tie-break
    assert mask4.nonzero().flatten().tolist() == [0, 1, 2, 5]
    assert gates.top_m(phi, theta, 0).sum() == 0


def test_gate_scaling_moves_pi_as_specified_and_deploys_at_most_m():
    p, m, r = 200, 10, 0.9
    phi = torch.randn(p, generator=torch.Generator().manual_seed(0)) * 2
    theta = torch.randn(p, generator=torch.Generator().manual_seed(1))
    active = gates.top_m(phi, theta, m)
    new = gates.scale(phi, active, r)
    pi0 = gates.prob_nonzero(phi.double())
    pi1 = gates.prob_nonzero(new.double())
    assert torch.allclose(pi1[active], 1 - r * (1 - pi0[active]), atol=1e-5)
    assert torch.allclose(pi1[~active], r * pi0[~active], atol=1e-6)
    # repeated scaling: off-T gates close completely, so theta * zhat restricted to T has <= m non-zeros
    for _ in range(300):
        active = gates.top_m(phi, theta, m)
        phi = gates.scale(phi, active, r)
    deployed = theta * gates.deterministic(phi)
    deployed = torch.where(active, deployed, torch.zeros_like(deployed))
    assert int((deployed != 0).sum()) <= m
    assert int((gates.deterministic(phi) > 0).sum()) == m
