"""The study runner: an Optuna study whose trials are whole raysim runs on Ray.

Design (how a trial runs and how its intermediate values reach the study):

* Warm (the default): a trial is a run on a warm pool (``raysim.cluster.warm``): the
  scenario's client and server actors are started and its data built once per study, and
  the ``parallel`` trials in flight (one per ``study.optimize`` thread) advance together,
  one Ray call per client actor per step for all of them. A trial's intermediate values go
  straight to its ``optuna.Trial``; a pruned trial leaves the batch and the next asked trial
  takes its slot, starting at step 0 while the others go on. The rest of this list is the
  cold path (``--cold``).
* The driver owns the study and asks Optuna for trials from ``parallel`` threads
  (``study.optimize(n_jobs=parallel)``). Each thread turns its trial into a config
  (:mod:`raysim.tuning.space`), reserves the run's server + client actor resources in one
  placement group (:func:`raysim.cluster.parallel.reserve`, all-or-nothing, so trials waiting
  for resources never hold half of them and never deadlock) and runs the whole run as a Ray
  task inside it (:func:`raysim.many.run_remote`).
* No Ray code here: the reporter actor, the placement groups and Ray's start and end are the
  primitives of ``raysim.cluster.parallel`` (docs/architecture.md, "Layers").
* Intermediate values go through the Optuna storage itself. The run's ``on_eval`` hook calls a
  small :class:`TrialReporter` actor (one per parallel slot, pinned to the driver's node, so
  a journal file on the driver's disk works in a cluster too) that writes
  ``trial.report(value, round)`` to the storage and answers ``trial.should_prune()``; a
  "stop" ends the run (``StopRun``) and the driver records the trial as PRUNED. The pruner
  sees every trial's values, whichever process wrote them.
* Storage is resumable: a journal file by default, an RDB URL on clusters (its password is
  masked everywhere it is written or printed). One driver per study (:class:`StudyLock`: a
  second ``raysim tune`` is refused with the first one's pid and host). On start, trials left
  RUNNING by a killed driver are marked FAIL and their parameters queued again, and only
  ``n_trials - (COMPLETE + PRUNED + FAIL)`` new trials are run (the interrupted ones do not
  count). The sampler is seeded with ``study.seed`` plus the number of trials already in the
  storage, so a continued study never draws the first trials' parameters again. A trial that
  raises, or whose run ends diverged / empty_model / no_participation, is recorded as FAIL
  with the reason in the ``error`` user attribute, and the study goes on.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from raysim.config import ConfigError
from raysim.tuning.objectives import constraint_values, constraints_func, objective_values, record_constraints
from raysim.tuning.space import build_config, check_spec, suggest
from raysim.tuning.spec import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STALE_ERROR = ("interrupted: left RUNNING by a study that was killed; marked failed on resume and its "
               "parameters queued again")


class TrialFailed(RuntimeError):
    """A trial failed; the message is recorded in the trial's ``error`` user attribute."""


# -- storage --------------------------------------------------------------------------------

def storage_location(spec: StudySpec, study_dir: Path, override: str | None = None) -> str:
    """The storage of a study: ``--storage``, else ``study.storage``, else <study_dir>/study.journal."""
    s = override or spec.study.storage
    if s is None:
        return str(study_dir / "study.journal")
    return s if "://" in s else str(Path(s))


def mask_storage(location: str) -> str:
    """The storage location with any password replaced by ``***`` (for files, logs and output)."""
    if "://" not in location:
        return location
    try:
        from sqlalchemy.engine import make_url

        return make_url(location).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: mask user:password@ by hand
        import re

        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", location)


#: RDB storages: seconds between a running trial's heartbeats, and silence after which it is stale
HEARTBEAT_S = 20
GRACE_S = 90

#: Python DB drivers SQLAlchemy needs for the RDB URL schemes, and how to install them
_DRIVERS = {"postgresql": ("psycopg2", "psycopg2-binary"), "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
            "postgresql+psycopg": ("psycopg", "psycopg[binary]"), "mysql": ("MySQLdb", "mysqlclient"),
            "mysql+pymysql": ("pymysql", "pymysql"), "mysql+mysqldb": ("MySQLdb", "mysqlclient")}


