"""The round driver: starts (or joins) Ray, places the actors and runs the steps (the Ray
backend of the :class:`raysim.simulation.Simulation` interface).

The driver samples participants, dispatches each step to the actors that hold them and
hands the actors' partial sums to the server, all by object reference: the steps of a round
are submitted as one pipelined chain (the server's returned broadcast is the next step's
input) and the driver waits once per round. It never touches client data.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
import ray

from raysim.cluster.actors import ClientActor, ServerActor, get_ready
from raysim.cluster.balance import contiguous_blocks, expected_work, greedy_balance, imbalance
from raysim.config import Config, ConfigError
from raysim.data.participation import build_participation
from raysim.data.real import preflight
from raysim.metrics import fairness_from_scores
from raysim.quiet import quiet_local_ray


def assign_clients(n_clients: int, n_actors: int, work: np.ndarray | None = None) -> list[np.ndarray]:
    """Client ids per actor: contiguous equal blocks, or, given each client's expected work
    per step, a greedy balance of that work (``raysim.cluster.balance``)."""
    if work is None:
        return contiguous_blocks(n_clients, n_actors)
    if len(work) != n_clients:
        raise ValueError(f"work has {len(work)} entries for {n_clients} clients")
    return greedy_balance(work, n_actors)


def by_actor(owner: np.ndarray, sel: Any):
    """The reporting clients of one step's selection ``sel``, grouped by the client actor that
    holds them (``owner[client id]`` = actor index): yields (actor, client ids, their work)."""
    rep = sel.reporting
    work = sel.work[sel.reported]
    own = owner[rep]
    for a in np.unique(own):
        m = own == a
        yield int(a), rep[m], work[m]


def driver_client_sizes(cfg: Config) -> np.ndarray | None:
    """Every client's training size n_k, computed in this process where that is cheap
    (synthetic data: the sizes are drawn without building any client), else None (real data:
    the server actor, which loads the data set anyway, is asked)."""
    if cfg.data.kind != "synthetic":
        return None
    from raysim.data import build_federation

    return np.asarray(build_federation(cfg.data, cfg.run.seed, cfg.partition).client_sizes())


class _Sizes:
    """Stands for a federation where only the client sizes are read (``make_schedule``)."""

    def __init__(self, sizes: np.ndarray):
        self.sizes = sizes

    def client_sizes(self) -> np.ndarray:
        return self.sizes


def balance_work(cfg: Config, participation: Any, sizes: np.ndarray) -> np.ndarray:
    """Each client's expected work per step over the run (the input of the work balance)."""
    from raysim.algorithms import algorithm_class
    from raysim.algorithms.base import make_schedule

    total_steps = make_schedule(cfg, _Sizes(sizes)).total_steps
    return expected_work(participation, sizes, total_steps, algorithm_class(cfg.algorithm.name).per_step,
                         getattr(cfg.algorithm, "batch_size", None))


