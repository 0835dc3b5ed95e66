"""The experiments layer (docs/architecture.md, "Experiments"): one fingerprint used by the
run's checkpoint resume and by an experiment's "is this cell done", the collect step on real
run directories, the plots drawn from its tables, and the options the three commands share.

The runs here are real whole runs with the in-process backend (``cluster.backend = "local"``,
the same metrics as Ray; docs/architecture.md, "Backends"), so the file needs no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from raysim import checkpoint as ckpt
from raysim.config import RESULT_RUN_KEYS, ConfigError, fingerprint, load_config, read_toml
from raysim.experiments import collect
from raysim.experiments.plan import DONE, FAILED, PENDING, RAN, Cell, cell_done, is_done, mark, run_cells
from raysim.runner import run

SMALL = ["data.p=40", "data.n_clients=6", "data.n_per_client=16", "data.test_samples=200", "data.val_samples=100",
         "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=8", "participation.rate=0.5",
         "run.progress=false", "run.plots=false", "run.rounds=3", "cluster.backend='local'"]


def _cfg(run_dir: Path, *extra: str):
    return load_config(None, [*SMALL, f"run.run_dir='{run_dir}'", *extra])


# results-irrelevant changes: paths, names, display, checkpoint interval, the layout and the backend
SAME = ["run.name='other'", "run.progress=true", "run.plots=true", "run.plot_format='svg'", "run.checkpoint_every=2",
        "run.out_dir='elsewhere'", "cluster.num_actors=3", "cluster.clients_per_actor=2", "cluster.backend='ray'",
        "cluster.balance='contiguous'"]
# results-determining changes: run length, seed, divergence test, the data, the algorithm, participation
DIFFERENT = ["run.rounds=4", "run.steps_per_round=2", "run.seed=1", "run.eval_every=2", "run.divergence_limit=10.0", "data.p=41",
             "algorithm.rho=0.2", "algorithm.name='fedavg'", "participation.rate=0.4"]


def test_fingerprint_keeps_what_decides_the_results(tmp_path):
    base = fingerprint(_cfg(tmp_path / "a"))
    assert "cluster" not in base
    assert {"seed", "rounds", "eval_every", "divergence_limit"} <= set(base["run"]) <= set(RESULT_RUN_KEYS)
    for o in SAME:
        assert fingerprint(_cfg(tmp_path / "b", o)) == base, o
    for o in DIFFERENT:
        assert fingerprint(_cfg(tmp_path / "a", o)) != base, o


def test_fingerprint_of_a_config_equals_that_of_its_config_toml(tmp_path):
    from raysim.config import dump_toml

    cfg = _cfg(tmp_path / "a", "algorithm.tau0=0.05", "data.h_coef=0.5")
    dump_toml(cfg, tmp_path / "config.toml")
    assert fingerprint(read_toml(tmp_path / "config.toml")) == fingerprint(cfg)


def test_one_fingerprint_for_resume_and_cells():
    """The run's checkpoint check and the experiments' cell check call the one function."""
    import raysim.experiments.plan as plan
    import raysim.runner as runner
    import raysim.stress as stress

    assert runner.fingerprint is fingerprint and plan.fingerprint is fingerprint
    assert stress.cell_done is plan.cell_done
    assert not hasattr(runner, "_fingerprint") and not hasattr(stress, "_fingerprint")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-round run with checkpoints after rounds 1 and 2."""
    d = tmp_path_factory.mktemp("exp") / "done"
    run(_cfg(d, "run.checkpoint_every=1"))
    return d


def test_a_done_cell_survives_irrelevant_changes_only(finished):
    cfg = _cfg(finished, "run.checkpoint_every=1")
    assert is_done(cfg)
    for o in SAME:   # the same run directory, looked for under another name, layout or backend
        c = _cfg(finished, o)
        assert is_done(c), o
        assert cell_done(Cell("flops", 0, c, finished)), o
    for o in DIFFERENT:
        assert not is_done(_cfg(finished, o)), o
    assert not is_done(cfg, finished.parent / "nothing-here")


def test_an_unreadable_summary_is_not_done(tmp_path, finished):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(finished, d)
    cfg = _cfg(d, "run.checkpoint_every=1")
    assert is_done(cfg)
    (d / "summary.json").write_text("{ truncated")
    assert not is_done(cfg)
    (d / "summary.json").unlink()
    assert not is_done(cfg)


def test_resume_uses_the_same_fingerprint(tmp_path, finished):
    """A checkpoint records raysim.config.fingerprint; resume under an irrelevant change ends
    with the metrics of the uninterrupted run, under a relevant change it is refused."""
    import shutil

    d = tmp_path / "crashed"
    shutil.copytree(finished, d)
    (d / "summary.json").unlink()          # as if killed after the checkpoint of round 2
    saved, _ = ckpt.load_latest(d)
    assert saved["config"] == fingerprint(_cfg(d, "run.checkpoint_every=1"))
    with pytest.raises(ConfigError, match="different configuration"):
        run(_cfg(d, "run.checkpoint_every=1", "run.rounds=4"), resume=True)
    res = run(_cfg(d, "run.checkpoint_every=1", "run.name='renamed'", "cluster.clients_per_actor=2"), resume=True)
    want = pd.read_csv(finished / "metrics.csv")
    got = res.metrics
    for col in ("round", "r2", "density", "train_loss"):
        assert list(got[col]) == pytest.approx(list(want[col]), rel=1e-6), col


