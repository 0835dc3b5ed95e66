"""Several runs' client steps in one vectorised pass (the warm pools' batched trials) give each
run exactly the partial it computes alone; runs that cannot share a pass are trained alone."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.config import load_config
from raysim.data.participation import build_participation
from raysim.engine import ClientCohort, ServerCore, train_many

SMALL = ["data.p=40", "data.n_clients=30", "data.n_per_client=12", "data.n_min=3", "data.sigma_q=0.8",
         "data.test_samples=200", "algorithm.rho=0.2", "data.rho_true=0.2", "algorithm.batch_size=5",
         "participation.rate=0.4", "run.rounds=4"]


def _cfg(*extra: str):
    return load_config(None, [*SMALL, *extra])


def _setup(cfgs):
    base = ClientCohort(cfgs[0], np.arange(0, 30, 2))       # one actor's half of the clients
    views = [ClientCohort.sharing(c, base) for c in cfgs]
    server = ServerCore(cfgs[0])
    cores = [ServerCore(c, share=server) for c in cfgs]
    part = build_participation(cfgs[0].participation, 30, cfgs[0].run.seed)
    return base, views, cores, part


def _mine(part, step, base):
    sel = part.select(step).reporting
    return sel[np.isin(sel, base.ids)]


def _same(a, b):
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    assert len(a) == len(b)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.client_ids, q.client_ids)
        assert p.weight == pytest.approx(q.weight, rel=1e-12)
        np.testing.assert_allclose(p.client_loss, q.client_loss, rtol=1e-6, atol=1e-7)
        for k in p.sums:
            np.testing.assert_allclose(p.sums[k], q.sums[k], rtol=1e-5, atol=1e-6)


def test_fused_flops_steps_equal_solo_steps_across_runs_at_different_steps():
    cfgs = [_cfg(f"algorithm.eta_theta={e}", f"algorithm.eta_phi={e * 3}") for e in (0.01, 0.05, 0.2)]
    cfgs.append(_cfg("algorithm.weighting='uniform'", "algorithm.name='flops-ent'"))
    base, views, cores, part = _setup(cfgs)
    # advance the runs by different numbers of steps, so they differ in state and in step
    for lag, core in zip((0, 1, 2, 3), cores):
        for step in range(lag):
            core.apply(step, 0, [])
    payloads = [c.payload() for c in cores]
    steps = [(v, c.step, pay, _mine(part, c.step, base), None) for v, c, pay in zip(views, cores, payloads)]
    fused = train_many(steps)
    assert len({v.comp.algo.fuse_key() for v in views}) == 1                  # one pass for these
    # the fused pass itself (train_many would fall back to one run at a time on an error)
    direct = type(views[0].comp.algo).client_update_many([v.job(st, pay, ids, w) for v, st, pay, ids, w in steps])
    for (v, step, pay, ids, work), got, raw in zip(steps, fused, direct):
        want = v.train(step, pay, ids, work)
        _same(got, want)
        _same(raw, want)


def test_stragglers_and_pass_limits_and_unfusable_runs():
    cfgs = [_cfg("cluster.max_batch_clients=6", f"algorithm.eta_theta={e}") for e in (0.01, 0.05)]
    cfgs.append(_cfg("cluster.max_batch_clients=6", "algorithm.batch_size=3"))   # other mini-batch size
    cfgs.append(_cfg("cluster.max_batch_clients=6", "algorithm.name='fedprox'"))  # no fused form
    base, views, cores, part = _setup(cfgs)
    assert views[2].comp.algo.fuse_key() != views[0].comp.algo.fuse_key()
    assert views[3].comp.algo.fuse_key() is None
    ids = base.ids[:5]
    work = np.array([1.0, 0.5, 0.2, 1.0, 0.7])
    steps = [(v, 0, c.payload(), ids, work) for v, c in zip(views, cores)]
    for (v, step, pay, i, w), got in zip(steps, train_many(steps)):
        assert not isinstance(got, BaseException), got
        _same(got, v.train(step, pay, i, w))
    direct = type(views[0].comp.algo).client_update_many([v.job(*rest) for v, *rest in steps[:2]])
    for (v, step, pay, i, w), raw in zip(steps[:2], direct):       # the two fused FLoPS runs, stragglers included
        _same(raw, v.train(step, pay, i, w))
    # more clients than max_batch_clients in one run: trained alone, in several passes
    many = base.ids[:9]
    got = train_many([(views[0], 0, cores[0].payload(), many, None)])[0]
    assert isinstance(got, list) and len(got) == 2
    _same(got, views[0].train(0, cores[0].payload(), many, None))


def test_a_bad_run_in_a_fused_pass_fails_alone():
    cfgs = [_cfg(f"algorithm.eta_theta={e}") for e in (0.01, 0.05)]
    base, views, cores, part = _setup(cfgs)
    ids = base.ids[:4]
    good = cores[0].payload()
    bad = {"theta": good["theta"][:-3], "phi": good["phi"]}           # a malformed payload
    out = train_many([(views[0], 0, good, ids, None), (views[1], 0, bad, ids, None)])
    assert isinstance(out[1], BaseException)
    _same(out[0], views[0].train(0, good, ids, None))


def test_a_subclass_with_its_own_client_step_is_never_fused():
    """The fused pass computes FLoPS's client step: a subclass that overrides client_update
    (a user algorithm) is trained alone, with its own step."""
    from raysim.algorithms.flops import FLoPS

    class Doubled(FLoPS):
        def client_update(self, payload, data, idx, ctx, work=None):
            part = super().client_update(payload, data, idx, ctx, work)
            part.sums = {k: 2 * v for k, v in part.sums.items()}
            return part

    cfgs = [_cfg(), _cfg()]
    base, views, cores, part = _setup(cfgs)
    algo = views[1].comp.algo
    views[1].comp.algo = Doubled(algo.cfg, algo.model, algo.schedule)
    assert views[1].comp.algo.fuse_key() is None and views[0].comp.algo.fuse_key() is not None
    ids = base.ids[:4]
    pay = cores[0].payload()
    out = train_many([(views[0], 0, pay, ids, None), (views[1], 0, pay, ids, None)])
    for k in out[0].sums:
        np.testing.assert_allclose(out[1].sums[k], 2 * out[0].sums[k], rtol=1e-6)


def test_batched_evaluation_equals_one_model_at_a_time():
    """The warm pools score the deployed models of a batch in one pass (held-out samples laid
    end to end, no padding): the per-client scores equal those of each model alone."""
    cfgs = [_cfg(f"algorithm.eta_theta={e}") for e in (0.01, 0.05, 0.2)]
    base, views, cores, part = _setup(cfgs)
    for step in range(6):
        for c, v in zip(cores, views):
            ids = _mine(part, step, base)
            c.apply(step, len(ids), [v.train(step, c.payload(), ids, None)])
    thetas = [c.deployed(False) for c in cores]
    assert not np.allclose(thetas[0], thetas[1])
    for (ids, got), th in zip(base.evaluate_many(thetas), thetas):
        want_ids, want = base.evaluate(th)
        np.testing.assert_array_equal(ids, want_ids)
        assert np.isnan(want).any() == np.isnan(got).any()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)



@pytest.mark.parametrize("name,extra", [("flops", []), ("flops", ["algorithm.optimizer='adam'"]), ("flops-pa", []),
                                        ("fedavg", []), ("fedavgm", [])])
def test_server_update_returns_a_new_state_and_bytes_come_from_the_broadcast(name, extra):
    """server_update leaves the broadcast state as it was (a checkpoint of it, or a batch-mate
    holding it, sees no change); comm_bytes counts from that state and the aggregate."""
    import copy

    import torch

    from raysim.algorithms import aggregate
    from raysim.algorithms.base import StepContext

    cfg = _cfg(f"algorithm.name='{name}'", *extra)
    base, views, cores, part = _setup([cfg])
    core, view = cores[0], views[0]
    algo = core.comp.algo
    ids = _mine(part, 0, base)
    agg = aggregate([view.train(0, core.payload(), ids, None)])
    before = core.state
    frozen = copy.deepcopy(before)
    ctx = StepContext(cfg.run.seed, 0, core.comp.schedule)
    after = algo.server_update(before, agg, ctx)
    assert after is not before
    assert set(before) == set(frozen)
    for k, v in frozen.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(before[k], v), k
        elif isinstance(v, dict):
            for kk, vv in v.items():
                assert torch.equal(before[k][kk], vv), (k, kk)
        else:
            assert before[k] == v, k
    assert not any(str(k).startswith("_") for k in after)          # no byte counts parked in the state
    down, up = algo.comm_bytes(before, agg, n_selected=len(ids) + 2)
    assert down > 0 and up > 0 and down % (len(ids) + 2) == 0


def test_fused_local_sgd_equals_solo_across_learning_rates_rounds_and_stragglers():
    """fedavg, fedavgm and fed-ht runs (other local learning rates, rounds, server sides) train
    their clients in one loop over local steps; every run's partial is the one it computes
    alone. Algorithms with their own client step (fedprox, ser, fediter-ht, fedavg-prune,
    fedeba, flops-pa) are not fused."""
    cfgs = [_cfg("algorithm.name='fedavg'", f"algorithm.eta_local={e}", "algorithm.local_epochs=2")
            for e in (0.01, 0.05)]
    cfgs.append(_cfg("algorithm.name='fedavgm'", "algorithm.eta_local=0.03", "algorithm.local_epochs=2",
                     "algorithm.weighting='uniform'"))
    cfgs.append(_cfg("algorithm.name='fed-ht'", "algorithm.eta_local=0.02", "algorithm.local_epochs=2"))
    base, views, cores, part = _setup(cfgs)
    keys = {v.comp.algo.fuse_key() for v in views}
    assert len(keys) == 1 and None not in keys
    for lag, core in zip((0, 1, 2, 1), cores):      # the runs at different rounds
        for step in range(lag):
            ids = _mine(part, step, base)
            core.apply(step, len(ids), [views[0].train(step, core.payload(), ids, None)])
    for stragglers in (False, True):
        steps = []
        for v, c in zip(views, cores):
            ids = _mine(part, c.step, base)
            work = np.linspace(0.2, 1.0, len(ids)) if stragglers else None
            steps.append((v, c.step, c.payload(), ids, work))
        assert sum(len(s[3]) for s in steps) > 3
        # the fused pass itself (train_many would fall back to one run at a time on an error)
        direct = type(views[0].comp.algo).client_update_many([v.job(st, pay, ids, w) for v, st, pay, ids, w in steps])
        for (v, step, pay, ids, w), got, raw in zip(steps, train_many(steps), direct):
            assert not isinstance(got, BaseException), got
            want = v.train(step, pay, ids, w)
            _same(got, want)
            _same(raw, want)
            assert got.extra["up_bytes"] == want.extra["up_bytes"]
            np.testing.assert_array_equal(got.client_steps, want.client_steps)
        if stragglers:
            assert any(np.any(s[4] < 1) for s in steps if s[4] is not None)
    for name in ("fedprox", "ser", "fediter-ht", "fedavg-prune", "fedeba", "flops-pa"):
        _, vs, _, _ = _setup([_cfg(f"algorithm.name='{name}'")])
        assert vs[0].comp.algo.fuse_key() is None, name
