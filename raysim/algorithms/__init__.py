"""Federated algorithms, chosen by name (``algorithm.name`` in the config).

Per-step (one mini-batch step per communication, several per round): flops, flops-ent.
Once per round (local epochs, :mod:`raysim.algorithms.local`): flops-pa, flops-pa-ent, fedavg,
fedavg-prune, fed-ht, fediter-ht, fedprox, ser, fedeba.
"""

from __future__ import annotations

from typing import Any

from raysim.algorithms.base import Aggregate, Algorithm, Partial, Schedule, StepContext, aggregate
from raysim.algorithms.fedavg import FedAvg, FedAvgPrune, FedProx
from raysim.algorithms.fedeba import FedEBA
from raysim.algorithms.flops import FLoPS, FLoPSEnt
from raysim.algorithms.flops_pa import FLoPSPA, FLoPSPAEnt
from raysim.algorithms.hardthreshold import FedHT, FedIterHT
from raysim.algorithms.ser import SER

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (FLoPS, FLoPSEnt, FLoPSPA, FLoPSPAEnt, FedAvg, FedAvgPrune, FedHT, FedIterHT,
                              FedProx, SER, FedEBA)}


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def build_algorithm(cfg: Any, model, schedule: Schedule) -> Algorithm:
    return algorithm_class(cfg.name)(cfg, model, schedule)


__all__ = ["ALGORITHMS", "Aggregate", "Algorithm", "Partial", "Schedule", "StepContext", "aggregate",
           "algorithm_class", "build_algorithm"]
