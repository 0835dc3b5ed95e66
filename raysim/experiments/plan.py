"""A plan of experiment cells: each cell one whole raysim run in its own run directory.

``raysim compare`` builds one cell per (algorithm, seed), ``raysim stress`` one per (axis
values, algorithm, seed); both run the cells with :func:`run_cells` (on
:func:`raysim.many.run_many`) and read them back with :mod:`raysim.experiments.collect`
(docs/architecture.md, "Experiments").

A cell is *done* when its run directory holds a finished run (``summary.json``) whose
``config.toml`` has the cell's fingerprint (:func:`raysim.config.fingerprint`: the
results-determining part of a config, the same one a checkpoint is resumed under), so a
change of run directory, name, progress, plots or Ray layout keeps a finished cell, and any
change that decides the results does not.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from raysim.config import Config, ConfigError, fingerprint, read_toml

#: the states of a cell: not run yet, finished before this invocation, run now, raised, not there
PENDING, DONE, RAN, FAILED, MISSING = "pending", "done", "ran", "failed", "missing"


@dataclass
class Cell:
    """One run of an experiment: ``label`` (the algorithm or variant), ``seed``, the axis values
    it sits at (``axes``, empty for a comparison), its validated ``cfg`` and ``run_dir``."""

    label: str
    seed: int
    cfg: Config
    run_dir: Path
    axes: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING       # pending | done | ran | failed | missing
    error: str = ""

    @property
    def algorithm(self) -> str:
        """The cell's label (``stress.algorithms`` may label variants of one algorithm)."""
        return self.label

    @property
    def name(self) -> str:
        return self.cfg.run.name

    @property
    def tags(self) -> dict[str, Any]:
        """The columns that identify the cell in the tables: axis values, algorithm, seed."""
        return {**self.axes, "algorithm": self.label, "seed": self.seed}


@dataclass
class Plan:
    """Named cells written under ``out_dir``; ``max_parallel``: runs at once (None: what fits)."""

    name: str
    out_dir: Path
    cells: list[Cell] = field(default_factory=list)
    max_parallel: int | None = None


def is_done(cfg: Config, run_dir: str | Path | None = None) -> bool:
    """True when ``run_dir`` (default ``cfg.run.run_dir``) holds a finished run (a readable
    ``summary.json``) of a configuration with the fingerprint of ``cfg``."""
    d = Path(run_dir if run_dir is not None else cfg.run.run_dir or "")
    summ, conf = d / "summary.json", d / "config.toml"
    if not (summ.is_file() and conf.is_file()):
        return False
    try:
        old = read_toml(conf)
        json.loads(summ.read_text())
    except (ConfigError, ValueError):
        return False
    return fingerprint(old) == fingerprint(cfg)


def cell_done(cell: Cell) -> bool:
    """:func:`is_done` for a cell."""
    return is_done(cell.cfg, cell.run_dir)


def mark(cells: list[Cell]) -> list[Cell]:
    """Set every cell's status to done or missing (for a report without running); returns them."""
    for c in cells:
        c.status = DONE if cell_done(c) else MISSING
    return cells


def run_cells(cells: list[Cell], max_parallel: int | None = None, progress: bool = True, warm: bool = True,
              resume: bool = True, description: str = "runs",
              on_result: Callable[[Cell, Any], None] | None = None) -> list[Cell]:
    """Run the cells (:func:`raysim.many.run_many`: warm pools, cold placement groups with
    ``warm=False``, or in process for ``cluster.backend = "local"``); returns those that ran.

    ``resume``: a done cell (:func:`cell_done`) is kept and marked ``done``; without it every
    cell runs. A cell that runs starts afresh: its run directory, if any (a partial or different
    run), is removed first. Each cell ends ``ran`` or ``failed`` (with the first line of the
    error); ``on_result(cell, result)`` is called as each finishes."""
    from raysim.many import run_many

    todo = []
    for c in cells:
        if resume and cell_done(c):
            c.status = DONE
            continue
        if c.run_dir.is_dir():
            shutil.rmtree(c.run_dir)
        todo.append(c)

    def done(i: int, res: Any) -> None:
        c = todo[i]
        if isinstance(res, Exception):
            c.status, c.error = FAILED, (str(res).splitlines()[0][:500] if str(res) else type(res).__name__)
        else:
            c.status = RAN
        if on_result is not None:
            on_result(c, res)

    if todo:
        run_many([c.cfg for c in todo], max_parallel=max_parallel, on_result=done, progress=progress,
                 description=description, warm=warm)
    return todo


def fmt_value(v: Any) -> str:
    """An axis value as it appears in folder names, listings and plot labels (floats ``%g``)."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def slug(s: str) -> str:
    """``s`` made safe for a file or folder name."""
    import re

    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", s)
