"""Safety and honest failure (issue 11): checkpoints that cannot execute code, run directories
that are never overwritten or mixed, run outcomes with documented exit codes, clear messages
instead of tracebacks. Real files and real processes (`python -m raysim ...`); runs use the
in-process backend (cluster.backend = "local") where Ray adds nothing to what is tested."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysim import checkpoint as ckpt
from raysim import outcome
from raysim.config import ConfigError, load_config

SMALL = ["data.p=60", "data.n_clients=10", "data.n_per_client=20", "data.test_samples=300",
         "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=10", "participation.rate=0.5",
         "run.rounds=4", "run.plots=false", "cluster.backend='local'"]


def _args(*extra: str) -> list[str]:
    return [a for o in [*SMALL, *extra] for a in ("--set", o)]


def raysim(*argv: str, cwd: Path | None = None, preexec=None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m raysim ...` as a real process; returns its exit code and output."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "raysim", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, preexec_fn=preexec, timeout=timeout)


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


# -- checkpoints: no code execution, fallbacks -----------------------------------------------------

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forged(body: bytes, magic: bytes = ckpt.MAGIC) -> bytes:
    """A file with a valid header (length and SHA-256 recomputed by the attacker)."""
    return magic + struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def test_checkpoint_roundtrip_keeps_types(tmp_path):
    import torch

    obj = {"sim": {"server": {"state": {"theta": torch.arange(5, dtype=torch.float32), "lam": 0.25, "t": 3,
                                        "active": None, "opt": {"m_theta": torch.zeros(5, dtype=torch.float64)}},
                              "prev_pi": None, "cum_up": 10}, "step": 7},
           "rows": [{"round": 1, "r2": float("nan"), "loss": float("inf"), "status": "ok"}],
           "acc": {"n_reported": np.int64(4)}, "t": (1, 2), "mask": np.array([True, False])}
    ckpt.save(tmp_path, 2, obj)
    back, _ = ckpt.load_latest(tmp_path)
    st = back["sim"]["server"]["state"]
    assert isinstance(st["theta"], torch.Tensor) and st["theta"].dtype == torch.float32
    assert torch.equal(st["theta"], torch.arange(5, dtype=torch.float32))
    assert st["opt"]["m_theta"].dtype == torch.float64 and st["active"] is None and st["lam"] == 0.25
    assert np.isnan(back["rows"][0]["r2"]) and back["rows"][0]["loss"] == float("inf")
    assert back["acc"]["n_reported"] == 4 and back["t"] == (1, 2) and back["round"] == 2
    assert back["mask"].dtype == bool and list(back["mask"]) == [True, False]


def test_forged_pickle_checkpoint_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"x": _Evil(marker)})
    for magic in (ckpt.MAGIC, b"RAYSIMCKPT1\n"):
        path = tmp_path / "round-000001.ckpt"
        path.write_bytes(_forged(evil, magic))
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load(path)
    # an .npz body holding a pickled object array: refused by allow_pickle=False
    import io

    buf = io.BytesIO()
    np.savez(buf, __json__=np.frombuffer(b'{"__dict__": {}}', dtype=np.uint8),
             a0=np.array([_Evil(marker)], dtype=object))
    path.write_bytes(_forged(buf.getvalue()))
    with pytest.raises(ckpt.CheckpointError, match="Object arrays cannot be loaded"):
        ckpt.load(path)
    assert not marker.exists()


def test_undecodable_newest_falls_back_and_orphans_are_removed(tmp_path):
    marker = tmp_path / "pwned"
    ckpt.save(tmp_path, 2, {"rows": [{"round": 2}]})
    ckpt.save(tmp_path, 4, {"rows": [{"round": 4}]})
    newest = ckpt.checkpoint_dir(tmp_path) / "round-000004.ckpt"
    newest.write_bytes(_forged(pickle.dumps(_Evil(marker))))      # checksum fine, body not decodable
    obj, path = ckpt.load_latest(tmp_path)
    assert obj["round"] == 2 and path.name == "round-000002.ckpt"
    assert not marker.exists()
    orphan = ckpt.checkpoint_dir(tmp_path) / ".round-000006.ckpt.tmp-999999999"   # writer long dead
    mine = ckpt.checkpoint_dir(tmp_path) / f".round-000008.ckpt.tmp-{os.getpid()}"   # a live writer
    orphan.write_bytes(b"half")
    mine.write_bytes(b"in progress")
    ckpt.save(tmp_path, 6, {"rows": []})
    assert not orphan.exists() and mine.exists()


def test_disk_full_during_checkpoint_is_a_clear_error(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE) makes the checkpoint write fail as a full disk would."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "run"
    r = raysim("run", *_args("run.checkpoint_every=1"), "--no-progress", "--out", str(out), preexec=limit)
    assert r.returncode == outcome.EXIT_USAGE, r.stderr
    _no_traceback(r)
    assert "cannot write" in r.stderr and "round-000001.ckpt" in r.stderr and "--resume" in r.stderr
    assert not [f for f in ckpt.checkpoint_dir(out).iterdir()]          # no orphan temporary file


def test_resume_without_readable_checkpoint_is_an_error(tmp_path):
    out = tmp_path / "run"
    r = raysim("run", *_args("run.checkpoint_every=2", "run.rounds=6"), "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    (out / "summary.json").unlink()                    # as if killed before the end
    for _, p in ckpt.list_checkpoints(out):
        p.write_bytes(p.read_bytes()[:60])             # every checkpoint truncated
    r = raysim("run", "--resume", str(out), "--no-progress")
    assert r.returncode == outcome.EXIT_USAGE
    _no_traceback(r)
    assert "cannot resume" in r.stderr and "can be read" in r.stderr and "--force" in r.stderr
    assert not (out / "summary.json").exists()         # nothing restarted silently
    # a folder without any checkpoint
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text((out / "config.toml").read_text())
    r = raysim("run", "--resume", str(bare), "--no-progress")
    assert r.returncode == outcome.EXIT_USAGE and "has no checkpoint" in r.stderr


# -- run directories -------------------------------------------------------------------------------

def test_finished_run_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "run"
    assert raysim("run", *_args(), "--no-progress", "--out", str(out)).returncode == 0
    before = (out / "summary.json").read_text()
    r = raysim("run", *_args("run.seed=5"), "--no-progress", "--out", str(out))
    assert r.returncode == outcome.EXIT_USAGE and "finished run" in r.stderr and "--force" in r.stderr
    assert (out / "summary.json").read_text() == before
    assert load_config(out / "config.toml").run.seed == 0           # the old config is untouched
    r = raysim("run", *_args("run.seed=5", "run.checkpoint_every=2"), "--no-progress", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["seed"] == 5
    # --resume on the finished run: nothing to resume
    r = raysim("run", "--resume", str(out), "--no-progress")
    assert r.returncode == outcome.EXIT_USAGE and "nothing to resume" in r.stderr


def test_out_naming_a_file_and_names_outside_out_dir(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = raysim("run", *_args(), "--no-progress", "--out", str(f))
    assert r.returncode == outcome.EXIT_USAGE and "is a file" in r.stderr
    _no_traceback(r)
    for bad in ("../escaped", "/tmp/abs-run", "a/b"):
        r = raysim("run", *_args(f"run.name={json.dumps(bad)}", f"run.out_dir={json.dumps(str(tmp_path / 'o'))}"),
                   "--no-progress", cwd=tmp_path)
        assert r.returncode == outcome.EXIT_USAGE and "run.name" in r.stderr, r.stderr
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.glob("escaped*"))
    from raysim.tuning.spec import StudySection

    with pytest.raises(ValueError, match="study.name"):
        StudySection(name="../../etc")


def test_two_runs_on_one_directory_never_mix(tmp_path):
    """A long run holds the directory's lock; a second `raysim run` on it is refused at once
    (exit 7) and the first one finishes normally."""
    out = tmp_path / "run"
    # long enough (seconds) that the second command meets it running, whatever the machine
    first = subprocess.Popen([sys.executable, "-m", "raysim", "run", *_args("run.rounds=3000"), "--no-progress",
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".raysim.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith(f"pid {first.pid}")):
        time.sleep(0.05)
    try:
        r = raysim("run", *_args(), "--no-progress", "--out", str(out), "--force")
        assert r.returncode == outcome.EXIT_BUSY, r.stderr
        assert "in use by another run" in r.stderr and f"pid {first.pid}" in r.stderr
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3000 and summary["status"] == "ok"


# -- run outcomes and exit codes -------------------------------------------------------------------

def test_diverged_run_is_stopped_marked_and_exits_3(tmp_path):
    out = tmp_path / "run"
    r = raysim("run", *_args("algorithm.eta_theta=1e4", "run.rounds=20"), "--no-progress", "--out", str(out))
    assert r.returncode == outcome.EXIT_DIVERGED == 3, r.stderr
    assert "status diverged" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["rounds_run"] < 20 and "divergence_limit" in s["status_reason"]
    m = pd.read_csv(out / "metrics.csv")
    assert m["status"].iloc[-1] == "diverged" and (m["status"].iloc[:-1] == "ok").all()
    assert len(m) == s["rounds_run"]                                  # stopped early


def test_nan_weights_count_as_divergence_even_without_limit():
    from raysim.outcome import divergence

    assert divergence({"max_abs_weight": float("inf"), "n_reported": 3, "train_loss": 1.0}, None)
    assert divergence({"max_abs_weight": 1.0, "n_reported": 3, "train_loss": float("nan")}, None)
    assert divergence({"max_abs_weight": 2e6, "n_reported": 3, "train_loss": 1.0}, 1e6)
    assert divergence({"max_abs_weight": 1.0, "n_reported": 0, "train_loss": float("nan")}, 1e6) is None


def test_empty_model_is_refused_before_anything_starts(tmp_path):
    r = raysim("run", *_args("algorithm.rho=0.01", f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}"),
               "--no-progress")
    assert r.returncode == outcome.EXIT_EMPTY_MODEL == 4
    _no_traceback(r)
    assert "m = floor(rho * p)" in r.stderr and "algorithm.rho >=" in r.stderr
    assert not (tmp_path / "runs").exists()                           # nothing was created


def test_no_participation_exits_5(tmp_path):
    out = tmp_path / "run"
    r = raysim("run", *_args("participation.kind='availability'", "participation.rare_frac=1.0",
                             "participation.rare_avail=0.0"), "--no-progress", "--out", str(out))
    assert r.returncode == outcome.EXIT_NO_PARTICIPATION == 5, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "no_participation"
    assert pd.read_csv(out / "metrics.csv")["status"].iloc[-1] == "no_participation"


@pytest.mark.parametrize("bad", ["algorithm.eta_theta=inf", "algorithm.eta_phi=nan", "algorithm.rho=inf",
                                 "participation.deadline=inf"])
def test_infinite_or_nan_knobs_are_refused(bad):
    with pytest.raises(ConfigError, match="finite"):
        load_config(None, [bad])


# -- clear messages instead of tracebacks ----------------------------------------------------------

def test_non_utf8_config(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    r = raysim("run", str(p), "--no-progress")
    assert r.returncode == outcome.EXIT_USAGE and "not UTF-8" in r.stderr
    _no_traceback(r)


def test_memory_estimate_refuses_huge_p_before_allocating(tmp_path):
    for p in ("10000000", "1000000"):
        r = raysim("run", f"--set=data.p={p}", "--no-progress", f"--set=run.out_dir={json.dumps(str(tmp_path))}")
        assert r.returncode == outcome.EXIT_USAGE, r.stderr
        _no_traceback(r)
        assert "this run needs about" in r.stderr and "GiB" in r.stderr and "Lower data.p" in r.stderr
    assert not list(tmp_path.iterdir())


def test_memory_estimate_numbers():
    from raysim.preflight import check_memory, dims, estimate_bytes

    cfg = load_config(None, ["data.p=1000000"])
    d = dims(cfg)
    est = estimate_bytes(cfg, d)
    # 100 clients x (50 + 10 held-out) x 1e6 float32, and 10,000 test samples
    assert est["client data"] == 100 * 60 * 1_000_000 * 4
    assert est["test/validation sets"] == 10_000 * 1_000_000 * 4 * 2
    with pytest.raises(ConfigError, match="needs about"):
        check_memory(cfg, d, available=8 * 2**30)
    check_memory(cfg, d, available=2**50)                  # fits: no error
    small = load_config(None)
    assert sum(estimate_bytes(small, dims(small)).values()) < 2 * 2**30   # the default scenario fits anywhere


def test_toeplitz_quadratic_is_linear_in_support():
    from raysim.data.synthetic import toeplitz_quadratic

    rng = np.random.default_rng(0)
    for rho in (0.0, 0.3, 0.9):
        p = 200
        sup = rng.choice(p, 30, replace=False)                    # unsorted on purpose
        beta = np.zeros(p)
        beta[sup] = rng.normal(size=30)
        sigma = rho ** np.abs(np.arange(p)[:, None] - np.arange(p)[None, :])
        assert toeplitz_quadratic(beta, sup, rho) == pytest.approx(beta @ sigma @ beta, rel=1e-10)
    # p = 1,000,000 with 50,000 true features: no 50,000 x 50,000 matrix
    p = 1_000_000
    sup = np.sort(rng.choice(p, 50_000, replace=False))
    beta = np.zeros(p)
    beta[sup] = 1.0
    assert toeplitz_quadratic(beta, sup, 0.2) > 50_000


def test_missing_dataset_is_found_before_ray_and_leaves_no_folder(tmp_path):
    runs = tmp_path / "runs"
    r = raysim("run", "--set", "data.kind='real'", "--set", "data.dataset='mnist'", "--set", "data.task='mc'",
               "--set", f"data.data_dir={json.dumps(str(tmp_path / 'empty'))}",
               "--set", f"run.out_dir={json.dumps(str(runs))}", "--no-progress")
    assert r.returncode == outcome.EXIT_USAGE
    _no_traceback(r)
    assert "mnist" in r.stderr and "Ray" not in r.stderr and "ray" not in r.stdout.lower()
    assert not runs.exists()


def test_idx_header_overflow_and_svmlight_nan(tmp_path):
    from raysim.data.real import DatasetError, read_idx, read_svmlight

    # 65536^4 = 2^64 items: wraps to 0 in int64, which matched an empty body before
    p = tmp_path / "forged-idx4-ubyte"
    p.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">IIII", 65536, 65536, 65536, 65536))
    with pytest.raises(DatasetError, match="header announces"):
        read_idx(p)
    svm = tmp_path / "rcv1_train.svm"
    svm.write_text("1 1:0.5 2:0.1\n2 1:nan\n1 3:inf\n")
    with pytest.raises(DatasetError, match="NaN or infinite.*line 2"):
        read_svmlight([svm])


def test_stress_bad_seed_list(tmp_path):
    grid = tmp_path / "g.toml"
    for seeds in ('["a", 1]', "[-1]", "[]", '"0,1"', "[0, 0]"):
        grid.write_text(f'[stress]\nalgorithms = ["flops"]\nseeds = {seeds}\n[stress.axes]\n"data.h_coef" = [0.0]\n')
        r = raysim("stress", str(grid), "--dry-run")
        assert r.returncode == outcome.EXIT_USAGE and "stress.seeds" in r.stderr, (seeds, r.stderr)
        _no_traceback(r)


# -- compare / stress tables show the status -------------------------------------------------------

def test_compare_shows_diverged_runs(tmp_path):
    cfg = tmp_path / "cmp.toml"
    cfg.write_text(f"""
