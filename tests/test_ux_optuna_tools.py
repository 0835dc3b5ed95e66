"""Optuna's own tools on a raysim study journal: optuna-dashboard shows the constraints (its
HTTP API, a real server process) and the Optuna CLI reads the journal (the README's commands)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from raysim.tuning.objectives import record_constraints
from raysim.tuning.study import open_storage


def _journal(tmp_path: Path) -> tuple[Path, list[list[float]]]:
    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="demo", storage=open_storage(str(path)), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    cons: list[list[float]] = []

    def objective(trial):
        x = trial.suggest_float("algorithm.eta_theta", 0.0, 1.0)
        c = [round(x * 10) - 5.0, x - 0.5]          # feasible when x <= 0.5 (like nnz - m, density - rho)
        record_constraints(trial, c)
        cons.append(c)
        return x

    study.optimize(objective, n_trials=4)
    return path, cons


def _script(name: str) -> str:
    """The console script installed next to this Python (the test's environment), else on PATH."""
    here = Path(sys.executable).with_name(name)
    return str(here) if here.exists() else (shutil.which(name) or name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_shows_the_constraints(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="pip install 'raysim[dashboard]'")
    exe = _script("optuna-dashboard")
    path, cons = _journal(tmp_path)
    port = _free_port()
    proc = subprocess.Popen([exe, str(path), "--port", str(port), "--host", "127.0.0.1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        detail = None
        deadline = time.time() + 60
        while time.time() < deadline and detail is None:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/0?after=0", timeout=5) as r:
                    detail = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert detail is not None, "optuna-dashboard did not answer"
        shown = [t["constraints"] for t in sorted(detail["trials"], key=lambda t: t["number"])]
        assert shown == cons                                  # what the dashboard displays per trial
    finally:
        proc.terminate()
        proc.wait(20)


def test_optuna_cli_reads_the_study_journal(tmp_path):
    path, cons = _journal(tmp_path)
    optuna_cli = [_script("optuna")]
    base = ["--storage", str(path), "--storage-class", "JournalFileBackend"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([*optuna_cli, "trials", *base, "--study-name", "demo", "-f", "json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    trials = json.loads(p.stdout)
    assert [t["user_attrs"]["constraints"] for t in trials] == cons
    p = subprocess.run([*optuna_cli, "studies", *base, "-f", "json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)[0]["name"] == "demo", p.stderr
