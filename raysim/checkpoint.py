"""Crash-safe checkpoints of a run (docs/architecture.md: the server checkpoints).

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

    b"RAYSIMCKPT2\\n" | body length (8 bytes, little endian) | sha256(body) (32 bytes) | body

The body is a numpy ``.npz`` archive read with ``allow_pickle=False``: every tensor and array
of the checkpoint is one plain array in it, and the rest of the structure (dicts, lists,
numbers, strings, None) is a JSON document stored as a uint8 array under ``__json__``, in which
each array is a reference ``{"__array__": key, "torch": bool}``. Loading a checkpoint can
therefore never execute code, even when an attacker recomputed the checksum: it only parses
JSON and raw numeric arrays (object arrays are refused by ``allow_pickle=False``).

Writes are atomic: the bytes go to a temporary file in the same folder, are fsynced, and the
file is renamed over its final name (``os.replace``), then the folder is fsynced. The newest
``keep`` checkpoints are kept, so if the newest one is unreadable (truncated, corrupted: the
length or checksum does not match, or a body that cannot be decoded) :func:`load_latest`
falls back to the previous good one. Temporary files left by a killed writer
(``.round-*.ckpt.tmp-PID``) are removed by the next :func:`save`; a full disk is reported
as a :class:`CheckpointError` naming the folder and the space needed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"RAYSIMCKPT2\n"
_OLD_MAGIC = b"RAYSIMCKPT1\n"
_HEADER = len(MAGIC) + 8 + 32
_NAME = re.compile(r"^round-(\d+)\.ckpt$")
_TMP = re.compile(r"^\.round-\d+\.ckpt\.tmp-(\d+)$")
SUBDIR = "checkpoints"
_JSON_KEY = "__json__"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, corrupted, wrong format), or that
    cannot be written (disk full)."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUBDIR


# -- body: JSON structure + plain arrays ------------------------------------------------------

def _pack(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``obj`` as JSON-able data; tensors and arrays are moved to ``arrays``."""
    import torch

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(obj, torch.Tensor):
        key = f"a{len(arrays)}"
        arrays[key] = obj.detach().cpu().numpy()
        return {"__array__": key, "torch": True}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be checkpointed")
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key, "torch": False}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"checkpoint dict keys must be strings, got {list(obj)[:5]}")
        return {"__dict__": {k: _pack(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, arrays) for v in obj]
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def _unpack(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__dict__" in obj:
            return {k: _unpack(v, arrays) for k, v in obj["__dict__"].items()}
        if "__tuple__" in obj:
            return tuple(_unpack(v, arrays) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__array__" in obj:
            a = arrays[obj["__array__"]]
            if obj.get("torch"):
                import torch

                return torch.from_numpy(np.array(a))
            return a
        raise ValueError(f"unknown entry {sorted(obj)[:3]}")
    return obj


def encode_body(obj: dict[str, Any]) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    doc = _pack(obj, arrays)
    arrays[_JSON_KEY] = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_body(body: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """Parse a body; never unpickles (``allow_pickle=False``). Raises :class:`CheckpointError`."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        doc = json.loads(bytes(arrays.pop(_JSON_KEY)).decode("utf-8"))
        out = _unpack(doc, arrays)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, TypeError) as exc:
        raise CheckpointError(f"{source}: body cannot be decoded ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"{source}: body is not a checkpoint dict")
    return out


def encode(obj: dict[str, Any]) -> bytes:
    """Serialise a checkpoint dict with its length and checksum header."""
    body = encode_body(obj)
    return MAGIC + struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def decode(data: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """Inverse of :func:`encode`; raises :class:`CheckpointError` on any mismatch."""
    if data.startswith(_OLD_MAGIC):
        raise CheckpointError(f"{source}: a checkpoint of an older raysim (pickle format), which is no longer "
                              "read because unpickling a file can run arbitrary code; rerun the run from round 1")
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise CheckpointError(f"{source}: not a raysim checkpoint or truncated header ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[len(MAGIC): len(MAGIC) + 8])
    digest = data[len(MAGIC) + 8: _HEADER]
    body = data[_HEADER:]
    if len(body) != n:
        raise CheckpointError(f"{source}: truncated ({len(body)} of {n} body bytes)")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{source}: checksum mismatch (file corrupted)")
    return decode_body(body, source)


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
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    A full disk (or quota) raises :class:`CheckpointError` with the folder and the size, and
    leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise CheckpointError(
                f"cannot write {path}: {os.strerror(exc.errno)} ({len(data):,} bytes needed: the disk is full or a "
                f"file-size limit or quota is reached); free space on that disk or give the run a directory on "
                f"another one (--out), then continue with --resume"
            ) from None
        raise
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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_orphans(run_dir: str | Path) -> list[Path]:
    """Remove temporary checkpoint files left by writers that no longer run; returns them."""
    d = checkpoint_dir(run_dir)
    removed = []
    if not d.is_dir():
        return removed
    for f in d.iterdir():
        m = _TMP.match(f.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                f.unlink()
                removed.append(f)
            except OSError:  # pragma: no cover
                pass
    return removed


def save(run_dir: str | Path, rnd: int, obj: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write the checkpoint of round ``rnd`` and prune all but the newest ``keep``."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    clean_orphans(run_dir)
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
    truncated copy, bit rot, a body that does not decode) are reported in the log and skipped
    in favour of older ones.
    """
    for _, path in list_checkpoints(run_dir):
        try:
            return load(path), path
        except (CheckpointError, OSError) as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
    return None
