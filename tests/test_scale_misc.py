"""Device handling, streaming data stacking, the bench plugin (fast, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.algorithms import Partial
from raysim.config import load_config
from raysim.data import build_federation, stack_clients
from raysim.engine import ClientCohort, _to_host

SMALL = ["data.p=40", "data.n_clients=12", "data.n_per_client=20", "data.test_samples=200",
         "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=10"]


@pytest.mark.parametrize("sigma_q", [0.0, 1.0])
def test_stack_clients_matches_each_client(sigma_q):
    cfg = load_config(None, [*SMALL, f"data.sigma_q={sigma_q}"])
    fed = build_federation(cfg.data, 0)
    ids = np.array([1, 4, 9, 11])
    st = stack_clients(fed, ids)
    assert st.x.shape[1] == max(fed.client_data(int(k)).x.shape[0] for k in ids)
    for i, k in enumerate(ids):
        d = fed.client_data(int(k))
        m, h = d.x.shape[0], d.x_hold.shape[0]
        assert int(st.n[i]) == m and int(st.n_hold[i]) == h
        assert torch.equal(st.x[i, :m], torch.as_tensor(d.x)) and not st.x[i, m:].any()
        assert torch.equal(st.y[i, :m], torch.as_tensor(d.y))
        assert torch.equal(st.x_hold[i, :h], torch.as_tensor(d.x_hold))


def test_partial_results_come_back_to_host():
    p = Partial(sums={"theta": torch.ones(3, dtype=torch.float64)}, weight=torch.tensor(2.0),
                client_ids=np.arange(2), client_loss=torch.zeros(2), client_n=torch.tensor([3, 4]),
                client_steps=np.ones(2))
    q = _to_host(p)
    assert isinstance(q.sums["theta"], np.ndarray) and q.sums["theta"].dtype == np.float64
    assert isinstance(q.client_loss, np.ndarray) and isinstance(q.client_n, np.ndarray)
    assert isinstance(q.weight, float) and q.weight == 2.0


def _one_step(device: str):
    cfg = load_config(None, SMALL)
    cohort = ClientCohort(cfg, np.arange(12), device=device)
    from raysim.engine import ServerCore

    payload = ServerCore(cfg).payload()
    return cohort, cohort.train(0, payload, np.array([0, 3, 7]), np.ones(3))


def test_cpu_cohort_is_default_and_host_results():
    cohort, part = _one_step("cpu")
    assert cohort.data.x.device.type == "cpu"
    assert all(isinstance(v, np.ndarray) for v in part.sums.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_cohort_matches_cpu():
    cohort, gpu = _one_step("cuda")
    assert cohort.data.x.device.type == "cuda"           # data moved once, at construction
    _, cpu = _one_step("cpu")
    for k in cpu.sums:
        assert isinstance(gpu.sums[k], np.ndarray)        # results back on the host
        np.testing.assert_allclose(gpu.sums[k], cpu.sums[k], rtol=1e-4, atol=1e-6)


def test_bench_is_a_cli_plugin(capsys):
    from raysim.cli import build_parser

    args = build_parser().parse_args(["bench", "--clients", "100", "--rates", "0.1", "--engine-only"])
    assert args.clients == [100] and args.rates == [0.1] and args.engine_only


def test_memory_sampler_sees_this_process():
    from raysim.bench import MemorySampler

    with MemorySampler(interval=0.01) as mem:
        block = np.ones(20_000_000)                       # 160 MB
        mem.sample()
        del block
    assert mem.peak > 160e6


def test_large_selections_are_trained_in_passes_with_the_same_result():
    from raysim.algorithms import aggregate

    sel = np.array([0, 2, 3, 5, 8, 11])
    out = {}
    for size in (1024, 4):
        cfg = load_config(None, [*SMALL, f"cluster.max_batch_clients={size}"])
        from raysim.engine import ServerCore

        cohort = ClientCohort(cfg, np.arange(12))
        server = ServerCore(cfg)
        res = cohort.train(0, server.payload(), sel, np.ones(sel.size))
        out[size] = (res, server.apply(0, sel.size, [res]))
    assert isinstance(out[4][0], list) and len(out[4][0]) == 2 and not isinstance(out[1024][0], list)
    whole, parts = aggregate([out[1024][0]]), aggregate(out[4][0])
    assert parts.n_reported == whole.n_reported == sel.size
    for k in whole.mean:
        np.testing.assert_allclose(parts.mean[k].numpy(), whole.mean[k].numpy(), rtol=1e-6, atol=1e-9)
    for k in ("theta", "phi"):
        np.testing.assert_allclose(out[4][1][k], out[1024][1][k], rtol=1e-6, atol=1e-9)
