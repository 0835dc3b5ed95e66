"""The algorithm registry and per-algorithm knobs (docs/algorithms.md section 10): each algorithm
declares its own frozen Params; a knob the chosen algorithm does not have is an error that
names the algorithm and its knobs; [algorithm.NAME] tables scope knobs in shared scenario
files; a user's class is chosen by import string."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import Field, ValidationError

from raysim import registry
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.local import LocalSGDParams
from raysim.config import AlgorithmSection, ConfigError, load_config
from raysim.reference import run_reference

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.p=30", "data.n_clients=8", "data.n_per_client=16", "data.test_samples=300", "data.rho_true=0.1",
         "algorithm.rho=0.1", "run.rounds=3", "run.progress=false", "run.plots=false", "participation.rate=0.5"]


class DampedParams(LocalSGDParams):
    damping: float = Field(0.5, gt=0, le=1, description="Fraction of the averaged delta the server applies.")


class Damped(FedAvg):
    """A user algorithm (defined in this test module, not in raysim): FedAvg whose server applies
    ``damping`` times the averaged delta."""

    Params = DampedParams

    def combine(self, agg, state):
        return self.cfg.damping * agg.mean["delta"]


def test_every_builtin_has_its_own_frozen_params_and_only_its_knobs():
    names = registry.names()
    for n in ("flops", "flops-ent", "flops-pa", "flops-pa-ent", "fedavg", "fedavg-prune", "fed-ht", "fediter-ht",
              "fedprox", "ser", "fedeba", "fedavgm"):
        assert n in names
    assert "eta_local" not in registry.knobs("flops") and "eta_theta" not in registry.knobs("fedavg")
    assert "mu" in registry.knobs("fedprox") and "mu" not in registry.knobs("fedavg")
    assert "local_epochs" in registry.knobs("flops-pa") and "local_epochs" not in registry.knobs("flops")
    cfg = load_config(None, ["algorithm.name='fedprox'"])
    with pytest.raises(ValidationError, match="frozen"):
        cfg.algorithm.mu = 1.0


def test_a_knob_of_another_algorithm_is_an_error_naming_the_algorithm_and_its_knobs():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algorithm.name='fedavg'", "algorithm.eta_theta=0.1"])
    msg = str(e.value)
    assert "unknown key 'algorithm.eta_theta'" in msg and "fedavg has no knob 'eta_theta'" in msg
    for knob in registry.knobs("fedavg"):
        assert knob in msg
    assert "[algorithm.flops]" in msg                   # where it belongs in a shared file
    with pytest.raises(ConfigError, match="flops has no knob 'mu'"):
        load_config(None, ["algorithm.mu=0.1"])


def test_scoped_tables_apply_to_the_algorithm_and_those_built_on_it(tmp_path):
    f = tmp_path / "scenario.toml"
    f.write_text('[algorithm]\nname = "flops"\nrho = 0.1\n'
                 '[algorithm.flops]\neta_theta = 0.3\n'
                 '[algorithm.fedavg]\neta_local = 0.004\nlocal_epochs = 2\n'
                 '[algorithm.fed-ht]\nlocal_epochs = 3\n')
    flops = load_config(f).algorithm
    assert flops.eta_theta == 0.3 and not hasattr(flops, "eta_local")
    assert load_config(f, ["algorithm.name='flops-pa'"]).algorithm.eta_theta == 0.3      # built on flops
    fedprox = load_config(f, ["algorithm.name='fedprox'"]).algorithm
    assert (fedprox.eta_local, fedprox.local_epochs) == (0.004, 2)                       # built on fedavg
    iht = load_config(f, ["algorithm.name='fediter-ht'"]).algorithm
    assert (iht.eta_local, iht.local_epochs) == (0.004, 3)                               # fed-ht's table is closer
    # a top-level key wins over every table; the resolved config keeps only the algorithm's knobs
    top = load_config(f, ["algorithm.name='fedavg'", "algorithm.local_epochs=5"])
    assert top.algorithm.local_epochs == 5
    assert set(top.to_toml_dict()["algorithm"]) == set(registry.knobs("fedavg"))
    # a scoped table is checked against its algorithm's knobs even when another one runs
    with pytest.raises(ConfigError, match=r"algorithm\.fedavg\.eta_theta.*fedavg has no knob 'eta_theta'"):
        load_config(f, ["algorithm.fedavg.eta_theta=0.1"])
    with pytest.raises(ConfigError, match=r"algorithm\.fedavg\.eta_local = -1"):
        load_config(f, ["algorithm.fedavg.eta_local=-1"])


def test_task_defaults_fill_only_the_chosen_algorithms_knobs():
    from raysim import defaults

    cfg = load_config(None, ["data.task='lg'", "algorithm.name='fedavgm'"])
    assert cfg.algorithm.eta_local == defaults.TASK_DEFAULTS["lg"]["algorithm.eta_local"]
    assert not hasattr(cfg.algorithm, "eta_theta") and not hasattr(cfg.algorithm, "rho_init")


def test_user_algorithm_by_import_string_runs_and_round_trips(tmp_path):
    name = f"{__name__}:Damped"
    full = run_reference(load_config(None, SMALL + ["algorithm.name='fedavg'"]), evaluate=False)[0]
    cfg = load_config(None, SMALL + [f"algorithm.name='{name}'", "algorithm.damping=1.0"])
    assert isinstance(cfg.algorithm, DampedParams) and cfg.algorithm.name == name
    one, _, _ = run_reference(cfg, evaluate=False)
    torch.testing.assert_close(one.state["theta"], full.state["theta"])          # damping 1 is FedAvg
    half, _, _ = run_reference(load_config(None, SMALL + [f"algorithm.name='{name}'"]), evaluate=False)
    assert not torch.allclose(half.state["theta"], full.state["theta"])
    # its knobs are checked like a built-in's, and the written config loads back to the same config
    with pytest.raises(ConfigError, match="has no knob 'eta_theta'"):
        load_config(None, [f"algorithm.name='{name}'", "algorithm.eta_theta=0.1"])
    from raysim.config import dump_toml

    dump_toml(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg


def test_user_algorithm_from_a_file_or_a_class_object(tmp_path, monkeypatch):
    """The other plug-in forms (raysim.plugins): "path/to/file.py:Class", relative paths pinned to
    absolute ones, and from Python the class itself, turned into its import string."""
    import raysim

    (tmp_path / "my_algo.py").write_text(
        "from raysim.algorithms.fedavg import FedAvg\n"
        "from raysim.algorithms.local import LocalSGDParams\n"
        "class Halved(FedAvg):\n"
        "    Params = LocalSGDParams\n"
        "    def combine(self, agg, state):\n"
        "        return 0.5 * agg.mean['delta']\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["algorithm.name='my_algo.py:Halved'", "data.p=20"])
    assert cfg.algorithm.name == f"{tmp_path.resolve() / 'my_algo.py'}:Halved"
    assert registry.algorithm_class(cfg.algorithm.name).__name__ == "Halved"
    from_object = raysim.load_config(None, algorithm__name=Damped, algorithm__damping=0.25)
    assert from_object.algorithm.name == f"{__name__}:Damped" and from_object.algorithm.damping == 0.25


@pytest.mark.parametrize("name,why", [
    ("no_such_module_xyz:Algo", "module no_such_module_xyz not found"),
    (f"{__name__}:Missing", "has no attribute 'Missing'"),
    (f"{__name__}:DampedParams", "is not a subclass of raysim.algorithms.Algorithm"),
    ("fedfoo", "unknown algorithm 'fedfoo'"),
])
def test_bad_algorithm_names_are_config_errors(name, why):
    with pytest.raises(ConfigError, match="algorithm.name") as e:
        load_config(None, [f"algorithm.name='{name}'"])
    assert why in str(e.value)


def test_register_checks_the_class():
    class NoParams(FedAvg):
        Params = None

    with pytest.raises(TypeError, match="Params must be a subclass"):
        registry.register("test-no-params")(NoParams)

    class OffTree(FedAvg):                      # built on fedavg, but Params not built on fedavg's
        Params = AlgorithmSection

    with pytest.raises(TypeError, match="does not extend"):
        registry.register("test-off-tree")(OffTree)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("fedavg")(Damped)
    assert "test-no-params" not in registry.REGISTRY and "test-off-tree" not in registry.REGISTRY


def test_config_doc_lists_the_knobs_per_algorithm():
    from raysim.cli import config_doc

    doc = config_doc()
    for n in registry.names():
        assert f"# algorithm.name = {n!r}:" in doc
    section = doc.split("# algorithm.name = 'fedavgm':")[1].split("# algorithm.name")[0]
    assert "server_momentum = 0.9" in section and "Built on fedavg" in section


def test_a_resolved_config_of_the_flat_era_loads_as_it_ran(tmp_path):
    """A config.toml written before per-algorithm knobs (one table with every algorithm's knobs,
    the others' ignored) still loads, to the knobs the algorithm used, with a warning; a
    hand-written table with one foreign knob is still an error."""
    import tomllib
    import warnings

    old = tomllib.loads((ROOT / "results/defaults/studies/defaults-lr/report/best_config.toml").read_text())
    assert {"eta_local", "mu", "eba_alignment", "eta_theta"} <= set(old["algorithm"])
    f = tmp_path / "old.toml"
    import tomli_w

    f.write_text(tomli_w.dumps(old))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cfg = load_config(f)
    assert cfg.algorithm.name == "flops" and cfg.algorithm.eta_theta == old["algorithm"]["eta_theta"]
    assert any("eta_local" in str(x.message) and "eba_alignment" in str(x.message) for x in w)
    with pytest.raises(ConfigError, match="has no knob 'eta_local'"):
        load_config(None, ["algorithm.eta_local=0.1", "algorithm.gamma=-0.1", "algorithm.zeta=1.1"])


@pytest.mark.ray
def test_a_user_algorithm_from_a_file_runs_on_ray_actors_as_in_process(ray_session, tmp_path, monkeypatch):
    """The actors find a file plug-in by its import string (the config travels as the name and
    the knobs, rebuilt through the registry there); the Ray run equals the in-process run."""
    import pickle

    import numpy as np

    from raysim.runner import run

    (tmp_path / "momentumless.py").write_text(
        "from pydantic import Field\n"
        "from raysim.algorithms.fedavg import FedAvg\n"
        "from raysim.algorithms.local import LocalSGDParams\n"
        "class ScaledParams(LocalSGDParams):\n"
        "    scale: float = Field(0.5, gt=0)\n"
        "class Scaled(FedAvg):\n"
        "    Params = ScaledParams\n"
        "    def combine(self, agg, state):\n"
        "        return self.cfg.scale * agg.mean['delta']\n")
    monkeypatch.chdir(tmp_path)
    ov = SMALL + ["algorithm.name='momentumless.py:Scaled'", "algorithm.scale=0.7", f"run.out_dir='{tmp_path}'"]
    cfg = load_config(None, ov)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    local = run(load_config(None, ov + ["cluster.backend='local'", "run.name='local'"]))
    ray_run = run(load_config(None, ov + ["cluster.num_actors=2", "cluster.num_cpus=0.25", "run.name='ray'"]))
    np.testing.assert_allclose(np.load(ray_run.run_dir / "model.npz")["theta"],
                               np.load(local.run_dir / "model.npz")["theta"], rtol=1e-5, atol=1e-7)


def test_compare_and_tuning_apply_each_algorithm_only_its_knobs(tmp_path):
    """A comparison's shared [algorithm] table: a family's knobs in [algorithm.NAME] reach only
    the arms built on NAME; a top-level knob one arm lacks is an error naming that arm. A tuning
    space over another algorithm's knob is refused before any trial runs."""
    from raysim.compare import load_compare
    from raysim.tuning.space import check_spec
    from raysim.tuning.spec import spec_from_dict

    f = tmp_path / "cmp.toml"
    f.write_text('[compare]\nalgorithms = ["flops-pa", "fedprox", "fedavgm"]\nseeds = [0]\n'
                 f'out_dir = "{tmp_path / "out"}"\n'
                 '[algorithm]\nrho = 0.1\n[algorithm.flops]\neta_theta = 0.3\n[algorithm.fedavg]\neta_local = 0.01\n'
                 '[compare.per_algorithm.fedavgm.algorithm]\nserver_momentum = 0.5\n')
    _, cfgs = load_compare(f)
    by = {c.algorithm.name: c.algorithm for c in cfgs}
    assert by["flops-pa"].eta_theta == 0.3 and not hasattr(by["flops-pa"], "eta_local")
    assert by["fedprox"].eta_local == 0.01 and by["fedavgm"].eta_local == 0.01
    assert by["fedavgm"].server_momentum == 0.5
    with pytest.raises(ConfigError, match=r"(?s)algorithm fedprox.*fedprox has no knob 'eta_theta'"):
        load_compare(f, ["algorithm.eta_theta=0.2"])
    spec = spec_from_dict({"study": {"name": "t"}, "scenario": {"algorithm": "fedavg"},
                           "space": {"algorithm.eta_theta": {"low": 0.01, "high": 0.1, "log": True}}})
    with pytest.raises(ConfigError, match="fedavg has no knob 'eta_theta'"):
        check_spec(spec)
