"""Per-task defaults (raysim.defaults): what a config leaves unset takes its task's value, an
explicit value always wins, the resolved value is written to the run's config.toml, and the
defaults do what they were chosen for on the shipped scenarios."""

import tomllib

import pytest

from raysim import defaults
from raysim.config import load_config


@pytest.mark.parametrize("task", ["lr", "lg", "mc", "mlc", "cnn"])
def test_unset_keys_take_the_task_default(task):
    extra = ["data.kind='real'", "data.dataset='mnist-5k'"] if task == "cnn" else []
    flops = load_config(None, [f"data.task='{task}'", *extra])
    fedavg = load_config(None, [f"data.task='{task}'", "algorithm.name='fedavg'", *extra])
    for dotted, value in defaults.TASK_DEFAULTS[task].items():
        section, key = dotted.split(".")
        # an algorithm key is filled where the chosen algorithm has that knob, and only there
        cfg = fedavg if key == "eta_local" else flops
        assert getattr(getattr(cfg, section), key) == value, dotted
    assert not hasattr(flops.algorithm, "eta_local") and not hasattr(fedavg.algorithm, "eta_theta")


def test_explicit_values_win_and_the_tasks_differ():
    cfg = load_config(None, ["data.task='lg'", "algorithm.eta_theta=0.123", "run.rounds=7"])
    assert cfg.algorithm.eta_theta == 0.123 and cfg.run.rounds == 7
    assert cfg.algorithm.eta_phi == defaults.TASK_DEFAULTS["lg"]["algorithm.eta_phi"]
    lr, lg = load_config(None), load_config(None, ["data.task='lg'"])
    assert lr.algorithm.eta_theta != lg.algorithm.eta_theta      # the table is really per task


def test_resolved_defaults_are_written_and_reload_identically(tmp_path):
    from raysim.config import dump_toml

    cfg = load_config("datasets/synthetic-mc.toml")
    dump_toml(cfg, tmp_path / "config.toml")
    written = tomllib.loads((tmp_path / "config.toml").read_text())
    assert written["run"]["rounds"] == defaults.TASK_DEFAULTS["mc"]["run.rounds"]
    assert written["algorithm"]["rho_init"] == defaults.TASK_DEFAULTS["mc"]["algorithm.rho_init"]
    assert load_config(tmp_path / "config.toml") == cfg


def test_config_doc_prints_the_table():
    from raysim.cli import config_doc

    doc = config_doc()
    assert "Per-task defaults" in doc
    for task in defaults.TASK_DEFAULTS:
        assert any(line.startswith(f"# {task} ") for line in doc.splitlines())


@pytest.mark.slow
def test_flops_at_defaults_recovers_the_support_on_lg_and_lr(tmp_path):
    """The claims the defaults were chosen for, on seeds the studies never saw (in process)."""
    from raysim.runner import run

    common = ["cluster.backend='local'", "run.progress=false", "run.plots=false", "run.eval_every=50",
              f"run.out_dir='{tmp_path}'"]
    lg = run(load_config("datasets/synthetic-lg.toml", common + ["run.seed=6"])).summary["final"]
    assert lg["tdr"] >= 0.9 and lg["accuracy"] >= 0.85
    lr = run(load_config(None, common + ["run.seed=3"])).summary["final"]
    assert lr["tdr"] >= 0.95 and lr["r2"] >= 0.9
