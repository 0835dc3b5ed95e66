"""The algorithm registry: ``algorithm.name`` -> algorithm class (docs/algorithms.md section 10).

One algorithm is one file under ``raysim/algorithms/``: a class decorated with
``@register("name")`` whose ``Params`` attribute is a frozen pydantic model of its knobs
(a subclass of :class:`raysim.config.AlgorithmSection`, which holds the knobs every
algorithm has: ``name``, ``rho``, ``batch_size``, ``weighting``). Every module of the
package is imported when the registry is first asked for a name, so adding an algorithm
touches no list.

Layers (docs/architecture.md, "Layers"): the registry sits in the config layer, beside
``raysim.config``, which asks it for the knobs of the chosen algorithm. The algorithms (a
higher layer) register themselves into it; the registry finds the built-in ones the way it
finds a user's class, by importing a package named by a string (:data:`BUILTIN_PACKAGE`),
and checks a class by its interface, never by importing the algorithms' code.

A user algorithm needs no file in raysim: ``algorithm.name = "pkg.module:Class"`` (or
``"path/to/file.py:Class"``) names it by import string (:mod:`raysim.plugins`: the module must
be importable wherever the run executes, the driver and, with the Ray backend, the actors'
worker processes); it is registered under that string.

This module imports no torch, so the configuration can ask it for the knobs of an
algorithm cheaply once the algorithm modules are loaded.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

#: name -> algorithm class, filled by :func:`register` (the built-ins on first use)
REGISTRY: dict[str, type] = {}
_builtins_loaded = False
#: the package whose modules are the built-in algorithms (imported by name at the first lookup)
BUILTIN_PACKAGE = "raysim.algorithms"
#: modules of that package that hold no algorithm
_NOT_ALGORITHMS = {"base", "local"}
#: the methods the engine calls on an algorithm (raysim.algorithms.base.Algorithm)
INTERFACE = ("init_state", "broadcast", "client_update", "server_update", "deployed", "comm_bytes")


def register(name: str):
    """Class decorator: ``@register("fedavgm")`` makes the class ``algorithm.name = "fedavgm"``.

    The class must have a ``Params`` attribute, a subclass of
    :class:`raysim.config.AlgorithmSection`; an algorithm built on another (a subclass)
    must have Params built on the other's Params, so settings written for the base
    algorithm (``[algorithm.<base>]`` tables, section 10) are valid for it too.
    """
    def deco(cls: type) -> type:
        _check_class(cls, name)
        old = REGISTRY.get(name)
        if old is not None and old is not cls and f"{old.__module__}.{old.__qualname__}" != \
                f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(f"algorithm name {name!r} is already registered by "
                             f"{old.__module__}.{old.__qualname__}; choose another name for "
                             f"{cls.__module__}.{cls.__qualname__}")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


def _check_class(cls: Any, name: str) -> None:
    from raysim.config import AlgorithmSection

    missing = [m for m in INTERFACE if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise TypeError(f"algorithm {name!r}: {cls!r} is not a subclass of raysim.algorithms.Algorithm"
                        + (f" (it lacks {', '.join(missing)})" if isinstance(cls, type) else ""))
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, AlgorithmSection)):
        raise TypeError(f"algorithm {name!r}: {cls.__qualname__}.Params must be a subclass of "
                        "raysim.config.AlgorithmSection (a frozen pydantic model of the algorithm's knobs)")
    for base in cls.__mro__[1:]:
        bp = base.__dict__.get("Params")
        if bp is not None and base.__dict__.get("name") in REGISTRY and not issubclass(params, bp):
            raise TypeError(f"algorithm {name!r} is built on {base.__dict__['name']!r} but its Params "
                            f"({params.__qualname__}) does not extend {bp.__qualname__}; derive it from that class")


def load_builtins() -> None:
    """Import every module of raysim.algorithms (each registers its algorithms)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    pkg = importlib.import_module(BUILTIN_PACKAGE)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in _NOT_ALGORITHMS and not mod.name.startswith("_"):
            importlib.import_module(f"{BUILTIN_PACKAGE}.{mod.name}")
    _builtins_loaded = True


def is_import_string(name: str) -> bool:
    return ":" in name


def canonical_name(name: Any) -> str:
    """``algorithm.name`` as the config keeps it: a registered name as is; a class (from Python)
    turned into its import string; a file import string with its path made absolute, so every
    process of a run loads the same file (:mod:`raysim.plugins`)."""
    from raysim.plugins import import_string_of, pin

    name = import_string_of(name, "algorithm.name")
    return pin(name, "algorithm.name") if is_import_string(name) else name


def _import_plugin(spec: str) -> type:
    from raysim.plugins import resolve

    obj = resolve(spec, "algorithm.name")      # PluginError (a ValueError) with the fix
    try:
        _check_class(obj, spec)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return obj


def algorithm_class(name: str) -> type:
    """The class of ``algorithm.name``: a registered name or an import string,
    ``"package.module:Class"`` or ``"path/to/file.py:Class"``."""
    load_builtins()
    if name in REGISTRY:
        return REGISTRY[name]
    if is_import_string(name):
        cls = _import_plugin(name)
        REGISTRY[name] = cls
        return cls
    import difflib

    hint = difflib.get_close_matches(name, list(REGISTRY), n=1)
    raise ValueError(f"unknown algorithm {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + f"; known: {', '.join(names())}, or 'package.module:ClassName' / 'path/to/file.py:ClassName' "
                     "for your own class")


def names() -> list[str]:
    """The built-in algorithm names (plug-ins by import string excluded), family by family: each
    after the algorithm it is built on."""
    load_builtins()
    out = [n for n in REGISTRY if not is_import_string(n)]
    chain = {n: built_on(n) for n in out}
    return sorted(out, key=lambda n: (chain[n][-1], len(chain[n]), n))


def knobs(name: str) -> list[str]:
    """The keys the ``[algorithm]`` table may hold when ``algorithm.name = name``."""
    return list(algorithm_class(name).Params.model_fields)


def built_on(name: str) -> list[str]:
    """The registered algorithms that ``name`` is built on (itself first, then its bases)."""
    cls = algorithm_class(name)
    out = [name]
    for base in cls.__mro__[1:]:
        bn = base.__dict__.get("name")
        if isinstance(bn, str) and REGISTRY.get(bn) is base and bn not in out:
            out.append(bn)
    return out


__all__ = ["REGISTRY", "algorithm_class", "built_on", "knobs", "load_builtins", "names", "register"]
