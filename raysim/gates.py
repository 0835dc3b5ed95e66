"""Hard concrete gates (Louizos, Welling, Kingma, ICLR 2018), as used by FLoPS.

Every gated weight j carries a gate parameter ``phi_j = log alpha_j``. The functions here
are the math of the gates, in plain torch, with no state:

* :func:`sample` - a reparameterised gate sample z in [0, 1] (training);
* :func:`prob_nonzero` - pi_j = P(z_j > 0) = sigmoid(phi_j - beta log(-gamma/zeta));
* :func:`expected_density` - D(phi) = mean_j pi_j, the differentiable stand-in for ||theta||_0/p;
* :func:`deterministic` - zhat_j, the gate used at evaluation;
* :func:`entropy` - H(phi) = sum_j Bernoulli entropy of the on/off state;
* :func:`phi_from_prob` and :func:`scale` - the server-side gate scaling (FLoPS, exact density).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raysim.lazy import torch  # imported on first use (the config reads this module's knobs)

PHI_LIMIT = 30.0  # phi is kept finite and nothing more (a narrow clamp makes low densities unreachable)


@dataclass(frozen=True)
class GateParams:
    """Stretch interval (gamma, zeta) and temperature beta of the hard concrete distribution."""

    gamma: float = -0.1
    zeta: float = 1.1
    beta: float = 2.0 / 3.0
    eps: float = 1e-6

    @property
    def shift(self) -> float:
        """beta * log(-gamma / zeta); -1.5986 with the defaults."""
        return self.beta * math.log(-self.gamma / self.zeta)


DEFAULT = GateParams()


def sample(phi: torch.Tensor, u: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """Gate sample z = clamp(sigmoid((log u - log(1-u) + phi)/beta) (zeta-gamma) + gamma, 0, 1).

    ``u`` are Uniform(eps, 1-eps) draws broadcastable against ``phi``; the gradient reaches
    phi through the reparameterisation.
    """
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + phi) / g.beta)
    return torch.clamp(s * (g.zeta - g.gamma) + g.gamma, 0.0, 1.0)


def prob_nonzero(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """pi_j = P(z_j > 0) = sigmoid(phi_j - beta log(-gamma/zeta))."""
    return torch.sigmoid(phi - g.shift)


def expected_density(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """D(phi) = (1/p) sum_j pi_j."""
    return prob_nonzero(phi, g).mean()


def deterministic(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """zhat_j = clamp(sigmoid(phi_j)(zeta - gamma) + gamma, 0, 1), the evaluation gate."""
    return torch.clamp(torch.sigmoid(phi) * (g.zeta - g.gamma) + g.gamma, 0.0, 1.0)


def entropy(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """H(phi) = sum_j [-pi_j log pi_j - (1-pi_j) log(1-pi_j)] (a sum, so tau acts per gate).

    Written with log-sigmoids so it stays finite (and differentiable) for saturated gates.
    """
    a = phi - g.shift
    pi = torch.sigmoid(a)
    log_pi = torch.nn.functional.logsigmoid(a)
    log_1m = torch.nn.functional.logsigmoid(-a)
    return -(pi * log_pi + (1.0 - pi) * log_1m).sum()


def entropy_grad(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """Closed form of dH/dphi: pi (1 - pi) (log(1-pi) - log pi) = -pi (1-pi) a, a = phi - shift."""
    a = phi - g.shift
    pi = torch.sigmoid(a)
    return -pi * (1.0 - pi) * a


def density_grad(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """Closed form of dD/dphi = pi (1 - pi) / p (D is the mean of pi)."""
    return count_grad(phi, g) / phi.numel()


def count_grad(phi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """Closed form of d(sum_j pi_j)/dphi_j = pi_j (1 - pi_j): the gradient of the expected number
    of non-zero gates. FLoPS' dual variable multiplies this, so the pull lambda puts on one gate
    does not shrink as p grows (docs/algorithms.md section 2)."""
    pi = prob_nonzero(phi, g)
    return pi * (1.0 - pi)


def phi_from_prob(pi: torch.Tensor, g: GateParams = DEFAULT) -> torch.Tensor:
    """Inverse of :func:`prob_nonzero`: phi = logit(pi) + beta log(-gamma/zeta), kept finite."""
    pi = pi.double().clamp(1e-300, 1.0)
    phi = torch.log(pi) - torch.log1p(-pi.clamp(max=1 - 1e-16)) + g.shift
    return phi.clamp(-PHI_LIMIT, PHI_LIMIT)


def init_phi(p: int, rho_init: float, rng: np.random.Generator, std: float = 0.01,
             g: GateParams = DEFAULT) -> torch.Tensor:
    """phi_j ~ Normal(logit(rho_init) + beta log(-gamma/zeta), std): every gate starts with
    P(z_j != 0) = rho_init (up to the small spread), which is what ``algorithm.rho_init`` means
    (docs/algorithms.md section 1)."""
    mu = math.log(rho_init) - math.log1p(-rho_init) + g.shift
    return torch.from_numpy(rng.normal(mu, std, size=p)).float()


def top_m(phi: torch.Tensor, theta: torch.Tensor, m: int, g: GateParams = DEFAULT) -> torch.Tensor:
    """Indices of the active set T: the m gates with the largest pi_j.

    Ties are broken by |theta_tilde_j| (larger first), then by index (smaller first).
    Returns a bool mask of length p.
    """
    p = phi.numel()
    mask = torch.zeros(p, dtype=torch.bool)
    if m <= 0:
        return mask
    pi = prob_nonzero(phi.double(), g).numpy()
    mag = theta.detach().abs().double().numpy()
    order = np.lexsort((np.arange(p), -mag, -pi))  # last key is the primary key
    mask[torch.from_numpy(order[:m].copy())] = True
    return mask


def scale(phi: torch.Tensor, active: torch.Tensor, r: float, g: GateParams = DEFAULT) -> torch.Tensor:
    """Gate scaling with decay r: pi <- 1 - r(1 - pi) on T, pi <- r pi off T; back to phi."""
    pi = prob_nonzero(phi.double(), g)
    pi = torch.where(active, 1.0 - r * (1.0 - pi), r * pi)
    return phi_from_prob(pi, g).to(phi.dtype)
