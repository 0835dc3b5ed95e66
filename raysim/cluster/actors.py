"""Ray actors: thin wrappers around :class:`~raysim.engine.ClientCohort` and
:class:`~raysim.engine.ServerCore`. All Ray code of raysim lives in this package."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import ray

from raysim.config import Config, ConfigError


def config_error_of(exc: BaseException) -> ConfigError | None:
    """The configuration error that made an actor's creation fail, when that is what happened.

    An actor whose ``__init__`` raises (a user model or data loader its worker process cannot
    import, say) reaches the driver as Ray's ``ActorDiedError``, whose message carries the
    remote traceback; the raysim :class:`ConfigError` at its end (which names the field and
    the fix) is returned so that the driver reports it as the usage error it is."""
    text = str(exc)
    for key in ("raysim.errors.ConfigError: ", "ConfigError: "):
        i = text.rfind(key)
        if i >= 0:
            msg = text[i + len(key):].strip()
            return ConfigError(msg) if msg else None
    return None


def get_ready(refs: Any, actors: list[Any]) -> Any:
    """``ray.get`` of actors' first calls (their ``ready``); when an actor could not be created,
    every one of ``actors`` is killed and a :class:`ConfigError` behind the failure (a plug-in
    its worker cannot import, say) is raised as itself, naming the field and the fix."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayActorError as exc:
        for a in actors:
            ray.kill(a)
        err = config_error_of(exc)
        if err is not None:
            raise err from None
        raise


def _setup_process(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _device(cfg: Config) -> str:
    """The client actor's device: its assigned GPU when ``cluster.num_gpus > 0``, else the CPU.

    Ray sets CUDA_VISIBLE_DEVICES for an actor that reserves GPUs, so ``cuda`` (device 0 of
    the visible ones) is the GPU Ray assigned, shared by all actors given a fraction of it.
    """
    import torch

    if cfg.cluster.num_gpus > 0:
        if torch.cuda.is_available():
            return "cuda"
        warnings.warn(f"cluster.num_gpus = {cfg.cluster.num_gpus:g} but torch sees no CUDA device in this "
                      f"actor (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); using the CPU")
    return "cpu"


@ray.remote
class ClientActor:
    """Hosts a cohort of virtual clients; their data stays here for the whole run."""

    def __init__(self, cfg: Config, client_ids: np.ndarray):
        _setup_process(cfg.cluster.torch_threads)
        from raysim.engine import ClientCohort

        self.cohort = ClientCohort(cfg, client_ids, device=_device(cfg))

    def ready(self) -> dict[str, Any]:
        return {**self.cohort.info(), "pid": os.getpid(), "device": str(self.cohort.device),
                "node": ray.get_runtime_context().get_node_id()}

    def train(self, step: int, payload: dict[str, Any], client_ids: np.ndarray, work: np.ndarray):
        return self.cohort.train(step, payload, client_ids, work)

    def evaluate(self, theta: np.ndarray):
        return self.cohort.evaluate(theta)


@ray.remote
class ServerActor:
    """Owns the global state, aggregates the cohorts' partial sums and enforces the density."""

    def __init__(self, cfg: Config):
        _setup_process(cfg.cluster.torch_threads)
        from raysim.engine import ServerCore

        self.core = ServerCore(cfg)

    def ready(self) -> dict[str, Any]:
        sch = self.core.comp.schedule
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "p": self.core.comp.model.p, "P": self.core.comp.model.P,
                "m": self.core.comp.algo.m, "total_steps": sch.total_steps,
                "steps_per_round": sch.steps_per_round, "prune_start": sch.prune_start,
                "federation": self.core.comp.fed.stats()}

    def payload(self) -> dict[str, Any]:
        return self.core.payload()

    def client_sizes(self) -> np.ndarray:
        """n_k of every client (metadata only; used to balance the actors' work)."""
        return np.asarray(self.core.comp.fed.client_sizes())

    def apply(self, step: int, n_selected: int, *partials) -> dict[str, Any]:
        return self.core.apply(step, n_selected, list(partials))

    def end_round(self) -> dict[str, Any]:
        return self.core.end_round()

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        return self.core.evaluate(final)

    def deployed(self, final: bool = False) -> np.ndarray:
        return self.core.deployed(final)

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> int:
        self.core.load_state_dict(sd)
        return self.core.step
