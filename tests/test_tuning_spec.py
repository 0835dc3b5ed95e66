"""Study files, search spaces, objectives and best-trial selection (no Ray)."""

import math
from pathlib import Path

import optuna
import pytest

from raysim.config import ConfigError
from raysim.tuning.objectives import best_trials, constraint_values, objective_values
from raysim.tuning.space import build_config, check_spec, suggest
from raysim.tuning.spec import load_spec, spec_from_dict

STUDIES = sorted(Path(__file__).resolve().parents[1].joinpath("tuning").glob("*.toml"))


def _spec(**over):
    d = {"study": {"name": "t"},
         "scenario": {"algorithm": "flops", "base": {"data": {"p": 50, "n_clients": 10}}},
         "space": {"eta_theta": {"key": "algorithm.eta_theta", "low": 0.01, "high": 0.1, "log": True},
                   "ratio": {"kind": "eta_phi_ratio", "low": 0.5, "high": 4.0},
                   "lam": {"kind": "eta_lambda", "low": 0.5, "high": 2.0},
                   "ps": {"kind": "prune_start", "low": 0.3, "high": 0.7},
                   "tau0": {"kind": "tau0", "low": 1e-4, "high": 1e-1},
                   "algorithm.rho_init": {"low": 0.2, "high": 0.8},
                   "algorithm.optimizer": {"choices": ["sgd", "adam"]}}}
    for k, v in over.items():
        d[k] = v
    return spec_from_dict(d)


def test_space_speaks_the_method_language():
    spec = _spec()
    cfg = build_config(spec, {"eta_theta": 0.02, "ratio": 3.0, "lam": 2.0, "ps": 0.4, "tau0": 0.01,
                              "algorithm.rho_init": 0.3, "algorithm.optimizer": "adam"})
    a = cfg.algorithm
    assert a.eta_phi == pytest.approx(0.06)              # ratio * eta_theta
    assert a.eta_lambda == pytest.approx(2.0)             # dimensionless, as sampled
    assert a.prune_start == 0.4 and a.prune_start_unit == "fraction"
    assert a.tau0 == 0.01 and a.rho_init == 0.3 and a.optimizer == "adam"
    assert cfg.data.val_samples == 2000 and not cfg.run.progress and not cfg.run.plots


def test_tau0_zero_switch_and_sampling():
    spec = _spec()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_zero = seen_log = False
    for _ in range(30):
        trial = study.ask()
        vals = suggest(trial, spec)
        cfg = build_config(spec, vals)
        if trial.params["tau0_on"]:
            assert "tau0" in trial.params and 1e-4 <= cfg.algorithm.tau0 <= 1e-1
            seen_log = True
        else:
            assert "tau0" not in trial.params and cfg.algorithm.tau0 == 0.0
            seen_zero = True
        assert 0.5 * cfg.algorithm.eta_theta <= cfg.algorithm.eta_phi <= 4.0 * cfg.algorithm.eta_theta + 1e-12
        study.tell(trial, 0.0)
    assert seen_zero and seen_log


def test_generic_dotted_key_must_exist_in_the_config():
    spec = _spec(space={"local_epochs": {"kind": "local_epochs", "low": 1, "high": 3}})
    assert spec.space["local_epochs"].key == "algorithm.local_epochs" and spec.space["local_epochs"].type == "int"
    if "local_epochs" not in type(check_spec.__globals__["Config"]().algorithm).model_fields:
        with pytest.raises(ConfigError, match="algorithm.local_epochs"):
            check_spec(spec)


@pytest.mark.parametrize("bad, match", [
    ({"study": {"name": "t", "n_trails": 3}}, "unknown key 'study.n_trails'. Did you mean 'n_trials'"),
    ({"space": {"x": {"low": 1, "high": 2}}}, "space.x: no config key"),
    ({"space": {"algorithm.eta_theta": {"low": 0.0, "high": 1.0, "log": True}}}, "log scale needs low > 0"),
    ({"space": {"algorithm.eta_theta": {"low": 2.0, "high": 1.0}}}, "swap them"),
    ({"space": {"ps": {"kind": "prune_start", "low": 0.2, "high": 3}}}, "fraction of training"),
    ({"space": {"algorithm.optimizer": {"kind": "categorical"}}}, "needs choices"),
    ({"objective": {"metric": ["val_r2", "cum_bytes_up"], "direction": "maximize"}}, "one direction per metric"),
    ({"space": {}}, "search space is empty"),
])
def test_study_file_errors_name_the_field_and_fix(bad, match):
    d = {"study": {"name": "t"}, "space": {"algorithm.eta_theta": {"low": 0.01, "high": 0.1}}}
    d.update(bad)
    with pytest.raises(ConfigError, match=match):
        spec_from_dict(d)


def test_unknown_config_key_in_fixed_is_reported():
    spec = _spec(fixed={"algorithm.eta_thta": 0.1})
    with pytest.raises(ConfigError, match="eta_thta.*Did you mean 'eta_theta'"):
        check_spec(spec)


