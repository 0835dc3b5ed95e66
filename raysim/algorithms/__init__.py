"""Federated algorithms, chosen by name (``algorithm.name`` in the config)."""

from __future__ import annotations

from typing import Any

from raysim.algorithms.base import Aggregate, Algorithm, Partial, Schedule, StepContext, aggregate
from raysim.algorithms.flops import FLoPS

ALGORITHMS: dict[str, type[Algorithm]] = {"flops": FLoPS}


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def build_algorithm(cfg: Any, model, schedule: Schedule) -> Algorithm:
    return algorithm_class(cfg.name)(cfg, model, schedule)


__all__ = ["ALGORITHMS", "Aggregate", "Algorithm", "Partial", "Schedule", "StepContext", "aggregate",
           "algorithm_class", "build_algorithm"]
