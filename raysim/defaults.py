"""Per-task defaults: training budget and step sizes that a config leaves unset.

A config that does not set ``run.rounds``, ``algorithm.eta_theta``, ``algorithm.eta_phi``,
``algorithm.eta_lambda``, ``algorithm.prune_start``, ``algorithm.rho_init`` or
``algorithm.eta_local`` gets the value of its task (``data.task``) from :data:`TASK_DEFAULTS`;
an algorithm key is filled only where the chosen algorithm has that knob (FLoPS has no
``eta_local``, FedAvg no ``eta_theta``; docs/algorithms.md section 10).
The resolved value is written into the run's ``config.toml``, so a run directory always says
what was used.

Where the numbers come from: each was chosen with raysim's own tuning layer (studies under
``tuning/defaults-*.toml``, run with ``raysim tune`` on a validation split, never on the test
set; their reports and the reasoning are in ``results/defaults/README.md``), by one rule: the
median of the best 20% of the trials (``scripts/derive_defaults.py``), rounded. The cnn values
were not tuned. They are
defaults for the shipped scenarios (``datasets/synthetic-*.toml``: p in the hundreds to
thousands, about 50 samples per client, 10% participation); other regimes should be tuned
(``raysim tune``).
"""

from __future__ import annotations

from typing import Any

#: task -> dotted key -> default value (see the module docstring for their provenance)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # synthetic-lr: p = 1000, 100 clients x 50, 10% (tuning/defaults-lr*.toml)
    "lr": {"run.rounds": 100, "algorithm.eta_theta": 0.02, "algorithm.eta_phi": 0.3,
           "algorithm.eta_lambda": 5e-6, "algorithm.prune_start": 0.5, "algorithm.rho_init": 0.85,
           "algorithm.eta_local": 0.02},
    # synthetic-lg: p = 500, 100 clients x 50, 10% (tuning/defaults-lg*.toml)
    "lg": {"run.rounds": 300, "algorithm.eta_theta": 1.0, "algorithm.eta_phi": 10.0,
           "algorithm.eta_lambda": 7e-5, "algorithm.prune_start": 0.75, "algorithm.rho_init": 0.25,
           "algorithm.eta_local": 0.1},
    # synthetic-mc: p = 500 x 10 classes (tuning/defaults-mc*.toml)
    "mc": {"run.rounds": 300, "algorithm.eta_theta": 1.0, "algorithm.eta_phi": 2.0,
           "algorithm.eta_lambda": 2e-6, "algorithm.prune_start": 0.2, "algorithm.rho_init": 0.6,
           "algorithm.eta_local": 0.2},
    # synthetic-mlc: p = 500 x 20 labels; the loss is a mean over labels, hence the large steps
    "mlc": {"run.rounds": 300, "algorithm.eta_theta": 20.0, "algorithm.eta_phi": 400.0,
            "algorithm.eta_lambda": 1e-6, "algorithm.prune_start": 0.75, "algorithm.rho_init": 0.45,
            "algorithm.eta_local": 3.0},
    # cnn: NOT tuned (a CPU trial takes minutes); the behaviour of earlier raysim versions: small
    # steps, the dual practically inert, gates starting at P(z != 0) = 0.8
    "cnn": {"run.rounds": 100, "algorithm.eta_theta": 0.05, "algorithm.eta_phi": 0.1,
            "algorithm.eta_lambda": 1e-6, "algorithm.prune_start": 0.5, "algorithm.rho_init": 0.8,
            "algorithm.eta_local": 0.05},
}

#: the keys that take a per-task default
KEYS: tuple[str, ...] = tuple(TASK_DEFAULTS["lr"])


def describe(key: str) -> str:
    """'per task: lr 0.05, lg 0.1, ...' for a config field's documentation."""
    return "default per task (data.task): " + ", ".join(
        f"{t} {TASK_DEFAULTS[t][key]:g}" for t in TASK_DEFAULTS)


def algorithm_defaults(task: str | None) -> dict[str, Any]:
    """The per-task defaults of the ``[algorithm]`` knobs, ``{knob: value}`` (empty for an unknown task)."""
    table = TASK_DEFAULTS.get(task or "", {})
    return {k.split(".", 1)[1]: v for k, v in table.items() if k.startswith("algorithm.")}


def fill(data: dict[str, Any], algorithm: bool = True) -> dict[str, Any]:
    """Fill the per-task defaults into a raw config dict (keys that are absent or None only).

    ``algorithm=False`` leaves the ``[algorithm]`` table alone: the configuration fills it
    itself, with only the knobs the chosen algorithm has (:func:`algorithm_defaults`)."""
    if not isinstance(data, dict):
        return data
    data_sec = data.get("data") if isinstance(data.get("data"), dict) else {}
    task = data_sec.get("task", "lr")
    table = TASK_DEFAULTS.get(task)
    if table is None:          # an invalid task: the field validator reports it
        return data
    out = dict(data)
    for dotted, value in table.items():
        section, key = dotted.split(".")
        if section == "algorithm" and not algorithm:
            continue
        sec = out.get(section, {})
        if not isinstance(sec, dict):
            continue           # a malformed section: its validator reports it
        if sec.get(key) is None:
            out[section] = {**sec, key: value}
    return out
