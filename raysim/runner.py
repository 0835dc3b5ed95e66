"""A whole run: run directory, the Ray simulation, live progress, metrics, summary and plots.

Run directory layout::

    config.toml       the resolved configuration (``raysim run config.toml`` repeats the run)
    federation.json   the federation's heterogeneity statistics and the actor layout
    metrics.csv       one row per evaluation round (rewritten after every evaluation)
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

from raysim.config import Config, ConfigError, dump_toml, load_config

_PLOT_LOCK = threading.Lock()

ADDITIVE = ("n_selected", "n_reported", "client_steps", "bytes_up", "bytes_down", "client_compute_s", "aggregation_s", "round_s")

COLUMNS = ["round", "step", "density", "expected_density", "nnz", "m", "lambda", "tdr", "tpr", "f1",
           "soft_iou", "mse", "r2", "accuracy", "log_loss", "auc", "micro_f1", "macro_f1", "hamming_loss",
           "fair_mean", "fair_std", "fair_worst5", "fair_best5", "mean_entropy", "tau", "train_loss",
           "n_selected", "n_reported", "work_done", "bytes_up", "bytes_down", "cum_bytes_up",
           "cum_bytes_down", "client_steps", "cum_client_steps", "round_s", "client_compute_s", "aggregation_s", "evaluation_s",
           "clients_per_s", "wall_s"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame


def make_run_dir(cfg: Config) -> Path:
    if cfg.run.run_dir:
        d = Path(cfg.run.run_dir)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        d = Path(cfg.run.out_dir) / f"{cfg.run.name}-{stamp}"
        i = 1
        while d.exists():
            d = Path(cfg.run.out_dir) / f"{cfg.run.name}-{stamp}-{i}"
            i += 1
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df] + [c for c in df if c not in COLUMNS]
    return df[cols]


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
        from raysim.report import TEST_METRIC

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
        simulation: Callable[[Config], Any] | None = None) -> RunResult:
    """Run one experiment on Ray and write its run directory.

    ``on_eval(round, row)`` is called after every evaluation (the tuning layer reports
    intermediate values through it and may raise to stop the run). ``placement_group``
    places the run's actors in resources reserved beforehand (see raysim.cluster.parallel).

    With ``run.checkpoint_every = k > 0`` a checkpoint is written every k rounds
    (``raysim.checkpoint``). With ``resume=True`` (``cfg.run.run_dir`` naming an existing run
    directory, see :func:`load_resume_config`) the run continues from its newest readable
    checkpoint and ends with the same metrics as an uninterrupted run.

    ``simulation(cfg)``: where the run happens instead of fresh actors, e.g. a run on a warm
    pool (``raysim.cluster.warm.WarmFederation.simulation``); ignored for the local backend.
    """
    from raysim import checkpoint as ckpt

    local = cfg.cluster.backend == "local"
    show = cfg.run.progress if console_output is None else console_output
    resumed = None
    if resume:
        if not cfg.run.run_dir:
            raise ConfigError("resume needs run.run_dir: the run directory to continue")
        resumed = ckpt.load_latest(cfg.run.run_dir)
        if resumed is not None and resumed[0].get("config") != _fingerprint(cfg):
            raise ConfigError(f"{resumed[1]} was written with a different configuration than "
                              f"{cfg.run.run_dir}/config.toml; resume with the run directory's own config")
        if resumed is None and show:
            print(f"raysim: no readable checkpoint in {cfg.run.run_dir}; starting the run from round 1",
                  file=sys.stderr)
    run_dir = make_run_dir(cfg)
    dump_toml(cfg, run_dir / "config.toml")
    t_start = time.perf_counter()
    started = False
    if not local and simulation is None:
        from raysim.cluster.driver import init_ray

        started = init_ray(cfg)
    sim = None
    rows: list[dict[str, Any]] = []
    try:
        if show:
            where = "in this process (cluster.backend = local)" if local else f"in {cfg.n_actors()} client actors"
            print(f"raysim: {cfg.algorithm.name} on {cfg.data.task}, {cfg.data.n_clients} clients {where}; "
                  f"run directory {run_dir}", file=sys.stderr, flush=True)
        if local:
            from raysim.local import LocalSimulation

            sim = LocalSimulation(cfg)
        elif simulation is not None:
            sim = simulation(cfg)
        else:
            from raysim.cluster.driver import RaySimulation

            sim = RaySimulation(cfg, placement_group=placement_group)
        info = sim.info
        _atomic_write(run_dir / "federation.json", json.dumps(
            {**info["federation"], "n_actors": len(sim.actors),
             "clients_per_actor": [int(b.size) for b in sim.blocks],
             "work_imbalance": sim.imbalance,
             "server": {"pid": info.get("pid"), "node": info.get("node")},
             "actors": sim.actor_info}, indent=2, default=str))
        total_rounds = sim.total_rounds
        acc: dict[str, float] = {}
        first = 1
        if resumed is not None:
            ck = resumed[0]
            sim.restore(ck["sim"])
            rows, acc, first = list(ck["rows"]), dict(ck["acc"]), int(ck["round"]) + 1
            t_start -= float(ck.get("wall_s", 0.0))
            if rows:
                _atomic_write(run_dir / "metrics.csv", _tidy(rows).to_csv(index=False))
            if show:
                print(f"raysim: resuming {run_dir} from {resumed[1].name} (round {first - 1})", file=sys.stderr)
        bar = _Progress(total_rounds, show, cfg.data.task)
        try:
            for rnd in range(first, total_rounds + 1):
                row = sim.run_round()
                for k in ADDITIVE:
                    acc[k] = acc.get(k, 0) + row.get(k, 0)
                last = rnd == total_rounds
                if rnd % cfg.run.eval_every == 0 or last:
                    row.update(acc)
                    acc = {}
                    row.update(sim.evaluate(final=last))
                    row["clients_per_s"] = row["n_reported"] / max(row["round_s"], 1e-9)
                    row["wall_s"] = time.perf_counter() - t_start
                    rows.append(row)
                    _atomic_write(run_dir / "metrics.csv", _tidy(rows).to_csv(index=False))
                k = cfg.run.checkpoint_every
                if k and rnd % k == 0 and rnd < total_rounds:
                    ckpt.save(run_dir, rnd, {"sim": sim.state_dict(), "rows": rows, "acc": acc,
                                             "wall_s": time.perf_counter() - t_start,
                                             "config": _fingerprint(cfg)})
                if on_eval is not None and rows and rows[-1] is row:
                    on_eval(rnd, row)
                bar.update(rnd, row)
        finally:
            bar.close()
        theta = sim.deployed(final=True)
        np.savez_compressed(run_dir / "model.npz", theta=theta, p=info["p"])
        final = dict(rows[-1])
        final["nnz"] = int(np.count_nonzero(theta[: info["p"]]))
        summary = {
            "name": cfg.run.name, "algorithm": cfg.algorithm.name, "task": cfg.data.task,
            "seed": cfg.run.seed, "rounds": total_rounds, "total_steps": info["total_steps"],
            "steps_per_round": info["steps_per_round"], "p": info["p"], "m": info["m"],
            "prune_start_step": info["prune_start"],
            "prune_start_round": info["prune_start"] / info["steps_per_round"],
            "n_clients": cfg.data.n_clients, "n_actors": len(sim.actors),
            "wall_s": time.perf_counter() - t_start, "final": _jsonable(final),
        }
        _atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
        _write_clients(sim, run_dir)
    finally:
        if sim is not None:
            sim.close()
        if started:
            import ray

            ray.shutdown()
    if cfg.run.plots:
        from raysim.report import plot_run

        with _PLOT_LOCK:   # pyplot is not thread-safe (warm runs share the driver process)
            plot_run(run_dir, cfg.data.task)
    if show:
        print_summary(summary, run_dir)
    return RunResult(run_dir, summary, _tidy(rows))


def _fingerprint(cfg: Config) -> dict[str, Any]:
    """The parts of a config that determine the results (not paths, display or the Ray layout)."""
    d = cfg.to_toml_dict()
    keep_run = ("seed", "rounds", "steps_per_round", "eval_every")
    return {"run": {k: v for k, v in d["run"].items() if k in keep_run},
            **{k: v for k, v in d.items() if k not in ("run", "cluster")}}


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
