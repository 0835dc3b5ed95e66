"""The one collect step: finished run directories to the tidy tables of an experiment.

* :func:`finals`: one row per cell: its tags (axis values, algorithm, seed), ``status`` (the
  cell's state, :mod:`raysim.experiments.plan`), ``error``, ``run_dir``, ``outcome`` (the run's
  ``raysim.outcome`` status: ok, diverged, empty_model, no_participation; ``failed`` for a run
  that raised, ``unfinished`` for a cell not run), ``wall_s``, the final metrics of
  ``summary.json`` and, with ``federation``, the federation's heterogeneity statistics as
  ``fed_*`` columns (``federation.json``);
* :func:`curves`: the ``metrics.csv`` rows (one per evaluated round) of every finished cell,
  with its tags in front.

``raysim compare`` and ``raysim stress`` both build their tables from these
(docs/architecture.md, "Experiments").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from raysim.experiments.plan import DONE, FAILED, RAN, Cell

#: the statistics of ``federation.json`` that enter :func:`finals` as ``fed_<key>`` (docs/data.md section 4)
FED_KEYS = ("label_tv_mean", "label_js_mean", "classes_per_client_mean", "label_entropy_ratio",
            "size_cv", "size_gini", "size_min", "size_max")

FINISHED = (DONE, RAN)


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's ``summary.json`` (None when it has none: the run did not finish)."""
    p = Path(run_dir) / "summary.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def final_row(cell: Cell, federation: bool = False) -> dict[str, Any]:
    """The row of one cell in :func:`finals`."""
    from raysim.outcome import status_of

    row: dict[str, Any] = {**cell.tags, "status": cell.status, "error": cell.error, "run_dir": str(cell.run_dir)}
    summary = read_summary(cell.run_dir) if cell.status in FINISHED else None
    if cell.status == FAILED or (cell.status == RAN and summary is None):
        row["outcome"] = FAILED
        return row
    if summary is None:
        row["outcome"] = "unfinished"
        return row
    row["outcome"] = status_of(summary)
    row["wall_s"] = summary.get("wall_s")
    for k, v in (summary.get("final") or {}).items():
        if k not in row and k != "status" and not isinstance(v, (list, dict)):
            row[k] = v
    fed_path = cell.run_dir / "federation.json"
    if federation and fed_path.is_file():
        fed = json.loads(fed_path.read_text())
        row.update({f"fed_{k}": fed[k] for k in FED_KEYS if k in fed})
    return row


def finals(cells: list[Cell], federation: bool = False) -> pd.DataFrame:
    """One row per cell (see the module docstring), in the order of ``cells``."""
    return pd.DataFrame([final_row(c, federation) for c in cells])


def curves(cells: list[Cell]) -> pd.DataFrame:
    """The per-round metrics (``metrics.csv``) of every finished cell, its tags as the first
    columns; an empty frame when no cell finished."""
    frames = []
    for c in cells:
        path = c.run_dir / "metrics.csv"
        if c.status not in FINISHED or read_summary(c.run_dir) is None or not path.is_file():
            continue
        df = pd.read_csv(path)
        for i, (k, v) in enumerate(c.tags.items()):
            df.insert(i, k, v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
