"""The warm federation on real Ray actors: batched runs on a warm pool give the metrics of cold
runs, pools are keyed by the data, a killed pool actor is rebuilt with unchanged results, a
failing run leaves its batch-mates alone, and tuning trials share one pool."""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

from raysim.config import load_config

pytestmark = pytest.mark.ray

TIMING = {"round_s", "client_compute_s", "aggregation_s", "evaluation_s", "clients_per_s", "wall_s"}

SMALL = ["data.p=60", "data.n_clients=12", "data.n_per_client=20", "data.test_samples=400", "data.val_samples=300",
         "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=10", "participation.rate=0.5",
         "run.progress=false", "run.plots=false", "data.sigma_q=0.8", "run.rounds=5", "cluster.num_actors=2",
         "cluster.num_cpus=0.25", "cluster.server_num_cpus=0.25"]


def _cfg(run_dir: Path, *extra: str):
    return load_config(None, [*SMALL, f"run.run_dir='{run_dir}'", *extra])


def assert_same_metrics(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-5) -> None:
    assert list(a["round"]) == list(b["round"])
    cols = [c for c in a.columns if c not in TIMING and c in b.columns]
    assert {"val_r2", "r2", "density", "lambda", "train_loss"} <= set(cols)
    if "status" in cols:   # the run outcome (text): equal, and ok
        assert list(a["status"]) == list(b["status"]) and set(a["status"]) == {"ok"}
        cols.remove("status")
    for c in cols:
        x, y = a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7, equal_nan=True, err_msg=c)


ETAS = (0.05, 0.1, 0.2)


@pytest.fixture(scope="module")
def cold_runs(ray_session, tmp_path_factory):
    """Three cold runs (fresh actors each) of configs that differ in eta_theta."""
    from raysim.runner import run

    d = tmp_path_factory.mktemp("cold")
    return [run(_cfg(d / f"cold-{i}", f"algorithm.eta_theta={e}")) for i, e in enumerate(ETAS)]


def test_three_batched_warm_runs_equal_three_cold_runs(cold_runs, tmp_path):
    from raysim.cluster.warm import WarmFederation
    from raysim.runner import run

    fed = WarmFederation()
    cfgs = [_cfg(tmp_path / f"warm-{i}", f"algorithm.eta_theta={e}") for i, e in enumerate(ETAS)]
    other = _cfg(tmp_path / "other-seed", "run.seed=7")       # other data: its own pool
    try:
        with ThreadPoolExecutor(4) as ex:
            warm = list(ex.map(lambda c: run(c, simulation=fed.simulation), cfgs + [other]))
        assert fed.built == 2 and len(fed.pools) == 2
        pool = next(p for p in fed.pools.values() if p.runs == 3)
        # the three runs advanced together: one train call per actor carried all three
        assert pool.batcher.max_batch == 3
        # a second batch on the same data reuses the pool: no actor start-up, no data building
        pids = [a["pid"] for a in pool.actor_info]
        again = run(_cfg(tmp_path / "again", "algorithm.eta_theta=0.05"), simulation=fed.simulation)
        assert fed.built == 2 and pool.runs == 4
        layout = json.loads((again.run_dir / "federation.json").read_text())
        assert [a["pid"] for a in layout["actors"]] == pids and layout["actors"][0]["pool_runs"] == 4
    finally:
        fed.shutdown()
    for c, w in zip(cold_runs, warm):
        assert_same_metrics(c.metrics, w.metrics)
        assert c.summary["final"]["val_r2"] == pytest.approx(w.summary["final"]["val_r2"], rel=1e-5)
        assert (w.run_dir / "model.npz").exists() and (w.run_dir / "clients.csv").exists()
        np.testing.assert_allclose(np.load(c.run_dir / "model.npz")["theta"], np.load(w.run_dir / "model.npz")["theta"],
                                   rtol=1e-5, atol=1e-7)
        # clients.csv of a warm run comes from its final evaluation (no second round trip)
        cc, wc = pd.read_csv(c.run_dir / "clients.csv"), pd.read_csv(w.run_dir / "clients.csv")
        assert cc["client"].tolist() == wc["client"].tolist()
        np.testing.assert_allclose(cc["score"], wc["score"], rtol=1e-5, atol=1e-7)
    assert_same_metrics(cold_runs[0].metrics, again.metrics)
    assert warm[3].summary["seed"] == 7 and warm[3].summary["final"]["val_r2"] != warm[0].summary["final"]["val_r2"]