[data]
p = 60
n_clients = 10
n_per_client = 20
test_samples = 300
rho_true = 0.1
[algorithm]
rho = 0.1
batch_size = 10
[run]
rounds = 3
plots = false
[cluster]
backend = "local"
[compare]
algorithms = ["fedavg", "fed-ht"]
seeds = [0, 1]
out_dir = {json.dumps(str(tmp_path / 'out'))}
[compare.per_algorithm.fed-ht.algorithm]
eta_local = 1e5
""")
    r = raysim("compare", str(cfg))
    assert r.returncode == 0, r.stderr
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert set(runs[runs["algorithm"] == "fed-ht"]["status"]) == {"diverged"}
    assert set(runs[runs["algorithm"] == "fedavg"]["status"]) == {"ok"}
    md = (tmp_path / "out" / "table.md").read_text()
    row = [l for l in md.splitlines() if l.startswith("| fed-ht |")][0]
    assert "2 diverged" in row and "| diverged |" in row            # the status, not a number
    assert "did not end ok" in r.stderr
    # every run diverged: exit 6; rerunning replaces the comparison's own run folders
    r = raysim("compare", str(cfg), "--set", "algorithm.eta_local=1e5")
    assert r.returncode == outcome.EXIT_ALL_FAILED, r.stderr


def test_stress_table_and_heatmap_show_diverged_cells(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("""
[data]
p = 60
n_clients = 10
n_per_client = 20
test_samples = 300
rho_true = 0.1
[algorithm]
name = "fedavg"
rho = 0.1
batch_size = 10
[run]
rounds = 3
plots = false
[cluster]
backend = "local"
[stress]
algorithms = { good = { "algorithm.eta_local" = 0.05 }, bad = { "algorithm.eta_local" = 1e5 } }
seeds = [0]
[stress.axes]
"data.h_coef" = [0.0, 0.5]
""")
    out = tmp_path / "out"
    r = raysim("stress", str(grid), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr                      # some cells ok: the grid itself succeeded
    assert r.stderr.count("diverged: bad") == 2
    df = pd.read_csv(out / "results.csv")
    assert set(df[df["algorithm"] == "bad"]["outcome"]) == {"diverged"}
    assert set(df[df["algorithm"] == "good"]["outcome"]) == {"ok"}
    assert (out / "heatmap_r2_bad.png").is_file()
    from raysim.experiments.plots import _notes

    notes = _notes(df[df["algorithm"] == "bad"], ["data.h_coef"])
    assert notes == {(0.0, ""): "diverged", (0.5, ""): "diverged"}
    # every cell diverged: exit 6
    grid.write_text(grid.read_text().replace('good = { "algorithm.eta_local" = 0.05 }, ', ""))
    r = raysim("stress", str(grid), "--out", str(tmp_path / "out2"), "--no-progress")
    assert r.returncode == outcome.EXIT_ALL_FAILED, r.stderr
    assert "no cell ended ok" in r.stderr
