"""Several whole runs at once on Ray, each with its resources reserved up front.

A run needs one server actor and ``n_actors`` client actors. :func:`reserve` books all of
them as one placement group (all-or-nothing), so runs started side by side never deadlock
holding half of what they need; :func:`run_remote` runs :func:`raysim.runner.run` as a Ray
task whose actors are placed in that group; :func:`run_many` keeps up to ``max_parallel``
runs in flight, releases each group when its run ends and records failures instead of
stopping (used by ``raysim compare``, ``raysim stress`` and ``raysim tune``).
"""

from __future__ import annotations

import math
import os
import traceback
from typing import Any, Callable, Sequence

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from raysim.config import Config


class RunFailed(RuntimeError):
    """A run of :func:`run_many` failed; ``details`` holds the remote traceback."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details

    @classmethod
    def of(cls, i: int, cfg: Config, exc: BaseException) -> "RunFailed":
        """Run ``i`` (of ``cfg``) raised ``exc``: its message (a Ray error's cause) and traceback."""
        cause = getattr(exc, "cause", None) or exc
        return cls(f"run {i} ({cfg.run.name}) failed: {cause}", "".join(traceback.format_exception(exc)))


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


def init_ray_for(cfgs: Sequence[Config], max_parallel: int | None = None) -> bool:
    """Start (or join) Ray with room for ``max_parallel`` of these runs side by side.

    Locally, logical CPUs are sized so that the requested parallelism fits (simulation
    actors mostly wait on each other, so a modest oversubscription of cores is intended).
    Returns True when this call started Ray.
    """
    import logging

    if ray.is_initialized():
        return False
    address = next((c.cluster.address for c in cfgs if c.cluster.address), None) or os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kw)
    else:
        per_run = max((run_cpus(c) for c in cfgs), default=1.0)
        k = max_parallel or 1
        from raysim.quiet import quiet_local_ray

        quiet_local_ray()
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(per_run * k)), include_dashboard=False, **kw)
    return True