def test_the_final_evaluation_gives_the_closing_model_and_client_scores(ray_session, tmp_path):
    """After its last round and final evaluation, a warm run's closing model and per-client
    scores are the ones its final evaluation sent and received (no second round trip), and they
    equal what the server and the actors compute when asked again."""
    from raysim.cluster.warm import WarmFederation

    fed = WarmFederation()
    try:
        sim = fed.simulation(_cfg(tmp_path / "w"))
        assert sim._final_eval() is None
        for _ in range(sim.total_rounds):
            sim.run_round()
            ev = sim.evaluate(final=sim.step >= sim.total_steps)
        assert "val_r2" in ev and sim._final_eval() is not None
        theta, scores = sim.deployed(final=True), sim.client_scores()
        sim.slot.final_eval = None          # the round-trip path
        theta2, scores2 = sim.deployed(final=True), sim.client_scores()
        np.testing.assert_array_equal(theta, theta2)
        assert [i.tolist() for i, _ in scores] == [i.tolist() for i, _ in scores2]
        for (_, a), (_, b) in zip(scores, scores2):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        sim.close()
    finally:
        fed.shutdown()


def test_batched_runs_with_checkpoints_and_a_diverging_mate_equal_their_cold_runs(cold_runs, tmp_path):
    """Rounds queued ahead of the run loop (WarmSimulation.ahead) never cross a checkpoint or
    run after a diverged round: a checkpointing run batched with one that diverges at round 3
    gives the metrics and checkpoints of its cold run, and the diverging run (batched, and
    alone) stops where its cold run stops, with the same rows and the same saved model."""
    from raysim import checkpoint as ckpt
    from raysim.cluster.warm import WarmFederation
    from raysim.runner import run

    ck = _cfg(tmp_path / "ck", "algorithm.eta_theta=0.05", "run.checkpoint_every=2")
    div = ["algorithm.eta_theta=3.0"]
    cold_div = run(_cfg(tmp_path / "cold-div", *div))
    assert cold_div.summary["status"] == "diverged" and cold_div.summary["rounds_run"] == 3
    fed = WarmFederation()
    try:
        with ThreadPoolExecutor(2) as ex:
            warm_ck, warm_div = ex.map(lambda c: run(c, simulation=fed.simulation),
                                       [ck, _cfg(tmp_path / "warm-div", *div)])
        pool = next(iter(fed.pools.values()))
        assert pool.batcher.max_batch == 2 and pool.busy() == 0
        # alone on the pool, the round queued behind the diverged one would be issued at once
        solo_div = run(_cfg(tmp_path / "solo-div", *div), simulation=fed.simulation)
    finally:
        fed.shutdown()
    assert_same_metrics(cold_runs[0].metrics, warm_ck.metrics)
    assert [r for r, _ in ckpt.list_checkpoints(warm_ck.run_dir)] == [4, 2]    # newest first
    assert warm_div.summary["status"] == "diverged" and warm_div.summary["status_reason"] == \
        cold_div.summary["status_reason"]
    pd.testing.assert_series_equal(warm_div.metrics["round"], cold_div.metrics["round"])
    for c in ("train_loss", "r2", "val_r2", "density"):   # exploding values: rtol 1e-4, as for the model below
        np.testing.assert_allclose(warm_div.metrics[c].to_numpy(float), cold_div.metrics[c].to_numpy(float),
                                   rtol=1e-4, equal_nan=True, err_msg=c)
    # the saved model is the diverged round's, not that of a round queued behind it (which
    # differs by orders of magnitude); its weights are ~1e5, so float32 rounding of the batched
    # sums shows at about 1e-5 relative: rtol 1e-4
    for w in (warm_div, solo_div):
        assert w.summary["rounds_run"] == 3 and w.summary["final"]["nnz"] == cold_div.summary["final"]["nnz"]
        np.testing.assert_allclose(np.load(w.run_dir / "model.npz")["theta"],
                                   np.load(cold_div.run_dir / "model.npz")["theta"], rtol=1e-4)


