"""fedavg, fedprox, fedavg-prune and the vectorised local-training machinery (docs/algorithms.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.algorithms.base import aggregate
from raysim.config import ConfigError, load_config
from raysim.engine import ClientCohort, ServerCore
from raysim.metrics import tensor_bytes
from raysim.reference import run_reference

BASE = ["data.p=30", "data.n_clients=8", "data.n_per_client=16", "data.test_samples=300", "data.rho_true=0.1",
        "algorithm.rho=0.1", "run.rounds=4", "run.progress=false", "run.plots=false"]


def cfg_of(*extra):
    return load_config(None, BASE + list(extra))


def _pooled(cfg):
    core = ServerCore(cfg)
    fed = core.comp.fed
    ds = [fed.client_data(k) for k in range(fed.n_clients)]
    x = torch.from_numpy(np.concatenate([d.x for d in ds]))
    y = torch.from_numpy(np.concatenate([d.y for d in ds]))
    return core, x, y


@pytest.mark.parametrize("task", ["lr", "lg", "mc", "mlc"])
def test_fedavg_one_full_batch_step_is_one_centralised_gradient_step(task):
    """Full participation, E = 1, b >= n_k: the weighted average of the client models equals
    one gradient step on the pooled data (unequal n_k, weights n_k / sum n)."""
    cfg = cfg_of(f"data.task='{task}'", "algorithm.name='fedavg'", "participation.rate=1.0", "data.sigma_q=0.6",
                 "algorithm.batch_size=1000", "algorithm.eta_local=0.3", "data.n_classes=3", "data.n_labels=4")
    core, x, y = _pooled(cfg)
    # a non-zero start so that every term of the gradient matters
    theta0 = 0.1 * torch.randn(core.comp.model.P, generator=torch.Generator().manual_seed(1))
    core.state["theta"] = theta0.clone()
    cohort = ClientCohort(cfg, np.arange(8))
    partial = cohort.train(0, core.payload(), np.arange(8))
    core.apply(0, 8, [partial])

    th = theta0.clone().double().requires_grad_(True)
    p_in = cfg.data.p
    W = th[: core.comp.model.p].reshape(p_in, -1)
    z = x.double() @ W + th[core.comp.model.p:]
    F = torch.nn.functional
    if task == "lr":
        loss = ((z[:, 0] - y.double()) ** 2).mean()
    elif task == "lg":
        loss = F.binary_cross_entropy_with_logits(z[:, 0], y.double())
    elif task == "mc":
        loss = F.cross_entropy(z, y.long())
    else:
        loss = F.binary_cross_entropy_with_logits(z, y.double(), reduction="none").mean(1).mean()
    (g,) = torch.autograd.grad(loss, th)
    expected = (theta0.double() - 0.3 * g).float()
    torch.testing.assert_close(core.state["theta"], expected, rtol=1e-5, atol=1e-6)
    assert partial.client_steps.tolist() == [1.0] * 8


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_towards_the_global_model():
    common = ["participation.rate=0.5", "algorithm.local_epochs=3", "algorithm.batch_size=4", "data.sigma_q=0.4"]
    a, _, _ = run_reference(cfg_of("algorithm.name='fedavg'", *common), evaluate=False)
    b, _, _ = run_reference(cfg_of("algorithm.name='fedprox'", "algorithm.mu=0.0", *common), evaluate=False)
    torch.testing.assert_close(a.state["theta"], b.state["theta"], rtol=1e-6, atol=1e-7)
    c, _, _ = run_reference(cfg_of("algorithm.name='fedprox'", "algorithm.mu=5.0", *common), evaluate=False)
    # a strong proximal term keeps the model closer to where it started (zero)
    assert c.state["theta"].norm() < 0.9 * a.state["theta"].norm()


def test_local_steps_follow_n_k_and_a_cohort_equals_its_clients_trained_alone():
    """Clients with different n_k run E ceil(n_k / b) steps in one vectorised pass; the sums of a
    cohort equal the sums of its clients trained one by one (layout independence)."""
    cfg = cfg_of("algorithm.name='fedavg'", "data.sigma_q=0.8", "algorithm.local_epochs=2", "algorithm.batch_size=5")
    cohort = ClientCohort(cfg, np.arange(8))
    n = cohort.data.n.numpy()
    assert len(set(n.tolist())) > 3
    core = ServerCore(cfg)
    core.state["theta"] = 0.1 * torch.ones(core.comp.model.P)
    payload = core.payload()
    ids = np.arange(8)
    together = cohort.train(2, payload, ids)
    np.testing.assert_array_equal(together.client_steps, 2 * np.ceil(n / 5))
    alone = [ClientCohort(cfg, np.array([k])).train(2, payload, np.array([k])) for k in ids]
    a, b = aggregate([together]), aggregate(alone)
    torch.testing.assert_close(a.mean["delta"], b.mean["delta"], rtol=1e-5, atol=1e-7)
    # partial work (stragglers) runs ceil(work * steps) steps, at least one
    work = np.full(8, 0.3)
    part = cohort.train(2, payload, ids, work)
    np.testing.assert_array_equal(part.client_steps, np.maximum(1, np.ceil(0.3 * 2 * np.ceil(n / 5))))


def test_fedavg_prune_keeps_exactly_the_m_largest_magnitudes():
    common = ["participation.rate=0.5", "algorithm.local_epochs=2", "algorithm.batch_size=4"]
    dense, _, _ = run_reference(cfg_of("algorithm.name='fedavg'", *common), evaluate=False)
    pruned, rows, _ = run_reference(cfg_of("algorithm.name='fedavg-prune'", *common))
    p, m = pruned.comp.model.p, pruned.comp.algo.m
    ref = dense.state["theta"].clone()
    keep = np.argsort(-np.abs(ref[:p].numpy()), kind="stable")[:m]
    expected = torch.zeros_like(ref)
    expected[keep] = ref[keep]
    expected[p:] = ref[p:]
    got = torch.as_tensor(pruned.deployed(final=True))
    torch.testing.assert_close(got, expected)
    assert int(torch.count_nonzero(got[:p])) == m
    assert rows[-1]["nnz"] == m and rows[0]["density"] == 1.0


def test_fedavg_prune_fine_tunes_with_the_mask_fixed():
    cfg = cfg_of("algorithm.name='fedavg-prune'", "algorithm.fine_tune_rounds=2", "participation.rate=0.5",
                 "run.rounds=5")
    core, rows, _ = run_reference(cfg)
    # the mask is taken after round 3 (5 - 2) and the last two rounds keep it
    assert [r["nnz"] <= core.comp.algo.m for r in rows] == [False, False, True, True, True]
    mask = core.state["mask"]
    theta = core.state["theta"][: core.comp.model.p]
    assert bool(((theta != 0) <= mask).all())
    # after pruning the broadcast is sparse and the uploads carry only the masked entries
    p, P, m = core.comp.model.p, core.comp.model.P, core.comp.algo.m
    assert rows[-1]["bytes_up"] == 4 * (tensor_bytes(m) + tensor_bytes(P - p) + 4)
    assert rows[0]["bytes_up"] == 4 * (tensor_bytes(P) + 4)


def test_unknown_algorithm_name_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.name='fedfoo'"])
    msg = str(err.value)
    for name in ("flops-pa", "fedavg-prune", "fed-ht", "fediter-ht", "fedprox", "ser", "fedeba", "flops-ent"):
        assert name in msg