def open_storage(location: str) -> optuna.storages.BaseStorage:
    """An RDB storage for a URL (postgresql://, mysql://, sqlite:///), else a journal file.

    A missing DB driver or an unreachable database is a :class:`ConfigError` naming the
    storage with its password masked (never a traceback that prints the password)."""
    if "://" in location:
        scheme = location.split("://", 1)[0].lower()
        need = _DRIVERS.get(scheme)
        if need is not None:
            import importlib.util

            if importlib.util.find_spec(need[0]) is None:
                raise ConfigError(f"--storage {mask_storage(location)}: the database driver for {scheme}:// is not "
                                  f"installed (Python module {need[0]!r}); install it with `pip install {need[1]}`, "
                                  "or use a journal file (--storage path/to/study.journal) or sqlite:///path.db")
        try:
            # heartbeats: a RUNNING trial of a live driver (on any machine) keeps beating, so another
            # driver joining the study never takes it for the leftover of a killed one
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(location, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except ImportError as exc:
            raise ConfigError(f"--storage {mask_storage(location)}: a database driver is missing ({exc.name or exc}); "
                              "install it with pip, or use a journal file or sqlite:///path.db") from None
        except Exception as exc:  # noqa: BLE001 - connection errors can echo the URL: mask it
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            pw = _password(location)
            if pw:
                msg = msg.replace(pw, "***")
            raise ConfigError(f"cannot open storage {mask_storage(location)}: {type(exc).__name__}: {msg[:300]}") from None
    from optuna.storages.journal import JournalFileBackend

    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(location))


def _password(location: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(location).password or None
    except Exception:  # noqa: BLE001
        return None


class StudyLock:
    """One driver per study: an exclusive ``flock`` on ``<study_dir>/.tune.lock`` (and, for a
    journal storage elsewhere, ``<journal>.lock``), recording the holder's pid and host. The
    kernel drops the lock when the holder dies, so a killed driver never leaves a stale lock,
    and a second ``raysim tune`` on the same study is refused before it touches the storage
    (it would otherwise mark the first driver's running trials as failed)."""

    def __init__(self, study_dir: Path, location: str):
        self.paths = [study_dir / ".tune.lock"]
        if "://" not in location:
            j = Path(location).resolve()
            if j.parent != study_dir.resolve():
                self.paths.append(j.with_name(j.name + ".lock"))
        self.fds: list[int] = []

    def acquire(self) -> "StudyLock":
        import fcntl
        import socket

        from raysim.outcome import Busy

        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                self.release()
                raise Busy(f"study storage in use: another `raysim tune` driver ({holder}) holds {path}; wait for "
                           "it to finish, or run more trials at once with --parallel in that driver") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self.fds.append(fd)
        return self

    def release(self) -> None:
        import fcntl

        for fd in self.fds:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.fds = []


#: Optuna >= 5 takes constraints from ``Trial.set_constraint``; older versions from the
#: sampler's ``constraints_func`` (which reads the same values from the user attributes).
NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def constant_liar(spec: StudySpec, parallel: int) -> bool:
    """Does TPE use the constant liar? ``study.constant_liar``, else when trials run at once."""
    s = spec.study
    return s.constant_liar if s.constant_liar is not None else parallel > 1


def make_sampler(spec: StudySpec, offset: int = 0, parallel: int = 1) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded with ``study.seed + offset``: a resumed study passes the number
    of trials already in the storage, so it never draws the first trials' parameters again.
    TPE uses Optuna's constant liar when ``study.constant_liar`` says so (default: when
    ``parallel`` trials run at once)."""
    s = spec.study
    seed = s.seed + int(offset)
    cons = {} if NATIVE_CONSTRAINTS else {"constraints_func": constraints_func}
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **cons)
    liar = constant_liar(spec, parallel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, constant_liar=liar, **cons)


def make_pruner(spec: StudySpec, rounds: int) -> optuna.pruners.BasePruner:
    s = spec.study
    if s.pruner == "none" or spec.objective.multi:
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.n_warmup_rounds), max_resource=max(rounds, 2))
    # intermediate values are reported at rounds 1, 2, ...: prunable from round n_warmup_rounds + 1
    return optuna.pruners.MedianPruner(n_startup_trials=s.n_startup_trials, n_warmup_steps=s.n_warmup_rounds + 1)


def open_study(spec: StudySpec, location: str, rounds: int = 10, parallel: int = 1) -> optuna.Study:
    """Create or load the study in its storage; checks that an existing one matches the spec
    (``parallel``: trials run at once, for the sampler)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by the runner itself
    storage = open_storage(location)
    directions = spec.objective.directions
    try:
        existing = optuna.load_study(study_name=spec.study.name, storage=storage,
                                     sampler=optuna.samplers.RandomSampler())
        offset = len(existing.get_trials(deepcopy=False))
    except KeyError:
        offset = 0
    try:
        study = optuna.create_study(study_name=spec.study.name, storage=storage, directions=directions,
                                    sampler=make_sampler(spec, offset, parallel), pruner=make_pruner(spec, rounds),
                                    load_if_exists=True)
    except ValueError as exc:
        raise ConfigError(f"storage {mask_storage(location)} holds a study named {spec.study.name!r} that does not match "
                          f"this study file ({exc}); use another --storage / --out, or rename the study") from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(f"storage {mask_storage(location)} holds study {spec.study.name!r} with directions {have}, but the "
                          f"study file asks for {directions}; use another --storage / --out, or rename the study")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.objective.metrics)
    return study


