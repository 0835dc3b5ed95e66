"""User plug-ins named by import strings (docs/architecture.md, section "Plug-ins").

A plug-in is a Python object named by a string, so that a configuration stays plain TOML and
every process of a run (the driver, the server actor, each client actor) can find the same
object by itself:

* ``"package.module:object"`` - imported with :func:`importlib.import_module`: the module must
  be importable in every process (installed, on ``PYTHONPATH``, or in the driver's working
  directory, which Ray puts on the path of its local workers; on a cluster, ship it with
  ``ray job submit --working-dir .``);
* ``"path/to/file.py:object"`` - a Python file, loaded by path. A relative path is taken from
  the current directory and pinned to an absolute one when the configuration is validated, so
  every actor on this machine (or on a shared file system) loads the same file.

``object`` may be dotted (``"pkg.mod:Outer.factory"``). From Python, the object itself may be
given (``model__module=MyNet``): it is turned into its import string
(:func:`import_string_of`), the file form when it lives in a script run as ``__main__``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from pathlib import Path
from typing import Any, Callable


class PluginError(ValueError):
    """A plug-in that cannot be resolved or that returned something unusable. The message names
    the config field and its value (``detail`` is the message without them)."""

    def __init__(self, field: str, spec: Any, detail: str):
        self.field, self.spec, self.detail = field, spec, detail
        super().__init__(f"{field} = {spec!r}: {detail}" if spec is not None else f"{field}: {detail}")


def _split(spec: str, field: str) -> tuple[str, str]:
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise PluginError(field, spec, f'expected an import string "package.module:object" or '
                          f'"path/to/file.py:object" (a colon between the module and the object)')
    mod, _, attr = spec.rpartition(":")
    if not mod or not attr:
        raise PluginError(field, spec, f'expected "package.module:object" or "path/to/file.py:object"; '
                          f"the part {'before' if not mod else 'after'} the colon is empty")
    return mod, attr


def is_file_spec(mod: str) -> bool:
    return mod.endswith(".py") or "/" in mod or "\\" in mod


def pin(spec: str, field: str) -> str:
    """The import string with a file path made absolute (the module form is returned as is)."""
    mod, attr = _split(spec, field)
    if is_file_spec(mod):
        p = Path(mod).expanduser()
        if not p.is_absolute():
            p = (Path.cwd() / p).resolve()
        return f"{p}:{attr}"
    return spec


#: one file plug-in is executed once per process, even when runs on several threads load it
_FILE_LOCK = threading.Lock()


def _load_file(path: Path, spec: str, field: str) -> Any:
    with _FILE_LOCK:
        return _load_file_locked(path, spec, field)


def _load_file_locked(path: Path, spec: str, field: str) -> Any:
    if not path.is_file():
        raise PluginError(field, spec, f"file {path} not found (a relative path is taken from the current "
                          f"directory {Path.cwd()}); give the path of a Python file")
    name = "raysim_plugin_" + path.stem.replace("-", "_") + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    sp = importlib.util.spec_from_file_location(name, path)
    if sp is None or sp.loader is None:
        raise PluginError(field, spec, f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(sp)
    sys.modules[name] = module
    try:
        sp.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(field, spec, f"loading {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def _import(mod: str, spec: str, field: str) -> Any:
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        missing = exc.name or mod
        if missing == mod or mod.startswith(missing + "."):
            raise PluginError(
                field, spec, f"module {mod} not found. The module must be importable in the driver and in "
                f"every Ray worker: install it, put its folder on PYTHONPATH, or run from the folder that holds it "
                f"(current directory: {Path.cwd()}); or name the file: \"path/to/{mod.rsplit('.', 1)[-1]}.py:"
                f"{spec.rpartition(':')[2]}\"") from None
        raise PluginError(field, spec, f"importing {mod} failed: it imports {missing}, which is not "
                          f"installed ({exc})") from exc
    except Exception as exc:  # a user module that raises on import
        raise PluginError(field, spec, f"importing {mod} raised {type(exc).__name__}: {exc}") from exc


def resolve(spec: str, field: str) -> Any:
    """The object named by ``spec`` (``field`` is the config key, for error messages)."""
    mod, attr = _split(spec, field)
    module = _load_file(Path(mod).expanduser().resolve(), spec, field) if is_file_spec(mod) else _import(mod, spec, field)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_"))
            raise PluginError(field, spec, f"{mod} has no attribute {attr!r} (it defines: "
                              f"{', '.join(names[:20]) or 'nothing public'})")
        obj = getattr(obj, part)
    return obj


def resolve_callable(spec: str, field: str) -> Callable[..., Any]:
    obj = resolve(spec, field)
    if not callable(obj):
        raise PluginError(field, spec, f"names a {type(obj).__name__}, not a function or class; name a callable")
    return obj


def import_string_of(obj: Any, field: str) -> str:
    """``"module:qualname"`` of a function or class (the file form for one defined in ``__main__``)."""
    if isinstance(obj, str):
        return obj
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if not callable(obj) or mod is None or qual is None:
        raise PluginError(field, None, f"expected an import string or a function / class, got {type(obj).__name__}")
    if "<locals>" in qual or "<lambda>" in qual:
        raise PluginError(field, None, f"{qual} is defined inside a function (or is a lambda), so the Ray workers "
                          "cannot import it; define it at the top level of a module")
    if mod == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main_file:
            raise PluginError(field, None, f"{qual} is defined in an interactive session, which the Ray workers cannot "
                              "import; put it in a module (or a .py file) and give \"module:object\"")
        return f"{Path(main_file).resolve()}:{qual}"
    file = getattr(sys.modules.get(mod), "__file__", None)
    if file and not _importable_by_name(mod, file):
        # loaded by path (e.g. importlib.util.spec_from_file_location, or a raysim plug-in file):
        # other processes can only find it by its file
        return f"{Path(file).resolve()}:{qual}"
    return f"{mod}:{qual}"


def _importable_by_name(mod: str, file: str) -> bool:
    """Whether ``import mod`` finds ``file`` through ``sys.path`` (not merely through ``sys.modules``)."""
    from importlib.machinery import PathFinder

    top = mod.split(".", 1)[0]
    try:
        spec = PathFinder.find_spec(top, sys.path)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if "." in mod:  # a package found by name: its submodules are importable by name too
        return True
    return spec.origin is not None and Path(spec.origin).resolve() == Path(file).resolve()


def call_with(fn: Callable[..., Any], offered: dict[str, Any], kwargs: dict[str, Any], field: str) -> Any:
    """Call ``fn(**kwargs)`` plus those of ``offered`` (raysim's values, e.g. ``seed``) that its
    signature accepts by name (all of them if it takes ``**kwargs``); ``kwargs`` win."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    extra: dict[str, Any] = {}
    if sig is not None:
        params = sig.parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for k, v in offered.items():
            if k in kwargs:
                continue
            p = params.get(k)
            if var_kw or (p is not None and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                       inspect.Parameter.KEYWORD_ONLY)):
                extra[k] = v
        try:
            sig.bind(**extra, **kwargs)
        except TypeError as exc:
            raise PluginError(field, None, f"{getattr(fn, '__qualname__', fn)}{sig} cannot be called with "
                              f"{sorted({**extra, **kwargs})}: {exc}. raysim passes "
                              f"{', '.join(offered)} when the signature names them, plus the configured kwargs"
                              ) from None
    return fn(**extra, **kwargs)
