"""User plug-ins: your own torch nn.Module and your own data set, named by import strings
(docs/algorithms.md section 7 "User models", docs/data.md section 5, docs/architecture.md
"Plug-ins"), and the example examples/custom_model.py run through real Ray actors and in process."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import raysim
from raysim.config import ConfigError
from raysim.models import TorchModuleModel
from raysim.plugins import PluginError, import_string_of, resolve

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_model.py"
#: wall-clock columns: the only ones allowed to differ between two runs of one config
TIMING = ["round_s", "client_compute_s", "aggregation_s", "evaluation_s", "clients_per_s", "wall_s"]


def _load_example():
    """The example, loaded by path as a test (or a notebook) would: not importable by name."""
    spec = importlib.util.spec_from_file_location("custom_model_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["custom_model_example"] = mod
    spec.loader.exec_module(mod)
    return mod


ex = _load_example()


def _small(tmp_path, **over):
    """The example's scenario, shrunk: 8 clients, 5 rounds."""
    cfg = {**ex.CONFIG}
    keys = {"data.n_clients": 8, "data.loader_kwargs": {"n_features": 12, "n_informative": 4, "n_per_client": 40,
                                                       "n_test": 600},
            "model.kwargs": {"hidden": 8}, "run.rounds": 5, "run.plots": False, "run.out_dir": str(tmp_path),
            "cluster.num_actors": 2, "cluster.num_cpus": 0.5, "cluster.server_num_cpus": 0.5}
    keys.update(over)
    return cfg, keys


# -- the example, through Ray and in process -------------------------------------------------------

def test_example_same_metrics_on_ray_and_in_process(ray_session, tmp_path):
    cfg, keys = _small(tmp_path)
    local = raysim.run(cfg, keys, cluster__backend="local", run__name="local")
    ray_res = raysim.run(cfg, keys, cluster__backend="ray", run__name="ray")
    # the import strings went through the config: the file form, since the example was loaded by path
    saved = (ray_res.run_dir / "config.toml").read_text()
    assert f'module = "{EXAMPLE}:MLP"' in saved and f'loader = "{EXAMPLE}:make_federation"' in saved
    a, b = local.metrics.drop(columns=TIMING, errors="ignore"), ray_res.metrics.drop(columns=TIMING, errors="ignore")
    assert list(a.columns) == list(b.columns) and len(a) == 5
    num = [c for c in a.columns if pd.api.types.is_numeric_dtype(a[c])]
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-5, atol=1e-7)
    assert (a.drop(columns=num).astype(str).to_numpy() == b.drop(columns=num).astype(str).to_numpy()).all()
    final = ray_res.summary["final"]
    # the user's weight matrices are gated, the biases are not: p = 12*8 + 8*3, P adds 8 + 3
    assert ray_res.summary["p"] == 12 * 8 + 8 * 3
    theta = np.load(ray_res.run_dir / "model.npz")["theta"]
    assert theta.size == 12 * 8 + 8 * 3 + 8 + 3
    m = math.floor(0.2 * (12 * 8 + 8 * 3))
    assert final["m"] == m and 0 < final["nnz"] <= m
    assert np.count_nonzero(theta[: ray_res.summary["p"]]) == final["nnz"]
    assert np.count_nonzero(theta[ray_res.summary["p"]:]) == 8 + 3   # biases dense
    # the training loss goes down in these few rounds (the accuracy is checked on the full example below)
    assert a["train_loss"].iloc[-1] < a["train_loss"].iloc[0]


