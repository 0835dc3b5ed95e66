"""A whole run: run directory, the simulation, live progress, metrics, summary and plots.

Run directory layout::

    config.toml       the resolved configuration (``raysim run config.toml`` repeats the run)
    federation.json   the federation's heterogeneity statistics and the actor layout
    metrics.csv       one row per evaluation round (a line appended after every evaluation)
    clients.csv       per-client final fairness scores
    summary.json      final metrics and run facts
    model.npz         the deployed model (at most m non-zeros)
    *.png             plots
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from raysim.config import Config, ConfigError, dump_toml, fingerprint, load_config
from raysim.outcome import divergence

_PLOT_LOCK = threading.Lock()

ADDITIVE = ("n_selected", "n_reported", "client_steps", "bytes_up", "bytes_down", "client_compute_s", "aggregation_s", "round_s")

COLUMNS = ["round", "step", "density", "expected_density", "nnz", "m", "lambda", "tdr", "tpr", "f1",
           "soft_iou", "mse", "r2", "accuracy", "log_loss", "auc", "micro_f1", "macro_f1", "hamming_loss",
           "fair_mean", "fair_std", "fair_worst5", "fair_best5", "mean_entropy", "tau", "train_loss",
           "n_selected", "n_reported", "work_done", "bytes_up", "bytes_down", "cum_bytes_up",
           "cum_bytes_down", "client_steps", "cum_client_steps", "round_s", "client_compute_s", "aggregation_s",
           "evaluation_s", "clients_per_s", "wall_s", "max_abs_weight", "status"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame


#: files a run writes into its directory (removed by --force before a new run)
RUN_FILES = ("config.toml", "federation.json", "metrics.csv", "clients.csv", "summary.json", "model.npz")
LOCK_NAME = ".raysim.lock"


def make_run_dir(cfg: Config) -> Path:
    if cfg.run.run_dir:
        d = Path(cfg.run.run_dir)
        if d.exists() and not d.is_dir():
            raise ConfigError(f"run directory {d} is a file, not a folder; give --out (run.run_dir) a folder path")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(cfg.run.out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"run.out_dir = {str(out)!r} is a file, not a folder; give a folder path")
        d = out / f"{cfg.run.name}-{stamp}"
        i = 1
        while d.exists():
            d = out / f"{cfg.run.name}-{stamp}-{i}"
            i += 1
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"cannot create run directory {d}: a file is in the way on that path") from None
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {d}: {exc.strerror}") from None
    return d


class RunLock:
    """An exclusive lock on a run directory (``<run_dir>/.raysim.lock``, ``flock``), held for the
    whole run, so that two runs never write into one folder. The file records the holder's pid
    and host; the kernel releases the lock when the holder dies, so a killed run never leaves a
    stale lock behind."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        import socket

        from raysim.outcome import Busy

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise Busy(f"run directory {self.path.parent} is in use by another run ({holder}); wait for it to "
                       "finish or give this run another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _check_reuse(run_dir: Path, force: bool) -> None:
    """Refuse to write a new run over a finished or unfinished one (unless ``force``); with
    ``force`` remove the old run's files first, so two runs never mix in one folder."""
    from raysim import checkpoint as ckpt

    finished = (run_dir / "summary.json").exists()
    unfinished = not finished and (bool(ckpt.list_checkpoints(run_dir)) or (run_dir / "metrics.csv").exists())
    if not (finished or unfinished):
        return
    if not force:
        if finished:
            raise ConfigError(f"{run_dir} holds a finished run (summary.json); refusing to overwrite it. Give the "
                              "new run another --out, or add --force to replace it")
        raise ConfigError(f"{run_dir} holds an unfinished run (metrics or checkpoints, no summary.json); continue "
                          f"it with `raysim run --resume {run_dir}`, give the new run another --out, or add --force "
                          "to replace it")
    import shutil

    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for f in run_dir.glob("*.png"):
        f.unlink()
    shutil.rmtree(ckpt.checkpoint_dir(run_dir), ignore_errors=True)


def _tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df] + [c for c in df if c not in COLUMNS]
    return df[cols]


