"""Crash-safe checkpoints of a run (ARCHITECTURE.md, "The Ray design": the server checkpoints).

A checkpoint holds everything needed to continue a run exactly where it stopped:

* the server core's ``state_dict`` (global model, gate parameters, dual variable, optimiser
  state, communication totals, previous gate probabilities for the soft IoU);
* the driver's position (next step, last finished round) and the additive counters not yet
  written to a metrics row;
* the metrics rows written so far and the wall time used so far;
* a fingerprint of the resolved configuration, so a checkpoint is never continued under a
  different configuration.

Client actors hold no state between steps (a step's training is a pure function of the
payload, the step and the client ids; every random draw is keyed by (seed, purpose, client,
step)), and participation is a pure function of (seed, step), so nothing else is needed.

File format (``<run_dir>/checkpoints/round-000012.ckpt``)::

    b"RAYSIMCKPT1\\n" | body length (8 bytes, little endian) | sha256(body) (32 bytes) | body

where the body is ``torch.save`` of the checkpoint dict. Writes are atomic: the bytes go to a
temporary file in the same folder, are fsynced, and the file is renamed over its final name
(``os.replace``), then the folder is fsynced. The newest ``keep`` checkpoints are kept, so if
the newest one is unreadable (truncated, corrupted: the length or checksum does not match)
:func:`load_latest` falls back to the previous good one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch

MAGIC = b"RAYSIMCKPT1\n"
_HEADER = len(MAGIC) + 8 + 32
_NAME = re.compile(r"^round-(\d+)\.ckpt$")
SUBDIR = "checkpoints"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, corrupted, wrong format)."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUBDIR


def encode(obj: dict[str, Any]) -> bytes:
    """Serialise a checkpoint dict with its length and checksum header."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    body = buf.getvalue()
    return MAGIC + struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def decode(data: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """Inverse of :func:`encode`; raises :class:`CheckpointError` on any mismatch."""
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise CheckpointError(f"{source}: not a raysim checkpoint or truncated header ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[len(MAGIC): len(MAGIC) + 8])
    digest = data[len(MAGIC) + 8: _HEADER]
    body = data[_HEADER:]
    if len(body) != n:
        raise CheckpointError(f"{source}: truncated ({len(body)} of {n} body bytes)")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{source}: checksum mismatch (file corrupted)")
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(round, path) of every checkpoint file of a run, newest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for f in d.iterdir():
        m = _NAME.match(f.name)
        if m:
            out.append((int(m.group(1)), f))
    return sorted(out, reverse=True)


def save(run_dir: str | Path, rnd: int, obj: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write the checkpoint of round ``rnd`` and prune all but the newest ``keep``."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"round-{rnd:06d}.ckpt"
    atomic_write_bytes(path, encode({**obj, "round": rnd}))
    for _, old in list_checkpoints(run_dir)[max(1, keep):]:
        try:
            old.unlink()
        except FileNotFoundError:  # pragma: no cover - concurrent cleanup
            pass
    return path


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return decode(p.read_bytes(), source=str(p))


def load_latest(run_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint of a run and its path, or None if there is none.

    Unreadable files (a kill during a write on a filesystem without atomic rename, a
    truncated copy, bit rot) are reported in the log and skipped in favour of older ones.
    """
    for _, path in list_checkpoints(run_dir):
        try:
            return load(path), path
        except (CheckpointError, OSError, EOFError, RuntimeError) as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
    return None