def test_example_runs_as_a_script(tmp_path):
    """``python examples/custom_model.py --backend local`` at its own settings (its objects live
    in __main__: raysim turns them into the file form of the import string), and the MLP
    learns the federation: 3 balanced test classes, chance is 1/3."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, str(EXAMPLE), "--backend", "local", "--no-plots",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout and "gated" in out.stdout
    run_dir = next(tmp_path.glob("custom-model-*"))
    assert f'module = "{EXAMPLE}:MLP"' in (run_dir / "config.toml").read_text()
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert final["accuracy"] > 0.7 and final["nnz"] <= final["m"]


def test_example_toml_loads_from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = raysim.load_config(ROOT / "examples" / "custom_model.toml")
    assert cfg.model.module == f"{EXAMPLE}:MLP" and cfg.data.loader == f"{EXAMPLE}:make_federation"
    assert cfg.data.kind == "custom" and cfg.model.kwargs == {"hidden": 32}


# -- the model: vectorisation, gating, initialisation ------------------------------------------

class Net(torch.nn.Module):
    """conv + norm + dense, with every kind of parameter (2-D, 4-D, 1-D)."""

    def __init__(self, input_shape, n_outputs, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(input_shape[0], width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, width)
        self.head = torch.nn.Linear(width * input_shape[1] * input_shape[2], n_outputs)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def test_forward_is_each_clients_own_module_and_gradients_match():
    """The cohort forward ([K, P] params, [K, B, ...] inputs) equals running the module once per
    client with that client's parameters; the per-client gradients match too."""
    model = TorchModuleModel(Net, "mc", (1, 5, 5), 3)
    k = 3
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(k, model.P, generator=g) * 0.3
    x = torch.randn(k, 4, 1, 5, 5, generator=g)
    y = torch.randint(0, 3, (k, 4), generator=g)
    th = theta.clone().requires_grad_(True)
    out = model.forward(th, x)
    loss = model.client_loss(th, x, y, torch.ones(k, 4, dtype=torch.bool))
    loss.sum().backward()
    for i in range(k):
        net = Net((1, 5, 5), 3)
        ref = model.unflatten(theta[i])
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(ref[name])
        o = net(x[i])
        torch.testing.assert_close(out[i].detach(), o.detach(), rtol=1e-5, atol=1e-6)
        torch.nn.functional.cross_entropy(o, y[i]).backward()
        flat = torch.cat([dict(net.named_parameters())[s.name].grad.reshape(-1) for s in model.specs])
        torch.testing.assert_close(th.grad[i], flat, rtol=1e-4, atol=1e-6)


def test_gating_choices():
    model = TorchModuleModel(Net, "mc", (1, 5, 5), 3)
    gated = [s.name for s in model.specs if s.gated]
    assert gated == ["conv.weight", "head.weight"]          # dims >= 2 only, gated first
    assert model.p == 4 * 9 + 3 * 100 and model.P == model.p + 4 + 2 * 4 + 3
    assert TorchModuleModel(Net, "mc", (1, 5, 5), 3, gate="all").p == model.P
    only = TorchModuleModel(Net, "mc", (1, 5, 5), 3, gated=["head.*"])
    assert [s.name for s in only.specs if s.gated] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match=r"model.gated: 'fc\*' matches no parameter.*conv.weight"):
        TorchModuleModel(Net, "mc", (1, 5, 5), 3, gated=["fc*"])