def _driver_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _is_stale(study: optuna.Study, t: optuna.trial.FrozenTrial, beat_stale: set[int] | None) -> bool:
    """Whether a RUNNING trial belongs to a driver that is gone.

    Journal storage: always (a live driver holds the :class:`StudyLock`, so none runs here).
    RDB storage (drivers may be on other machines): its driver, recorded in the ``driver``
    user attribute, is a dead process on this host, or its heartbeat stopped ``GRACE_S`` ago."""
    if beat_stale is None:
        return True
    if t._trial_id in beat_stale:
        return True
    import socket

    host, _, pid = str(t.user_attrs.get("driver", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        from raysim.checkpoint import _pid_alive

        return not _pid_alive(int(pid))
    return False


def fail_stale_trials(study: optuna.Study, requeue: bool = True) -> list[int]:
    """Mark trials left RUNNING by a killed driver as FAIL and, with ``requeue``, enqueue their
    parameters again so that they are re-run; returns their numbers.

    A RUNNING trial of another live driver is never touched (:func:`_is_stale`). A stale trial
    is marked ``interrupted`` (it never counts toward ``n_trials``, even when the kill came
    before its parameters were drawn and there is nothing to re-run) and, when it has
    parameters, ``requeued`` before it is failed, so a driver killed again later never enqueues
    the same parameters twice.
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)      # Optuna wraps an RDB storage in a cache
    beat_stale = None
    if isinstance(backend, optuna.storages.RDBStorage):
        # RDB: drivers may be on other machines, so only trials whose driver is known to be gone
        beat_stale = set(backend._get_stale_trial_ids(study._study_id)) if backend.get_heartbeat_interval() else set()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(study, t, beat_stale):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", STALE_ERROR)
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            if requeue and t.params:
                storage.set_trial_user_attr(t._trial_id, "requeued", True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except RuntimeError:   # another driver finished or failed it meanwhile
            continue
        if requeue and t.params:
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
        stale.append(t.number)
    return stale


class _Tagged:
    """The objective, with each trial tagged by the driver that runs it (host:pid), which is
    how another driver tells a live trial from the leftover of a killed one."""

    def __init__(self, objective: Any):
        self.objective = objective
        self.driver = _driver_id()

    def __call__(self, trial: optuna.Trial) -> Any:
        trial.set_user_attr("driver", self.driver)
        return self.objective(trial)


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials``: COMPLETE, PRUNED and FAIL, except trials
    interrupted by a killed driver (a re-run of their parameters counts instead)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if not interrupted(t))


def interrupted(t: optuna.trial.FrozenTrial) -> bool:
    """A trial left running by a killed driver and failed on resume (``requeued``: the mark of
    journals written before ``interrupted`` existed)."""
    return t.state == TrialState.FAIL and bool(t.user_attrs.get("interrupted") or t.user_attrs.get("requeued"))


# -- the reporter actor ---------------------------------------------------------------------

def report_and_ask(trial: optuna.Trial, metric: str, rnd: int, row: dict[str, Any]) -> bool:
    """Report a run's evaluation row to its trial (the objective metric at round ``rnd``) and
    ask the pruner; True (and ``pruned_at_round`` recorded) when the trial should stop."""
    if metric not in row:
        return False
    v = row[metric]
    trial.report(float("nan") if v is None else float(v), int(rnd))
    if trial.should_prune():
        trial.set_user_attr("pruned_at_round", int(rnd))
        return True
    return False


class TrialReporter:
    """Writes a running trial's intermediate values to the storage and answers the pruner.

    A plain class, started as a small actor by ``raysim.cluster.parallel.start_reporter`` (one
    per parallel slot of the cold path); :meth:`bind` points it at the slot's current trial. The
    run's ``on_eval`` hook calls :meth:`report` (``raysim.cluster.parallel.ReporterHook``, passed
    in by :func:`raysim.many.run_remote`)."""

    def __init__(self, location: str, study_name: str, pruner: Any, metric: str):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.study = optuna.load_study(study_name=study_name, storage=open_storage(location),
                                       pruner=pruner, sampler=optuna.samplers.RandomSampler())
        self.metric = metric
        self.trial: optuna.Trial | None = None

    def bind(self, trial_id: int) -> int:
        self.trial = optuna.Trial(self.study, trial_id)
        return trial_id

    def report(self, rnd: int, row: dict[str, Any]) -> str | None:
        if self.trial is None:
            return None
        return "stop" if report_and_ask(self.trial, self.metric, rnd, row) else None


# -- one trial ------------------------------------------------------------------------------

@dataclass
class StudyResult:
    study: optuna.Study
    study_dir: Path
    storage: str
    n_new: int
    wall_s: float
    stale: list[int]
    report: dict[str, Any]
    #: where the wall time went: ``ray_start_s`` (``ray.init``: a local Ray started, or a running
    #: one joined), ``pools_start_s`` (warm: the pools' actors and data), ``ray_stop_s`` (the
    #: pools' and a local Ray's stop) and ``trials_s`` (the rest: the trials themselves)
    timing: dict[str, float] = field(default_factory=dict)


class _TrialRunner:
    """The objective: one trial = one raysim run in its own placement group."""

    def __init__(self, spec: StudySpec, study_dir: Path, overrides: dict[str, Any], reporters: "queue.Queue",
                 federation: Any = None):
        self.spec = spec
        self.study_dir = study_dir
        self.overrides = overrides
        self.reporters = reporters
        self.federation = federation   # warm path: a raysim.cluster.warm.WarmFederation

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from raysim.cluster.parallel import RemoteError, call, release, reserve, wait_reserved
        from raysim.cluster.parallel import result as result_of
        from raysim.many import run_remote
        from raysim.outcome import StopRun

        spec = self.spec
        t0 = time.perf_counter()
        run_dir = self.study_dir / "trials" / f"trial-{trial.number:05d}"
        values = suggest(trial, spec)
        try:
            cfg = build_config(spec, values, {**self.overrides, "run.run_dir": str(run_dir),
                                              "run.name": f"{spec.study.name}-trial-{trial.number}"})
        except ConfigError as exc:
            return self._fail(trial, str(exc))
        trial.set_user_attr("config", cfg.to_toml_dict())
        trial.set_user_attr("run_dir", str(run_dir))
        if cfg.cluster.backend == "local":
            result = self._run_local(trial, cfg, t0)
            return self._finish(trial, cfg, result, t0)
        if self.federation is not None:   # warm: the run on its data's pool, batched with the others
            result = self._run_local(trial, cfg, t0, simulation=self.federation.simulation)
            return self._finish(trial, cfg, result, t0)
        reporter = self.reporters.get()
        try:
            if reporter is not None:
                call(reporter, "bind", trial._trial_id)
            pg = reserve(cfg)
            try:
                wait_reserved(pg)
                result = result_of(run_remote(cfg, pg, reporter))
            except StopRun:
                trial.set_user_attr("wall_s", time.perf_counter() - t0)
                raise optuna.TrialPruned()
            except RemoteError as exc:
                cause = getattr(exc, "cause", None) or exc
                return self._fail(trial, f"run failed: {type(cause).__name__}: {cause}",
                                  "".join(traceback.format_exception(exc))[-4000:])
            finally:
                release(pg)
        finally:
            self.reporters.put(reporter)
        return self._finish(trial, cfg, result, t0)

    def _run_local(self, trial: optuna.Trial, cfg: Any, t0: float, simulation: Any = None) -> Any:
        """A trial driven from this process: with ``cluster.backend = "local"`` the whole run
        here (no Ray); with ``simulation`` (the warm path) on a warm pool of actors. Its
        intermediate values go straight to the trial and a pruned trial stops the run (its
        slot in the pool's batch is freed and the next asked trial takes it)."""
        from raysim.runner import run

        spec = self.spec
        metric = spec.objective.metrics[0]
        pruning = not spec.objective.multi and spec.study.pruner != "none"

        def on_eval(rnd: int, row: dict[str, Any]) -> None:
            if pruning and report_and_ask(trial, metric, rnd, row):
                trial.set_user_attr("wall_s", time.perf_counter() - t0)
                raise optuna.TrialPruned()

        try:
            return run(cfg, on_eval=on_eval, console_output=False, simulation=simulation)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the trial, the study goes on
            return self._fail(trial, f"run failed: {type(exc).__name__}: {exc}",
                              "".join(traceback.format_exception(exc))[-4000:])

    def _finish(self, trial: optuna.Trial, cfg: Any, result: Any, t0: float) -> float | list[float]:
        from raysim.outcome import OK, status_of

        spec = self.spec
        final = result.summary["final"]
        trial.set_user_attr("wall_s", time.perf_counter() - t0)
        trial.set_user_attr("run_wall_s", float(result.summary.get("wall_s", float("nan"))))
        status = status_of(result.summary)
        trial.set_user_attr("status", status)
        if status != OK:    # diverged / empty_model / no_participation: recorded with the reason, never a value
            return self._fail(trial, f"run {status}: {result.summary.get('status_reason', '')}")
        target = spec.objective.target_density or cfg.algorithm.rho
        cons, facts = constraint_values(final, int(result.summary["p"]), target)
        record_constraints(trial, cons)  # user attr, Optuna 5 set_constraint, optuna-dashboard's list
        for k, v in facts.items():
            trial.set_user_attr(k, v)
        for k in ("val_r2", "val_mse", "val_accuracy", "r2", "accuracy", "tdr", "tpr", "f1", "cum_bytes_up",
                  "cum_bytes_down", "soft_iou"):
            v = final.get(k)
            if isinstance(v, (int, float)) and v is not None:
                trial.set_user_attr(f"final_{k}", v)
        try:
            objs = objective_values(spec, final)
        except ValueError as exc:
            return self._fail(trial, str(exc))
        if not all(math.isfinite(v) for v in objs):
            return self._fail(trial, f"objective {spec.objective.metrics} = {objs} is not finite (the run diverged)")
        return objs[0] if len(objs) == 1 else objs

    @staticmethod
    def _fail(trial: optuna.Trial, error: str, details: str | None = None):
        trial.set_user_attr("error", error[:2000])
        if details:
            trial.set_user_attr("traceback", details)
        raise TrialFailed(error)


# -- the study ------------------------------------------------------------------------------

def study_dir_for(spec: StudySpec, out: str | Path | None = None) -> Path:
    return Path(out) if out is not None else Path(spec.study.out_dir) / spec.study.name


def run_study(spec: StudySpec, *, n_trials: int | None = None, timeout: float | None = None,
              parallel: int | None = None, storage: str | None = None, out: str | Path | None = None,
              overrides: dict[str, Any] | None = None, progress: bool = True,
              report: bool = True, cold: bool = False) -> StudyResult:
    """Run (or resume) a study until ``n_trials`` trials are finished (COMPLETE, PRUNED or FAIL;
    a trial interrupted by a killed driver is run again and does not count).

    ``overrides`` are dotted config keys fixed on top of the study's ``[fixed]`` table. One
    driver per study: a second one raises :class:`raysim.outcome.Busy` (:class:`StudyLock`).
    By default trials run warm: on a pool of actors that keeps the scenario's data for the
    whole study, ``parallel`` trials advancing together in batched Ray calls
    (``raysim.cluster.warm``). ``cold=True``: each trial with fresh actors in its own
    placement group.
    """
    study_dir = study_dir_for(spec, out)
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"study folder {study_dir} is a file; give --out a folder")
    study_dir.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(study_dir, storage_location(spec, study_dir, storage)).acquire()
    try:
        return _run_study(spec, n_trials=n_trials, timeout=timeout, parallel=parallel, storage=storage, out=out,
                          overrides=overrides, progress=progress, report=report, cold=cold)
    finally:
        lock.release()


def _run_study(spec: StudySpec, *, n_trials: int | None, timeout: float | None, parallel: int | None,
               storage: str | None, out: str | Path | None, overrides: dict[str, Any] | None, progress: bool,
               report: bool, cold: bool = False) -> StudyResult:
    from raysim.cluster.driver import check_resources
    from raysim.cluster.parallel import init_ray_for, kill, shutdown_ray, start_reporter

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    overrides = dict(overrides or {})
    base_cfg, problems = check_spec(spec, overrides)
    total = n_trials or spec.study.n_trials
    k = parallel or spec.study.parallel
    timeout = timeout if timeout is not None else spec.study.timeout
    study_dir = study_dir_for(spec, out)
    study_dir.mkdir(parents=True, exist_ok=True)
    location = storage_location(spec, study_dir, storage)
    _write_meta(spec, study_dir, location)
    console = _console(progress)
    for w in problems:
        console.print(f"[yellow]warning:[/] {w}")
    study = open_study(spec, location, rounds=base_cfg.run.rounds, parallel=k)
    stale = fail_stale_trials(study)
    if stale:
        console.print(f"resuming: trial(s) {', '.join(map(str, stale))} were left running by a killed study; "
                      "they are marked failed and their parameters run again")
    done = finished_count(study)
    remaining = max(0, total - done)
    console.print(f"study [bold]{spec.study.name}[/]: {done} of {total} trials finished, running {remaining} "
                  f"({k} at a time); storage {mask_storage(location)}")
    t0 = time.perf_counter()
    timing: dict[str, float] = {}

    def optimize(runner: "_TrialRunner") -> None:
        bar = _Bar(remaining, console, spec)
        try:
            study.optimize(_Tagged(runner), n_trials=remaining, timeout=timeout, n_jobs=k, catch=(Exception,),
                           callbacks=[bar.callback], gc_after_trial=False)
        finally:
            bar.close()

    if remaining and base_cfg.cluster.backend == "local":
        # in-process trials (no Ray): k threads share this process
        optimize(_TrialRunner(spec, study_dir, overrides, queue.Queue()))
    elif remaining and not cold:
        from raysim.cluster.warm import WarmFederation

        t = time.perf_counter()
        started = init_ray_for([base_cfg], 1)
        timing["ray_start_s"] = time.perf_counter() - t
        fed = WarmFederation()
        try:
            check_resources(base_cfg)
            optimize(_TrialRunner(spec, study_dir, overrides, queue.Queue(), federation=fed))
        finally:
            timing["pools_start_s"] = fed.build_s
            t = time.perf_counter()
            fed.shutdown()
            if started:
                shutdown_ray()
            timing["ray_stop_s"] = time.perf_counter() - t
    elif remaining:   # cold: one placement group and fresh actors per trial
        t = time.perf_counter()
        started = init_ray_for([base_cfg], k)
        timing["ray_start_s"] = time.perf_counter() - t
        reporters: queue.Queue = queue.Queue()
        actors = []
        try:
            check_resources(base_cfg)
            pruning = not spec.objective.multi and spec.study.pruner != "none"
            for _ in range(k):
                actor = None
                if pruning:   # on the driver's node, so a journal file on its disk works in a cluster too
                    actor = start_reporter(TrialReporter, location, spec.study.name, study.pruner,
                                           spec.objective.metrics[0])
                    actors.append(actor)
                reporters.put(actor)
            optimize(_TrialRunner(spec, study_dir, overrides, reporters))
        finally:
            t = time.perf_counter()
            for a in actors:
                kill(a)
            if started:
                shutdown_ray()
            timing["ray_stop_s"] = time.perf_counter() - t
    wall = time.perf_counter() - t0
    if timing:
        timing["trials_s"] = max(0.0, wall - sum(timing.values()))
        timing = {name: round(v, 3) for name, v in timing.items()}
    n_new = finished_count(study) - done
    rep: dict[str, Any] = {}
    if report:
        from raysim.tuning.report import write_report

        rep = write_report(study, study_dir, session={"wall_s": wall, "new_trials": n_new, "parallel": k,
                                                      "warm": not cold, **timing})
    return StudyResult(study, study_dir, location, n_new, wall, stale, rep, timing)


def _write_meta(spec: StudySpec, study_dir: Path, location: str) -> None:
    if spec.source and Path(spec.source).exists():
        dst = study_dir / "study.toml"
        if Path(spec.source).resolve() != dst.resolve():
            shutil.copyfile(spec.source, dst)
    loc = mask_storage(location) if "://" in location else os.path.relpath(location, study_dir)
    (study_dir / "study.json").write_text(json.dumps({"study_name": spec.study.name, "storage": loc}, indent=2))


def load_from_dir(study_dir: str | Path, storage: str | None = None) -> optuna.Study:
    """Load the study of a study folder written by :func:`run_study` (for ``raysim tune-report``)."""
    d = Path(study_dir)
    meta_path = d / "study.json"
    if not meta_path.exists():
        raise ConfigError(f"{d} is not a study folder (no study.json); give the folder `raysim tune` printed")
    meta = json.loads(meta_path.read_text())
    loc = storage or meta["storage"]
    if storage is None and "://" in loc and "***" in loc:
        raise ConfigError(f"{meta_path} records the storage {loc} without its password (never written to disk); "
                          "give the full URL with --storage")
    if "://" not in loc and not Path(loc).is_absolute():
        loc = str(d / loc)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=meta["study_name"], storage=open_storage(loc))


