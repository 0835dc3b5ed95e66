"""What a user sees on the command line: --version, --dry-run of every sub-command (real
processes, `python -m raysim ...`), quiet scriptable output, live metrics in 80 columns."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import raysim

ROOT = Path(__file__).resolve().parents[1]


def raysim_cmd(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 240,
               cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "raysim", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


#: a Ray address nothing listens on: a dry run that touched Ray would fail on it
NO_RAY = {"RAY_ADDRESS": "127.0.0.1:1"}


def test_version():
    p = raysim_cmd("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"raysim {raysim.__version__} (ray ") and "optuna" in p.stdout


def test_run_dry_run_starts_nothing(tmp_path):
    out = tmp_path / "run"
    p = raysim_cmd("run", "datasets/synthetic-lr.toml", "--set", "run.rounds=7", "--out", str(out), "--dry-run",
                   env_extra=NO_RAY)
    assert p.returncode == 0, p.stderr
    assert "would run: flops on task lr" in p.stdout and "rounds 7" in p.stdout and str(out) in p.stdout
    assert "dry run: nothing started" in p.stdout
    assert not out.exists()                       # no run directory written


def test_run_dry_run_still_rejects_bad_config():
    p = raysim_cmd("run", "--set", "run.plot_format='gif'", "--dry-run", env_extra=NO_RAY)
    assert p.returncode == 2 and "plot_format" in p.stderr and "Traceback" not in p.stderr


def test_compare_dry_run_lists_every_run(tmp_path):
    p = raysim_cmd("compare", "results/compare/configs/synthetic-lr.toml", "--out", str(tmp_path / "c"),
                   "--dry-run", env_extra=NO_RAY)
    assert p.returncode == 0, p.stderr
    assert "would run 21 runs (7 algorithms x 3 seeds)" in p.stdout
    assert p.stdout.count(str(tmp_path / "c" / "runs")) == 21
    assert not (tmp_path / "c").exists()


def test_stress_dry_run_lists_cells(tmp_path):
    p = raysim_cmd("stress", "datasets/stress/hetero-1000.toml", "--out", str(tmp_path / "s"), "--dry-run",
                   env_extra=NO_RAY)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("todo")]
    assert len(lines) == 18                       # 3 x 3 axis values x 2 algorithms x 1 seed
    assert not (tmp_path / "s").exists()


def test_tune_dry_run_prints_the_plan(tmp_path):
    p = raysim_cmd("tune", "tuning/lr-ratios.toml", "--out", str(tmp_path / "t"), "--n-trials", "5", "--dry-run",
                   "--parallel", "4", env_extra=NO_RAY)
    assert p.returncode == 0, p.stderr
    assert "would run 5 new trial(s) (0 of 5 already finished), 4 at a time" in p.stdout
    assert "sampler tpe (constant liar on), pruner median" in p.stdout
    assert str(tmp_path / "t" / "study.journal") in p.stdout and "dry run: nothing started" in p.stdout
    assert not (tmp_path / "t").exists()


def test_every_subcommand_that_runs_has_dry_run_and_no_progress():
    from raysim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("run", "compare", "stress", "tune"):
        opts = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--dry-run", "--no-progress"} <= opts, name


@pytest.mark.slow
def test_run_no_progress_prints_only_the_run_dir_and_no_ray_notice(tmp_path):
    out = tmp_path / "r"
    p = raysim_cmd("run", "--set", "run.rounds=2", "--set", "data.n_clients=4", "--set", "data.p=40",
                   "--set", "run.plot_format='svg'", "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out)
    assert "Token authentication" not in p.stderr, p.stderr       # Ray's start-up notices are filtered
    assert "unstable API" not in p.stderr, p.stderr
    assert (out / "density_lambda.svg").exists() and not (out / "density_lambda.png").exists()


def test_live_metrics_fit_80_columns():
    from rich.console import Console
    from rich.progress import Progress

    from raysim.runner import _Progress

    prog = _Progress(1000, False, "lr")
    row = {"density": 0.05, "lambda": 12345.678, "tdr": 1.0, "r2": -0.953, "soft_iou": 0.99}
    text = prog.text(row)
    assert len(text) <= prog.WIDTH and "dens 0.050" in text and "r2 -0.953" in text
    # the same columns as the live bar, rendered on an 80-column terminal: nothing cut off
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    bar = Progress(*_Progress.columns(), console=console)
    t = bar.add_task(text, total=1000)
    bar.update(t, completed=1000)
    console.print(bar.get_renderable())
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    assert lines and all(len(ln) <= 80 for ln in lines)
    assert text in lines[0]                        # the metrics line is whole, not wrapped or ellipsised


def test_compare_no_progress_prints_only_the_table_and_writes_svg(tmp_path):
    cfg = tmp_path / "cmp.toml"
    cfg.write_text(f"""
[compare]
algorithms = ["flops", "fedavg"]
seeds = [0]
out_dir = "{tmp_path / 'out'}"
max_parallel = 1

[run]
rounds = 3
plots = false

[data]
p = 40
n_clients = 4
n_per_client = 20
test_samples = 200

[participation]
rate = 0.5
""")
    p = raysim_cmd("compare", str(cfg), "--no-progress", "--plot-format", "svg", timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.lstrip().startswith("### ")                 # the table first: no status lines before it
    assert "raysim compare:" not in p.stdout and "Token authentication" not in p.stderr
    assert p.stderr.strip() == "", p.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "r2_rounds.svg").exists() and not (out / "r2_rounds.png").exists()
    svg = (out / "r2_rounds.svg").read_text()
    assert "flops" in svg and "fedavg" in svg


def test_a_closed_pipe_ends_quietly():
    """`raysim config --doc | head -0`: the reader is gone before raysim writes; raysim exits 0
    with no traceback (BrokenPipeError handled)."""
    r, w = os.pipe()
    os.close(r)                               # nobody will read: the first write fails with EPIPE
    proc = subprocess.Popen([sys.executable, "-m", "raysim", "config", "--doc"], stdout=w, stderr=subprocess.PIPE,
                            cwd=ROOT)
    os.close(w)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
