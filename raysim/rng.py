"""Layout-independent random streams.

Every random draw in raysim is keyed by ``(seed, purpose, client id, step)`` so that a
client's data, mini-batches and gate noise do not depend on how many clients exist, how
they are spread over actors, or in which order they are processed.

Two tools:

* :func:`generator` returns a ``numpy.random.Generator`` seeded from the key (used where a
  per-client loop is fine, e.g. building a client's data once).
* :func:`uniform` / :func:`normal` are *counter-based*: a vectorised SplitMix64 hash of the
  key and an element counter. They draw for a whole cohort of clients in one array
  operation, with no Python loop over clients, and give bit-identical numbers for a client
  whatever cohort it is drawn with.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Iterable

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@functools.lru_cache(maxsize=256)
def purpose_code(purpose: str) -> int:
    """Stable 63-bit integer for a purpose string (python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=8).digest(), "little") >> 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


_MASK = 0xFFFFFFFFFFFFFFFF


def _mix_int(x: int) -> int:
    """:func:`_mix` of one 64-bit value, in Python integers (the same bits)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=4096)
def _base_key(seed: int, purpose: str, step: int) -> np.uint64:
    """The key of ``(seed, purpose, step)`` that each client id is mixed into."""
    base = _mix_int((seed & _MASK) ^ purpose_code(purpose))
    return np.uint64(_mix_int((base + (step & _MASK) * 0x9E3779B97F4A7C15) & _MASK))


def _keys(seed: int, purpose: str, client_ids: np.ndarray, step: int) -> np.ndarray:
    base = _base_key(int(seed), purpose, int(step))
    with np.errstate(over="ignore"):
        ids = np.asarray(client_ids, dtype=np.int64).astype(np.uint64)
        return _mix(base + (ids + np.uint64(1)) * _M1)


def uniform(seed: int, purpose: str, client_ids: Iterable[int] | np.ndarray, step: int, n: int,
            eps: float = 0.0) -> np.ndarray:
    """Uniform(eps, 1 - eps) draws, shape ``[len(client_ids), n]``, float64.

    Row k depends only on ``(seed, purpose, client_ids[k], step)`` and the column index.
    """
    return uniform_rows(_keys(seed, purpose, np.asarray(client_ids), step), n, eps)


def row_keys(seed: int, purpose: str, client_ids: Iterable[int] | np.ndarray, step: int) -> np.ndarray:
    """The per-row keys of :func:`uniform` (uint64, one per client id)."""
    return _keys(seed, purpose, np.asarray(client_ids), step)


def uniform_rows(keys: np.ndarray, n: int, eps: float = 0.0) -> np.ndarray:
    """:func:`uniform` from precomputed :func:`row_keys`: rows keyed at different steps (the
    runs of a fused pass) are drawn in one array operation, each exactly as alone."""
    with np.errstate(over="ignore"):
        ctr = np.arange(n, dtype=np.uint64)
        bits = _mix(keys[:, None] + (ctr[None, :] + np.uint64(1)) * _GOLDEN)
    u = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)  # [0, 1)
    if eps > 0:
        u = eps + (1.0 - 2.0 * eps) * u
    return u


def normal(seed: int, purpose: str, client_ids: Iterable[int] | np.ndarray, step: int, n: int) -> np.ndarray:
    """Standard normal draws (Box-Muller on two counter-based uniforms), shape ``[K, n]``."""
    u = uniform(seed, purpose, client_ids, step, 2 * n, eps=1e-12)
    u1, u2 = u[:, :n], u[:, n:]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def generator(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator keyed by ``(seed, purpose, *keys)``; independent of everything else."""
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, purpose_code(purpose)]
                                 + [int(k) for k in keys])
