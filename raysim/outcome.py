"""Run outcomes and the process exit codes of every raysim command (one place for all).

A run ends with a ``status`` written to ``summary.json`` and to the ``status`` column of
``metrics.csv``; ``compare``, ``stress`` and ``tune`` read it from there and show it in their
tables. A run that means nothing never exits 0:

=====  ===================  ==============================================================
code   name                 meaning
=====  ===================  ==============================================================
0      ok                   the command did what it was asked
1      internal error       an unexpected exception (a bug: please report the traceback)
2      usage / input error  bad config, missing or unreadable file, not enough memory, ...
3      diverged             loss or weights became NaN/inf or exceeded run.divergence_limit
4      empty_model          the deployed model has no non-zero weight (m = floor(rho p) = 0)
5      no_participation     no client reported in the whole run
6      all failed           tune / compare / stress: no trial or run finished ok
7      busy                 the run directory or study storage is in use by another process
130    interrupted          Ctrl-C / SIGINT
=====  ===================  ==============================================================
"""

from __future__ import annotations

import math
from typing import Any

OK = "ok"
DIVERGED = "diverged"
EMPTY_MODEL = "empty_model"
NO_PARTICIPATION = "no_participation"
#: a run that did not end (killed, crashed): no summary.json
UNFINISHED = "unfinished"
FAILED = "failed"

STATUSES = (OK, DIVERGED, EMPTY_MODEL, NO_PARTICIPATION)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_EMPTY_MODEL = 4
EXIT_NO_PARTICIPATION = 5
EXIT_ALL_FAILED = 6
EXIT_BUSY = 7
EXIT_INTERRUPTED = 130

EXIT_CODES = {OK: EXIT_OK, DIVERGED: EXIT_DIVERGED, EMPTY_MODEL: EXIT_EMPTY_MODEL,
              NO_PARTICIPATION: EXIT_NO_PARTICIPATION}

#: one line per status, shown after a run that did not end ok
EXPLAIN = {
    DIVERGED: "the run diverged (loss or weights NaN/inf or above run.divergence_limit); lower the learning "
              "rates (algorithm.eta_theta / eta_phi / eta_local) or raise run.divergence_limit",
    EMPTY_MODEL: "the deployed model has no non-zero weight; raise algorithm.rho (m = floor(rho * p) must be >= 1)",
    NO_PARTICIPATION: "no client reported in the whole run; check [participation] (rate, availability, dropout, "
                      "deadline)",
}


def exit_code(status: str | None) -> int:
    """The exit code of a run that ended with ``status``."""
    return EXIT_CODES.get(status or OK, EXIT_INTERNAL)


def status_of(summary: dict | None) -> str:
    """The status of a run from its summary (older runs without the field are ``ok``)."""
    if summary is None:
        return UNFINISHED
    return str(summary.get("status") or OK)


class RunRefused(Exception):
    """A run refused before it starts because its outcome is known to be meaningless."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class Busy(RuntimeError):
    """A run directory or study storage locked by another live process."""


class StopRun(Exception):
    """Raised by a run's ``on_eval`` hook to stop the run early (e.g. a trial the Optuna pruner
    stops); the cold tuning path raises it from ``raysim.cluster.parallel.ReporterHook``."""


def divergence(row: dict[str, Any], limit: float | None) -> str | None:
    """Why a round's statistics show a diverged run (None when they do not).

    NaN/inf weights (``max_abs_weight``, reported by the server) or training loss always count;
    ``limit`` (``run.divergence_limit``) bounds both in size. A round in which no client
    reported has no training loss and is not evidence of anything."""
    w = row.get("max_abs_weight")
    if w is not None and not math.isfinite(float(w)):
        return "weights became NaN/inf"
    loss = row.get("train_loss")
    has_loss = loss is not None and float(row.get("n_reported", 0) or 0) > 0
    if has_loss and not math.isfinite(float(loss)):
        return f"training loss became {float(loss)}"
    if limit is not None:
        if w is not None and float(w) > limit:
            return f"largest |weight| {float(w):.3g} > run.divergence_limit = {limit:g}"
        if has_loss and float(loss) > limit:
            return f"training loss {float(loss):.3g} > run.divergence_limit = {limit:g}"
    return None
