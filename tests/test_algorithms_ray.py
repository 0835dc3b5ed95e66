"""The new algorithms through the Ray engine, and ``raysim compare`` (real actors, real files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raysim.config import load_config
from raysim.reference import run_reference

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("name,task", [("flops-pa", "lr"), ("fedeba", "lg"), ("fediter-ht", "mc")])
def test_algorithm_on_ray_matches_the_single_process_reference(ray_session, small_overrides, name, task):
    from raysim.runner import run

    cfg = load_config(None, small_overrides + [f"algorithm.name='{name}'", f"data.task='{task}'",
                                               "data.n_classes=3", "algorithm.local_epochs=2",
                                               "cluster.num_actors=2", "data.sigma_q=0.4"])
    res = run(cfg)
    ref, rows, _ = run_reference(cfg)
    theta = np.load(res.run_dir / "model.npz")["theta"]
    np.testing.assert_allclose(theta, ref.deployed(final=True), rtol=1e-4, atol=1e-6)
    m = res.metrics
    if name != "fedeba":  # fedeba is a dense method
        assert res.summary["final"]["nnz"] <= res.summary["m"]
    assert m["cum_bytes_up"].iloc[-1] == rows[-1]["cum_bytes_up"]
    assert m["cum_bytes_down"].iloc[-1] == rows[-1]["cum_bytes_down"]
    assert m["fair_mean"].notna().all()
    clients = pd.read_csv(res.run_dir / "clients.csv")
    assert len(clients) == cfg.data.n_clients


def test_summary_table_means_and_stds():
    from raysim.compare import markdown_table, summary_table

    finals = pd.DataFrame({"algorithm": ["a", "a", "a", "b", "b", "b"], "seed": [0, 1, 2] * 2,
                           "tdr": [1.0, 0.5, 0.0, 0.2, 0.2, 0.2], "cum_bytes_up": [1e6, 2e6, 3e6, 1, 1, 1]})
    t = summary_table(finals, ["b", "a"])
    assert list(t.index) == ["b", "a"]
    assert t.loc["a", "tdr_mean"] == pytest.approx(0.5) and t.loc["a", "tdr_std"] == pytest.approx(0.5)
    assert t.loc["b", "tdr_std"] == 0.0 and t.loc["a", "seeds"] == 3
    md = markdown_table(t, "x")
    assert "| a | 3 | 0.5000 ± 0.5000 | 2 ± 1 |" in md


def test_compare_writes_table_and_plots(ray_session, tmp_path):
    """Two real runs through ``raysim compare`` (Ray, run directories, table, plots)."""
    from raysim.compare import compare

    path = tmp_path / "cmp.toml"
    path.write_text(f"""
[compare]
algorithms = ["fed-ht", "flops-pa"]
seeds = [0]
out_dir = "{tmp_path / 'out'}"
max_parallel = 1

[run]
rounds = 3
plots = false

[cluster]
num_actors = 1

[data]
p = 40
n_clients = 6
n_per_client = 16
test_samples = 300
rho_true = 0.1

[algorithm]
rho = 0.1

[participation]
rate = 0.5
""")
    table, out = compare(path)
    assert list(table.index) == ["fed-ht", "flops-pa"]
    assert (table["seeds"] == 1).all()
    for col in ("density_mean", "tdr_mean", "tpr_mean", "r2_mean", "cum_bytes_up_mean", "cum_bytes_down_std",
                "wall_s_mean"):
        assert col in table
    assert (table["density_mean"] <= 0.1 + 1e-9).all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2
    assert (out / "runs" / "fed-ht-s0" / "summary.json").exists()
    md = (out / "table.md").read_text()
    assert "| fed-ht | 1 |" in md and "±" in md
    for png in ("r2_rounds.png", "r2_bytes.png", "tdr_rounds.png", "tdr_bytes.png"):
        assert (out / png).stat().st_size > 1000
