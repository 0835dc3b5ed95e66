"""Objectives, feasibility and "best" for studies over raysim runs.

A trial is scored on the final evaluation of the deployed model (the ``final`` row of its
summary), on the validation split (``val_*`` metrics; the test set is never used for
selection). Feasibility is the density target of docs/algorithms.md section 3: the deployed model
must have nnz <= floor(target p) and density <= target. Infeasible trials are kept in the
study (Optuna's samplers learn from them through ``constraints_func``) but are never
reported as best: single-objective best and the Pareto front are taken over feasible trials.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from raysim.tuning.spec import StudySpec

#: user attribute holding the constraint values (<= 0 is feasible)
CONSTRAINTS_ATTR = "constraints"


def objective_values(spec: StudySpec, final: dict[str, Any]) -> list[float]:
    """The objective value(s) from a run's final metrics; raises ValueError with the fix."""
    out = []
    for metric in spec.objective.metrics:
        if metric not in final:
            have = ", ".join(sorted(k for k in final if isinstance(final[k], (int, float))))
            raise ValueError(f"objective.metric '{metric}' is not among the run's final metrics ({have})")
        v = final[metric]
        out.append(float("nan") if v is None else float(v))
    return out


def constraint_values(final: dict[str, Any], p: int, target: float) -> tuple[list[float], dict[str, Any]]:
    """[nnz - floor(target p), density - target] (both <= 0 when feasible) and the facts."""
    m_target = int(math.floor(target * p + 1e-9))
    nnz = int(final["nnz"])
    density = nnz / p
    cons = [float(nnz - m_target), float(density - target)]
    return cons, {"nnz": nnz, "m_target": m_target, "density": density, "target_density": target,
                  "feasible": all(c <= 0 for c in cons)}


#: names of the two constraint values (``Trial.set_constraint`` keys on Optuna >= 5)
CONSTRAINT_NAMES = ("nnz_over_m", "density_over_target")
#: the trial system attribute optuna-dashboard reads constraints from (a list; optuna-dashboard
#: 0.21 ``_serializer.py``: ``trial_system_attrs.get("constraints", [])``)
DASHBOARD_CONSTRAINTS_KEY = "constraints"


def record_constraints(trial: optuna.Trial, cons: Sequence[float]) -> None:
    """Store a finished trial's constraint values where every reader finds them.

    * the ``constraints`` user attribute (raysim's own feasibility, ``constraints_func``);
    * Optuna >= 5: ``Trial.set_constraint`` per named constraint (system attributes
      ``constraints:<name>``, read by the samplers and optuna.visualization);
    * the ``constraints`` system attribute as a list, the old Optuna format that
      optuna-dashboard reads (it does not read the ``constraints:<name>`` keys). Optuna 5 reads
      both formats, so its ``FrozenTrial.constraints`` lists each value twice (under ``0``, ``1``
      and under the names): feasibility is unchanged and the samplers' total violation is
      doubled for every trial alike, which keeps their ordering.
    """
    cons = [float(c) for c in cons]
    trial.set_user_attr(CONSTRAINTS_ATTR, cons)
    if hasattr(trial, "set_constraint"):
        for name, v in zip(CONSTRAINT_NAMES, cons):
            trial.set_constraint(name, v)
    storage = getattr(trial, "storage", None)
    trial_id = getattr(trial, "_trial_id", None)
    if storage is not None and trial_id is not None:   # a real Trial (not a FixedTrial)
        storage.set_trial_system_attr(trial_id, DASHBOARD_CONSTRAINTS_KEY, cons)


def constraints_func(trial: FrozenTrial) -> Sequence[float]:
    """Optuna ``constraints_func``: read from the trial's user attributes. A trial with no
    recorded constraints (pruned or failed before the end) counts as feasible for the sampler
    only; it is never a best-trial candidate."""
    return trial.user_attrs.get(CONSTRAINTS_ATTR, (0.0, 0.0))


def is_feasible(trial: FrozenTrial) -> bool:
    cons = trial.user_attrs.get(CONSTRAINTS_ATTR)
    return cons is not None and all(c <= 0 for c in cons)


def _ok(trial: FrozenTrial) -> bool:
    return (trial.state == TrialState.COMPLETE and trial.values is not None
            and all(math.isfinite(v) for v in trial.values) and is_feasible(trial))


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials, best first (single objective)."""
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    trials = [t for t in study.get_trials(deepcopy=False) if _ok(t)]
    return sorted(trials, key=lambda t: (sign * t.values[0], t.number))


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    better_or_equal = all(s * x <= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x < s * y for x, y, s in zip(a, b, signs))


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front of the complete, feasible trials (sorted by the first objective)."""
    signs = [-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    trials = [t for t in study.get_trials(deepcopy=False) if _ok(t)]
    front = [t for t in trials if not any(_dominates(o.values, t.values, signs) for o in trials if o is not t)]
    return sorted(front, key=lambda t: (signs[0] * t.values[0], t.number))


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Single objective: feasible trials ranked best first; several objectives: the Pareto front."""
    return pareto_front(study) if len(study.directions) > 1 else ranked_trials(study)
