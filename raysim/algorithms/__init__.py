"""Federated algorithms, chosen by name (``algorithm.name`` in the config).

One algorithm is one file of this package: a class registered with
``@register("name")`` (:mod:`raysim.registry`) and its frozen ``Params`` model of
knobs (docs/algorithms.md section 10). Every module here is imported when the registry is
first used, so a new file is all a new algorithm needs. ``algorithm.name`` may also be
``"package.module:ClassName"``, a user's own :class:`Algorithm` subclass.

Per-step (one mini-batch step per communication, several per round): flops, flops-ent.
Once per round (local epochs, :mod:`raysim.algorithms.local`): flops-pa, flops-pa-ent, fedavg,
fedavg-prune, fedavgm, fed-ht, fediter-ht, fedprox, ser, fedeba.
"""

from __future__ import annotations

from typing import Any

from raysim.algorithms.base import Aggregate, Algorithm, Partial, Schedule, StepContext, aggregate
from raysim.registry import REGISTRY, algorithm_class, load_builtins, register

#: name -> class of every registered algorithm (the registry itself)
ALGORITHMS = REGISTRY
load_builtins()


def build_algorithm(cfg: Any, model, schedule: Schedule) -> Algorithm:
    """The algorithm of ``cfg`` (an ``[algorithm]`` Params instance) on ``model``."""
    return algorithm_class(cfg.name)(cfg, model, schedule)


__all__ = ["ALGORITHMS", "Aggregate", "Algorithm", "Partial", "Schedule", "StepContext", "aggregate",
           "algorithm_class", "build_algorithm", "register"]
