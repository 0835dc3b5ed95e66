"""Study files: a TOML description of one Optuna study over raysim runs, validated with pydantic.

A study file names the scenario (a config TOML and/or an inline base config), the algorithm,
fixed settings (dotted config keys), the search space and the objective::

    [study]
    name = "lr-ratios"
    n_trials = 24
    sampler = "tpe"            # tpe | random | nsga2
    pruner = "median"          # median | hyperband | none

    [scenario]
    config = "datasets/synthetic-lr.toml"   # optional; relative to the study file or the cwd
    algorithm = "flops"

    [scenario.base.data]                     # optional inline config, merged over `config`
    n_clients = 2000

    [fixed]
    "run.rounds" = 15

    [space]
    eta_theta = { key = "algorithm.eta_theta", low = 0.005, high = 0.2, log = true }
    eta_ratio = { kind = "eta_phi_ratio", low = 0.3, high = 30 }
    tau0 = { kind = "tau0", low = 1e-4, high = 0.1 }

    [objective]
    metric = "val_r2"
    direction = "maximize"

Problems are reported like :mod:`raysim.config` does: the dotted field, the value and the fix.
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator, PrivateAttr

from raysim.config import ConfigError, read_toml

#: Search-space kinds that speak the method's language (docs/algorithms.md sections 2-4): each is a
#: preset of the generic fields (config key, log scale, what the sampled value multiplies or
#: divides, the 0 switch, extra fixed settings).
PRESETS: dict[str, dict[str, Any]] = {
    # eta_phi / eta_theta, log-scaled; algorithm.eta_phi = ratio * algorithm.eta_theta
    "eta_phi_ratio": {"key": "algorithm.eta_phi", "log": True, "times": "algorithm.eta_theta"},
    # the dual step size, log-scaled; it is dimensionless (the same value behaves alike for any p)
    "eta_lambda": {"key": "algorithm.eta_lambda", "log": True},
    # prune_start as a fraction of all training steps
    "prune_start": {"key": "algorithm.prune_start", "log": False,
                    "also": {"algorithm.prune_start_unit": "fraction"}},
    # entropy strength tau_0, log-scaled, with 0 (plain FLoPS) allowed through a switch
    "tau0": {"key": "algorithm.tau0", "log": True, "zero": True},
    # initial gate probability
    "rho_init": {"key": "algorithm.rho_init", "log": False},
    # local epochs of multi-epoch algorithms (any algorithm that has the knob)
    "local_epochs": {"key": "algorithm.local_epochs", "type": "int"},
}

ParamKind = Literal["float", "int", "categorical", "eta_phi_ratio", "eta_lambda", "prune_start", "tau0",
                    "rho_init", "local_epochs"]

#: Settings every trial gets: trials are quiet, write no plots and are evaluated on a
#: validation split (the objective never looks at the test set).
TRIAL_SETTINGS = {"run.progress": False, "run.plots": False}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Model):
    """One search-space dimension (``[space.<name>]``; the name is the Optuna parameter)."""

    kind: Optional[ParamKind] = Field(
        None, description="float | int | categorical, or a method preset: eta_phi_ratio, eta_lambda, "
                          "prune_start, tau0, rho_init, local_epochs (default: categorical with choices, else float)")
    key: Optional[str] = Field(None, description="Dotted config key the value sets (default: the preset's key, "
                                                 "or the parameter name when it is a dotted key)")
    low: Optional[float] = Field(None, description="Lower bound (float/int)")
    high: Optional[float] = Field(None, description="Upper bound (float/int)")
    log: Optional[bool] = Field(None, description="Sample on a log scale")
    step: Optional[float] = Field(None, gt=0, description="Discretisation step (not with log)")
    choices: Optional[list[Any]] = Field(None, description="Values of a categorical parameter")
    zero: Optional[bool] = Field(None, description="Also allow exactly 0, through a categorical switch '<name>_on'")
    times: Optional[str] = Field(None, description="Config value = sampled value * this config key's value")
    per: Optional[str] = Field(None, description="Config value = sampled value / this config key's value")
    also: dict[str, Any] = Field(default_factory=dict, description="Extra fixed settings this parameter implies")
    type: Optional[Literal["float", "int", "categorical"]] = Field(None, description="Value type (set by kind)")

    @field_validator("choices")
    @classmethod
    def _choices(cls, v):
        if v is not None and len(v) == 0:
            raise ValueError("choices is empty; give at least one value")
        return v

    def resolved(self, name: str) -> "ParamSpec":
        """Fill the preset's defaults and infer type and key; raises ValueError with the fix."""
        data = self.model_dump(exclude_none=True)
        kind = data.pop("kind", None)
        if kind is None:
            kind = "categorical" if self.choices is not None else "float"
        base: dict[str, Any] = {}
        if kind in PRESETS:
            base = copy.deepcopy(PRESETS[kind])
            base.setdefault("type", "float")
        else:
            base["type"] = kind
        also = {**base.pop("also", {}), **data.pop("also", {})}
        out = ParamSpec(**{**base, **data, "also": also, "kind": kind})
        if out.key is None:
            if "." not in name:
                raise ValueError(f"no config key: set key = \"section.name\" (e.g. key = \"algorithm.{name}\"), "
                                 f"use a dotted parameter name, or a preset kind ({', '.join(PRESETS)})")
            out.key = name
        if out.type == "categorical":
            if not out.choices:
                raise ValueError("a categorical parameter needs choices = [...]")
        else:
            if out.choices is not None:
                raise ValueError(f"choices are only for categorical parameters; remove them or set kind = 'categorical'")
            if out.low is None or out.high is None:
                raise ValueError(f"a {out.type} parameter needs low and high")
            if out.low > out.high:
                raise ValueError(f"low = {out.low:g} is above high = {out.high:g}; swap them")
            if out.log and out.low <= 0:
                raise ValueError(f"log scale needs low > 0 (got {out.low:g}); use zero = true to also allow 0")
            if out.log and out.step is not None:
                raise ValueError("step cannot be combined with log = true")
            if out.type == "int" and (out.low != int(out.low) or out.high != int(out.high)):
                raise ValueError("an int parameter needs integer low and high")
        if kind == "prune_start" and not (0 <= out.low <= out.high <= 1):  # type: ignore[operator]
            raise ValueError("prune_start is a fraction of training: keep 0 <= low <= high <= 1")
        if out.times and out.per:
            raise ValueError("set either times or per, not both")
        return out


