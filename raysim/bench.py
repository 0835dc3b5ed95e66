"""Engine benchmark: the Ray engine's communication steps against the single-process reference.

For every case (algorithm, task, number of clients N, participation rate q) two measurements
are taken, each in a fresh Python process so that memory is measured in isolation:

* ``engine``: :class:`raysim.cluster.driver.RaySimulation` on a local Ray instance started
  by that process (server actor + client actors, steps pipelined by object reference);
* ``reference``: the same :class:`~raysim.engine.ClientCohort` / :class:`~raysim.engine.ServerCore`
  computation in one process with no Ray (all clients stacked in one cohort, as
  ``raysim.reference`` does).

Both run one warm-up round, then whole rounds of communication steps (no evaluation) until
``min_time`` seconds have passed (at least ``min_rounds`` rounds). Reported: rounds/s,
steps/s, trained clients/s, the engine/reference time ratio per step, set-up time, and the
peak resident memory of the whole process tree (the process plus all its descendants: for
the engine that is the driver, the Ray daemons and every worker), sampled every 50 ms in a
thread. Shared pages (torch libraries, the object store) are counted once per process, so
the figure is an upper bound.

Used by ``scripts/bench_engine.py`` and ``raysim bench`` (same code).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from raysim.commands import command

DEFAULT_CLIENTS = (100, 1000, 10000)
DEFAULT_RATES = (0.01, 0.1, 1.0)
DEFAULT_ALGORITHMS = ("flops", "flops-pa", "fedavg")


class MemorySampler:
    """Peak RSS of this process and all its descendants, sampled in a background thread."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            procs = [self.proc]
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def case_config(algorithm: str, task: str, n_clients: int, rate: float, p: int, n_per_client: int,
                overrides: list[str]):
    """The config of one benchmark case (raises ConfigError for unknown algorithms/tasks)."""
    from raysim.config import load_config

    return load_config(None, [
        f"algorithm.name='{algorithm}'", f"data.task='{task}'", f"data.n_clients={n_clients}",
        f"participation.rate={rate}", f"data.p={p}", f"data.n_per_client={n_per_client}",
        "data.test_samples=1000", "run.rounds=100000", "run.progress=false", "run.plots=false",
        *overrides])


def _timed_rounds(run_round, steps_per_round: int, min_time: float, min_rounds: int,
                  max_rounds: int) -> dict[str, float]:
    run_round()                                   # warm-up round (first-call costs, caches)
    rounds, clients = 0, 0
    t0 = time.perf_counter()
    while True:
        clients += run_round()
        rounds += 1
        el = time.perf_counter() - t0
        if rounds >= max_rounds or (rounds >= min_rounds and el >= min_time):
            break
    return {"rounds": rounds, "steps": rounds * steps_per_round, "clients": clients, "time_s": el}


def measure(mode: str, cfg, min_time: float = 5.0, min_rounds: int = 2, max_rounds: int = 500) -> dict[str, Any]:
    """One measurement in this process: ``mode`` is 'engine' or 'reference'."""
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        if mode == "reference":
            import torch

            from raysim.data.participation import build_participation

            # the same intra-op threads as one client actor: the same computation, no Ray
            torch.set_num_threads(cfg.cluster.torch_threads)
            from raysim.engine import ClientCohort, ServerCore

            server = ServerCore(cfg)
            cohort = ClientCohort(cfg, np.arange(server.comp.fed.n_clients))
            part = build_participation(cfg.participation, server.comp.fed.n_clients, cfg.run.seed)
            spr = server.comp.schedule.steps_per_round
            state = {"payload": server.payload()}

            def run_round() -> int:
                n = 0
                for _ in range(spr):
                    step = server.step
                    sel = part.select(step)
                    partial = cohort.train(step, state["payload"], sel.reporting, sel.work[sel.reported])
                    state["payload"] = server.apply(step, sel.n_selected, [partial])
                    n += int(sel.reporting.size)
                server.end_round()
                return n

            extra: dict[str, Any] = {"n_actors": 0}
            setup_s = time.perf_counter() - t0
            res = _timed_rounds(run_round, spr, min_time, min_rounds, max_rounds)
        else:
            from raysim.cluster.driver import open_ray_simulation

            sim = open_ray_simulation(cfg)   # starts a local Ray instance; sim.close() ends it
            spr = sim.steps_per_round
            setup_s = time.perf_counter() - t0

            def run_round() -> int:
                return int(sim.run_round()["n_reported"])

            try:
                res = _timed_rounds(run_round, spr, min_time, min_rounds, max_rounds)
                extra = {"n_actors": len(sim.actors), "imbalance": sim.imbalance}
                mem.sample()   # with the actors still alive
            finally:
                sim.close()
    return {"mode": mode, "setup_s": setup_s, **res, **extra, "steps_per_round": spr,
            "peak_mem_gb": mem.peak / 1e9}


