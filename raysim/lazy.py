"""``torch`` imported on first use, for the modules that the configuration needs to import.

Resolving a configuration reads every algorithm's knobs from the algorithm's own file
(docs/algorithms.md section 10), and importing the package plus ``load_config`` must not import
torch (docs/architecture.md: the driver-side API stays light). The algorithm modules and the
helpers they import at module level (``raysim.gates``, ``raysim.metrics``) therefore write
``from raysim.lazy import torch``: the name behaves like the torch module, which is imported
at the first attribute access (``torch.zeros``, ``torch.Tensor``, ...), then every attribute is
kept on the proxy so later accesses cost what a module attribute costs. Type annotations are
strings there (``from __future__ import annotations``), so they do not count as a use.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A stand-in for the module ``name`` that imports it on first attribute access."""

    def __init__(self, name: str):
        object.__setattr__(self, "_lazy_name", name)
        object.__setattr__(self, "_lazy_module", None)

    def _load(self) -> ModuleType:
        mod = object.__getattribute__(self, "_lazy_module")
        if mod is None:
            mod = importlib.import_module(object.__getattribute__(self, "_lazy_name"))
            object.__setattr__(self, "_lazy_module", mod)
        return mod

    def __getattr__(self, attr: str) -> Any:          # only called for attributes not cached yet
        value = getattr(self._load(), attr)
        object.__setattr__(self, attr, value)
        return value

    def __reduce__(self):                              # pickled by value (e.g. a closure's globals): by name
        return (LazyModule, (object.__getattribute__(self, "_lazy_name"),))

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_lazy_name')!r}>"


#: the torch module, imported when first used
torch: Any = LazyModule("torch")

__all__ = ["LazyModule", "torch"]