class _MetricsCSV:
    """metrics.csv as the run goes: one line appended (and flushed) per evaluation, the whole
    file rewritten (atomically, by pandas) only when a row brings a new column and at the end
    of the run. Rewriting it with pandas after every evaluation cost a tuning study's driver
    more than its Optuna bookkeeping."""

    def __init__(self, path: Path):
        self.path = path
        self.cols: list[str] | None = None
        self.n = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        row = rows[-1] if rows else {}
        if self.cols is None or self.n != len(rows) - 1 or any(k not in self.cols for k in row):
            self.rewrite(rows)
            return
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_csv_cell(row.get(c)) for c in self.cols])
        with open(self.path, "a") as f:
            f.write(buf.getvalue())
        self.n = len(rows)

    def rewrite(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        df = _tidy(rows)
        _atomic_write(self.path, df.to_csv(index=False))
        self.cols = list(df.columns)
        self.n = len(rows)
        return df


def _csv_cell(v: Any) -> Any:
    """A value as pandas' to_csv writes it (None and NaN empty, floats by repr)."""
    if v is None:
        return ""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


class _Progress:
    """A rich progress bar with the live key metrics (plain lines when not on a terminal)."""

    def __init__(self, total: int, enabled: bool, task: str):
        self.enabled = enabled
        self.total = total
        from raysim.metrics import TEST_METRIC

        self.metric = TEST_METRIC.get(task, "accuracy")
        self._bar = None
        self._last_plain = -1.0
        if enabled:
            from rich.console import Console
            from rich.progress import Progress

            self.console = Console(stderr=True)
            if self.console.is_terminal:
                self._bar = Progress(*self.columns(), console=self.console, transient=False)
                self._task = self._bar.add_task("", total=total)
                self._bar.start()

    @staticmethod
    def columns() -> tuple[Any, ...]:
        """round M/N, a short bar, elapsed time and the metrics (:meth:`text`): fits 80 columns."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        return (TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(bar_width=12), TimeElapsedColumn(),
                TextColumn("{task.description}"))

    #: live metrics with short names; the line after "round M/N bar time" fits 80 columns
    SHORT = {"density": "dens", "lambda": "lam", "tdr": "tdr", "soft_iou": "iou", "accuracy": "acc",
             "micro_f1": "mf1"}
    WIDTH = 44

    def text(self, row: dict[str, Any]) -> str:
        """The live metrics in at most :attr:`WIDTH` characters (the least important dropped first)."""
        parts = []
        for k in ("density", "lambda", self.metric, "tdr", "soft_iou"):
            v = row.get(k)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            name = self.SHORT.get(k, k[:4])
            if isinstance(v, (int, float)):
                parts.append(f"{name} {v:.3f}" if abs(v) < 10 else f"{name} {v:.3g}")
            else:
                parts.append(f"{name} {str(v)[:8]}")
        while parts and len(" ".join(parts)) > self.WIDTH:
            parts.pop()
        return " ".join(parts)

    def update(self, rnd: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=rnd, description=self.text(row))
        elif rnd / self.total - self._last_plain >= 0.1 or rnd == self.total:
            self._last_plain = rnd / self.total
            print(f"round {rnd}/{self.total} {self.text(row)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run(cfg: Config, on_eval: Callable[[int, dict[str, Any]], None] | None = None,
        console_output: bool | None = None, placement_group: Any = None, resume: bool = False,
        simulation: Callable[[Config], Any] | None = None, force: bool = False) -> RunResult:
    """Run one experiment and write its run directory.

    The run drives a :class:`raysim.simulation.Simulation` (``cluster.backend``: Ray actors, or
    in this process) and imports no Ray itself (docs/architecture.md, "Layers").

    ``on_eval(round, row)`` is called after every evaluation (the tuning layer reports
    intermediate values through it and may raise to stop the run). ``placement_group``
    places the run's actors in resources reserved beforehand (``raysim.cluster.parallel.reserve``).

    With ``run.checkpoint_every = k > 0`` a checkpoint is written every k rounds
    (``raysim.checkpoint``). With ``resume=True`` (``cfg.run.run_dir`` naming an existing run
    directory, see :func:`load_resume_config`) the run continues from its newest readable
    checkpoint and ends with the same metrics as an uninterrupted run; with no readable
    checkpoint it is an error (never a silent restart from round 1).

    Before anything is created the data files, the deployed model size (m = floor(rho p) > 0,
    else :class:`raysim.outcome.RunRefused`) and the memory estimate are checked
    (``raysim.preflight``). A run directory holding a finished or unfinished run is refused
    unless ``force``; a directory in use by another run raises :class:`raysim.outcome.Busy`.

    The run ends with ``summary["status"]`` (``raysim.outcome``): ``ok``, ``diverged`` (stopped
    early: loss or weights NaN/inf or above ``run.divergence_limit``), ``empty_model`` (no
    non-zero weight deployed) or ``no_participation`` (no client ever reported).

    ``simulation(cfg)``: where the run happens instead of fresh actors, e.g. a run on a warm
    pool (``raysim.cluster.warm.WarmFederation.simulation``); ignored for the local backend.
    """
    from raysim import checkpoint as ckpt
    from raysim.preflight import check_run

    local = cfg.cluster.backend == "local"
    show = cfg.run.progress if console_output is None else console_output
    resumed = None
    if resume:
        if not cfg.run.run_dir:
            raise ConfigError("resume needs run.run_dir: the run directory to continue")
        rd = Path(cfg.run.run_dir)
        if (rd / "summary.json").exists():
            raise ConfigError(f"{rd} holds a finished run (summary.json): nothing to resume. Start a new run with "
                              "another --out, or run it again in place with --force")
        found = ckpt.list_checkpoints(rd)
        resumed = ckpt.load_latest(rd)
        if resumed is None:
            why = (f"none of its {len(found)} checkpoint(s) can be read (truncated or corrupted)" if found else
                   f"it has no checkpoint (run.checkpoint_every = {cfg.run.checkpoint_every}; checkpoints are "
                   "written every k rounds when k > 0)")
            raise ConfigError(f"cannot resume {rd}: {why}. To start it again from round 1: "
                              f"raysim run {rd / 'config.toml'} --out {rd} --force")
        if not _same_config(resumed[0].get("config"), cfg):
            raise ConfigError(f"{resumed[1]} was written with a different configuration than "
                              f"{cfg.run.run_dir}/config.toml; resume with the run directory's own config")
    check_run(cfg)  # data files, m > 0, memory: before any folder is made or Ray is started
    run_dir = make_run_dir(cfg)
    lock = RunLock(run_dir).acquire()
    try:
        if not resume:
            _check_reuse(run_dir, force)
        ckpt.clean_orphans(run_dir)
        dump_toml(cfg, run_dir / "config.toml")
        return _run_locked(cfg, run_dir, resumed, on_eval, show, local, placement_group, simulation)
    finally:
        lock.release()


def _run_locked(cfg: Config, run_dir: Path, resumed: Any, on_eval: Any, show: bool, local: bool,
                placement_group: Any, simulation: Callable[[Config], Any] | None = None) -> RunResult:
    from raysim import checkpoint as ckpt
    from raysim import outcome
    from raysim.simulation import open_simulation

    t_start = time.perf_counter()
    sim = None
    rows: list[dict[str, Any]] = []
    try:
        if show:
            where = "in this process (cluster.backend = local)" if local else f"in {cfg.n_actors()} client actors"
            print(f"raysim: {cfg.algorithm.name} on {cfg.data.task}, {cfg.data.n_clients} clients {where}; "
                  f"run directory {run_dir}", file=sys.stderr, flush=True)
        # run() has run the data preflight (check_run): the Ray backend does not read the data again
        sim = open_simulation(cfg, placement_group=placement_group, simulation=simulation, data_checked=True)
        info = sim.info
        _atomic_write(run_dir / "federation.json", json.dumps(
            {**info["federation"], "n_actors": len(sim.actors),
             "clients_per_actor": [int(b.size) for b in sim.blocks],
             "work_imbalance": sim.imbalance,
             "server": {"pid": info.get("pid"), "node": info.get("node")},
             "actors": sim.actor_info}, indent=2, default=str))
        total_rounds = sim.total_rounds
        metrics_csv = _MetricsCSV(run_dir / "metrics.csv")
        acc: dict[str, float] = {}
        first = 1
        if resumed is not None:
            ck = resumed[0]
            sim.restore(ck["sim"])
            rows, acc, first = list(ck["rows"]), dict(ck["acc"]), int(ck["round"]) + 1
            t_start -= float(ck.get("wall_s", 0.0))
            if rows:
                metrics_csv.rewrite(rows)
            if show:
                print(f"raysim: resuming {run_dir} from {resumed[1].name} (round {first - 1})", file=sys.stderr)
        bar = _Progress(total_rounds, show, cfg.data.task)
        status, reason = outcome.OK, ""
        try:
            for rnd in range(first, total_rounds + 1):
                row = sim.run_round()
                for k in ADDITIVE:
                    acc[k] = acc.get(k, 0) + row.get(k, 0)
                bad = divergence(row, cfg.run.divergence_limit)
                last = rnd == total_rounds or bad is not None
                if rnd % cfg.run.eval_every == 0 or last:
                    row.update(acc)
                    acc = {}
                    row.update(sim.evaluate(final=rnd == total_rounds))
                    row["clients_per_s"] = row["n_reported"] / max(row["round_s"], 1e-9)
                    row["wall_s"] = time.perf_counter() - t_start
                    row["status"] = outcome.OK
                    rows.append(row)
                    if bad is not None:
                        status, reason = outcome.DIVERGED, f"round {rnd}: {bad}"
                        row["status"] = status
                    metrics_csv.write(rows)
                if bad is not None:
                    bar.update(rnd, row)
                    break
                k = cfg.run.checkpoint_every
                if k and rnd % k == 0 and rnd < total_rounds:
                    ckpt.save(run_dir, rnd, {"sim": sim.state_dict(), "rows": rows, "acc": acc,
                                             "wall_s": time.perf_counter() - t_start,
                                             "config": fingerprint(cfg)})
                if on_eval is not None and rows and rows[-1] is row:
                    on_eval(rnd, row)
                bar.update(rnd, row)
        finally:
            bar.close()
        theta = sim.deployed(final=True)
        np.savez_compressed(run_dir / "model.npz", theta=theta, p=info["p"])
        final = dict(rows[-1])
        final["nnz"] = int(np.count_nonzero(theta[: info["p"]]))
        reported = sum(float(r.get("n_reported", 0) or 0) for r in rows)
        if status == outcome.OK and reported == 0:
            status, reason = outcome.NO_PARTICIPATION, f"no client reported in {len(rows)} evaluated round(s)"
        elif status == outcome.OK and final["nnz"] == 0:
            status, reason = outcome.EMPTY_MODEL, f"the deployed model has no non-zero weight (m = {info['m']})"
        if status != outcome.OK:
            rows[-1]["status"] = final["status"] = status
        table = metrics_csv.rewrite(rows)   # the final file, written whole
        has_prune = "prune_start" in type(cfg.algorithm).model_fields
        summary = {
            "name": cfg.run.name, "algorithm": cfg.algorithm.name, "task": cfg.data.task,
            "status": status, "status_reason": reason,
            "seed": cfg.run.seed, "rounds": total_rounds, "rounds_run": int(rows[-1].get("round", total_rounds)),
            "total_steps": info["total_steps"],
            "steps_per_round": info["steps_per_round"], "p": info["p"], "m": info["m"],
            # algorithms without a prune_start knob (docs/algorithms.md section 10) have none
            "prune_start_step": info["prune_start"] if has_prune else None,
            "prune_start_round": info["prune_start"] / info["steps_per_round"] if has_prune else None,
            "n_clients": cfg.data.n_clients, "n_actors": len(sim.actors),
            "wall_s": time.perf_counter() - t_start, "final": _jsonable(final),
        }
        _atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
        _write_clients(sim, run_dir)
    finally:
        if sim is not None:
            sim.close()   # a Ray instance started for this run ends here
    if cfg.run.plots:
        from raysim.report import plot_run

        try:
            with _PLOT_LOCK:   # pyplot is not thread-safe (warm runs share the driver process)
                plot_run(run_dir, cfg.data.task)
        except Exception as exc:  # noqa: BLE001 - a plot of a diverged run must not hide its outcome
            if status == outcome.OK:
                raise
            print(f"raysim: plots skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
    if show:
        print_summary(summary, run_dir)
    if status != outcome.OK and show:
        print(f"raysim: status {status}: {reason}; {outcome.EXPLAIN[status]}", file=sys.stderr)
    return RunResult(run_dir, summary, table)


def _same_config(saved: Any, cfg: Config) -> bool:
    """Whether a checkpoint's recorded fingerprint is that of ``cfg`` (:func:`raysim.config.fingerprint`).

    Checkpoints written before ``run.divergence_limit`` entered the fingerprint lack that key;
    they are compared without it."""
    now = fingerprint(cfg)
    if isinstance(saved, dict) and "divergence_limit" not in (saved.get("run") or {}):
        now["run"].pop("divergence_limit", None)
    return saved == now


def load_resume_config(run_dir: str | Path) -> Config:
    """The configuration of an existing run directory, set up to be resumed in place."""
    d = Path(run_dir)
    if not (d / "config.toml").exists():
        raise ConfigError(f"{d} is not a run directory (no config.toml); give the folder of the run to resume")
    return load_config(d / "config.toml", [f"run.run_dir={json.dumps(str(d))}"])


def _write_clients(sim, run_dir: Path) -> None:
    scores = sim.client_scores()
    df = pd.DataFrame({"client": np.concatenate([i for i, _ in scores]),
                       "score": np.concatenate([s for _, s in scores])})
    df.sort_values("client").to_csv(run_dir / "clients.csv", index=False)


def print_summary(summary: dict[str, Any], run_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from raysim.report import summary_rows

    t = Table(title=f"raysim {summary.get('algorithm')} on {summary.get('task')} "
                    f"({summary.get('n_clients')} clients, seed {summary.get('seed')})")
    t.add_column("metric")
    t.add_column("final", justify="right")
    for k, v in summary_rows(summary):
        t.add_row(k, v)
    c = Console()
    c.print(t)
    if run_dir is not None:
        c.print(f"run directory: {run_dir}")
