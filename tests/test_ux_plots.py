"""Plots a user sees: the shared style, run plots, compare curves, stress heatmaps and the
tuning report (real files written and read back; real Optuna journal storage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from raysim.plotstyle import KNOWN, algo_style, luminance, text_color


def _run_dir(tmp_path: Path, rounds: int = 20, fmt: str | None = None) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    r = np.arange(1, rounds + 1)
    df = pd.DataFrame({"round": r, "density": np.where(r < 10, 1.0, 0.05), "expected_density": np.exp(-r / 5),
                       "nnz": 5, "m": 5, "lambda": np.minimum(r * 0.02, 0.3), "tdr": r / rounds, "tpr": r / rounds,
                       "f1": r / rounds, "soft_iou": 0.9, "r2": 1 - 1 / r, "cum_bytes_up": r * 800,
                       "cum_bytes_down": r * 808})
    df.to_csv(d / "metrics.csv", index=False)
    (d / "summary.json").write_text(json.dumps({"task": "lr", "p": 100, "m": 5, "prune_start_round": 10}))
    if fmt:
        (d / "config.toml").write_text(f'[run]\nplot_format = "{fmt}"\n[algorithm]\nrho = 0.05\n')
    return d


def test_algorithm_styles_are_distinct_and_stable():
    styles = [algo_style(a) for a in KNOWN]
    combos = {(s["color"], str(s["linestyle"]), s["marker"]) for s in styles}
    assert len(combos) == len(KNOWN)
    assert len({s["color"] for s in styles}) == len(KNOWN)          # every built-in its own colour
    assert len({s["marker"] for s in styles}) == len(KNOWN)
    for a, b in (("flops", "flops-ent"), ("fedavg", "fedavg-prune")):  # the pairs that used to hide
        sa, sb = algo_style(a), algo_style(b)
        assert sa["color"] != sb["color"] and sa["linestyle"] != sb["linestyle"] and sa["marker"] != sb["marker"]
    assert algo_style("my-variant") == algo_style("my-variant")     # unknown labels: stable hash style


def test_text_colour_follows_cell_luminance():
    assert luminance("white") > 0.99 and luminance("black") < 0.01
    assert text_color("#fde725") == "black"     # viridis top (yellow)
    assert text_color("#440154") == "white"     # viridis bottom (dark purple)


def test_density_lambda_has_rho_line_and_lambda_in_one_legend(tmp_path):
    from raysim.report import density_lambda_figure

    d = _run_dir(tmp_path)
    df = pd.read_csv(d / "metrics.csv")
    fig = density_lambda_figure(df, rho=0.05, prune_round=10)
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert len(legends) == 1                                 # ONE legend for both axes
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert any("rho = 0.05" in t for t in labels)
    assert any(t.startswith("lambda") for t in labels)
    assert any("expected density" in t for t in labels) and any("deployed density" in t for t in labels)
    ax = fig.axes[0]
    rho_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("target rho")]
    assert rho_lines and np.allclose(rho_lines[0].get_ydata(), 0.05)    # a horizontal line at rho
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "lambda"  # lambda on the second axis


def test_bytes_plot_shows_uplink_and_downlink(tmp_path):
    from raysim.report import bytes_figure

    df = pd.read_csv(_run_dir(tmp_path) / "metrics.csv")
    fig = bytes_figure(df)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    up, down = lines["uplink (clients to server)"], lines["downlink (server to clients)"]
    # different line styles and markers, markers at different rounds: both visible when they coincide
    assert up.get_linestyle() != down.get_linestyle() and up.get_marker() != down.get_marker()
    assert up.get_markevery() != down.get_markevery()
    assert ax.get_yscale() == "log"


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_plot_run_writes_the_configured_format_with_y_labels(tmp_path, fmt):
    from raysim.report import plot_run

    d = _run_dir(tmp_path, fmt=fmt)
    paths = plot_run(d)
    names = {p.name for p in paths}
    assert {f"density_lambda.{fmt}", f"support.{fmt}", f"soft_iou.{fmt}", f"bytes.{fmt}", f"test_r2.{fmt}"} <= names
    head = (d / f"density_lambda.{fmt}").read_bytes()[:200]
    if fmt == "png":
        with Image.open(d / "support.png") as im:
            assert im.format == "PNG" and im.size[0] > 500
    elif fmt == "pdf":
        assert head.startswith(b"%PDF")
    else:
        svg = (d / "support.svg").read_text()
        assert "<svg" in svg and "support recovery (rate)" in svg          # the y label, as text
        assert "soft IoU of consecutive supports" in (d / "soft_iou.svg").read_text()


def test_compare_curves_use_the_algorithm_styles(tmp_path):
    from raysim.experiments.plots import plot_curves

    algos = ["flops", "flops-ent", "fedavg", "fedavg-prune"]
    rows = [dict(algorithm=a, seed=s, round=r, r2=1 - 1 / r, tdr=r / 10, cum_bytes_up=r * 10, cum_bytes_down=r * 10)
            for a in algos for s in (0, 1) for r in range(1, 11)]
    paths = plot_curves(pd.DataFrame(rows), tmp_path, "r2", algos, "svg")
    assert {p.name for p in paths} == {"r2_rounds.svg", "r2_bytes.svg", "tdr_rounds.svg", "tdr_bytes.svg"}
    svg = (tmp_path / "r2_rounds.svg").read_text()
    for a in algos:
        assert a in svg
    for a in algos:     # each algorithm's colour is drawn (hex as written by matplotlib's SVG backend)
        assert algo_style(a)["color"].lower() in svg.lower()


def test_stress_heatmap_cells_show_mean_std_with_readable_text(tmp_path):
    import matplotlib.pyplot as plt

    from raysim.experiments.plots import _draw, _per_seed, _spread

    rows = [{"data.a": a, "data.b": b, "seed": s, "algorithm": "x", "r2": a + b + 0.1 * s}
            for a in (0.0, 1.0) for b in (0.0, 1.0) for s in (0, 1, 2)]
    mean, std, n = _spread(_per_seed(pd.DataFrame(rows), ["data.a", "data.b"], "r2"))
    assert (n.to_numpy() == 3).all()
    np.testing.assert_allclose(std.to_numpy(), 0.1)
    fig, ax = plt.subplots()
    im = _draw(ax, mean, "x", std=std)
    texts = [t for t in ax.texts]
    assert len(texts) == 4 and all("±" in t.get_text() for t in texts)
    assert len({len(t.get_text().split("\n")[0].split(".")[1]) for t in texts}) == 1   # one number format
    for t in texts:
        cell = im.cmap(im.norm(float(t.get_text().split("\n")[0])))
        assert t.get_color() == text_color(cell)
    colours = {t.get_color() for t in texts}
    assert colours == {"black", "white"}     # viridis: dark cells white text, light cells black text
    plt.close(fig)


def _study(tmp_path: Path, n: int, multi: bool = False) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    from raysim.tuning.objectives import record_constraints

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    study = optuna.create_study(study_name="s", storage=storage,
                                directions=["maximize", "minimize"] if multi else ["maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_metric_names(["val_r2", "cum_bytes_up"] if multi else ["val_r2"])

    def objective(trial):
        x = trial.suggest_float("algorithm.eta_theta", 1e-3, 1.0, log=True)
        y = trial.suggest_float("algorithm.eta_phi", 1e-3, 1.0, log=True)
        trial.set_user_attr("config", {"run": {"plot_format": "png"}, "algorithm": {"eta_theta": x}})
        record_constraints(trial, [float(x > 0.5) - 0.5, 0.0])
        if not multi:
            trial.report(x, 1)
        return (x - y, y * 100) if multi else x - 0.1 * y

    study.optimize(objective, n_trials=n)
    return study


def test_tuning_report_skips_importances_below_the_minimum(tmp_path):
    from raysim.tuning.report import MIN_IMPORTANCE_TRIALS, write_report

    study = _study(tmp_path, 3)
    assert MIN_IMPORTANCE_TRIALS > 3
    summary = write_report(study, tmp_path, fmt="svg")
    rep = tmp_path / "report"
    assert not (rep / "importances.png").exists()
    assert "importances" in summary["skipped_plots"]
    assert str(MIN_IMPORTANCE_TRIALS) in summary["skipped_plots"]["importances"]
    md = (rep / "report.md").read_text()
    assert "Not drawn" in md and "importances" in md
    for f in ("history.svg", "intermediate.svg", "slice.svg", "contour.svg", "parallel_coordinate.svg"):
        assert (rep / f).exists(), f
    # three trials: matplotlib alone would tick 0.0, 0.5, ...; the history shows whole trial numbers
    import re

    svg = (rep / "history.svg").read_text()
    ticks = re.findall(r'id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', svg, flags=re.S)
    assert len(ticks) >= 2 and all(t.lstrip("\u2212-").isdigit() for t in ticks), ticks


def test_tuning_report_draws_importances_from_the_minimum(tmp_path):
    from raysim.tuning.report import MIN_IMPORTANCE_TRIALS, write_report

    study = _study(tmp_path, MIN_IMPORTANCE_TRIALS)
    summary = write_report(study, tmp_path, fmt="svg")
    rep = tmp_path / "report"
    assert (rep / "importances.svg").exists() and (rep / "importances.csv").exists()
    assert "importances" not in summary["skipped_plots"]
    imp = pd.read_csv(rep / "importances.csv")
    assert set(imp["param"]) == {"algorithm.eta_theta", "algorithm.eta_phi"}
    assert "Parameter importances (fANOVA)" in (rep / "importances.svg").read_text()


def test_multi_objective_report_has_optuna_pareto_front(tmp_path):
    from raysim.tuning.report import write_report

    study = _study(tmp_path, 4, multi=True)
    summary = write_report(study, tmp_path)
    rep = tmp_path / "report"
    assert (rep / "pareto_front.png").exists() and (rep / "history.png").exists()
    assert "pareto_front" not in summary["skipped_plots"]


def test_constraints_are_where_optuna_dashboard_reads_them(tmp_path):
    study = _study(tmp_path, 3)
    for t in study.get_trials():
        cons = t.user_attrs["constraints"]
        assert t.system_attrs["constraints"] == cons                      # optuna-dashboard's key (a list)
        if hasattr(optuna.trial.Trial, "set_constraint"):                  # Optuna >= 5: named, too
            assert t.system_attrs["constraints:nnz_over_m"] == cons[0]
        assert (all(c <= 0 for c in t.constraints.values())) == all(c <= 0 for c in cons)
