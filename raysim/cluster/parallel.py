"""Ray primitives for several whole runs side by side (the cold path of the many-runs layer).

The many-runs layer (``raysim.many``: ``raysim compare``, ``raysim stress``, ``raysim tune``)
sits above the run and calls down into these; nothing here knows what a run does
(docs/architecture.md, "Layers" and "Many runs"):

* :func:`init_ray_for` / :func:`shutdown_ray`: start (or join) Ray with room for the runs;
* :func:`reserve` / :func:`wait_reserved` / :func:`release`: a run's server and client actors
  booked as one placement group (all-or-nothing, so runs started side by side never
  deadlock holding half of what they need);
* :func:`submit` / :func:`wait_first` / :func:`result`: any picklable callable as a Ray task
  (the many-runs layer passes :func:`raysim.runner.run` in; this package never imports it);
* :func:`start_reporter` / :func:`call` / :func:`kill`: a small actor made from a plain class
  (the cold tuning path's trial reporter), and :class:`ReporterHook`, the ``on_eval`` hook
  that reports a run's evaluations to it from inside the run's task.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayError as RemoteError  # noqa: F401 - what result() raises for a failed task
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from raysim.config import Config
from raysim.outcome import StopRun


def run_bundles(cfg: Config) -> list[dict[str, float]]:
    """Resource bundles of one run: bundle 0 is the server, then one per client actor."""
    cl = cfg.cluster
    client = {"CPU": cl.num_cpus}
    if cl.num_gpus > 0:
        client["GPU"] = cl.num_gpus
    return [{"CPU": cl.server_num_cpus}] + [dict(client) for _ in range(cfg.n_actors())]


def run_cpus(cfg: Config) -> float:
    return sum(b["CPU"] for b in run_bundles(cfg))


def reserve(cfg: Config, timeout_s: float | None = None) -> PlacementGroup:
    """Reserve a run's server and client actor resources as one placement group.

    With ``timeout_s`` it waits at most that long for the reservation and raises
    ``TimeoutError`` (the group is removed) if the cluster cannot hold it.
    """
    pg = placement_group(run_bundles(cfg), strategy="PACK")
    if timeout_s is not None:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(pg)
            raise TimeoutError(f"could not reserve {run_bundles(cfg)} within {timeout_s:g} s")
    return pg


def wait_reserved(pg: PlacementGroup) -> None:
    """Block until the placement group ``pg`` (from :func:`reserve`) holds its resources."""
    ray.get(pg.ready())


def release(pg: PlacementGroup) -> None:
    """Give the resources of a placement group from :func:`reserve` back to the cluster."""
    remove_placement_group(pg)


def init_ray_for(cfgs: Sequence[Config], max_parallel: int | None = None) -> bool:
    """Start (or join) Ray with room for ``max_parallel`` of these runs side by side.

    Locally, logical CPUs are sized so that the requested parallelism fits (simulation
    actors mostly wait on each other, so a modest oversubscription of cores is intended).
    Returns True when this call started Ray (then the caller ends it with :func:`shutdown_ray`).
    """
    if ray.is_initialized():
        return False
    address = next((c.cluster.address for c in cfgs if c.cluster.address), None) or os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kw)
    else:
        from raysim.cluster.driver import start_local_ray

        per_run = max((run_cpus(c) for c in cfgs), default=1.0)
        start_local_ray(per_run * (max_parallel or 1), **kw)
    return True


def shutdown_ray() -> None:
    """End the Ray instance this process started (:func:`init_ray_for`, ``driver.init_ray``)."""
    from raysim.cluster.driver import stop_local_ray

    stop_local_ray()


def default_parallel(cfgs: Sequence[Config]) -> int:
    """How many of these runs fit in the cluster's CPUs at once (at least 1)."""
    have = float(ray.cluster_resources().get("CPU", 1.0))
    per_run = max((run_cpus(c) for c in cfgs), default=1.0)
    return max(1, int(have // per_run))


# -- any callable as a Ray task ----------------------------------------------------------------

@ray.remote(num_cpus=0)
def _call(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


def submit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ray.ObjectRef:
    """Run ``fn(*args, **kwargs)`` as a Ray task (it reserves no CPU: the actors it starts do);
    returns its reference. ``fn`` must be picklable (a module-level function)."""
    return _call.remote(fn, args, kwargs)


def wait_first(refs: Sequence[ray.ObjectRef]) -> list[ray.ObjectRef]:
    """Block until at least one of ``refs`` is done; returns those that are."""
    done, _ = ray.wait(list(refs), num_returns=1)
    return done


def result(ref: ray.ObjectRef) -> Any:
    """The value of a task from :func:`submit`; a task that raised raises :data:`RemoteError`
    (which is also an instance of the task's own exception class, e.g. ``StopRun``)."""
    return ray.get(ref)


# -- a small actor from a plain class ----------------------------------------------------------

_REMOTE_CLASSES: dict[type, Any] = {}


def start_reporter(cls: type, *args: Any) -> Any:
    """An instance of the plain class ``cls`` as a zero-CPU actor pinned to this node (close to
    the driver's storage); returns its handle. Its methods are called with :func:`call`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = _REMOTE_CLASSES.get(cls)
    if remote is None:
        remote = _REMOTE_CLASSES[cls] = ray.remote(num_cpus=0)(cls)
    here = ray.get_runtime_context().get_node_id()
    return remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(*args)


def call(actor: Any, method: str, *args: Any) -> Any:
    """``actor.method(*args)`` on an actor from :func:`start_reporter`; waits for the answer."""
    return ray.get(getattr(actor, method).remote(*args))


def kill(actor: Any) -> None:
    ray.kill(actor)


class ReporterHook:
    """A run's ``on_eval(round, row)`` hook that reports each evaluation to a reporter actor
    (a method ``report(round, row)``); the answer ``"stop"`` (e.g. an Optuna pruner's) raises
    :class:`raysim.outcome.StopRun`, which ends the run. Picklable: it travels into the run's task."""

    def __init__(self, reporter: Any):
        self.reporter = reporter

    def __call__(self, rnd: int, row: dict[str, Any]) -> None:
        if call(self.reporter, "report", rnd, row) == "stop":
            raise StopRun(f"stopped at round {rnd} by the reporter")
