"""Checks made in the driver before a run starts anything (no run folder, no Ray yet).

* the data: missing or corrupt dataset files are reported at once (``raysim.data.real.preflight``);
* the deployed model: ``m = floor(rho * p) = 0`` would deploy an empty model, so the run is
  refused with the smallest ``algorithm.rho`` that keeps one weight;
* memory: an estimate of the run's peak memory (client data, evaluation sets, the server state,
  one step's vectorised working set, one Python process per actor) is compared with the memory
  available on this machine; a run that cannot fit is refused with the estimate and the fix
  instead of thrashing or failing deep inside Ray.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from raysim.config import Config, ConfigError
from raysim.outcome import EMPTY_MODEL, RunRefused

#: resident memory of one Python worker process with torch imported (measured ~250-350 MB)
PROCESS_BYTES = 300 * 2**20
#: float32 [K, P] tensors alive at once in a vectorised client step (copies, gates, grads)
STEP_COPIES = 8
#: float32 [P] tensors held by the server (weights, gates, optimiser moments, broadcasts)
SERVER_COPIES = 10


@dataclass
class Dims:
    input_size: int
    n_outputs: int
    p: int          # gated weights
    P: int          # all parameters
    m: int          # floor(rho * p)
    sizes: Any      # samples per client
    holdout: int    # held-out samples of the largest client
    test: int       # test + validation samples


def dims(cfg: Config) -> Dims:
    """Model and data sizes of a run, from the config (real data: the files are read here)."""
    import numpy as np

    from raysim.data.federation import build_federation
    from raysim.data.real import preflight as data_preflight
    from raysim.models import model_for

    fed = data_preflight(cfg)
    if fed is None:
        fed = build_federation(cfg.data, cfg.run.seed, cfg.partition)
    model = model_for(cfg, fed)
    sizes = np.asarray(fed.client_sizes())
    m = int(math.floor(cfg.algorithm.rho * model.p + 1e-9))
    holdout = fed.holdout_size(int(sizes.max())) if hasattr(fed, "holdout_size") else 0
    test = int(getattr(cfg.data, "test_samples", 0) or 0) + int(cfg.data.val_samples or 0)
    return Dims(int(math.prod(fed.input_shape)), int(fed.n_outputs), int(model.p), int(model.P), m, sizes,
                int(holdout), test)


def estimate_bytes(cfg: Config, d: Dims) -> dict[str, int]:
    """Peak memory of the run on one machine, by component (bytes)."""
    n_clients = int(d.sizes.size)
    n_max = int(d.sizes.max()) if n_clients else 0
    local = cfg.cluster.backend == "local"
    n_actors = 1 if local else cfg.n_actors()
    per_actor = math.ceil(n_clients / n_actors)
    rate = float(getattr(cfg.participation, "rate", 1.0) or 1.0)
    k = min(per_actor, cfg.cluster.max_batch_clients, max(1, math.ceil(rate * n_clients / n_actors) * 2))
    out = {
        # stacked, padded to the largest client, float32 (training + held-out)
        "client data": n_clients * (n_max + d.holdout) * d.input_size * 4,
        # one client generated at a time per actor in float64 (noise + filtered copy)
        "data generation": n_actors * (n_max + d.holdout) * d.input_size * 8 * 2,
        "test/validation sets": d.test * d.input_size * 4 * 2,
        "server state": SERVER_COPIES * d.P * 4,
        "client step working set": n_actors * STEP_COPIES * k * d.P * 4,
        "processes": (n_actors + (0 if local else 2)) * PROCESS_BYTES,
    }
    return out


def available_bytes() -> int | None:
    """MemAvailable of this machine (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**27 else f"{n / 2**20:,.0f} MiB"


def check_model(cfg: Config, d: Dims) -> None:
    if d.m == 0:
        need = 1.0 / d.p
        raise RunRefused(EMPTY_MODEL, (
            f"algorithm.rho = {cfg.algorithm.rho:g} keeps m = floor(rho * p) = floor({cfg.algorithm.rho:g} * {d.p}) = 0 "
            f"weights: the deployed model would be empty. Set algorithm.rho >= {need:.3g} (1/p) for at least one "
            f"weight, e.g. --set algorithm.rho={max(need, 0.01):.3g}"))


def check_memory(cfg: Config, d: Dims, available: int | None = None) -> dict[str, int]:
    """Refuse (ConfigError) a run whose estimate exceeds the memory available on this machine.

    Skipped on a Ray cluster (``cluster.address`` / ``RAY_ADDRESS``: the actors' memory is on
    other machines) and with ``run.memory_check = false``."""
    est = estimate_bytes(cfg, d)
    if not cfg.run.memory_check:
        return est
    if cfg.cluster.backend != "local" and (cfg.cluster.address or os.environ.get("RAY_ADDRESS")):
        return est
    avail = available_bytes() if available is None else available
    total = sum(est.values())
    if avail is not None and total > 0.9 * avail:
        parts = ", ".join(f"{k} {_gb(v)}" for k, v in est.items() if v >= 2**20)
        raise ConfigError(
            f"this run needs about {_gb(total)} of memory but {_gb(avail)} is available on this machine "
            f"({parts}; p = {d.p:,}, {d.sizes.size:,} clients, up to {int(d.sizes.max()):,} samples each). "
            "Lower data.p, data.test_samples / data.val_samples, data.n_clients or data.n_per_client, run it on a "
            "Ray cluster with enough memory "
            "(cluster.address), or set run.memory_check = false to try anyway")
    return est


def check_run(cfg: Config) -> Dims:
    """Every check made before a run starts: data files, empty model, memory."""
    d = dims(cfg)
    check_model(cfg, d)
    check_memory(cfg, d)
    return d
