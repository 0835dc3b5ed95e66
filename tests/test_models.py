"""Models lg, mc, mlc, cnn and their synthetic data (docs/algorithms.md sections 7-8, docs/data.md section 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, log_loss, roc_auc_score

from raysim.algorithms import build_algorithm
from raysim.algorithms.base import Schedule, StepContext, aggregate
from raysim.config import ConfigError, load_config
from raysim.data import build_federation, stack_clients
from raysim.data.federation import ClientData, Federation
from raysim.models import FedAvgCNN, build_model


def _cfg(task, *extra):
    return load_config(None, [f"data.task='{task}'", "data.p=40", "data.n_clients=6", "data.n_per_client=30",
                              "data.test_samples=3000", "data.rho_true=0.1", "algorithm.rho=0.1", *extra])


@pytest.mark.parametrize("task,ydtype", [("lg", torch.float32), ("mc", torch.int64), ("mlc", torch.float32)])
def test_synthetic_tasks_shapes_labels_and_support(task, ydtype):
    cfg = _cfg(task, "data.n_classes=4", "data.n_labels=5")
    fed = build_federation(cfg.data, 0)
    assert fed.true_support.sum() == 4
    st = stack_clients(fed, np.arange(6))
    assert st.y.dtype == ydtype
    x, y = fed.test_set()
    model = build_model(task, fed.input_shape, fed.n_outputs)
    if task == "lg":
        assert set(np.unique(y)) == {0.0, 1.0} and model.P == 41
    elif task == "mc":
        assert fed.n_outputs == 4 and set(np.unique(y)) == {0, 1, 2, 3}
        assert model.p == 40 * 4 and model.P == 40 * 4 + 4
        # row-major W: the weights of feature j are j*C .. j*C + C - 1
        assert list(model.gated_feature_index()[:8]) == [0, 0, 0, 0, 1, 1, 1, 1]
    else:
        assert y.shape == (3000, 5)
        # the label biases are solved for about 20% of labels on
        assert abs(y.mean() - 0.2) < 0.03
    # a client's data does not depend on the federation size
    fed2 = build_federation(cfg.data.model_copy(update={"n_clients": 9}), 0)
    np.testing.assert_array_equal(fed.client_data(3).y, fed2.client_data(3).y)


def test_cnn_on_synthetic_data_is_a_config_error():
    cfg = _cfg("cnn")
    with pytest.raises(ConfigError, match="cnn needs image data"):
        build_federation(cfg.data, 0)


def test_linear_head_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 7, generator=g)
    # lg
    m = build_model("lg", (7,))
    th = torch.randn(m.P, generator=g)
    y = (torch.rand(400, generator=g) < 0.4).float()
    z = (x @ th[:7] + th[7]).double().numpy()
    out = m.evaluate(th, x, y)
    assert out["accuracy"] == pytest.approx(accuracy_score(y.numpy(), z > 0))
    assert out["log_loss"] == pytest.approx(log_loss(y.numpy(), 1 / (1 + np.exp(-z))), rel=1e-6)
    assert out["auc"] == pytest.approx(roc_auc_score(y.numpy(), z))
    # mc
    m = build_model("mc", (7,), 3)
    th = torch.randn(m.P, generator=g)
    y = torch.randint(0, 3, (400,), generator=g)
    logits = (x @ th[:21].reshape(7, 3) + th[21:]).double()
    prob = torch.softmax(logits, 1).numpy()
    out = m.evaluate(th, x, y)
    assert out["accuracy"] == pytest.approx(accuracy_score(y.numpy(), prob.argmax(1)))
    assert out["log_loss"] == pytest.approx(log_loss(y.numpy(), prob, labels=[0, 1, 2]), rel=1e-6)
    # mlc
    m = build_model("mlc", (7,), 4)
    th = torch.randn(m.P, generator=g)
    y = (torch.rand(400, 4, generator=g) < 0.3).float()
    pred = ((x @ th[:28].reshape(7, 4) + th[28:]) > 0).numpy()
    out = m.evaluate(th, x, y)
    assert out["micro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="micro"))
    assert out["macro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="macro", zero_division=1.0))
    assert out["hamming_loss"] == pytest.approx(hamming_loss(y.numpy(), pred))


@pytest.mark.parametrize("task", ["lg", "mc", "mlc"])
def test_client_scores_per_client(task):
    cfg = _cfg(task, "data.n_classes=3", "data.n_labels=4", "data.sigma_q=0.5")
    fed = build_federation(cfg.data, 1)
    model = build_model(task, fed.input_shape, fed.n_outputs)
    st = stack_clients(fed, np.arange(6))
    th = torch.randn(model.P, generator=torch.Generator().manual_seed(3))
    mask = torch.arange(st.x_hold.shape[1])[None, :] < st.n_hold[:, None]
    scores = model.client_scores(th, st.x_hold, st.y_hold, mask).numpy()
    for k in range(6):
        d = fed.client_data(k)
        z = torch.from_numpy(d.x_hold) @ th[: model.p].reshape(cfg.data.p, -1) + th[model.p:]
        if task == "lg":
            ref = accuracy_score(d.y_hold, z[:, 0].numpy() > 0)
        elif task == "mc":
            ref = accuracy_score(d.y_hold, z.argmax(1).numpy())
        else:
            ref = f1_score(d.y_hold, z.numpy() > 0, average="micro", zero_division=1.0)
        assert scores[k] == pytest.approx(ref, abs=1e-6)


def test_mc_reports_per_weight_and_per_feature_support():
    from raysim.engine import ServerCore

    cfg = _cfg("mc", "data.n_classes=3", "algorithm.name='fed-ht'")
    core = ServerCore(cfg)
    theta = core.state["theta"].clone()
    feats = np.flatnonzero(core.comp.fed.true_support)
    # activate one weight of each true feature (per-feature TPR 1) and one weight of a false feature
    theta[torch.as_tensor(feats * 3)] = 1.0
    false_feat = int(np.flatnonzero(~core.comp.fed.true_support)[0])
    theta[false_feat * 3] = 1.0
    core.state["theta"] = theta
    out = core.evaluate()
    assert out["tpr"] == 1.0 and out["tdr"] == pytest.approx(4 / 5)
    assert out["tdr_weight"] == pytest.approx(4 / 5)
    assert out["tpr_weight"] == pytest.approx(4 / 12)


# -- cnn ---------------------------------------------------------------------------------------

def test_cnn_layout_and_size():
    m = build_model("cnn", (1, 28, 28), 10)
    assert m.P == 1_663_370
    gated = sum(s.numel for s in m.specs if s.gated)
    assert m.p == gated == 800 + 51_200 + 3136 * 512 + 5120
    assert [s.name for s in m.specs if not s.gated] == ["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"]
    assert build_model("cnn", (784,), 10).P == m.P
    assert build_model("cnn", (28, 28), 10).P == m.P


def test_cnn_vmap_forward_matches_a_loop_over_clients():
    m = FedAvgCNN((1, 12, 12), 5)
    g = np.random.default_rng(0)
    th = torch.stack([m.init_params(g) for _ in range(3)])
    x = torch.randn(3, 4, 144)
    out = m.forward(th, x)
    assert out.shape == (3, 4, 5)
    for k in range(3):
        ref = torch.func.functional_call(m.module, m.unflatten(th[k]), (x[k],))
        torch.testing.assert_close(out[k], ref, rtol=1e-5, atol=1e-5)


class _ImageFederation(Federation):
    """Tiny random 12x12 'images' with 4 classes (a stand-in for a real image dataset)."""

    task = "cnn"
    input_shape = (1, 12, 12)
    n_outputs = 4

    def __init__(self, sizes):
        self.sizes = np.asarray(sizes)
        self.n_clients = len(sizes)

    def client_sizes(self):
        return self.sizes

    def client_data(self, k):
        g = np.random.default_rng(100 + k)
        n = int(self.sizes[k])
        x = g.standard_normal((n + 3, 1, 12, 12)).astype(np.float32)
        y = g.integers(0, 4, n + 3)
        return ClientData(x[:n], y[:n], x[n:], y[n:])


@pytest.mark.parametrize("name", ["fedavg", "flops-pa", "ser"])
def test_cnn_cohort_training_is_vectorised_and_layout_independent(name):
    """A cohort trained together gives the same sums as its clients trained one by one."""
    fed = _ImageFederation([7, 12, 5, 9])
    model = build_model("cnn", fed.input_shape, fed.n_outputs)
    cfg = load_config(None, [f"algorithm.name='{name}'", "algorithm.batch_size=4", "algorithm.local_epochs=2",
                             "algorithm.flops.eta_theta=0.05", "algorithm.rho=0.1"]).algorithm
    algo = build_algorithm(cfg, model, Schedule(total_steps=4, steps_per_round=1, prune_start=2, tau_end=2))
    st = stack_clients(fed, np.arange(4))
    assert st.y.dtype == torch.int64
    state = algo.init_state(0)
    payload = algo.broadcast(state)
    ctx = StepContext(seed=0, step=0, schedule=algo.schedule)
    together = algo.client_update(payload, st, torch.arange(4), ctx)
    np.testing.assert_array_equal(together.client_steps, 2 * np.ceil(np.array([7, 12, 5, 9]) / 4))
    alone = [algo.client_update(payload, st, torch.tensor([k]), ctx) for k in range(4)]
    a, b = aggregate([together]), aggregate(alone)
    for key in a.mean:
        assert torch.isfinite(a.mean[key]).all()
        assert a.mean[key].abs().max() > 0
        torch.testing.assert_close(a.mean[key], b.mean[key], rtol=1e-4, atol=1e-6)
    new = algo.server_update(state, a, ctx)
    assert torch.isfinite(algo.deployed(new)).all()
