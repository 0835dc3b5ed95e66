"""The public Python API: ``raysim.run``, ``raysim.load_config`` (and ``raysim.Config``,
``raysim.RunResult``, ``raysim.ConfigError``, re-exported lazily by ``raysim/__init__.py``).

A configuration can be given in four forms, all resolved the same way as ``raysim run``:

* ``None`` - the built-in default scenario (``raysim config`` prints it);
* a path (``str`` or ``os.PathLike``) to a TOML file, e.g. ``"datasets/synthetic-lr.toml"``;
* a ``dict`` shaped like the TOML file (``{"run": {"rounds": 5}, ...}``); top-level keys may
  also be dotted (``{"run.rounds": 5}``);
* a :class:`raysim.Config` (returned by :func:`load_config`, or built directly).

Overrides are applied on top, in this order: the ``overrides`` argument (a mapping of dotted
keys to values, or a list of ``"key=value"`` strings exactly as ``--set`` takes them), then
keyword arguments, whose names are dotted keys written with ``__`` for the dot
(``run__rounds=5``) or passed as ``**{"run.rounds": 5}``. Every value is validated by the
config model: an unknown key or a bad value raises :class:`raysim.ConfigError` naming the key
and the fix, before anything runs.

Nothing here imports Ray or torch at import time; :func:`run` imports the engine when called.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from raysim import config as _config
from raysim.config import Config, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from raysim.runner import RunResult

#: what ``config`` may be: nothing (default scenario), a TOML path, a TOML-shaped dict, a Config
ConfigLike = Union[None, str, "os.PathLike[str]", Mapping[str, Any], Config]
#: what ``overrides`` may be: dotted key -> value, or ``"key=value"`` strings as ``--set`` takes them
Overrides = Union[None, Mapping[str, Any], Sequence[str]]

__all__ = ["ConfigLike", "Overrides", "load_config", "run"]


def _all_keys() -> list[str]:
    """Every dotted key of the configuration, e.g. ``run.rounds``."""
    out = []
    for sec, f in Config.model_fields.items():
        out += [f"{sec}.{k}" for k in f.annotation.model_fields]  # type: ignore[union-attr]
    return out


def _keyword_to_dotted(name: str, func: str) -> str:
    """``run__rounds`` -> ``run.rounds``; a dotted name is kept; anything else is a TypeError."""
    if "." in name:
        return name
    if "__" in name:
        return name.replace("__", ".")
    keys = _all_keys()
    same = [k for k in keys if k.split(".", 1)[1] == name]
    close = same or difflib.get_close_matches(name, [k.split(".", 1)[1] for k in keys], n=1)
    hint = ""
    if close:
        dotted = same[0] if same else next(k for k in keys if k.endswith("." + close[0]))
        hint = f"; did you mean {dotted.replace('.', '__')}=... (the config key {dotted!r})?"
    raise TypeError(f"{func}() got an unexpected keyword argument {name!r}: config overrides are dotted keys, "
                    f"written section__key=value or **{{'section.key': value}}{hint}")


def _expand_dotted(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A TOML-shaped dict whose top-level keys may be dotted (``{"run.rounds": 5}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings (config sections or dotted keys), got {key!r}")
        value = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
        if "." in key:
            _config.set_dotted(out, key, value, where=where)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _config._deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _base_dict(config: ConfigLike) -> tuple[dict[str, Any], str]:
    """The raw (not yet validated) config dict of ``config`` and a name for error messages."""
    if config is None:
        return {}, "config"
    if isinstance(config, Config):
        # The resolved values, per-task defaults included: overriding data.task on a Config keeps
        # that Config's step sizes (start from a path or a dict to get the new task's defaults).
        return config.to_toml_dict(), "config"
    if isinstance(config, (str, os.PathLike)):
        return _config.read_toml(config), f"config {os.fspath(config)}"
    if isinstance(config, Mapping):
        return _expand_dotted(config, "config dict"), "config dict"
    raise TypeError(f"config must be None (the default scenario), a path to a TOML file, a dict shaped like the "
                    f"TOML file or a raysim.Config; got {type(config).__name__}")


def _apply(data: dict[str, Any], overrides: Overrides, keywords: Mapping[str, Any], func: str) -> dict[str, Any]:
    if overrides is not None:
        if isinstance(overrides, Mapping):
            for key, value in overrides.items():
                if not isinstance(key, str):
                    raise ConfigError(f"overrides: keys must be dotted config keys such as 'run.rounds', got {key!r}")
                _config.set_dotted(data, key, copy.deepcopy(value), where=f"overrides[{key!r}]")
        elif isinstance(overrides, Sequence) and not isinstance(overrides, (str, bytes)):
            data = _config.apply_overrides(data, [str(o) for o in overrides])
        else:
            raise TypeError(f"overrides must be a mapping of dotted keys to values ({{'run.rounds': 5}}) or a list of "
                            f"'key=value' strings; got {type(overrides).__name__}")
    for name, value in keywords.items():
        key = _keyword_to_dotted(name, func)
        _config.set_dotted(data, key, copy.deepcopy(value), where=f"{func}({name}=...)")
    return data


def _resolve(config: ConfigLike, overrides: Overrides, keywords: Mapping[str, Any], func: str) -> Config:
    if isinstance(config, Config) and not overrides and not keywords:
        return config.model_copy(deep=True)
    data, source = _base_dict(config)
    data = _apply(data, overrides, keywords, func)
    return _config.validate(data, source=source)


def load_config(config: ConfigLike = None, overrides: Overrides = None, **keywords: Any) -> Config:
    """The validated :class:`raysim.Config` of ``config`` plus overrides (see the module docstring).

    >>> cfg = load_config("datasets/synthetic-lr.toml", {"run.rounds": 5}, algorithm__rho=0.1)  # doctest: +SKIP
    >>> cfg.run.rounds, cfg.algorithm.rho  # doctest: +SKIP
    (5, 0.1)

    Raises :class:`raysim.ConfigError` for an unknown key, a value out of range or a missing
    file, and ``TypeError`` for arguments of the wrong kind.
    """
    return _resolve(config, overrides, keywords, "load_config")


def run(config: ConfigLike = None, overrides: Overrides = None, *,
        on_eval: Callable[[int, dict[str, Any]], None] | None = None, **keywords: Any) -> "RunResult":
    """Run one experiment, exactly as ``raysim run`` does, and return its :class:`raysim.RunResult`.

    ``config`` and the overrides are resolved by :func:`load_config`. The run writes its run
    directory (``config.toml``, ``metrics.csv``, ``summary.json``, ``model.npz``, ...) under
    ``run.out_dir`` (default ``runs/``) or into ``run.run_dir``; the result holds its path
    (``run_dir``), the summary dict (``summary``, final metrics under ``summary["final"]``)
    and the metrics table (``metrics``, a pandas DataFrame, one row per evaluation round).

    With ``cluster.backend = "ray"`` (the default) it joins the Ray instance already
    initialised in this process, else ``cluster.address`` / ``RAY_ADDRESS``, else it starts a
    local one and shuts it down at the end. ``cluster.backend = "local"`` runs in this
    process without Ray, with the same metrics.

    ``on_eval(round, row)`` is called after every evaluation with that round's metrics row;
    an exception raised in it stops the run (the rows so far stay in ``metrics.csv``).

    >>> res = run("datasets/synthetic-lr.toml", run__rounds=5, run__progress=False)  # doctest: +SKIP
    >>> res.summary["final"]["r2"]  # doctest: +SKIP
    """
    cfg = _resolve(config, overrides, keywords, "run")
    from raysim.runner import run as _run

    return _run(cfg, on_eval=on_eval)
