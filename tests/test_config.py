"""Configuration: defaults, overrides and the errors a user sees."""

import pytest

from raysim.cli import main
from raysim.config import ConfigError, load_config


def test_default_scenario_is_the_documented_one():
    cfg = load_config()
    assert (cfg.data.task, cfg.data.p, cfg.data.rho_true, cfg.algorithm.rho) == ("lr", 1000, 0.05, 0.05)
    assert (cfg.data.n_clients, cfg.data.n_per_client, cfg.data.snr, cfg.data.rho_cor) == (100, 50, 20.0, 0.2)
    assert cfg.participation.kind == "uniform" and cfg.participation.rate == 0.1
    assert cfg.algorithm.name == "flops"


def test_file_and_overrides_merge(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[data]\np = 77\n[algorithm]\nrho = 0.2\n')
    cfg = load_config(f, ["algorithm.rho=0.3", "run.name=abc", "cluster.num_gpus=0.25"])
    assert cfg.data.p == 77 and cfg.algorithm.rho == 0.3 and cfg.run.name == "abc"
    assert cfg.cluster.num_gpus == 0.25


def test_bad_value_names_the_field_and_the_bound():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algorithm.rho=1.5"])
    msg = str(e.value)
    assert "algorithm.rho = 1.5" in msg and "less than or equal to 1" in msg


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algorithm.optimizer='rmsprop'"])
    assert "algorithm.optimizer" in str(e.value) and "'sgd'" in str(e.value) and "'adam'" in str(e.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algorithm.eta_thet=0.1"])
    msg = str(e.value)
    assert "unknown key 'algorithm.eta_thet'" in msg and "Did you mean 'eta_theta'" in msg


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(None, ["modle.name=lr"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_reported(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[data\np = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)


def test_prune_start_fraction_out_of_range():
    with pytest.raises(ConfigError, match="prune_start_unit"):
        load_config(None, ["algorithm.prune_start=30"])
    assert load_config(None, ["algorithm.prune_start=30", "algorithm.prune_start_unit='steps'"]).algorithm.prune_start == 30


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    assert main(["run", "--set", "data.p=-3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "raysim: error" in err and "data.p = -3" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["run", "--set", "oops"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_config_doc_lists_every_key(capsys):
    assert main(["config", "--doc"]) == 0
    out = capsys.readouterr().out
    for key in ("eta_theta", "clients_per_actor", "num_gpus", "rate", "snr", "prune_start_unit"):
        assert key in out
