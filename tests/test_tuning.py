"""Studies on real Ray with a real journal storage file: resume after a kill, parallel trials,
pruned / failed / infeasible trials, and the exported best config reproducing its trial."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import tomli_w
from optuna.trial import TrialState

from raysim.cli import main as cli_main
from raysim.tuning.spec import load_spec
from raysim.tuning.study import FINISHED, STALE_ERROR, interrupted, open_storage, run_study

pytestmark = pytest.mark.ray

TINY = {
    "data": {"p": 50, "rho_true": 0.1, "n_clients": 12, "n_per_client": 20, "test_samples": 300,
             "h_coef": 0.2, "sigma_q": 0.3},
    "participation": {"rate": 0.5},
    "algorithm": {"rho": 0.1, "batch_size": 10},
    "cluster": {"clients_per_actor": 12, "num_cpus": 0.25, "server_num_cpus": 0.25},
}


def _write_study(tmp_path, name, space, study=None, objective=None, fixed=None, base=None):
    d = {"study": {"name": name, "n_trials": 3, "sampler": "random", "seed": 0, **(study or {})},
         "scenario": {"algorithm": "flops", "base": base or TINY},
         "fixed": {"run.rounds": 4, **(fixed or {})},
         "space": space,
         "objective": {"metric": "val_r2", "direction": "maximize", "val_samples": 300, **(objective or {})}}
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(d))
    return path


LR_SPACE = {"eta_theta": {"key": "algorithm.eta_theta", "low": 0.05, "high": 0.3, "log": True},
            "ratio": {"kind": "eta_phi_ratio", "low": 0.5, "high": 2.0}}


def _states(study):
    return [t.state for t in study.get_trials()]


@pytest.mark.parametrize("path_kind", ["cold", "warm"])
def test_killed_study_resumes_with_parallel_trials(ray_session, tmp_path, path_kind):
    """A `raysim tune` process is killed (SIGKILL) mid-study; `raysim tune` on the same journal
    file marks its running trial failed and finishes the remaining trials, two at a time, to
    exactly the requested total, running no trial twice. Cold: fresh actors per trial; warm
    (the default): trials batched on a warm pool, so many more finish per second and the study
    is longer to be caught mid-way."""
    cold = path_kind == "cold"
    total = 4 if cold else 16
    path = _write_study(tmp_path, "resume", LR_SPACE, study={"sampler": "nsga2", "n_trials": total},
                        objective={"metric": ["val_r2", "cum_bytes_up"], "direction": ["maximize", "minimize"]})
    out = tmp_path / "study"
    journal = out / "study.journal"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "raysim",
                             "tune", str(path), "--parallel", "1", "--out", str(out), "--no-progress"]
                            + (["--cold"] if cold else []), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    finished = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5 if cold else 0.05)
            if not journal.exists():
                continue
            try:   # the journal file appears just before the study is created in it
                st = optuna.load_study(study_name="resume", storage=open_storage(str(journal)))
            except KeyError:
                continue
            finished = len(st.get_trials(states=FINISHED))
            if finished >= 1:
                break
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)    # a killed study: no cleanup at all
        proc.wait(30)
    assert finished >= 1, proc.stderr.read().decode()[-3000:]
    before = optuna.load_study(study_name="resume", storage=open_storage(str(journal)))
    n_before = len(before.get_trials(states=FINISHED))
    running = [t.number for t in before.get_trials(states=(TrialState.RUNNING,))]
    assert n_before + len(running) <= total - 2
    done_before = {t.number: t.datetime_complete for t in before.get_trials(states=FINISHED)}

    res = run_study(load_spec(path), out=out, parallel=2, progress=False, cold=cold)
    trials = res.study.get_trials()
    # the interrupted trials are failed and their parameters run again: the requested total
    # finishes besides them, and no trial runs twice
    assert len([t for t in trials if t.state in FINISHED and not interrupted(t)]) == total
    assert all(t.state in FINISHED for t in trials)                      # nothing left running
    assert res.stale == running and res.n_new == total - n_before >= 2
    # the trials finished before the kill are untouched; every new trial has its own run folder
    assert {t.number: t.datetime_complete for t in trials if t.number in done_before} == done_before
    new_dirs = [t.user_attrs["run_dir"] for t in trials if t.number >= n_before + len(running)]
    assert len(set(new_dirs)) == len(new_dirs)
    for n in running:
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs["error"] == STALE_ERROR
        rerun = [t for t in trials if t.user_attrs.get("rerun_of") == n]
        if trials[n].params:     # killed with its parameters drawn: they run once more
            assert len(rerun) == 1 and rerun[0].params == trials[n].params
        else:                    # killed before: nothing to re-run, and it does not count
            assert not rerun and interrupted(trials[n])
    new = [t for t in trials if t.number >= n_before + len(running)]
    assert all(t.state == TrialState.COMPLETE for t in new), [t.user_attrs.get("error") for t in new]
    a, b = new[:2]                                                       # two trials ran at the same time
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
    # the multi-objective report: Pareto front of feasible trials
    rep = res.study_dir / "report"
    for f in ("trials.csv", "best_trials.csv", "best_trials.md", "history.png", "pareto_front.png",
              "best_config.toml", "report.md", "summary.json"):
        assert (rep / f).exists(), f
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["pareto_front"] and set(summary["pareto_front"]) <= {t.number for t in new + trials[:n_before]}
    # a second call has nothing left to do
    again = run_study(load_spec(path), out=out, progress=False, report=False)
    assert again.n_new == 0 and len(again.study.get_trials()) == len(trials)


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_pruned_and_failed_trials_are_recorded(ray_session, tmp_path, cold):
    """Warm: the pruner is asked in the driver. Cold: each trial is a Ray task that reports to a
    reporter actor (raysim.cluster.parallel.ReporterHook), whose "stop" ends the run (StopRun)."""
    space = {"algorithm.eta_theta": {"choices": [0.3, 1e-4]}, "algorithm.batch_size": {"choices": [10, 0]}}
    path = _write_study(tmp_path, "prune", space,
                        study={"pruner": "median", "n_startup_trials": 1, "n_warmup_rounds": 1},
                        fixed={"run.rounds": 5})
    spec = load_spec(path)
    out = tmp_path / "prune"
    from raysim.tuning.study import open_study

    study = open_study(spec, str(out / "study.journal"))
    study.enqueue_trial({"algorithm.eta_theta": 0.3, "algorithm.batch_size": 10})   # good: completes
    study.enqueue_trial({"algorithm.eta_theta": 1e-4, "algorithm.batch_size": 10})  # hopeless: pruned
    study.enqueue_trial({"algorithm.eta_theta": 0.3, "algorithm.batch_size": 0})    # invalid: fails
    res = run_study(spec, out=out, progress=False, cold=cold)
    t0, t1, t2 = res.study.get_trials()
    assert t0.state == TrialState.COMPLETE and len(t0.intermediate_values) == 5
    assert t1.state == TrialState.PRUNED, t1.user_attrs
    assert 2 <= t1.user_attrs["pruned_at_round"] < 5 and len(t1.intermediate_values) < 5
    assert t2.state == TrialState.FAIL and "batch_size" in t2.user_attrs["error"]
    df = pd.read_csv(res.study_dir / "report" / "trials.csv")
    assert df["state"].tolist() == ["COMPLETE", "PRUNED", "FAIL"]
    assert "batch_size" in df.loc[2, "error"]
    assert (res.study_dir / "report" / "intermediate.png").exists()


def test_infeasible_trial_is_never_best_and_best_config_reproduces(ray_session, tmp_path):
    # rho = 0.3 keeps all 15 true features and fits better, but breaks the 0.1 density target
    base = {**TINY, "data": {**TINY["data"], "rho_true": 0.3}}
    space = {"algorithm.rho": {"choices": [0.1, 0.3]}}
    path = _write_study(tmp_path, "feas", space, base=base, study={"pruner": "none", "n_trials": 2},
                        objective={"target_density": 0.1})
    spec = load_spec(path)
    from raysim.tuning.study import open_study

    out = tmp_path / "feas"
    study = open_study(spec, str(out / "study.journal"))
    study.enqueue_trial({"algorithm.rho": 0.3})
    study.enqueue_trial({"algorithm.rho": 0.1})
    res = run_study(spec, out=out, progress=False)
    bad, good = res.study.get_trials()
    assert bad.state == good.state == TrialState.COMPLETE
    assert bad.value > good.value                         # the infeasible one scores higher ...
    assert not bad.user_attrs["feasible"] and good.user_attrs["feasible"]
    assert bad.user_attrs["nnz"] > bad.user_attrs["m_target"] == 5
    summary = json.loads((res.study_dir / "report" / "summary.json").read_text())
    assert summary["best"]["trial"] == good.number       # ... but is never reported as best
    best_csv = pd.read_csv(res.study_dir / "report" / "best_trials.csv")
    assert best_csv["trial"].tolist() == [good.number]

    # the exported config, run as is with `raysim run`, gives the trial's objective value
    cfg_path = res.study_dir / "report" / "best_config.toml"
    rerun = tmp_path / "rerun"
    assert cli_main(["run", str(cfg_path), "--out", str(rerun), "--no-progress"]) == 0
    final = json.loads((rerun / "summary.json").read_text())["final"]
    assert final["val_r2"] == pytest.approx(good.value, rel=1e-9, abs=1e-12)

    # and tune-report rebuilds the report from the storage alone
    exported = cfg_path.read_text()
    for f in (res.study_dir / "report").iterdir():
        if f.is_file():
            f.unlink()
    assert cli_main(["tune-report", str(res.study_dir)]) == 0
    assert cfg_path.read_text() == exported
    assert (res.study_dir / "report" / "history.png").exists()