def test_init_is_the_modules_own_under_raysims_seed():
    model = TorchModuleModel(Net, "mc", (1, 5, 5), 3)
    a = model.init_params(np.random.default_rng(1))
    b = model.init_params(np.random.default_rng(1))
    c = model.init_params(np.random.default_rng(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # it is what the module's constructor draws under the seed raysim derives from the generator
    seed = int(np.random.default_rng(1).integers(0, 2**62))
    torch.manual_seed(seed)
    net = Net((1, 5, 5), 3)
    parts = model.unflatten(a)
    for name, p in net.named_parameters():
        torch.testing.assert_close(parts[name], p.detach())
    # GroupNorm's weight starts at one, as the module defines it
    assert torch.all(parts["norm.weight"] == 1)


@pytest.mark.parametrize("task,n_out,shape", [("lr", 1, (7,)), ("lg", 1, (7,)), ("mlc", 4, (7,))])
def test_losses_and_metrics_follow_the_task(task, n_out, shape):
    """lr: squared error / R^2; lg: logistic / accuracy, log loss, AUC; mlc: mean BCE / F1."""
    def lin(input_shape, n_outputs):
        return torch.nn.Linear(input_shape[0], n_outputs)

    model = TorchModuleModel(lin, task, shape, n_out)
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(model.P, generator=g)
    x = torch.randn(50, 7, generator=g)
    w, b = model.unflatten(theta)["weight"], model.unflatten(theta)["bias"]
    z = x @ w.T + b
    if task == "lr":
        y = torch.randn(50, generator=g)
        pred = z[:, 0]
        met = model.evaluate(theta, x, y)
        assert met["mse"] == pytest.approx(float(((pred - y) ** 2).mean()), rel=1e-5)
        assert set(met) == {"mse", "r2"}
        le = model.example_loss(model.forward(theta[None], x[None]), y[None])
        torch.testing.assert_close(le[0], (pred - y) ** 2)
    elif task == "lg":
        y = (torch.rand(50, generator=g) > 0.5).float()
        met = model.evaluate(theta, x, y)
        assert set(met) == {"accuracy", "log_loss", "auc"}
        assert met["accuracy"] == pytest.approx(float(((z[:, 0] > 0).float() == y).float().mean()))
    else:
        y = (torch.rand(50, 4, generator=g) > 0.7).float()
        met = model.evaluate(theta, x, y)
        assert set(met) == {"micro_f1", "macro_f1", "hamming_loss"}
        assert met["hamming_loss"] == pytest.approx(float(((z > 0).float() != y).float().mean()))
        le = model.example_loss(model.forward(theta[None], x[None]), y[None])
        torch.testing.assert_close(le[0], torch.nn.functional.binary_cross_entropy_with_logits(
            z, y, reduction="none").mean(-1), rtol=1e-5, atol=1e-6)


def test_user_model_on_built_in_data(tmp_path):
    """A user module on the synthetic lr generator: its weights gated, the density met."""
    def run(**kw):
        return raysim.run({"data.p": 30, "data.n_clients": 6, "data.n_per_client": 30, "data.test_samples": 300,
                           "model.module": "torch.nn:Linear", "model.kwargs": {"in_features": 30, "out_features": 1},
                           "algorithm.rho": 0.2, "run.rounds": 3, "run.progress": False, "run.plots": False,
                           "run.out_dir": str(tmp_path), "cluster.backend": "local", **kw})

    res = run()
    assert res.summary["p"] == 30 and res.summary["final"]["nnz"] <= 6
    assert {"r2", "mse"} <= set(res.summary["final"])


# -- a custom federation: what the loader returns ---------------------------------------------

def loader_pairs(seed, n_clients, n=10, d=3, n_classes=3, bad=None):
    rng = np.random.default_rng(seed)
    clients = [(rng.normal(size=(n, d)), rng.integers(0, n_classes, size=n)) for _ in range(n_clients)]
    if bad == "ragged":
        clients[2] = (rng.normal(size=(n, d + 1)), clients[2][1])
    elif bad == "label":
        clients[1] = (clients[1][0], np.full(n, n_classes))
    elif bad == "length":
        clients[0] = (clients[0][0], clients[0][1][:-1])
    elif bad == "nan":
        clients[3][0][0, 0] = np.nan
    elif bad == "pooled":
        return (np.concatenate([c[0] for c in clients]), np.concatenate([c[1] for c in clients]))
    elif bad == "dict":
        return {"client": clients}
    elif bad == "1d":
        clients[0] = (clients[0][0][:, 0], clients[0][1])
    return clients


def loader_val(seed, n_clients):
    rng = np.random.default_rng(seed)
    data = loader_pairs(seed, n_clients)
    return {"clients": data, "test": (rng.normal(size=(40, 3)), rng.integers(0, 3, 40)),
            "val": (rng.normal(size=(30, 3)), rng.integers(0, 3, 30))}


def _fed(loader, **data):
    from raysim.data import build_federation

    cfg = raysim.load_config({"data": {"kind": "custom", "task": "mc", "loader": loader, "n_clients": 5,
                                       "n_classes": 3, **data}})
    return build_federation(cfg.data, 0, cfg.partition)


def test_custom_federation_splits_and_seeds():
    fed = _fed(loader_pairs)
    assert fed.n_clients == 5 and fed.input_shape == (3,) and fed.n_outputs == 3
    assert list(fed.client_sizes()) == [8] * 5                     # holdout_frac 0.2 of 10
    cd = fed.client_data(2)
    x2, y2 = loader_pairs(0, 5)[2]
    both = np.concatenate([cd.x, cd.x_hold])
    assert sorted(map(tuple, both.round(5))) == sorted(map(tuple, x2.astype(np.float32).round(5)))
    assert cd.y.dtype == np.int64 and cd.x.dtype == np.float32
    # no 'test': the union of the clients' held-out splits
    xt, yt = fed.test_set()
    assert xt.shape == (10, 3) and yt.shape == (10,)
    assert fed.label_counts().shape == (5, 3) and fed.label_counts().sum() == 40
    fv = _fed(loader_val, val_samples=20)
    assert fv.test_set()[0].shape == (40, 3) and fv.val_set(20)[0].shape == (20, 3)


def test_custom_val_metrics_in_a_run(tmp_path):
    res = raysim.run({"data": {"kind": "custom", "task": "mc", "loader": loader_val, "n_clients": 5, "n_classes": 3,
                               "val_samples": 30},
                      "model": {"module": ex.MLP, "kwargs": {"hidden": 4}},
                      "algorithm": {"rho": 0.5, "batch_size": 5},
                      "run": {"rounds": 2, "progress": False, "plots": False, "out_dir": str(tmp_path)},
                      "cluster": {"backend": "local"}})
    assert {"val_accuracy", "accuracy"} <= set(res.summary["final"])


@pytest.mark.parametrize("bad,match", [
    ("ragged", r"client 2 x has samples of shape \(4,\) but client 0's have \(3,\)"),
    ("label", r"client 1 y holds 3; data.task = 'mc' needs class ids 0 .. data.n_classes - 1 = 2"),
    ("length", r"client 0 has 10 samples in x but y has shape \(9,\)"),
    ("nan", r"client 3 x holds NaN"),
    ("pooled", r"returned two arrays \(pooled x, y\?\); it must return per-client data"),
    ("dict", r"returned a dict with keys \['client'\]; it must have 'clients'"),
    ("1d", r"client 0 x has shape \(10,\); it must be \[n_samples, \*input_shape\]"),
])
def test_bad_loader_output_is_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        _fed(loader_pairs, loader_kwargs={"bad": bad})


def test_loader_count_and_task_errors():
    with pytest.raises(ConfigError, match=r"returned 5 clients but data.n_clients = 7; set data.n_clients = 5"):
        from raysim.data import build_federation

        cfg = raysim.load_config({"data": {"kind": "custom", "task": "mc", "loader": loader_five,
                                           "n_clients": 7}})
        build_federation(cfg.data, 0)
    with pytest.raises(ConfigError, match=r"data.task = 'mlc' needs a 0/1 matrix \[n, data.n_labels\]"):
        _fed(loader_pairs, task="mlc")
    with pytest.raises(ConfigError, match=r"no 'test' set and data.holdout_frac = 0"):
        _fed(loader_pairs, holdout_frac=0.0)
    with pytest.raises(ConfigError, match=r"data.val_samples > 0 but data.loader returned no 'val' set"):
        _fed(loader_pairs, val_samples=10).val_set(10)


def loader_five(seed):
    return loader_pairs(seed, 5)


# -- import strings: validated at config load ---------------------------------------------------

@pytest.mark.parametrize("value,match", [
    ("nosuchpkg.mod:f", r"model.module = 'nosuchpkg.mod:f': .*module nosuchpkg.mod not found.*PYTHONPATH"),
    ("os.path:nothing", r"model.module = 'os.path:nothing': .*os.path has no attribute 'nothing'"),
    ("os:sep", r"model.module = 'os:sep': .*names a str, not a function or class"),
    ("torch.nn.Linear", r"model.module = 'torch.nn.Linear': .*expected an import string \"package.module:object\""),
    ("no/such/file.py:Net", r"model.module = .*file .*no/such/file.py not found"),
])
def test_bad_import_strings_fail_at_config_load(value, match):
    with pytest.raises(ConfigError, match=match):
        raysim.load_config(model__module=value)


def test_bad_loader_import_string_and_kind():
    with pytest.raises(ConfigError, match=r"data.loader = 'nosuchpkg:load': .*module nosuchpkg not found"):
        raysim.load_config(data__kind="custom", data__loader="nosuchpkg:load")
    with pytest.raises(ConfigError, match=r'data.kind = "custom" needs data.loader'):
        raysim.load_config(data__kind="custom")
    with pytest.raises(ConfigError, match=r'data.loader is set but data.kind = "synthetic"'):
        raysim.load_config(data__loader=loader_five)


def test_import_string_forms(tmp_path, monkeypatch):
    # a relative file path is pinned to an absolute one at load
    monkeypatch.chdir(ROOT)
    cfg = raysim.load_config(model__module="examples/custom_model.py:MLP")
    assert cfg.model.module == f"{EXAMPLE}:MLP"
    assert resolve(cfg.model.module, "model.module").__name__ == "MLP"
    # an object importable by name keeps the module form; one loaded by path gets the file form
    assert import_string_of(torch.nn.Linear, "model.module") == "torch.nn.modules.linear:Linear"
    assert import_string_of(ex.MLP, "model.module") == f"{EXAMPLE}:MLP"

    def local():
        pass

    with pytest.raises(PluginError, match="defined inside a function"):
        import_string_of(local, "model.module")


class NotVmappable(torch.nn.Module):
    def __init__(self, input_shape, n_outputs):
        super().__init__()
        self.fc = torch.nn.Linear(input_shape[0], n_outputs)

    def forward(self, x):
        return self.fc(x) * float(x.sum().item() > 0)


def wrong_width(input_shape, n_outputs):
    return torch.nn.Linear(input_shape[0], n_outputs + 1)


def with_batchnorm(input_shape, n_outputs):
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], 4), torch.nn.BatchNorm1d(4),
                               torch.nn.Linear(4, n_outputs))


