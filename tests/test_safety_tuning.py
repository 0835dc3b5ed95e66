"""Study-level robustness of `raysim tune` (issue 11): continuing a study never repeats
parameters, interrupted trials are run again, one driver per study, secrets masked, and an
all-failed study exits non-zero. Real journal storage, real `python -m raysim tune` processes;
trials use the in-process backend (cluster.backend = "local") to stay fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pandas as pd
import tomli_w
from optuna.trial import TrialState

from raysim import outcome
from raysim.tuning.spec import load_spec
from raysim.tuning.study import STALE_ERROR, mask_storage, open_storage, open_study, run_study

BASE = {"data": {"p": 50, "rho_true": 0.1, "n_clients": 8, "n_per_client": 20, "test_samples": 200},
        "algorithm": {"rho": 0.1, "batch_size": 10}, "cluster": {"backend": "local"}}


def _study(tmp_path, name, low=0.01, high=0.3, n_trials=2, rounds=2):
    d = {"study": {"name": name, "n_trials": n_trials, "sampler": "random", "seed": 0, "pruner": "none"},
         "scenario": {"algorithm": "flops", "base": BASE},
         "fixed": {"run.rounds": rounds},
         "space": {"eta_theta": {"key": "algorithm.eta_theta", "low": low, "high": high, "log": True}},
         "objective": {"metric": "val_r2", "direction": "maximize", "val_samples": 200}}
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(d))
    return path


def tune(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "raysim", "tune", *argv, "--no-progress"], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _load(out, name):
    return optuna.load_study(study_name=name, storage=open_storage(str(out / "study.journal")))


def test_continuing_a_study_draws_new_parameters(tmp_path):
    path, out = _study(tmp_path, "cont"), tmp_path / "o"
    assert tune(str(path), "--out", str(out)).returncode == 0
    r = tune(str(path), "--out", str(out), "--n-trials", "4")
    assert r.returncode == 0, r.stderr
    trials = _load(out, "cont").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    first, later = [t.params["eta_theta"] for t in trials[:2]], [t.params["eta_theta"] for t in trials[2:]]
    assert not set(first) & set(later), (first, later)        # the re-seeded sampler used to repeat them


def test_interrupted_trial_is_run_again_with_its_parameters(tmp_path):
    """A driver killed mid-trial leaves the trial RUNNING in the storage (made here exactly so:
    the trial is asked for and never told). The next driver fails it, queues its parameters
    again and reaches the requested number of COMPLETE trials, running no trial twice."""
    path, out = _study(tmp_path, "intr", n_trials=3), tmp_path / "o"
    spec = load_spec(path)
    study = open_study(spec, str(out / "study.journal"))
    done = study.ask({"eta_theta": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)})
    study.tell(done, 0.5)
    killed = study.ask({"eta_theta": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)})
    killed_eta = killed.params["eta_theta"]
    res = run_study(spec, out=out, progress=False, report=False)
    trials = res.study.get_trials()
    assert res.stale == [1]
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["error"] == STALE_ERROR
    reruns = [t for t in trials if t.user_attrs.get("rerun_of") == 1]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
    assert reruns[0].params["eta_theta"] == killed_eta
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4
    # resuming again: nothing to do, the interrupted trial is not queued a second time
    again = run_study(spec, out=out, progress=False, report=False)
    assert again.n_new == 0 and len(again.study.get_trials()) == 4


def test_second_driver_is_refused_and_first_is_untouched(tmp_path):
    path, out = _study(tmp_path, "two", n_trials=6, rounds=40), tmp_path / "o"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen([sys.executable, "-m", "raysim", "tune", str(path), "--out", str(out), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = out / ".tune.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith(f"pid {first.pid}")):
        time.sleep(0.05)
    try:
        r = tune(str(path), "--out", str(out))
        assert r.returncode == outcome.EXIT_BUSY, r.stderr
        assert "another `raysim tune` driver" in r.stderr and f"pid {first.pid}" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        _, err = first.communicate(timeout=400)
    assert first.returncode == 0, err
    trials = _load(out, "two").get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)


def test_rdb_password_is_masked_and_missing_driver_is_clear(tmp_path):
    path, out = _study(tmp_path, "pw"), tmp_path / "o"
    url = "postgresql://alice:hunter2-secret@db.example:5432/optuna"
    r = tune(str(path), "--out", str(out), "--storage", url)
    assert r.returncode == outcome.EXIT_USAGE
    assert "hunter2" not in r.stdout + r.stderr and "alice:***@db.example" in r.stderr
    assert "pip install psycopg2-binary" in r.stderr and "Traceback" not in r.stderr
    meta = out / "study.json"
    if meta.exists():
        assert "hunter2" not in meta.read_text()
    assert mask_storage("mysql+pymysql://u:p%40ss@h/db") == "mysql+pymysql://u:***@h/db"
    assert mask_storage("sqlite:///x.db") == "sqlite:///x.db"
    # a working RDB (sqlite) study records its URL (no secret in it) and runs
    sq = f"sqlite:///{tmp_path / 'db.sqlite'}"
    r = tune(str(path), "--out", str(tmp_path / "o2"), "--storage", sq)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o2" / "study.json").read_text())["storage"] == sq


def test_every_trial_failed_exits_6_with_the_reason(tmp_path):
    path, out = _study(tmp_path, "div", low=1e5, high=1e6), tmp_path / "o"
    r = tune(str(path), "--out", str(out))
    assert r.returncode == outcome.EXIT_ALL_FAILED == 6, r.stderr
    assert "every trial failed" in r.stderr and "diverged" in r.stderr
    trials = _load(out, "div").get_trials()
    assert all(t.state == TrialState.FAIL and t.user_attrs["status"] == "diverged" for t in trials)
    assert all(t.user_attrs["error"].startswith("run diverged") for t in trials)
    table = pd.read_csv(out / "report" / "trials.csv")
    assert set(table["status"]) == {"diverged"}


def test_second_driver_on_rdb_storage_joins_without_failing_live_trials(tmp_path):
    """Two drivers on one RDB study (different study folders, as on two machines): the second
    one sees the first one's RUNNING trial, leaves it alone (its driver is alive and beating),
    and both finish with no failed trial."""
    path = _study(tmp_path, "join", n_trials=3, rounds=60)
    url = f"sqlite:///{tmp_path / 'join.db'}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen([sys.executable, "-m", "raysim", "tune", str(path), "--out", str(tmp_path / "a"),
                              "--storage", url, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    deadline = time.time() + 120
    running = []
    try:
        while time.time() < deadline and first.poll() is None and not running:
            time.sleep(0.1)
            try:
                st = optuna.load_study(study_name="join", storage=url)
            except KeyError:
                continue
            running = [t.number for t in st.get_trials(states=(TrialState.RUNNING,))]
        assert running, "the first driver never had a running trial"
        r = tune(str(path), "--out", str(tmp_path / "b"), "--storage", url, "--n-trials", "5")
        assert r.returncode == 0, r.stderr
        assert "left running by a killed study" not in r.stderr
    finally:
        _, err = first.communicate(timeout=400)
    assert first.returncode == 0, err
    trials = optuna.load_study(study_name="join", storage=url).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.FAIL]
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) >= 5


def test_a_trial_killed_before_its_parameters_does_not_count(tmp_path):
    """A driver killed between creating a trial and drawing its parameters leaves a RUNNING
    trial with none: there is nothing to re-run, it is failed as interrupted, and the study
    still reaches the requested number of COMPLETE trials."""
    path, out = _study(tmp_path, "bare", n_trials=2), tmp_path / "o"
    spec = load_spec(path)
    study = open_study(spec, str(out / "study.journal"))
    study.ask()                                                   # RUNNING, no parameters
    res = run_study(spec, out=out, progress=False, report=False)
    trials = res.study.get_trials()
    assert res.stale == [0]
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["error"] == STALE_ERROR
    assert not [t for t in trials if t.user_attrs.get("rerun_of") == 0]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2 and res.n_new == 2