def init_ray(cfg: Config) -> bool:
    """Join ``cluster.address`` / ``RAY_ADDRESS`` if given, else start a local Ray instance.

    Returns True when this call started Ray (and the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True,
                              "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        need = cfg.cluster.server_num_cpus + cfg.n_actors() * cfg.cluster.num_cpus
        start_local_ray(need, **kwargs)
    return True


def start_local_ray(cpus: float, **kwargs: Any) -> None:
    """Start a NEW local Ray instance for runs that need ``cpus`` logical CPUs in all.

    Logical CPUs: at least the machine's cores (a local simulation may oversubscribe the
    cores: its actors mostly wait on each other). Ray starts that many worker processes ahead
    of time; with ``LOCAL_INIT`` they import raysim's compute modules while Ray finishes
    starting. (Starting one per actor of the first run instead, all at once, made ``ray.init``
    itself slower on a 2-core laptop than it saved: measured, not kept.)"""
    quiet_local_ray()
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)), **LOCAL_INIT, **kwargs)


def stop_local_ray() -> None:
    """End the local Ray instance this process started (:func:`start_local_ray`).

    Ray's shutdown stops its GCS before the autoscaler monitor of a local instance; the
    monitor then answers SIGTERM by trying to report to the stopped GCS and is killed after a
    one-second timeout, a second added to every local run (scripts/startup_profile.py). A
    local single-node instance has no autoscaling state to save, so the monitor is killed
    first. This reaches into Ray's private node object; if that is not there (another Ray
    version), the plain shutdown runs as before."""
    try:
        node = getattr(ray._private.worker, "_global_node", None)
        procs = getattr(node, "all_processes", None) or {}
        for info in procs.get("monitor", []):
            info.process.kill()
            info.process.wait(timeout=1)
    except Exception:  # noqa: BLE001 - best effort: ray.shutdown below stops it the slow way
        pass
    ray.shutdown()


#: ``ray.init`` settings of a NEW local Ray instance: no dashboard, and the worker processes
#: Ray starts ahead of time import raysim's compute modules (torch included) while the driver
#: goes on, so the server and client actors that lease them skip that import (about half a
#: second of each actor's start-up on a 2-core laptop; measured by scripts/startup_profile.py)
LOCAL_INIT: dict[str, Any] = {"include_dashboard": False,
                              "_system_config": {"preload_python_modules": ["raysim.engine"]}}


def check_resources(cfg: Config) -> None:
    """Fail early, with the fix, when the actors cannot all be placed (no silent hang)."""
    res = ray.cluster_resources()
    n = cfg.n_actors()
    need_cpu = cfg.cluster.server_num_cpus + n * cfg.cluster.num_cpus
    have_cpu = float(res.get("CPU", 0.0))
    if need_cpu > have_cpu + 1e-9:
        raise ConfigError(
            f"the run needs {need_cpu:g} CPUs ({n} client actors x cluster.num_cpus = {cfg.cluster.num_cpus:g} "
            f"+ cluster.server_num_cpus = {cfg.cluster.server_num_cpus:g}) but the Ray cluster has {have_cpu:g}; "
            "lower cluster.num_cpus, or use fewer actors (cluster.num_actors / cluster.clients_per_actor)")
    need_gpu = n * cfg.cluster.num_gpus
    have_gpu = float(res.get("GPU", 0.0))
    if need_gpu > have_gpu + 1e-9:
        raise ConfigError(
            f"the run needs {need_gpu:g} GPUs ({n} client actors x cluster.num_gpus = {cfg.cluster.num_gpus:g}) "
            f"but the Ray cluster has {have_gpu:g}; set cluster.num_gpus = 0 for CPU, or a smaller fraction")


class RaySimulation:
    """One run on Ray: a server actor, client actors, and the per-round driver loop.

    Fault tolerance: client actors are restarted by Ray when their process dies
    (``cluster.max_restarts``); the restarted actor rebuilds its clients' data from their ids
    and Ray re-runs the tasks that were lost (``max_task_retries``). This is exact because a
    client actor keeps no state between steps: its work in a step is a pure function of
    (payload, step, client ids). Whole-run crashes are covered by checkpoints
    (:meth:`state_dict` / :meth:`restore`, ``raysim.checkpoint``).
    """

    def __init__(self, cfg: Config, placement_group: Any = None, check_data: bool = True):
        """``placement_group``: a group from :func:`raysim.cluster.parallel.reserve`; bundle 0
        hosts the server, bundle i + 1 client actor i. Without it, resources are checked.
        ``check_data``: read real data here first, so a missing or corrupt file is a clear error
        and not a crashed actor (``False`` when the caller has done it, as ``raysim.runner`` does
        with ``raysim.preflight.check_run``: the files are then not read twice in the driver)."""
        self.cfg = cfg
        #: True when this simulation started Ray (:func:`open_ray_simulation`); close() ends it
        self.owns_ray = False
        if check_data:
            preflight(cfg)  # real data: clear errors for missing/corrupt files before any actor starts
        cl = cfg.cluster
        def where(bundle: int) -> dict[str, Any]:
            if placement_group is None:
                return {}
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=bundle)}

        if placement_group is None:
            check_resources(cfg)
        t0 = time.perf_counter()
        #: seconds of the start-up phases (scripts/startup_profile.py prints them)
        self.startup: dict[str, float] = {}
        # The server is not restarted in place: its state lives in the checkpoints.
        self.server = ServerActor.options(num_cpus=cl.server_num_cpus, **where(0)).remote(cfg)
        server_ready = self.server.ready.remote()
        self.participation = build_participation(cfg.participation, cfg.data.n_clients, cfg.run.seed)
        self.work = None
        self.info = None
        if cl.balance == "work":
            # the balance needs the client sizes: known here for synthetic data (cheap), so the
            # client actors start while the server builds its state; else asked from the server
            sizes = driver_client_sizes(cfg)
            if sizes is None:
                self.info = get_ready(server_ready, [self.server])
                sizes = ray.get(self.server.client_sizes.remote())
            self.work = balance_work(cfg, self.participation, sizes)
        self.blocks = assign_clients(cfg.data.n_clients, cfg.n_actors(), self.work)
        self.imbalance = imbalance(self.work, self.blocks) if self.work is not None else None
        self.actors = [ClientActor.options(num_cpus=cl.num_cpus, num_gpus=cl.num_gpus,
                                           max_restarts=cl.max_restarts, max_task_retries=-1,
                                           **where(i + 1)).remote(cfg, b)
                       for i, b in enumerate(self.blocks)]
        self.owner = np.empty(cfg.data.n_clients, dtype=np.int64)
        for a, b in enumerate(self.blocks):
            self.owner[b] = a
        t1 = time.perf_counter()
        self.startup["balance_s"] = t1 - t0
        if self.info is None:
            self.info = get_ready(server_ready, [self.server, *self.actors])
        self.startup["server_ready_s"] = time.perf_counter() - t0
        self.actor_info = get_ready([a.ready.remote() for a in self.actors], [self.server, *self.actors])
        self.startup["actors_ready_s"] = time.perf_counter() - t0
        self.steps_per_round = self.info["steps_per_round"]
        self.total_steps = self.info["total_steps"]
        self.step = 0
        self._payload = self.server.payload.remote()

    @property
    def total_rounds(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_round)

    def _dispatch(self, step: int) -> None:
        sel = self.participation.select(step)
        parts = [self.actors[a].train.remote(step, self._payload, ids, work)
                 for a, ids, work in by_actor(self.owner, sel)]
        self._payload = self.server.apply.remote(step, sel.n_selected, *parts)

    def submit_round(self) -> tuple[Any, int, float]:
        """Submit one round of steps as a pipelined chain; returns (end_round ref, end step, t0)."""
        t0 = time.perf_counter()
        end = min(self.step + self.steps_per_round, self.total_steps)
        for step in range(self.step, end):
            self._dispatch(step)
        return self.server.end_round.remote(), end, t0

    def finish_round(self, submitted: tuple[Any, int, float]) -> dict[str, Any]:
        """Wait for a round submitted by :meth:`submit_round` and return its statistics."""
        ref, end, t0 = submitted
        row = ray.get(ref)
        self.step = end
        row["round"] = math.ceil(end / self.steps_per_round)
        row["round_s"] = time.perf_counter() - t0
        return row

    def run_round(self) -> dict[str, Any]:
        """Submit one round of steps, wait for it, and return its server-side statistics."""
        return self.finish_round(self.submit_round())

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The server core's state and the driver's position (between rounds only)."""
        return {"server": ray.get(self.server.state_dict.remote()), "step": self.step}

    def restore(self, sd: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: load the server state, move to its step."""
        step = ray.get(self.server.load_state_dict.remote(sd["server"]))
        if step != sd["step"]:
            raise RuntimeError(f"checkpoint inconsistent: server at step {step}, driver at {sd['step']}")
        self.step = int(sd["step"])
        self._payload = self.server.payload.remote()

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics_ref = self.server.evaluate.remote(final)
        theta_ref = self.server.deployed.remote(final)
        scores = ray.get([a.evaluate.remote(theta_ref) for a in self.actors])
        out = ray.get(metrics_ref)
        out.update(fairness_from_scores(scores))
        out["evaluation_s"] = time.perf_counter() - t0
        return out

    def deployed(self, final: bool = True) -> np.ndarray:
        return ray.get(self.server.deployed.remote(final))

    def client_scores(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-client held-out scores of the final deployed model, one (ids, scores) per actor."""
        theta_ref = self.server.deployed.remote(True)
        return ray.get([a.evaluate.remote(theta_ref) for a in self.actors])

    def close(self) -> None:
        """Kill the run's actors, and end Ray when this simulation started it."""
        try:
            for a in self.actors:
                ray.kill(a)
            ray.kill(self.server)
        finally:
            if self.owns_ray:
                self.owns_ray = False
                stop_local_ray()


def open_ray_simulation(cfg: Config, placement_group: Any = None, check_data: bool = True) -> RaySimulation:
    """A :class:`RaySimulation` on the Ray instance of this process, else the one
    :func:`init_ray` joins or starts; a Ray instance started here is ended by its ``close()``
    (or at once, when the actors cannot be started)."""
    started = init_ray(cfg)
    try:
        sim = RaySimulation(cfg, placement_group=placement_group, check_data=check_data)
    except BaseException:
        if started:
            stop_local_ray()
        raise
    sim.owns_ray = started
    return sim