def default_parallel(cfgs: Sequence[Config]) -> int:
    """How many of these runs fit in the cluster's CPUs at once (at least 1)."""
    have = float(ray.cluster_resources().get("CPU", 1.0))
    per_run = max((run_cpus(c) for c in cfgs), default=1.0)
    return max(1, int(have // per_run))


@ray.remote(num_cpus=0)
def _run_task(cfg: Config, pg: PlacementGroup, reporter: Any = None):
    from raysim.runner import run

    on_eval = None
    if reporter is not None:
        def on_eval(rnd: int, row: dict[str, Any]) -> None:
            # A reporter actor may answer "stop" (e.g. an Optuna pruner); stopping raises here.
            verdict = ray.get(reporter.report.remote(rnd, row))
            if verdict == "stop":
                raise StopRun(f"stopped at round {rnd} by the reporter")
    return run(cfg, on_eval=on_eval, console_output=False, placement_group=pg)


class StopRun(Exception):
    """Raised inside a run to stop it early (e.g. a pruned trial)."""


def run_remote(cfg: Config, pg: PlacementGroup, reporter: Any = None) -> ray.ObjectRef:
    """Start one whole run as a Ray task whose actors live in ``pg``; returns its ObjectRef.

    ``reporter`` (optional) is an actor handle with a method ``report(round, row)`` that is
    called after every evaluation and may return ``"stop"`` to end the run early.
    """
    return _run_task.remote(cfg, pg, reporter)


#: runs advanced together on a warm pool when ``max_parallel`` is not given
DEFAULT_BATCH = 8


def run_many(cfgs: Sequence[Config], max_parallel: int | None = None,
             on_result: Callable[[int, Any], None] | None = None,
             progress: bool = True, description: str = "runs", warm: bool = True) -> list[Any]:
    """Run every config (each a whole raysim run), up to ``max_parallel`` at once.

    ``warm`` (default): runs that share their data run on one warm pool of actors, batched
    (``raysim.cluster.warm``; up to ``max_parallel``, default :data:`DEFAULT_BATCH`, at once);
    runs are ordered so that those of one data set run together. ``warm=False``: the cold
    path, every run with fresh actors in its own placement group.

    Returns, in input order, a :class:`raysim.runner.RunResult` or the :class:`RunFailed`
    of each run. ``on_result(index, result)`` is called as each one finishes.
    """
    cfgs = list(cfgs)
    if cfgs and all(c.cluster.backend == "local" for c in cfgs):
        return _run_many_local(cfgs, on_result, progress, description)
    if warm:
        return _run_many_warm(cfgs, max_parallel or DEFAULT_BATCH, on_result, progress, description)
    started = init_ray_for(cfgs, max_parallel)
    try:
        k = max_parallel or default_parallel(cfgs)
        results: list[Any] = [None] * len(cfgs)
        pending = list(range(len(cfgs)))
        inflight: dict[ray.ObjectRef, tuple[int, PlacementGroup]] = {}
        bar = _bar(len(cfgs), progress, description)
        try:
            while pending or inflight:
                while pending and len(inflight) < k:
                    i = pending.pop(0)
                    pg = reserve(cfgs[i])
                    inflight[run_remote(cfgs[i], pg)] = (i, pg)
                done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    i, pg = inflight.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                        results[i] = RunFailed.of(i, cfgs[i], exc)
                    finally:
                        remove_placement_group(pg)
                    if on_result is not None:
                        on_result(i, results[i])
                    bar.advance()
        finally:
            bar.close()
        return results
    finally:
        if started:
            ray.shutdown()


def _run_many_warm(cfgs: list[Config], k: int, on_result: Callable[[int, Any], None] | None,
                   progress: bool, description: str) -> list[Any]:
    """The runs on warm pools, ``k`` at a time (driver threads; the Ray calls of the runs on
    one pool are batched by the pool). Local-backend runs run in process, without a pool."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from raysim.cluster.warm import WarmFederation, data_fingerprint
    from raysim.runner import run

    ray_cfgs = [c for c in cfgs if c.cluster.backend != "local"]
    started = init_ray_for(ray_cfgs or cfgs, 1)
    fed = WarmFederation()
    # the runs of one data set next to each other, so that they share the pool while it is warm
    keys: dict[str, int] = {}
    order = sorted(range(len(cfgs)), key=lambda i: keys.setdefault(
        "local" if cfgs[i].cluster.backend == "local" else data_fingerprint(cfgs[i]), len(keys)))
    results: list[Any] = [None] * len(cfgs)
    bar = _bar(len(cfgs), progress, description)

    def one(i: int) -> Any:
        return run(cfgs[i], console_output=False, simulation=fed.simulation)

    try:
        with ThreadPoolExecutor(max_workers=k, thread_name_prefix="raysim-run") as ex:
            pending = list(order)
            inflight: dict[Any, int] = {}
            while pending or inflight:
                while pending and len(inflight) < k:
                    i = pending.pop(0)
                    inflight[ex.submit(one, i)] = i
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for f in done:
                    i = inflight.pop(f)
                    try:
                        results[i] = f.result()
                    except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                        results[i] = RunFailed.of(i, cfgs[i], exc)
                    if on_result is not None:
                        on_result(i, results[i])
                    bar.advance()
    finally:
        bar.close()
        fed.shutdown()
        if started:
            ray.shutdown()
    return results


def _run_many_local(cfgs: list[Config], on_result: Callable[[int, Any], None] | None,
                    progress: bool, description: str) -> list[Any]:
    """``cluster.backend = "local"``: the runs one after another in this process, no Ray."""
    from raysim.runner import run

    results: list[Any] = [None] * len(cfgs)
    bar = _bar(len(cfgs), progress, description)
    try:
        for i, cfg in enumerate(cfgs):
            try:
                results[i] = run(cfg, console_output=False)
            except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                results[i] = RunFailed.of(i, cfg, exc)
            if on_result is not None:
                on_result(i, results[i])
            bar.advance()
    finally:
        bar.close()
    return results


class _bar:
    def __init__(self, total: int, enabled: bool, description: str):
        self.p = None
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self.t = self.p.add_task(description, total=total)
            self.p.start()

    def advance(self) -> None:
        if self.p is not None:
            self.p.advance(self.t)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