# -- progress -------------------------------------------------------------------------------

def _console(enabled: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=not enabled)


class _Bar:
    """A rich progress bar over the trials, with the best feasible value so far."""

    def __init__(self, total: int, console, spec: StudySpec):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.spec = spec
        self.console = console
        self.p = Progress(TextColumn("[bold]trials"), MofNCompleteColumn(), BarColumn(bar_width=16), TimeElapsedColumn(),
                          TextColumn("{task.description}"), console=console, transient=False,
                          disable=console.quiet)
        self.t = self.p.add_task("", total=total)
        self.p.start()

    def callback(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from raysim.tuning.objectives import best_trials

        state = trial.state.name.lower()
        what = ""
        if trial.state == TrialState.COMPLETE and trial.values:
            what = " ".join(f"{m}={v:.4g}" for m, v in zip(self.spec.objective.metrics, trial.values))
            if not trial.user_attrs.get("feasible", True):
                what += " [infeasible]"
        elif trial.state == TrialState.PRUNED:
            what = f"at round {trial.user_attrs.get('pruned_at_round', '?')}"
        elif trial.state == TrialState.FAIL:
            what = str(trial.user_attrs.get("error", ""))[:160]
        self.p.console.print(f"trial {trial.number}: {state} {what}")
        best = best_trials(study)
        desc = ""
        if best and not self.spec.objective.multi:
            desc = f"best {self.spec.objective.metrics[0]}={best[0].values[0]:.4g} (trial {best[0].number})"
        elif best:
            desc = f"Pareto front: {len(best)} trials"
        self.p.update(self.t, advance=1, description=desc)

    def close(self) -> None:
        self.p.stop()
