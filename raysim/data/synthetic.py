"""Synthetic federations with a known true support (docs/data.md section 1).

* Support S*: round(rho_true p) features drawn once from the seed, shared by all clients.
* beta* on S*: magnitude Uniform(0.5, 1.5) with a random sign, zero elsewhere.
* Client k: beta_k = beta* + h_coef N(0, 1) on S* only; features x ~ N(mu_k, Sigma) with
  Sigma_ij = rho_cor^|i-j| (an AR(1) recursion, no Cholesky) and mu_k ~ N(0, h_cov^2 I);
  n_k = max(n_min, round(n LogNormal(0, sigma_q))).
* lr: y = x . beta_k + noise, noise variance beta*' Sigma beta* / SNR.
* lg: y ~ Bernoulli(sigmoid(x . beta_k)).
* mc (n_classes C): W* ``[p, C]`` has the rows S* non-zero (entries as for beta*), zero
  elsewhere; W_k = W* + h_coef N(0, 1) on the rows S*; y ~ Categorical(softmax(x W_k)).
* mlc (n_labels L): W* as for mc; label l ~ Bernoulli(sigmoid(x . W_k[:, l] + b_l)), with b_l
  solved once (Gauss-Hermite quadrature over the logit's N(0, W*_l' Sigma W*_l) law) so that
  a label is on with probability label_rate (default 0.2).
* Test set: the uniform mixture of the clients' distributions; each client also gets a
  held-out split of round(holdout_frac n_k) samples (at least 1) for the fairness metrics.

Each client's draws come from generators keyed by (seed, purpose, client id), so a client's
data is the same whatever the number of clients or actors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from raysim import rng as rngmod
from raysim.errors import ConfigError
from raysim.data.federation import ClientData, Federation


def ar1_features(rng: np.random.Generator, n: int, p: int, rho: float,
                 mu: np.ndarray | None = None) -> np.ndarray:
    """n samples of N(mu, Sigma), Sigma_ij = rho^|i-j|, by the AR(1) recursion (float32).

    x_0 = e_0 and x_j = rho x_{j-1} + sqrt(1 - rho^2) e_j along the feature axis, computed by
    :func:`ar1_scan` in O(n p log p) time and O(n p) memory (no Python loop over features).
    """
    e = rng.standard_normal((n, p))
    if rho > 0 and p > 1:
        c = np.sqrt(1.0 - rho * rho)
        e *= c
        e[:, 0] /= c
        e = ar1_scan(e, rho)
    if mu is not None:
        e += mu[None, :]
    return e.astype(np.float32)


def ar1_scan(b: np.ndarray, a: float) -> np.ndarray:
    """The recursion x_0 = b_0, x_j = a x_{j-1} + b_j along the last axis, by recursive doubling:
    after the pass with shift d every x_j holds sum_{i < 2d} a^i b_{j-i}, so ceil(log2 p)
    vectorised passes finish it. Only multiplications by powers of |a| <= 1 and additions:
    as stable as the sequential filter. (A pure-numpy scan keeps ``scipy.signal``, half a
    second of import in every process that builds data, out of the actors' start-up.)"""
    x = np.array(b, dtype=np.float64, copy=True)
    p = x.shape[-1]
    d, ad = 1, float(a)
    while d < p:
        x[..., d:] = x[..., d:] + ad * x[..., :-d]
        d, ad = 2 * d, ad * ad
    return x


def toeplitz_quadratic(beta: np.ndarray, support: np.ndarray, rho: float) -> float:
    """beta' Sigma beta for Sigma_ij = rho^|i-j|, in O(|S*|) time and memory.

    Only the support matters. With the support sorted (s_1 < s_2 < ...) and b = beta[S*],
    a_k = b_k + rho^(s_k - s_(k-1)) a_(k-1) sums b_j rho^(s_k - s_j) over j <= k, so
    beta' Sigma beta = sum_k b_k (2 a_k - b_k) (the |S*| x |S*| matrix is never built: at
    p = 1,000,000 and rho_true = 0.05 it would take 20 GB).
    """
    sup = np.asarray(support)
    order = np.argsort(sup, kind="stable")
    sup = sup[order].astype(np.float64)
    b = np.asarray(beta, dtype=np.float64)[np.asarray(support)[order]]
    if b.size == 0:
        return 0.0
    decay = np.empty_like(b)
    decay[0] = 0.0
    if rho > 0:
        decay[1:] = rho ** np.diff(sup)
    else:
        decay[1:] = 0.0
    # a_k = b_k + decay_k a_(k-1): a first-order recursion with a varying coefficient (O(|S*|))
    a = np.empty_like(b)
    acc = 0.0
    for k in range(b.size):
        acc = b[k] + decay[k] * acc
        a[k] = acc
    return float(np.dot(b, 2.0 * a - b))


class SyntheticFederation(Federation):
    """The synthetic generator of docs/data.md section 1 for a ``[data]`` config section."""

    def __init__(self, cfg: Any, seed: int):
        self.cfg = cfg
        self.seed = int(seed)
        self.task = cfg.task
        if self.task not in ("lr", "lg", "mc", "mlc"):
            raise ConfigError(f"data.task = {self.task!r} has no synthetic generator (synthetic tasks: lr, lg, mc, "
                              "mlc); the cnn needs image data (a real dataset)")
        p = cfg.p
        self.p = p
        self.input_shape = (p,)
        self.n_outputs = {"mc": getattr(cfg, "n_classes", 10), "mlc": getattr(cfg, "n_labels", 20)}.get(self.task, 1)
        self.n_clients = cfg.n_clients
        g = rngmod.generator(self.seed, "support")
        s = max(1, int(round(cfg.rho_true * p)))
        self.support = np.sort(g.choice(p, size=s, replace=False))
        self.true_support = np.zeros(p, dtype=bool)
        self.true_support[self.support] = True
        self.beta_star = self._coefficients(g)
        self.noise_var = 0.0
        if self.task == "lr":
            self.noise_var = toeplitz_quadratic(self._beta_vec(self.beta_star), self.support, cfg.rho_cor) / cfg.snr
        self.label_bias = None
        if self.task == "mlc":
            self.label_bias = self._label_bias(getattr(cfg, "label_rate", 0.2))
        self._sizes: np.ndarray | None = None

    # -- ground truth ------------------------------------------------------------------
    def _coefficients(self, g: np.random.Generator) -> np.ndarray:
        """beta* on S* (``[s]``, lr and lg) or the rows S* of W* (``[s, C]``, mc and mlc)."""
        s = len(self.support)
        shape = (s,) if self.n_outputs == 1 and self.task in ("lr", "lg") else (s, self.n_outputs)
        return g.uniform(0.5, 1.5, size=shape) * g.choice([-1.0, 1.0], size=shape)

    def _beta_vec(self, coef_on_support: np.ndarray) -> np.ndarray:
        beta = np.zeros((self.p, *coef_on_support.shape[1:]))
        beta[self.support] = coef_on_support
        return beta

    def _label_bias(self, rate: float) -> np.ndarray:
        """b_l with E[sigmoid(s + b_l)] = rate for s ~ N(0, W*_l' Sigma W*_l) (mlc)."""
        from scipy.optimize import brentq
        from scipy.special import expit

        nodes, weights = np.polynomial.hermite_e.hermegauss(64)
        weights = weights / weights.sum()
        out = np.zeros(self.n_outputs)
        for l in range(self.n_outputs):
            sd = np.sqrt(toeplitz_quadratic(self._beta_vec(self.beta_star[:, l]), self.support, self.cfg.rho_cor))
            out[l] = brentq(lambda b: float(weights @ expit(sd * nodes + b)) - rate, -200.0, 200.0)
        return out

    def client_params(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(beta_k on S*, mu_k or None) of client k."""
        g = rngmod.generator(self.seed, "client-params", k)
        coef = self.beta_star + self.cfg.h_coef * g.standard_normal(self.beta_star.shape)
        mu = self.cfg.h_cov * g.standard_normal(self.p) if self.cfg.h_cov > 0 else None
        return coef, mu

    # -- sizes and shards --------------------------------------------------------------
    def client_sizes(self) -> np.ndarray:
        if self._sizes is None:
            c = self.cfg
            if c.sigma_q > 0:
                ids = np.arange(self.n_clients)
                z = rngmod.normal(self.seed, "client-size", ids, 0, 1)[:, 0]
                sizes = np.maximum(c.n_min, np.round(c.n_per_client * np.exp(c.sigma_q * z)))
            else:
                sizes = np.full(self.n_clients, c.n_per_client)
            self._sizes = sizes.astype(np.int64)
        return self._sizes

    def holdout_size(self, n_k: int) -> int:
        return max(1, int(round(self.cfg.holdout_frac * n_k))) if self.cfg.holdout_frac > 0 else 0

    def _labels(self, g: np.random.Generator, x: np.ndarray, coef: np.ndarray) -> np.ndarray:
        if self.task == "lr":
            y = x.astype(np.float64) @ self._beta_vec(coef) + g.normal(0.0, np.sqrt(self.noise_var), size=x.shape[0])
            return y.astype(np.float32)
        # Only the support columns matter: x[:, S*] @ coef (= x @ W, in O(n |S*| C)).
        lin = x[:, self.support].astype(np.float64) @ coef
        if self.task == "lg":
            return (g.random(x.shape[0]) < _sigmoid(lin)).astype(np.float32)
        if self.task == "mc":
            z = lin - lin.max(1, keepdims=True)
            prob = np.exp(z)
            prob /= prob.sum(1, keepdims=True)
            u = g.random((x.shape[0], 1))
            y = (prob.cumsum(1) < u).sum(1)
            return np.minimum(y, self.n_outputs - 1).astype(np.int64)
        # mlc
        return (g.random(lin.shape) < _sigmoid(lin + self.label_bias[None, :])).astype(np.float32)

    def _draw(self, g: np.random.Generator, n: int, coef: np.ndarray, mu: np.ndarray | None):
        x = ar1_features(g, n, self.p, self.cfg.rho_cor, mu)
        return x, self._labels(g, x, coef)

    def client_data(self, k: int) -> ClientData:
        n_k = int(self.client_sizes()[k])
        h = self.holdout_size(n_k)
        coef, mu = self.client_params(k)
        g = rngmod.generator(self.seed, "client-data", k)
        x, y = self._draw(g, n_k + h, coef, mu)
        return ClientData(x[:n_k], y[:n_k], x[n_k:], y[n_k:])

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """test_samples draws from the uniform mixture of the clients' distributions."""
        return self._mixture("test", self.cfg.test_samples)

    def val_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n draws from the same mixture as the test set, from the independent 'val' streams."""
        return self._mixture("val", n)

    def _mixture(self, purpose: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n draws from the uniform mixture of the clients' distributions, streams keyed by purpose."""
        g = rngmod.generator(self.seed, purpose)
        owner = np.sort(g.integers(0, self.n_clients, size=n))
        ks, counts = np.unique(owner, return_counts=True)
        draws = [self._draw(rngmod.generator(self.seed, f"{purpose}-data", int(k)), int(c), *self.client_params(int(k)))
                 for k, c in zip(ks, counts)]
        return np.concatenate([x for x, _ in draws]), np.concatenate([y for _, y in draws])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)
