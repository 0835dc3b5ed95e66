"""The public Python API (``raysim.run``, ``raysim.load_config``, ``raysim.Config``,
``raysim.RunResult``) and the example under examples/ that uses it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

import raysim

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "quickstart.py"
#: wall-clock columns: the only ones allowed to differ between two runs of one config
TIMING = ["round_s", "client_compute_s", "aggregation_s", "evaluation_s", "clients_per_s", "wall_s"]

SMALL = {"run": {"rounds": 4, "progress": False, "plots": False, "seed": 3},
         "data": {"p": 60, "rho_true": 0.1, "n_clients": 10, "n_per_client": 20, "test_samples": 500},
         "participation": {"rate": 0.5},
         "algorithm": {"name": "flops", "rho": 0.1, "batch_size": 10},
         "cluster": {"backend": "local"}}


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_does_not_load_ray_or_torch():
    """``import raysim`` (and resolving a config through the API) imports neither Ray nor torch."""
    out = _run_python(
        "import sys, raysim\n"
        "print('after import', 'ray' in sys.modules, 'torch' in sys.modules)\n"
        "from raysim import run, load_config, Config, ConfigError\n"
        "cfg = load_config('datasets/synthetic-lr.toml', run__rounds=3)\n"
        "assert isinstance(cfg, Config) and cfg.run.rounds == 3\n"
        "print('after load_config', 'ray' in sys.modules, 'torch' in sys.modules)\n")
    assert "after import False False" in out
    assert "after load_config False False" in out


def test_public_names():
    assert set(raysim.__all__) >= {"run", "load_config", "Config", "RunResult", "ConfigError"}
    from raysim.runner import RunResult

    assert raysim.RunResult is RunResult
    assert "run" in dir(raysim)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        raysim.nope  # noqa: B018


def test_override_forms_agree_and_apply_in_order(tmp_path):
    """Dotted kwargs, ``__`` kwargs, an overrides mapping and ``--set`` strings are one thing;
    keyword arguments win over ``overrides``, which win over the file."""
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(SMALL))
    forms = [
        raysim.load_config(path, run__rounds=7, algorithm__rho=0.2),
        raysim.load_config(path, **{"run.rounds": 7, "algorithm.rho": 0.2}),
        raysim.load_config(path, {"run.rounds": 7, "algorithm.rho": 0.2}),
        raysim.load_config(path, ["run.rounds=7", "algorithm.rho=0.2"]),
        raysim.load_config({**SMALL, "run.rounds": 7}, algorithm__rho=0.2),
        raysim.load_config(raysim.load_config(path), run__rounds=7, algorithm__rho=0.2),
    ]
    for cfg in forms:
        assert cfg == forms[0]
    assert forms[0].run.rounds == 7 and forms[0].algorithm.rho == 0.2 and forms[0].data.p == 60
    cfg = raysim.load_config(path, {"run.rounds": 9}, run__rounds=11)
    assert cfg.run.rounds == 11
    # the same resolution as the CLI: file + --set
    from raysim.config import load_config as cli_load

    assert cli_load(path, ["run.rounds=7", "algorithm.rho=0.2"]) == forms[0]
    # a Config given alone is copied, not shared
    c2 = raysim.load_config(forms[0])
    assert c2 == forms[0] and c2 is not forms[0]


def test_bad_input_is_named():
    with pytest.raises(TypeError, match=r"did you mean run__rounds"):
        raysim.load_config(None, rounds=3)
    with pytest.raises(TypeError, match="config must be None"):
        raysim.load_config(42)
    with pytest.raises(TypeError, match="overrides must be a mapping"):
        raysim.load_config(None, "run.rounds=3")
    with pytest.raises(raysim.ConfigError, match=r"unknown key 'algorithm\.rhoo'.*Did you mean 'rho'"):
        raysim.load_config(None, {"algorithm.rhoo": 0.1})
    with pytest.raises(raysim.ConfigError, match=r"algorithm\.rho = 1\.5"):
        raysim.load_config(None, algorithm__rho=1.5)
    with pytest.raises(raysim.ConfigError, match="config file not found"):
        raysim.load_config("no/such/file.toml")
    with pytest.raises(raysim.ConfigError, match="'rounds' is a value, not a section"):
        raysim.load_config({"run": {"rounds": 3}}, {"run.rounds.x": 1})


def test_run_dict_and_path_give_identical_metrics(tmp_path):
    """raysim.run(dict) and raysim.run(path) of the same settings write the same metrics; the
    result carries the run directory, the summary and the metrics table."""
    path = tmp_path / "small.toml"
    path.write_text(tomli_w.dumps(SMALL))
    seen: list[int] = []
    a = raysim.run(SMALL, run__out_dir=str(tmp_path / "a"), on_eval=lambda rnd, row: seen.append(rnd))
    b = raysim.run(path, {"run.out_dir": str(tmp_path / "b")})
    assert isinstance(a, raysim.RunResult) and isinstance(b, raysim.RunResult)
    assert seen == [1, 2, 3, 4]
    assert len(a.metrics) == 4 and a.run_dir.parent == tmp_path / "a" and b.run_dir.parent == tmp_path / "b"
    pd.testing.assert_frame_equal(a.metrics.drop(columns=TIMING), b.metrics.drop(columns=TIMING))
    fa = {k: v for k, v in a.summary["final"].items() if k not in TIMING}
    fb = {k: v for k, v in b.summary["final"].items() if k not in TIMING}
    assert fa == fb
    # what the run wrote is what it returned
    on_disk = pd.read_csv(a.run_dir / "metrics.csv")
    np.testing.assert_allclose(on_disk["r2"].to_numpy(float), a.metrics["r2"].to_numpy(float), rtol=1e-12)
    assert a.summary["final"]["nnz"] <= a.summary["m"]
    # the written config.toml repeats the run
    c = raysim.run(a.run_dir / "config.toml", run__run_dir=str(tmp_path / "c"))
    pd.testing.assert_frame_equal(a.metrics.drop(columns=TIMING), c.metrics.drop(columns=TIMING))


def test_on_eval_can_stop_a_run(tmp_path):
    class Stop(Exception):
        pass

    def stop_at_two(rnd, row):
        if rnd == 2:
            raise Stop

    with pytest.raises(Stop):
        raysim.run(SMALL, run__run_dir=str(tmp_path / "r"), on_eval=stop_at_two)
    rows = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert rows["round"].tolist() == [1, 2]


def test_example_runs_in_a_fresh_process(tmp_path):
    """examples/quickstart.py, run as a user would (a new process), in-process backend."""
    out = subprocess.run([sys.executable, str(EXAMPLE), "--backend", "local", "--rounds", "3", "--no-plots",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["algorithm", "r2", "tdr", "tpr", "nnz", "m", "cum_bytes_up"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:3]}
    assert set(rows) == {"flops", "fed-ht"}
    for algo, cells in rows.items():
        nnz, m = int(cells[3]), int(cells[4])
        assert m == 10 and nnz <= m, (algo, cells)
    dirs = sorted(p.name.rsplit("-", 2)[0] for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == ["quickstart-fed-ht", "quickstart-flops"]


def _load_example():
    spec = importlib.util.spec_from_file_location("raysim_example_quickstart", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.ray
def test_example_through_ray_matches_in_process(ray_session, tmp_path):
    """The example on Ray (two client actors, the session's Ray instance) and in process give the
    same metrics: the public API drives both backends."""
    ex = _load_example()
    on_ray = ex.main(["--rounds", "3", "--no-plots", "--out", str(tmp_path / "ray")])
    local = ex.main(["--rounds", "3", "--no-plots", "--out", str(tmp_path / "local"), "--backend", "local"])
    for algo in ("flops", "fed-ht"):
        assert (on_ray[algo].run_dir / "federation.json").exists()
        a, b = on_ray[algo].metrics, local[algo].metrics
        for col in ("r2", "tdr", "density", "fair_mean", "cum_bytes_up", "nnz"):
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-5, atol=1e-9,
                                       err_msg=f"{algo} {col}")