def test_objective_and_constraints():
    spec = _spec(objective={"metric": ["val_r2", "cum_bytes_up"], "direction": ["maximize", "minimize"]})
    assert objective_values(spec, {"val_r2": 0.5, "cum_bytes_up": 10}) == [0.5, 10.0]
    with pytest.raises(ValueError, match="not among the run's final metrics"):
        objective_values(spec, {"r2": 0.5})
    cons, facts = constraint_values({"nnz": 6}, p=50, target=0.1)
    assert cons == [1.0, pytest.approx(0.02)] and not facts["feasible"] and facts["m_target"] == 5
    cons, facts = constraint_values({"nnz": 5}, p=50, target=0.1)
    assert facts["feasible"] and max(cons) <= 0


def _trial(value, feasible, state=optuna.trial.TrialState.COMPLETE, values=None):
    return optuna.trial.create_trial(
        state=state, value=None if values else value, values=values,
        params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        user_attrs={"constraints": [0.0, 0.0] if feasible else [3.0, 0.1]})


def test_best_is_always_feasible():
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0.9, feasible=False))
    study.add_trial(_trial(0.7, feasible=True))
    study.add_trial(_trial(0.8, feasible=True))
    best = best_trials(study)
    assert [t.value for t in best] == [0.8, 0.7]
    multi = optuna.create_study(directions=["maximize", "minimize"])
    multi.add_trial(_trial(None, False, values=[0.99, 1.0]))   # dominates all, but infeasible
    multi.add_trial(_trial(None, True, values=[0.8, 5.0]))
    multi.add_trial(_trial(None, True, values=[0.7, 2.0]))
    multi.add_trial(_trial(None, True, values=[0.6, 6.0]))    # dominated
    assert sorted(tuple(t.values) for t in best_trials(multi)) == [(0.7, 2.0), (0.8, 5.0)]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    spec = load_spec(path)
    cfg, problems = check_spec(spec)
    assert not problems
    assert cfg.data.val_samples > 0 and not math.isnan(cfg.algorithm.rho)
    if path.name.startswith(("defaults-", "scenario-")):
        # the defaults studies tune a shipped scenario (defaults-<task>: the one of their task), in process
        assert spec.scenario.config.startswith("datasets/synthetic-") and Path(spec.scenario.config).exists()
        if path.name.startswith("defaults-"):
            assert spec.scenario.config == f"datasets/synthetic-{path.stem.split('-')[1]}.toml"
        assert cfg.cluster.backend == "local"
    else:
        # the research studies run over thousands of heterogeneous clients
        assert cfg.data.n_clients >= 2000
        assert cfg.data.h_coef > 0 and cfg.data.h_cov > 0 and cfg.data.sigma_q > 0


def test_validation_split_is_separate_from_the_test_set():
    from raysim.config import load_config
    from raysim.engine import ServerCore

    cfg = load_config(None, ["data.p=30", "data.n_clients=8", "data.test_samples=200", "data.val_samples=150"])
    core = ServerCore(cfg)
    assert core.x_val.shape == (150, 30) and core.x_test.shape == (200, 30)
    assert not any(bool((core.x_val[i] == core.x_test).all(1).any()) for i in range(150))
    out = core.evaluate()
    assert {"val_r2", "val_mse", "r2", "mse"} <= set(out)
    again = ServerCore(cfg)                                   # same seed, same split
    assert (again.x_val == core.x_val).all()
    plain = ServerCore(load_config(None, ["data.p=30", "data.n_clients=8", "data.test_samples=200"]))
    assert plain.x_val is None and "val_r2" not in plain.evaluate()
    assert (plain.x_test == core.x_test).all()               # adding a val split leaves the test set alone


def test_tune_check_and_error_exit_codes(tmp_path, capsys):
    from raysim.cli import main

    assert main(["tune", str(STUDIES[0]), "--check"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nname = "x"\n[space]\n"algorithm.eta_theta" = { low = 0.1, high = 0.01 }\n')
    assert main(["tune", str(bad), "--check"]) == 2
    assert "swap them" in capsys.readouterr().err


def test_trials_asked_together_use_the_constant_liar_unless_the_study_file_says_otherwise():
    """TPE runs with Optuna's constant liar when trials run at once (batched trials asked from the
    same history would otherwise cluster); study.constant_liar overrides it either way."""
    from raysim.tuning.study import make_sampler

    def liar(spec, parallel):
        s = make_sampler(spec, 0, parallel)
        assert isinstance(s, optuna.samplers.TPESampler)
        return s._constant_liar

    assert liar(_spec(), 1) is False and liar(_spec(), 8) is True
    assert liar(_spec(study={"name": "t", "constant_liar": False}), 8) is False
    assert liar(_spec(study={"name": "t", "constant_liar": True}), 1) is True
    with pytest.raises(ConfigError, match="constant_liar"):
        _spec(study={"name": "t", "constant_liar": "often"})