def not_a_module(input_shape, n_outputs):
    return lambda x: x


@pytest.mark.parametrize("factory,match", [
    (NotVmappable, r"model.module: running the module .* vectorised over clients \(torch.func.vmap\) failed"),
    (wrong_width, r"the module maps a batch \[B, \*input_shape\] to shape \[3, 4\].*needs \[B, n_outputs\] = \[B, 3\]"),
    (with_batchnorm, r"layer 1 \(BatchNorm1d\) tracks running statistics.*track_running_stats=False"),
    (not_a_module, r"model.module returned a function; it must be a torch.nn.Module"),
])
def test_bad_modules_are_refused_before_the_run(factory, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        raysim.run({"data": {"kind": "custom", "task": "mc", "loader": loader_five, "n_clients": 5, "n_classes": 3},
                    "model": {"module": factory},
                    "run": {"rounds": 1, "progress": False, "out_dir": str(tmp_path)},
                    "cluster": {"backend": "local"}})
    assert not any(tmp_path.iterdir())       # refused before a run folder was made


class LinearLR(torch.nn.Module):
    """The built-in lr model written as a user module: y = x . w + b, zero start."""

    def __init__(self, input_shape):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(input_shape[0]))
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x @ self.w + self.b


def test_a_user_module_equal_to_the_built_in_model_gives_the_same_run(tmp_path):
    """The whole plug-in path (layout, gating, vmap, loss, metrics) against the built-in lr:
    the same parameters in the same order give the same run to float tolerance."""
    base = {"data.p": 40, "data.n_clients": 8, "data.n_per_client": 30, "data.test_samples": 500,
            "algorithm.rho": 0.1, "data.rho_true": 0.1, "algorithm.batch_size": 10, "participation.rate": 0.5,
            "run.rounds": 4, "run.progress": False, "run.plots": False, "run.out_dir": str(tmp_path),
            "cluster.backend": "local"}
    built_in = raysim.run(base, run__name="builtin")
    user = raysim.run(base, run__name="user", model__module=LinearLR, model__gated=["w"])
    assert user.summary["p"] == built_in.summary["p"] == 40
    a = built_in.metrics
    b = user.metrics
    # the built-in model also reports support recovery (it knows which feature each weight reads)
    assert set(a.columns) - set(b.columns) == {"tdr", "tpr", "f1"}
    cols = [c for c in b.columns if c not in TIMING and pd.api.types.is_numeric_dtype(b[c])]
    assert {"train_loss", "r2", "nnz", "lambda", "fair_mean"} <= set(cols)
    np.testing.assert_allclose(b[cols].to_numpy(float), a[cols].to_numpy(float), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.load(user.run_dir / "model.npz")["theta"],
                               np.load(built_in.run_dir / "model.npz")["theta"], rtol=1e-5, atol=1e-7)


