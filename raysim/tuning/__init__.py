"""The Optuna tuning layer: studies whose trials are raysim runs on Ray.

* :mod:`raysim.tuning.spec`        study files (TOML) validated with pydantic
* :mod:`raysim.tuning.space`       search spaces in the method's language -> trial configs
* :mod:`raysim.tuning.objectives`  objective values, density feasibility, best / Pareto front
* :mod:`raysim.tuning.study`       the runner: parallel trials in placement groups, pruning, resume
* :mod:`raysim.tuning.report`      tables, importances, plots, the best config as TOML
* :mod:`raysim.tuning.cli`         ``raysim tune`` and ``raysim tune-report``
"""

from raysim.tuning.spec import StudySpec, load_spec, spec_from_dict

__all__ = ["StudySpec", "load_spec", "spec_from_dict", "run_study"]


def run_study(*args, **kwargs):
    """See :func:`raysim.tuning.study.run_study` (imported lazily: it pulls in Ray)."""
    from raysim.tuning.study import run_study as _run

    return _run(*args, **kwargs)