def test_data_fingerprint_keys_the_data_and_layout_only():
    from raysim.cluster.warm import data_fingerprint

    fp = data_fingerprint(_cfg(Path("a")))
    assert data_fingerprint(_cfg(Path("b"), "algorithm.eta_theta=0.3", "run.rounds=9", "algorithm.rho=0.2")) == fp
    assert data_fingerprint(_cfg(Path("b"), "algorithm.name='fedavg'")) == fp
    for other in ("run.seed=1", "data.n_clients=13", "data.h_coef=0.5", "cluster.num_actors=3",
                  "participation.rate=0.4"):                     # the work balance reads participation
        assert data_fingerprint(_cfg(Path("b"), other)) != fp, other
    contiguous = data_fingerprint(_cfg(Path("b"), "cluster.balance='contiguous'"))
    assert data_fingerprint(_cfg(Path("b"), "cluster.balance='contiguous'", "participation.rate=0.4")) == contiguous


def test_pools_are_bounded_least_recently_used_evicted(ray_session, tmp_path):
    from raysim.cluster.warm import WarmFederation
    from raysim.runner import run

    fed = WarmFederation(max_pools=1)
    try:
        a1 = run(_cfg(tmp_path / "a1", "run.rounds=2"), simulation=fed.simulation)
        run(_cfg(tmp_path / "b", "run.rounds=2", "run.seed=3"), simulation=fed.simulation)
        assert fed.built == 2 and fed.evicted == 1 and len(fed.pools) == 1
        a2 = run(_cfg(tmp_path / "a2", "run.rounds=2"), simulation=fed.simulation)   # rebuilt, same data
        assert fed.built == 3 and fed.evicted == 2
    finally:
        fed.shutdown()
    assert_same_metrics(a1.metrics, a2.metrics)


def test_killed_pool_actor_is_rebuilt_with_the_same_metrics(cold_runs, tmp_path):
    """A pool client actor's process is SIGKILLed mid-run, while two runs share the pool: Ray
    restarts it, it rebuilds its clients and the runs' views from their ids and configs, and
    both runs end with the metrics of cold runs."""
    import ray

    from raysim.cluster.warm import WarmFederation
    from raysim.runner import run

    fed = WarmFederation()
    killed: list[int] = []
    lock = threading.Lock()

    def kill_once(rnd: int, row: dict) -> None:
        with lock:
            if rnd == 2 and not killed:
                pool = next(iter(fed.pools.values()))
                pid = pool.actor_info[0]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    cfgs = [_cfg(tmp_path / f"warm-{i}", f"algorithm.eta_theta={e}") for i, e in enumerate(ETAS[:2])]
    try:
        with ThreadPoolExecutor(2) as ex:
            warm = list(ex.map(lambda c: run(c, on_eval=kill_once, simulation=fed.simulation), cfgs))
        pool = next(iter(fed.pools.values()))
        new_pid = ray.get(pool.actors[0].ready.remote())["pid"]
    finally:
        fed.shutdown()
    assert killed and new_pid != killed[0]
    for c, w in zip(cold_runs, warm):
        assert_same_metrics(c.metrics, w.metrics)


def test_a_failing_run_leaves_its_batch_mates_alone(cold_runs, tmp_path, monkeypatch):
    """A run whose client update raises fails alone; the run batched with it is unaffected."""
    from raysim.many import RunFailed, run_many

    # a user algorithm (a file plug-in) whose client step raises in the actors, in the same
    # Ray call that trains the good run's clients
    (tmp_path / "broken_algo.py").write_text(
        "from raysim.algorithms.flops import FLoPS\n"
        "class Broken(FLoPS):\n"
        "    def client_update(self, payload, data, idx, ctx, work=None):\n"
        "        raise RuntimeError('client step broken on purpose')\n")
    monkeypatch.chdir(tmp_path)
    good = _cfg(tmp_path / "good", f"algorithm.eta_theta={ETAS[0]}")
    bad = _cfg(tmp_path / "bad", "algorithm.name='broken_algo.py:Broken'", f"algorithm.eta_theta={ETAS[1]}")
    res = run_many([good, bad], max_parallel=2, progress=False)
    assert isinstance(res[1], RunFailed) and "broken on purpose" in str(res[1]), res[1]
    assert not isinstance(res[0], Exception)
    assert_same_metrics(cold_runs[0].metrics, res[0].metrics)


def test_local_backend_runs_bypass_the_pools(tmp_path):
    """run_many (warm) with cluster.backend = local runs in process, no Ray actors."""
    from raysim.many import run_many

    cfgs = [_cfg(tmp_path / f"local-{i}", "cluster.backend='local'", f"algorithm.eta_theta={e}")
            for i, e in enumerate(ETAS[:2])]
    res = run_many(cfgs, progress=False)
    assert all(not isinstance(r, Exception) for r in res)
    layout = json.loads((res[0].run_dir / "federation.json").read_text())
    assert layout["actors"][0]["node"] == "local"