def test_resume_accepts_a_checkpoint_without_divergence_limit(tmp_path, finished):
    """Checkpoints written before run.divergence_limit entered the fingerprint still resume."""
    from raysim.runner import _same_config

    cfg = _cfg(finished)
    old = fingerprint(cfg)
    old["run"].pop("divergence_limit")
    assert _same_config(old, cfg) and _same_config(fingerprint(cfg), cfg)
    changed = fingerprint(_cfg(finished, "run.rounds=4"))
    changed["run"].pop("divergence_limit")
    assert not _same_config(changed, cfg)


def test_run_cells_resumes_and_collect_reads_the_run_dirs(tmp_path):
    """Three cells of a plan run for real (in process); a fourth that raises is recorded;
    run again, the finished ones are kept; collect turns the run directories into tables."""
    out = tmp_path / "plan"
    cells = [Cell(algo, seed, _cfg(out / f"{algo}-s{seed}", f"algorithm.name='{algo}'", f"run.seed={seed}"),
                  out / f"{algo}-s{seed}", {"data.h_coef": 0.0})
             for algo in ("flops", "fedavg") for seed in (0, 1)]
    bad = cells[3]
    # a missing data file fails the run's preflight: a real failure, recorded, the others go on
    cells[3] = Cell(bad.label, bad.seed, _cfg(bad.run_dir, "data.kind='real'", "data.dataset='mnist'",
                                              f"data.data_dir='{tmp_path / 'no-data'}'", "data.task='mc'"),
                    bad.run_dir, bad.axes)
    ran = run_cells(cells, progress=False, description="test")
    assert len(ran) == 4
    assert [c.status for c in cells] == [RAN, RAN, RAN, FAILED] and cells[3].error
    pending = Cell("flops", 2, _cfg(out / "flops-s2", "run.seed=2"), out / "flops-s2", {"data.h_coef": 0.0})

    finals = collect.finals(cells + [pending], federation=True)
    assert list(finals["outcome"]) == ["ok", "ok", "ok", "failed", "unfinished"]
    assert list(finals["status"]) == [RAN, RAN, RAN, FAILED, PENDING]
    assert list(finals.columns[:3]) == ["data.h_coef", "algorithm", "seed"]
    for c, r in zip(cells[:3], finals.itertuples()):
        summary = json.loads((c.run_dir / "summary.json").read_text())
        assert r.r2 == pytest.approx(summary["final"]["r2"]) and r.wall_s == pytest.approx(summary["wall_s"])
    assert finals.loc[:2, "fed_size_cv"].notna().all() and finals.loc[3:, "r2"].isna().all()
    assert finals.loc[3, "error"] == cells[3].error

    curves = collect.curves(cells + [pending])
    assert list(curves.columns[:3]) == ["data.h_coef", "algorithm", "seed"]
    per_run = curves.groupby(["algorithm", "seed"])["round"].apply(list).to_dict()
    assert per_run == {("flops", 0): [1, 2, 3], ("flops", 1): [1, 2, 3], ("fedavg", 0): [1, 2, 3]}
    m = pd.read_csv(cells[1].run_dir / "metrics.csv")
    got = curves[(curves["algorithm"] == "flops") & (curves["seed"] == 1)]
    assert list(got["r2"]) == pytest.approx(list(m["r2"]))

    # again: the three finished cells are done and kept (same summary), only the failed one runs
    first = (cells[0].run_dir / "summary.json").read_text()
    again = run_cells(cells, progress=False)
    assert again == [cells[3]] and [c.status for c in cells] == [DONE, DONE, DONE, FAILED]
    assert (cells[0].run_dir / "summary.json").read_text() == first
    # without resume every cell runs afresh
    assert len(run_cells(cells[:1], progress=False, resume=False)) == 1 and cells[0].status == RAN
    assert [c.status for c in mark(cells + [pending])] == [DONE, DONE, DONE, "missing", "missing"]


def test_plots_from_collected_tables(tmp_path, finished):
    """The compare curves and the stress heatmaps draw from collect's tables of real runs."""
    import shutil

    from raysim.experiments.plots import heatmaps, plot_curves

    cells = []
    for algo in ("a", "b"):
        for seed in (0, 1):
            d = tmp_path / "runs" / f"{algo}-s{seed}"
            shutil.copytree(finished, d)
            cells.append(Cell(algo, seed, _cfg(d), d, {"x": seed * 1.0, "y": 1}, status=DONE))
    paths = plot_curves(collect.curves(cells), tmp_path, "r2", ["a", "b"])
    assert {p.name for p in paths} == {"r2_rounds.png", "r2_bytes.png", "tdr_rounds.png", "tdr_bytes.png"}
    paths = heatmaps(collect.finals(cells), ["x", "y"], ["a", "b"], "r2", tmp_path, "g", ("a", "b"))
    assert {p.name for p in paths} == {"heatmap_r2_a.png", "heatmap_r2_b.png", "heatmap_r2_a-minus-b.png",
                                       "heatmaps_r2.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_three_commands_share_their_options():
    from raysim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")

    def opts(name):
        return {o: a for a in sub.choices[name]._actions for o in a.option_strings}

    shared = {"--set", "--out", "--cold", "--plot-format", "--dry-run", "--no-progress"}
    c, s, t = opts("compare"), opts("stress"), opts("tune")
    assert shared | {"--max-parallel"} <= set(c) and shared | {"--max-parallel"} <= set(s)
    assert shared | {"--parallel", "--check"} <= set(t)
    for o in shared:
        assert c[o].dest == s[o].dest and c[o].choices == s[o].choices == t[o].choices, o
    assert t["--dry-run"] is t["--check"] and t["--dry-run"].dest == "check"
    args = parser.parse_args(["compare", "x.toml", "--set", "run.rounds=2", "--plot-format", "svg"])
    from raysim.experiments.cli import overrides_of

    assert overrides_of(args) == ["run.rounds=2", 'run.plot_format="svg"']
