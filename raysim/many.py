"""Many whole runs: a list of configurations run side by side, each a :func:`raysim.runner.run`.

The many-runs layer of ``raysim compare``, ``raysim stress`` and ``raysim tune``. It sits above
the run and below those commands, and calls down into the Ray primitives of
``raysim.cluster`` (docs/architecture.md, "Layers" and "Many runs"):

* warm (default): runs that share their data run on one warm pool of actors, batched
  (``raysim.cluster.warm``), up to ``max_parallel`` (default :data:`DEFAULT_BATCH`) at once;
* cold (``warm=False``): every run with fresh actors in its own placement group
  (``raysim.cluster.parallel.reserve``), as a Ray task that executes :func:`raysim.runner.run`
  (:func:`run_remote`), up to ``max_parallel`` in flight;
* ``cluster.backend = "local"``: one after another in this process, no Ray.

A failed run is recorded as a :class:`RunFailed` with its traceback; the others go on.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Sequence

from raysim.config import Config
from raysim.runner import run

#: runs advanced together on a warm pool when ``max_parallel`` is not given
DEFAULT_BATCH = 8


class RunFailed(RuntimeError):
    """A run of :func:`run_many` failed; ``details`` holds the (remote) traceback."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details

    @classmethod
    def of(cls, i: int, cfg: Config, exc: BaseException) -> "RunFailed":
        """Run ``i`` (of ``cfg``) raised ``exc``: its message (a Ray error's cause) and traceback."""
        cause = getattr(exc, "cause", None) or exc
        return cls(f"run {i} ({cfg.run.name}) failed: {cause}", "".join(traceback.format_exception(exc)))


def run_remote(cfg: Config, pg: Any, reporter: Any = None) -> Any:
    """Start one whole run as a Ray task whose actors live in the placement group ``pg``
    (``raysim.cluster.parallel.reserve``); returns its reference (``parallel.result`` waits).

    ``reporter`` (optional) is an actor (``parallel.start_reporter``) with a method
    ``report(round, row)`` that is called after every evaluation and may return ``"stop"`` to
    end the run early (:class:`raysim.outcome.StopRun`).
    """
    from raysim.cluster.parallel import ReporterHook, submit

    on_eval = ReporterHook(reporter) if reporter is not None else None
    return submit(run, cfg, on_eval=on_eval, console_output=False, placement_group=pg)


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
    return _run_many_cold(cfgs, max_parallel, on_result, progress, description)


def _run_many_cold(cfgs: list[Config], max_parallel: int | None, on_result: Callable[[int, Any], None] | None,
                   progress: bool, description: str) -> list[Any]:
    """Every run with fresh actors in its own placement group, ``max_parallel`` (default: as
    many as the cluster's CPUs hold) Ray tasks in flight."""
    from raysim.cluster.parallel import default_parallel, init_ray_for, release, reserve, result, shutdown_ray, wait_first

    started = init_ray_for(cfgs, max_parallel)
    try:
        k = max_parallel or default_parallel(cfgs)
        results: list[Any] = [None] * len(cfgs)
        pending = list(range(len(cfgs)))
        inflight: dict[Any, tuple[int, Any]] = {}
        bar = _bar(len(cfgs), progress, description)
        try:
            while pending or inflight:
                while pending and len(inflight) < k:
                    i = pending.pop(0)
                    pg = reserve(cfgs[i])
                    inflight[run_remote(cfgs[i], pg)] = (i, pg)
                for ref in wait_first(list(inflight)):
                    i, pg = inflight.pop(ref)
                    try:
                        _record(results, i, cfgs[i], lambda: result(ref), on_result, bar)
                    finally:
                        release(pg)
        finally:
            bar.close()
        return results
    finally:
        if started:
            shutdown_ray()


def _run_many_warm(cfgs: list[Config], k: int, on_result: Callable[[int, Any], None] | None,
                   progress: bool, description: str) -> list[Any]:
    """The runs on warm pools, ``k`` at a time (driver threads; the Ray calls of the runs on
    one pool are batched by the pool). Local-backend runs run in process, without a pool."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from raysim.cluster.parallel import init_ray_for, shutdown_ray
    from raysim.cluster.warm import WarmFederation, data_fingerprint

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
                    _record(results, i, cfgs[i], f.result, on_result, bar)
    finally:
        bar.close()
        fed.shutdown()
        if started:
            shutdown_ray()
    return results


def _run_many_local(cfgs: list[Config], on_result: Callable[[int, Any], None] | None,
                    progress: bool, description: str) -> list[Any]:
    """``cluster.backend = "local"``: the runs one after another in this process, no Ray."""
    results: list[Any] = [None] * len(cfgs)
    bar = _bar(len(cfgs), progress, description)
    try:
        for i, cfg in enumerate(cfgs):
            _record(results, i, cfg, lambda: run(cfg, console_output=False), on_result, bar)
    finally:
        bar.close()
    return results


def _record(results: list[Any], i: int, cfg: Config, get: Callable[[], Any],
            on_result: Callable[[int, Any], None] | None, bar: "_bar") -> None:
    """Run ``i``'s outcome: its result, or the :class:`RunFailed` of what it raised (the
    other runs go on); then the caller's callback and the progress bar."""
    try:
        results[i] = get()
    except Exception as exc:  # noqa: BLE001 - recorded, the others go on
        results[i] = RunFailed.of(i, cfg, exc)
    if on_result is not None:
        on_result(i, results[i])
    bar.advance()


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