class StudySection(_Model):
    """How the study runs."""

    name: str = Field(..., min_length=1, description="Study name (in the storage and the default output folder)")
    description: str = Field("", description="What the study asks")
    n_trials: int = Field(20, ge=1, description="Total trials; a resumed study only runs the missing ones")
    timeout: Optional[float] = Field(None, gt=0, description="Stop starting new trials after this many seconds")
    parallel: int = Field(1, ge=1, description="Trials run at once: warm (default), trials batched together on "
                                               "the study's pool; with --cold, trials each in their own "
                                               "placement group")
    sampler: Literal["tpe", "random", "nsga2"] = Field(
        "tpe", description="Optuna sampler (tpe also handles several objectives; nsga2 is for several)")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Pruner on the per-round intermediate values (single objective only)")
    constant_liar: Optional[bool] = Field(
        None, description="TPE: while trials run, count each as a bad result so that trials asked at the same "
                          "time spread out instead of sampling the same region (Optuna's constant liar); "
                          "default: on when trials run at once (parallel > 1), off for one at a time")
    n_startup_trials: int = Field(5, ge=0, description="Trials before the sampler and median pruner act")
    n_warmup_rounds: int = Field(2, ge=0, description="Median pruner: rounds before a trial may be pruned")
    seed: int = Field(0, ge=0, description="Sampler seed")
    storage: Optional[str] = Field(
        None, description="Optuna storage: an RDB URL (postgresql://, mysql://, sqlite:///) or a journal file "
                          "path; default <out>/study.journal")
    out_dir: str = Field("runs/tuning", description="Parent of the study folder (<out_dir>/<name>)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from raysim.config import check_name

        return check_name(v, "study.name")


class ScenarioSection(_Model):
    """The scenario every trial starts from."""

    config: Optional[str] = Field(None, description="A raysim config TOML (e.g. one in datasets/)")
    algorithm: Optional[str] = Field(None, description="Algorithm (sets algorithm.name)")
    base: dict[str, Any] = Field(default_factory=dict, description="Inline config tables merged over `config`")


class ObjectiveSection(_Model):
    """What a trial is scored by (metrics of the final evaluation of the deployed model)."""

    metric: Union[str, list[str]] = Field(
        "val_r2", description="metrics.csv column(s) of the final evaluation; two or more make a "
                              "multi-objective study (e.g. [\"val_r2\", \"cum_bytes_up\"])")
    direction: Union[Literal["maximize", "minimize"], list[Literal["maximize", "minimize"]]] = Field(
        "maximize", description="maximize or minimize, one per metric")
    target_density: Optional[float] = Field(
        None, gt=0, le=1, description="Density target of the feasibility constraint (nnz <= floor(target p) and "
                                      "density <= target); default: each trial's algorithm.rho")
    val_samples: int = Field(2000, ge=1, description="Size of the validation set (sets data.val_samples)")

    @model_validator(mode="after")
    def _check(self) -> "ObjectiveSection":
        m, d = self.metrics, self.directions
        if len(d) != len(m):
            raise ValueError(f"{len(m)} metric(s) but {len(d)} direction(s); give one direction per metric")
        if len(set(m)) != len(m):
            raise ValueError("a metric is listed twice")
        return self

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def directions(self) -> list[str]:
        if isinstance(self.direction, str):
            return [self.direction]
        return list(self.direction)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


class StudySpec(_Model):
    """A whole study file."""

    study: StudySection
    scenario: ScenarioSection = ScenarioSection()
    fixed: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys fixed for every trial")
    space: dict[str, ParamSpec] = Field(..., description="The search space, one table per parameter")
    objective: ObjectiveSection = ObjectiveSection()

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not v:
            raise ValueError("the search space is empty; add at least one [space.<name>] table")
        out = {}
        for name, p in v.items():
            try:
                out[name] = p.resolved(name)
            except ValueError as exc:
                raise ValueError(f"space.{name}: {exc}") from None
        keys = [p.key for p in out.values()]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"config key(s) {', '.join(sorted(dup))} set by two parameters; keep one")
        return out

    #: where the study file lives (relative scenario paths resolve against it first)
    _source: Optional[str] = PrivateAttr(None)

    @property
    def source(self) -> Optional[str]:
        return self._source