def test_plugins_on_a_warm_pool_match_solo_runs(ray_session, tmp_path):
    """Runs on one warm pool (their data and user model built once per actor, the runs batched
    in the same actor calls; the two FLoPS runs fused into one vectorised pass) give the
    metrics of in-process solo runs."""
    from raysim.many import run_many

    cfg, keys = _small(tmp_path, **{"run.rounds": 3})
    variants = [("flops", {"algorithm__eta_theta": 1.0}), ("flops", {"algorithm__eta_theta": 0.5}), ("fed-ht", {})]
    cfgs = [raysim.load_config(cfg, keys, algorithm__name=a, run__name=f"warm-{i}", **knobs)
            for i, (a, knobs) in enumerate(variants)]
    warm = run_many(cfgs, max_parallel=3, progress=False, warm=True)
    for i, (c, w) in enumerate(zip(cfgs, warm)):
        solo = raysim.run(c, cluster__backend="local", run__name=f"solo-{i}")
        a, b = solo.metrics.drop(columns=TIMING, errors="ignore"), w.metrics.drop(columns=TIMING, errors="ignore")
        num = [col for col in a.columns if pd.api.types.is_numeric_dtype(a[col])]
        np.testing.assert_allclose(b[num].to_numpy(float), a[num].to_numpy(float), rtol=1e-5, atol=1e-7)
        assert w.summary["p"] == 12 * 8 + 8 * 3


