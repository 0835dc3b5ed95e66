"""From a study file and an Optuna trial to the config of one raysim run.

The space speaks the method's language (docs/algorithms.md sections 2-4): a learning-rate ratio
is sampled as a ratio and turned into ``algorithm.eta_phi = ratio * algorithm.eta_theta``,
``eta_lambda`` (dimensionless) on a log scale, tau_0 on a log scale with
a categorical switch for exactly 0. Any other dotted config key is a plain float, int or
categorical dimension, so knobs added later (``algorithm.local_epochs``) need no code here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from raysim.config import Config, ConfigError, _deep_merge, read_toml, set_dotted, validate
from raysim.tuning.spec import TRIAL_SETTINGS, ParamSpec, StudySpec, midpoint


def get_dotted(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            raise ConfigError(f"'{key}' is not a config key (see `raysim config --doc`)")
        node = getattr(node, part)
    return node


def _scenario_path(spec: StudySpec) -> Path | None:
    c = spec.scenario.config
    if c is None:
        return None
    p = Path(c)
    if p.is_absolute() or p.exists() or spec.source is None:
        return p
    alt = Path(spec.source).parent / p
    return alt if alt.exists() else p


def base_dict(spec: StudySpec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scenario every trial starts from: config file, inline base, algorithm, fixed keys."""
    path = _scenario_path(spec)
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data = _deep_merge(data, spec.scenario.base)
    if spec.scenario.algorithm:
        set_dotted(data, "algorithm.name", spec.scenario.algorithm)
    for key, value in {**spec.fixed, **(overrides or {})}.items():
        set_dotted(data, key, copy.deepcopy(value))
    for key, value in TRIAL_SETTINGS.items():
        set_dotted(data, key, value)
    set_dotted(data, "data.val_samples", spec.objective.val_samples)
    return data


def suggest(trial: Any, spec: StudySpec) -> dict[str, Any]:
    """Sample every dimension with ``trial.suggest_*``; returns {param name: value} (a switched-off
    zero parameter is returned as 0.0)."""
    out: dict[str, Any] = {}
    for name, p in spec.space.items():
        if p.zero and not trial.suggest_categorical(f"{name}_on", [True, False]):
            out[name] = 0.0
            continue
        out[name] = _suggest_one(trial, name, p)
    return out


def _suggest_one(trial: Any, name: str, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(name, p.choices)
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=bool(p.log))


def build_config(spec: StudySpec, values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """The validated config of a trial with these parameter values.

    Plain dimensions are set first; ratio dimensions (``times`` / ``per``) are then resolved
    against the config they land in, so ``eta_phi_ratio`` follows a sampled or fixed eta_theta.
    """
    data = base_dict(spec, overrides)
    derived = []
    for name, p in spec.space.items():
        if name not in values:
            continue
        for k, v in p.also.items():
            set_dotted(data, k, v)
        if (p.times or p.per) and values[name] != 0:
            derived.append((name, p))
            continue
        set_dotted(data, p.key, values[name])  # type: ignore[arg-type]
    if derived:
        cfg0 = validate(data, source="trial config")
        for name, p in derived:
            ref = get_dotted(cfg0, p.times or p.per)  # type: ignore[arg-type]
            if ref is None or ref == 0:
                raise ConfigError(f"space.{name}: '{p.times or p.per}' has no value to scale by; fix it in [fixed]")
            set_dotted(data, p.key, values[name] * ref if p.times else values[name] / ref)  # type: ignore[arg-type]
    return validate(data, source="trial config")


def check_spec(spec: StudySpec, overrides: dict[str, Any] | None = None) -> tuple[Config, list[str]]:
    """Validate a study before any trial runs: the scenario, the fixed keys and every dimension's
    config key (at a representative value; raises :class:`ConfigError`). Categorical choices that
    give an invalid config are returned as warnings: those trials will fail and be recorded."""
    values = {name: midpoint(p) for name, p in spec.space.items()}
    try:
        cfg = build_config(spec, values, overrides)
    except ConfigError as exc:
        raise ConfigError(f"study {spec.study.name}: the trials' configs would be invalid "
                          f"(scenario, [fixed] or [space] keys):\n{exc}") from None
    warnings = []
    for name, p in spec.space.items():
        for c in (p.choices or []) if p.type == "categorical" else []:
            try:
                build_config(spec, {**values, name: c}, overrides)
            except ConfigError as exc:
                first = str(exc).splitlines()[-1].strip(" -")
                warnings.append(f"space.{name}: choice {c!r} gives an invalid config ({first}); "
                                "trials that draw it will fail")
    return cfg, warnings
