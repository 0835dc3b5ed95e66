"""Partitioners of a real dataset over clients, and heterogeneity statistics (docs/data.md section 3).

A partition maps every sample of the training pool to at most one client. It is computed
once from ``(seed, partition parameters, n_clients)`` by every process that needs it (the
server and each client actor), with the same result, so a client's data never depends on the
number of actors or on the order in which clients are built.

* ``iid``: a seeded permutation of the pool cut into equal slices. With
  ``partition.n_per_client`` set, client k takes the k-th slice of that size, so its data
  does not depend on the number of clients either.
* ``dirichlet(alpha)``: for every class c, proportions q_c ~ Dirichlet(alpha 1_N) over the
  clients and the (shuffled) samples of c are cut by the cumulative proportions. Clients
  left with fewer than ``min_samples`` samples receive samples taken at random from the
  largest clients (a deterministic repair instead of unbounded re-drawing, which never
  succeeds for small alpha and many clients).
* ``shards(k)``: the pool sorted by label (random order within a label) is cut into k N
  shards of equal size and every client receives k shards chosen by a seeded permutation.
* ``quantity(sigma_q)``: IID labels, client sizes proportional to LogNormal(0, sigma_q)
  (keyed by client id), at least ``min_samples``.

Heterogeneity statistics (:func:`label_heterogeneity`): for every client its label
distribution is compared with the global one (total variation and Jensen-Shannon
divergence, base 2, both in [0, 1]); the means, maxima and the number of classes per client
summarise the label skew, the size statistics the quantity skew.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raysim import rng as rngmod
from raysim.errors import ConfigError


def _sizes_equal(total: int, n_clients: int) -> np.ndarray:
    base, rem = divmod(total, n_clients)
    return np.full(n_clients, base, dtype=np.int64) + (np.arange(n_clients) < rem)


def _slices(perm: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [perm[bounds[k]: bounds[k + 1]] for k in range(sizes.size)]


def _check_pool(total: int, need: int, what: str, fix: str) -> None:
    if need > total:
        raise ConfigError(f"{what} needs {need} training samples but the pool has {total}; {fix}")


def partition_iid(labels: np.ndarray, n_clients: int, seed: int, n_per_client: int | None = None) -> list[np.ndarray]:
    total = labels.shape[0]
    perm = rngmod.generator(seed, "partition-iid").permutation(total)
    if n_per_client is None:
        _check_pool(total, n_clients, f"partition.kind = 'iid' over data.n_clients = {n_clients}",
                    "use fewer clients")
        return _slices(perm, _sizes_equal(total, n_clients))
    _check_pool(total, n_clients * n_per_client,
                f"partition.kind = 'iid' with {n_clients} clients x partition.n_per_client = {n_per_client}",
                "lower partition.n_per_client or data.n_clients (or leave n_per_client unset to divide the pool)")
    return _slices(perm, np.full(n_clients, n_per_client, dtype=np.int64))


def partition_quantity(labels: np.ndarray, n_clients: int, seed: int, sigma_q: float, min_samples: int,
                       n_per_client: int | None = None) -> list[np.ndarray]:
    total = labels.shape[0]
    _check_pool(total, n_clients * min_samples,
                f"partition.kind = 'quantity' with {n_clients} clients x partition.min_samples = {min_samples}",
                "lower partition.min_samples or data.n_clients")
    z = rngmod.normal(seed, "partition-size", np.arange(n_clients), 0, 1)[:, 0]
    w = np.exp(sigma_q * z)
    if n_per_client is None:
        # the whole pool, in proportion to the log-normal weights, at least min_samples each
        budget = total - n_clients * min_samples
        extra = w / w.sum() * budget
        base = np.floor(extra).astype(np.int64)
        base[np.argsort(-(extra - base), kind="stable")[: int(budget - base.sum())]] += 1
        sizes = min_samples + base
    else:
        # n_k = max(min_samples, round(n LogNormal(0, sigma_q))): client k's slice depends only on
        # the clients before it
        sizes = np.maximum(min_samples, np.round(n_per_client * w)).astype(np.int64)
        _check_pool(total, int(sizes.sum()),
                    f"partition.kind = 'quantity' with {n_clients} clients of mean size partition.n_per_client = "
                    f"{n_per_client} (sigma_q = {sigma_q})",
                    "lower partition.n_per_client or data.n_clients (or leave n_per_client unset to divide the pool)")
    perm = rngmod.generator(seed, "partition-quantity").permutation(total)
    return _slices(perm, sizes)


def _dirichlet(g: np.random.Generator, alpha: float, n: int) -> np.ndarray:
    """Dirichlet(alpha 1_n) by normalised gammas; robust for tiny alpha (all-zero draws)."""
    x = g.standard_gamma(alpha, size=n)
    s = x.sum()
    if not np.isfinite(s) or s <= 0:
        x = np.zeros(n)
        x[g.integers(n)] = 1.0
        return x
    return x / s


def partition_dirichlet(labels: np.ndarray, n_clients: int, seed: int, alpha: float,
                        min_samples: int) -> list[np.ndarray]:
    total = labels.shape[0]
    _check_pool(total, n_clients * min_samples,
                f"partition.kind = 'dirichlet' with {n_clients} clients x partition.min_samples = {min_samples}",
                "lower partition.min_samples or data.n_clients")
    g = rngmod.generator(seed, "partition-dirichlet")
    owner = np.empty(total, dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[g.permutation(idx.size)]
        q = _dirichlet(g, alpha, n_clients)
        cuts = np.round(np.cumsum(q) * idx.size).astype(np.int64)
        counts = np.diff(np.concatenate([[0], np.minimum(cuts, idx.size)]))
        counts[-1] += idx.size - counts.sum()
        owner[idx] = np.repeat(np.arange(n_clients), counts)
    _repair_min(owner, n_clients, min_samples, rngmod.generator(seed, "partition-repair"))
    return _groups(owner, n_clients, rngmod.generator(seed, "partition-order"))


def _repair_min(owner: np.ndarray, n_clients: int, min_samples: int, g: np.random.Generator) -> None:
    """Move random samples from the currently largest clients to clients below min_samples."""
    counts = np.bincount(owner, minlength=n_clients)
    short = np.flatnonzero(counts < min_samples)
    if short.size == 0:
        return
    for k in short:
        need = min_samples - counts[k]
        while need > 0:
            donor = int(np.argmax(counts))
            take_n = int(min(need, counts[donor] - min_samples))
            if take_n <= 0:  # cannot happen while the pool has n_clients * min_samples samples
                raise ConfigError("partition repair failed: too few samples for partition.min_samples")
            pool = np.flatnonzero(owner == donor)
            moved = pool[g.choice(pool.size, size=take_n, replace=False)]
            owner[moved] = k
            counts[donor] -= take_n
            counts[k] += take_n
            need -= take_n


def _groups(owner: np.ndarray, n_clients: int, g: np.random.Generator) -> list[np.ndarray]:
    """Indices of every client (in a seeded random order)."""
    order = g.permutation(owner.size)
    o = owner[order]
    srt = np.argsort(o, kind="stable")
    counts = np.bincount(owner, minlength=n_clients)
    return _slices(order[srt], counts)


def partition_shards(labels: np.ndarray, n_clients: int, seed: int, k: int) -> list[np.ndarray]:
    total = labels.shape[0]
    n_shards = k * n_clients
    _check_pool(total, n_shards, f"partition.kind = 'shards' with {n_clients} clients x "
                                 f"partition.shards_per_client = {k}", "use fewer clients or shards per client")
    g = rngmod.generator(seed, "partition-shards")
    tie = g.random(total)
    order = np.lexsort((tie, labels))           # by label, random order within a label
    shards = np.array_split(order, n_shards)
    assign = g.permutation(n_shards)
    return [np.concatenate([shards[s] for s in assign[i * k:(i + 1) * k]]) for i in range(n_clients)]


def make_partition(cfg: Any, labels: np.ndarray, n_clients: int, seed: int) -> list[np.ndarray]:
    """Client index arrays into the training pool for a ``[partition]`` config section.

    ``labels``: the per-sample label used to split (for multi-label data the first label).
    """
    kind = cfg.kind
    if kind == "iid":
        return partition_iid(labels, n_clients, seed, cfg.n_per_client)
    if kind == "quantity":
        return partition_quantity(labels, n_clients, seed, cfg.sigma_q, cfg.min_samples, cfg.n_per_client)
    if kind == "dirichlet":
        return partition_dirichlet(labels, n_clients, seed, cfg.alpha, cfg.min_samples)
    if kind == "shards":
        return partition_shards(labels, n_clients, seed, cfg.shards_per_client)
    if kind == "natural":
        raise ConfigError("partition.kind = 'natural' splits by the dataset's own key (data.dataset = 'guimmun': "
                          "one community per client); it needs such a dataset")
    raise ConfigError(f"partition.kind = {kind!r} is not supported (iid, dirichlet, shards, quantity, natural)")


def partition_natural(groups: np.ndarray, n_clients: int, seed: int, min_samples: int = 2,
                      what: str = "group") -> list[np.ndarray]:
    """A natural partition: every client holds whole groups (e.g. one community each).

    ``groups`` is the natural key of every pool sample. Groups with fewer than ``min_samples``
    samples are left out; the others are shuffled (seeded) and dealt to the clients in turn, so
    with ``n_clients`` equal to the number of groups each client is exactly one group.
    """
    whats = what[:-1] + "ies" if what.endswith("y") else what + "s"
    keys, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts >= min_samples)
    if n_clients > keep.size:
        raise ConfigError(f"partition.kind = 'natural': the data has {keep.size} {whats} with at least "
                          f"partition.min_samples = {min_samples} training samples ({keys.size} in all); "
                          f"set data.n_clients <= {keep.size} (each client holds whole {whats})")
    order = rngmod.generator(seed, "partition-natural").permutation(keep)
    owner = np.full(keys.size, -1, dtype=np.int64)
    owner[order] = np.arange(order.size) % n_clients
    sample_owner = owner[inv]
    return [np.flatnonzero(sample_owner == k) for k in range(n_clients)]


# ---- heterogeneity statistics ------------------------------------------------------------------

def label_heterogeneity(counts: np.ndarray) -> dict[str, float]:
    """Label-skew statistics of a ``[clients, labels]`` count matrix.

    Total variation TV_k = 0.5 sum_c |P_k(c) - P(c)| and Jensen-Shannon divergence (base 2)
    between client k's label distribution P_k and the global one P, averaged over clients
    (and their maxima); ``classes_per_client`` counts labels with at least one sample;
    ``label_entropy_ratio`` is the mean entropy of P_k over the entropy of P (1: as mixed as
    the whole data set, 0: one label each).
    """
    counts = np.asarray(counts, dtype=np.float64)
    tot = counts.sum(1, keepdims=True)
    have = tot[:, 0] > 0
    c = counts[have]
    pk = c / c.sum(1, keepdims=True)
    p = counts.sum(0) / max(counts.sum(), 1e-12)
    tv = 0.5 * np.abs(pk - p[None, :]).sum(1)
    m = 0.5 * (pk + p[None, :])

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1.0)), 0.0)
        return t.sum(-1)

    js = 0.5 * kl(pk, m) + 0.5 * kl(p[None, :], m)

    def ent(q: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(q > 0, q * np.log2(q), 0.0).sum(-1)

    h_glob = float(ent(p))
    return {"n_labels": int(counts.shape[1]),
            "label_tv_mean": float(tv.mean()) if tv.size else 0.0,
            "label_tv_max": float(tv.max()) if tv.size else 0.0,
            "label_js_mean": float(js.mean()) if js.size else 0.0,
            "label_js_max": float(js.max()) if js.size else 0.0,
            "classes_per_client_mean": float((c > 0).sum(1).mean()) if c.size else 0.0,
            "label_entropy_ratio": float(ent(pk).mean() / h_glob) if h_glob > 0 and pk.size else 1.0}