def test_warm_pools_key_on_the_user_model(tmp_path):
    """A pool's runs share its model, so two user models never share a pool; configs without a
    user model keep their fingerprint (no [model] key in it)."""
    from raysim.cluster.warm import data_fingerprint

    cfg, keys = _small(tmp_path)
    a = raysim.load_config(cfg, keys)
    b = raysim.load_config(cfg, {**keys, "model.kwargs": {"hidden": 4}})
    c = raysim.load_config(cfg, keys, algorithm__name="fed-ht")
    assert data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(a) == data_fingerprint(c)
    with pytest.raises(ConfigError, match=r"model.gate set without model.module"):
        raysim.load_config(model__gate="all")


def test_a_module_the_workers_cannot_import_is_reported_with_the_fix(ray_session, tmp_path, monkeypatch):
    """The import string is resolved in every process: a module on the driver's path only (a
    folder added to sys.path after Ray started) fails in the actors with the fix in the error."""
    pkg = tmp_path / "driveronly"
    pkg.mkdir()
    (pkg / "driver_only_net.py").write_text(
        "import torch\n\ndef net(input_shape, n_outputs):\n    return torch.nn.Linear(input_shape[0], n_outputs)\n")
    monkeypatch.syspath_prepend(str(pkg))
    cfg, keys = _small(tmp_path, **{"run.rounds": 1, "model.module": "driver_only_net:net", "model.kwargs": {}})
    from raysim.config import ConfigError
    from raysim.many import RunFailed, run_many

    # a usage error naming the field and the fix (not Ray's ActorDiedError), on the Ray backend ...
    with pytest.raises(ConfigError, match=r"(?s)^model.module = 'driver_only_net:net': module driver_only_net not "
                                          r"found.*importable in the driver and in every Ray worker"):
        raysim.run(cfg, keys, cluster__backend="ray")
    # ... and on a warm pool (a study's, a comparison's): the run fails with that error
    res = run_many([raysim.load_config(cfg, keys, cluster__backend="ray", run__name="warm-bad")], progress=False)
    assert isinstance(res[0], RunFailed) and "ConfigError: model.module = 'driver_only_net:net'" in str(res[0])
    assert "ActorDiedError" not in str(res[0]).splitlines()[0]
    # the failed run's actors are gone: their CPUs are free again
    import time

    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"] \
            and time.time() < deadline:
        time.sleep(0.2)
    assert ray_session.available_resources().get("CPU", 0) == ray_session.cluster_resources()["CPU"]
    # in process it runs
    res = raysim.run(cfg, keys, cluster__backend="local")
    assert res.summary["p"] == 12 * 3