def _describe(err: dict[str, Any]) -> str:
    loc = [str(x) for x in err.get("loc", ()) if not str(x).startswith("function-")]
    dotted = ".".join(loc) or "<study>"
    if err.get("type") == "extra_forbidden":
        sections = {"study": StudySection, "scenario": ScenarioSection, "objective": ObjectiveSection,
                    "space": ParamSpec}
        model = sections.get(loc[0], StudySpec) if len(loc) > 1 else StudySpec
        valid = list(model.model_fields)
        hint = difflib.get_close_matches(loc[-1], valid, n=1)
        return (f"unknown key '{dotted}'." + (f" Did you mean '{hint[0]}'?" if hint else "")
                + f" Valid keys here: {', '.join(valid)}.")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    doc = ""
    if len(loc) >= 2:
        sections = {"study": StudySection, "scenario": ScenarioSection, "objective": ObjectiveSection}
        f = sections[loc[0]].model_fields.get(loc[1]) if loc[0] in sections else None
        if f is not None and f.description:
            doc = f" ({f.description})"
    value = err.get("input")
    if value is not None and not isinstance(value, dict):
        return f"{dotted} = {value!r}: {msg}{doc}"
    return f"{dotted}: {msg}{doc}"


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study file; ``overrides`` are dotted keys of the study file itself
    (e.g. ``{"study.n_trials": 5}``). Raises :class:`ConfigError` naming the field and the fix."""
    p = Path(path)
    data = read_toml(p)
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return spec_from_dict(data, source=str(p))


def spec_from_dict(data: dict[str, Any], source: str | None = None) -> StudySpec:
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"invalid study file {source or ''}:\n  - " + "\n  - ".join(lines)) from None
    spec._source = source
    return spec


def param_distributions(spec: StudySpec) -> dict[str, Any]:
    """The Optuna distributions of the space (for documentation and enqueueing)."""
    import optuna.distributions as D

    out: dict[str, Any] = {}
    for name, p in spec.space.items():
        if p.type == "categorical":
            out[name] = D.CategoricalDistribution(p.choices)  # type: ignore[arg-type]
        elif p.type == "int":
            out[name] = D.IntDistribution(int(p.low), int(p.high), log=bool(p.log),  # type: ignore[arg-type]
                                          step=int(p.step or 1))
        else:
            out[name] = D.FloatDistribution(p.low, p.high, log=bool(p.log), step=p.step)  # type: ignore[arg-type]
        if p.zero:
            out[f"{name}_on"] = D.CategoricalDistribution([True, False])
    return out


def midpoint(p: ParamSpec) -> Any:
    """A representative value of a dimension (used to validate the study before any trial)."""
    if p.type == "categorical":
        return p.choices[0]  # type: ignore[index]
    lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
    v = math.sqrt(lo * hi) if p.log else (lo + hi) / 2
    return int(round(v)) if p.type == "int" else v
