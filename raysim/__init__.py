"""raysim: a Ray-based simulation cluster for sparse federated learning.

The public Python API (see the README, "Using raysim from Python")::

    from raysim import load_config, run

    res = run("datasets/synthetic-lr.toml", run__rounds=5)                  # -> RunResult
    cfg = load_config({"data": {"p": 200}}, {"algorithm.rho": 0.1})         # -> Config

Importing the package is cheap: neither Ray nor torch is loaded until a run starts. The
names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access, PEP 562)
_LAZY = {
    "run": "raysim.api",
    "load_config": "raysim.api",
    "Config": "raysim.config",
    "ConfigError": "raysim.config",
    "RunResult": "raysim.runner",
}

__all__ = ["Config", "ConfigError", "RunResult", "__version__", "load_config", "run"]

if TYPE_CHECKING:  # pragma: no cover
    from raysim.api import load_config, run
    from raysim.config import Config, ConfigError
    from raysim.runner import RunResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raysim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