def _run_isolated(mode: str, case: dict[str, Any], timing: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter; returns its JSON result or an error record."""
    cmd = [sys.executable, "-m", "raysim.bench", "--_one", json.dumps({"mode": mode, "case": case, **timing})]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"timed out after {timeout:g} s"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return {"mode": mode, "error": " | ".join(tail) or f"exit status {out.returncode}"}


def _one(spec: dict[str, Any]) -> None:
    c = spec["case"]
    cfg = case_config(c["algorithm"], c["task"], c["n_clients"], c["rate"], c["p"], c["n_per_client"],
                      c["overrides"])
    r = measure(spec["mode"], cfg, spec["min_time"], spec["min_rounds"], spec["max_rounds"])
    print(json.dumps(r), flush=True)


def run_bench(algorithms: list[str], tasks: list[str], clients: list[int], rates: list[float], p: int,
              n_per_client: int, overrides: list[str], min_time: float, min_rounds: int, max_rounds: int,
              out_dir: Path | None, timeout: float, modes: tuple[str, ...] = ("reference", "engine")):
    """Run every case (each mode in its own process), print the table, write it to ``out_dir``."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from raysim.config import ConfigError

    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    timing = {"min_time": min_time, "min_rounds": min_rounds, "max_rounds": max_rounds}
    for algo in algorithms:
        for task in tasks:
            try:
                from raysim.algorithms import algorithm_class

                algorithm_class(case_config(algo, task, 10, 0.5, p, n_per_client, overrides).algorithm.name)
            except (ConfigError, ValueError) as exc:
                console.print(f"[yellow]skip {algo} on {task}: not available here ({str(exc).splitlines()[-1].strip()})")
                continue
            for n in clients:
                for q in rates:
                    case = {"algorithm": algo, "task": task, "n_clients": n, "rate": q, "p": p,
                            "n_per_client": n_per_client, "overrides": overrides}
                    res = {}
                    for mode in modes:
                        console.print(f"{algo} {task} N={n} q={q:g}: {mode} ...", end=" ")
                        r = _run_isolated(mode, case, timing, timeout)
                        res[mode] = r
                        console.print(r.get("error") or f"{r['steps'] / r['time_s']:.2f} steps/s, "
                                                         f"peak {r['peak_mem_gb']:.2f} GB")
                    row = {"algorithm": algo, "task": task, "n_clients": n, "rate": q,
                           "selected_per_step": max(1, round(q * n))}
                    for mode, r in res.items():
                        pre = "eng" if mode == "engine" else "ref"
                        if "error" in r:
                            row[f"{pre}_error"] = r["error"]
                            continue
                        row[f"{pre}_rounds_per_s"] = r["rounds"] / r["time_s"]
                        row[f"{pre}_steps_per_s"] = r["steps"] / r["time_s"]
                        row[f"{pre}_clients_per_s"] = r["clients"] / r["time_s"]
                        row[f"{pre}_ms_per_step"] = 1e3 * r["time_s"] / r["steps"]
                        row[f"{pre}_setup_s"] = r["setup_s"]
                        row[f"{pre}_peak_mem_gb"] = r["peak_mem_gb"]
                        if mode == "engine":
                            row["n_actors"] = r.get("n_actors")
                    if "eng_ms_per_step" in row and "ref_ms_per_step" in row:
                        row["engine_over_reference"] = row["eng_ms_per_step"] / row["ref_ms_per_step"]
                    rows.append(row)
    df = pd.DataFrame(rows)
    show = [("algorithm", "algo", "{}"), ("task", "task", "{}"), ("n_clients", "N", "{}"), ("rate", "q", "{:g}"),
            ("eng_rounds_per_s", "eng rounds/s", "{:.2f}"), ("eng_clients_per_s", "eng clients/s", "{:.0f}"),
            ("eng_ms_per_step", "eng ms/step", "{:.1f}"), ("ref_ms_per_step", "ref ms/step", "{:.1f}"),
            ("engine_over_reference", "eng/ref", "{:.2f}"), ("eng_peak_mem_gb", "eng peak GB", "{:.2f}"),
            ("ref_peak_mem_gb", "ref peak GB", "{:.2f}"), ("eng_setup_s", "eng setup s", "{:.1f}")]
    t = Table(title=f"raysim engine benchmark (p = {p}, {n_per_client} samples per client)")
    for _, head, _ in show:
        t.add_column(head, justify="right")
    for _, r in df.iterrows():
        t.add_row(*[(fmt.format(r[k]) if k in r and pd.notna(r[k]) else "-") for k, _, fmt in show])
    Console().print(t)
    if out_dir is not None and not df.empty:
        out_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(out_dir / "bench_engine.csv", index=False)
        lines = ["| " + " | ".join(h for _, h, _ in show) + " |", "|" + "---|" * len(show)]
        for _, r in df.iterrows():
            lines.append("| " + " | ".join((fmt.format(r[k]) if k in r and pd.notna(r[k]) else "-")
                                          for k, _, fmt in show) + " |")
        (out_dir / "bench_engine.md").write_text("\n".join(lines) + "\n")
        console.print(f"written: {out_dir / 'bench_engine.csv'}, {out_dir / 'bench_engine.md'}")
    return df


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algorithms", nargs="+", default=list(DEFAULT_ALGORITHMS),
                   help="algorithms to time (those not available in this version are skipped)")
    p.add_argument("--tasks", nargs="+", default=["lr"], help="tasks (data.task), e.g. lr cnn")
    p.add_argument("--clients", nargs="+", type=int, default=list(DEFAULT_CLIENTS), help="numbers of clients N")
    p.add_argument("--rates", nargs="+", type=float, default=list(DEFAULT_RATES), help="participation rates q")
    p.add_argument("--p", type=int, default=1000, help="features (data.p)")
    p.add_argument("--n-per-client", type=int, default=50, help="samples per client (data.n_per_client)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every case (repeatable), e.g. --set cluster.num_actors=2")
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timed rounds per measurement")
    p.add_argument("--min-rounds", type=int, default=2, help="at least this many timed rounds")
    p.add_argument("--max-rounds", type=int, default=500, help="at most this many timed rounds")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a measurement is abandoned")
    p.add_argument("--engine-only", action="store_true", help="skip the reference")
    p.add_argument("--out", type=Path, default=None, help="folder for bench_engine.csv / bench_engine.md")


def run_from_args(args: argparse.Namespace) -> int:
    modes = ("engine",) if args.engine_only else ("reference", "engine")
    run_bench(args.algorithms, args.tasks, args.clients, args.rates, args.p, args.n_per_client, args.overrides,
              args.min_time, args.min_rounds, args.max_rounds, args.out, args.timeout, modes)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_one"]:
        _one(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="bench_engine", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


# `raysim bench` (registered in raysim.commands; raysim.cli imports this module as a plugin)
@command("bench", "time the engine's steps against the single-process reference (rounds/s, memory)")(add_arguments)
def _cmd_bench(args: argparse.Namespace) -> int:
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