def test_study_trials_share_one_pool_and_pruned_trials_free_their_slot(ray_session, tmp_path):
    """A warm study with 3 trials in flight: every trial runs on the one pool (built once);
    a hopeless trial is pruned mid-run and the study still finishes every requested trial."""
    from optuna.trial import TrialState

    from raysim.tuning.spec import load_spec
    from raysim.tuning.study import open_study, run_study

    base = {"data": {"p": 50, "rho_true": 0.1, "n_clients": 12, "n_per_client": 20, "test_samples": 300},
            "participation": {"rate": 0.5}, "algorithm": {"rho": 0.1, "batch_size": 10},
            "cluster": {"num_actors": 2, "num_cpus": 0.25, "server_num_cpus": 0.25}}
    d = {"study": {"name": "warm", "n_trials": 7, "sampler": "random", "seed": 0, "pruner": "median",
                   "n_startup_trials": 2, "n_warmup_rounds": 1},
         "scenario": {"algorithm": "flops", "base": base}, "fixed": {"run.rounds": 6},
         "space": {"algorithm.eta_theta": {"low": 1e-6, "high": 0.3, "log": True}},
         "objective": {"metric": "val_r2", "direction": "maximize", "val_samples": 300}}
    path = tmp_path / "warm.toml"
    path.write_text(tomli_w.dumps(d))
    spec = load_spec(path)
    out = tmp_path / "study"
    study = open_study(spec, str(out / "study.journal"))
    for eta in (0.3, 0.2, 0.25, 0.3):
        study.enqueue_trial({"algorithm.eta_theta": eta})
    # trial 4 starts when a slot frees (two trials complete by then), at step 0 while the
    # others go on; it is hopeless and pruned, and trial 5 takes its slot
    study.enqueue_trial({"algorithm.eta_theta": 1e-6})
    res = run_study(spec, out=out, parallel=3, progress=False, report=False)
    trials = res.study.get_trials()
    assert len(trials) == 7 and res.n_new == 7
    assert trials[4].state == TrialState.PRUNED, trials[4].user_attrs
    assert all(t.state == TrialState.COMPLETE for t in trials[:4])
    pools, runs = set(), []
    for t in trials:
        layout = json.loads((Path(t.user_attrs["run_dir"]) / "federation.json").read_text())
        pools.add(layout["actors"][0]["warm_pool"])
        runs.append(layout["actors"][0]["pool_runs"])
    assert len(pools) == 1 and sorted(runs) == list(range(1, 8))
    # where the study's time went: one pool started, its seconds and the trials' add up to the wall time
    tm = res.timing
    assert set(tm) == {"ray_start_s", "pools_start_s", "ray_stop_s", "trials_s"}
    assert tm["pools_start_s"] > 0 and tm["trials_s"] > 0 and min(tm.values()) >= 0
    assert sum(tm.values()) == pytest.approx(res.wall_s, abs=0.01)


def test_batched_local_sgd_trials_equal_their_solo_runs(ray_session, tmp_path):
    """fedavg and fedavgm runs that differ in their local learning rate are trained in one
    vectorised pass on a warm pool (real actors); each equals its in-process solo run."""
    from raysim.many import run_many
    from raysim.runner import run

    variants = [("fedavg", 0.02), ("fedavg", 0.05), ("fedavgm", 0.03)]
    cfgs = [_cfg(tmp_path / f"warm-{i}", f"algorithm.name='{a}'", f"algorithm.eta_local={e}",
                 "algorithm.local_epochs=2") for i, (a, e) in enumerate(variants)]
    warm = run_many(cfgs, max_parallel=3, progress=False, warm=True)
    for i, (c, w) in enumerate(zip(cfgs, warm)):
        assert not isinstance(w, Exception), w
        solo = run(c.model_copy(update={"cluster": c.cluster.model_copy(update={"backend": "local"}),
                                        "run": c.run.model_copy(update={"run_dir": str(tmp_path / f"solo-{i}")})}))
        a, b = solo.metrics, w.metrics
        for col in ("val_r2", "r2", "train_loss", "cum_bytes_up"):
            np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{variants[i]} {col}")
    assert not np.allclose(warm[0].metrics["r2"], warm[1].metrics["r2"])        # the rates differ
