"""Your own torch model and your own data set in raysim, as plug-ins.

    python examples/custom_model.py                   # on Ray (a local Ray instance is started)
    python examples/custom_model.py --backend local   # in this process, no Ray (same metrics)
    raysim run examples/custom_model.toml             # the same scenario from a TOML file

Two plain Python objects, nothing raysim-specific in them:

* :class:`MLP`, a small ``torch.nn.Module`` (input -> hidden -> ReLU -> classes). raysim
  gates its weight matrices (``fc1.weight``, ``fc2.weight``; the biases stay dense), trains it
  with FLoPS at target density ``algorithm.rho`` and vectorises it over each actor's clients
  with ``torch.func`` (docs/algorithms.md section 7, "User models").
* :func:`make_federation`, a function returning per-client arrays: a heterogeneous
  multi-class problem where only the first ``n_informative`` features carry the label, the
  clients see skewed label mixes (Dirichlet ``label_skew``) and shifted covariates, and a
  common test set (docs/data.md section 5).

The configuration names them by import string (``"path/to/file.py:object"`` or
``"package.module:object"``); from Python the objects themselves may be passed, as below, and
raysim turns them into import strings so that every Ray actor loads the same code.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import raysim


class MLP(torch.nn.Module):
    """input -> Linear(hidden) -> ReLU -> Linear(n_outputs) logits."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, hidden: int = 32):
        super().__init__()
        self.fc1 = torch.nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = torch.nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make_federation(seed: int, n_clients: int, n_features: int = 40, n_informative: int = 6,
                    n_classes: int = 3, n_per_client: int = 60, label_skew: float = 0.5,
                    shift: float = 0.3, n_test: int = 1000) -> dict[str, Any]:
    """``n_clients`` clients of a ``n_classes``-class problem, as ``{"clients": [(x, y), ...],
    "test": (x, y)}``. Class c has mean ``mu_c`` on the first ``n_informative`` features (the
    rest is noise); client k draws its labels from its own mix ~ Dirichlet(label_skew) and its
    features with an offset ~ N(0, shift^2) on every feature. Deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 2024])
    means = np.zeros((n_classes, n_features))
    means[:, :n_informative] = rng.normal(0.0, 1.5, size=(n_classes, n_informative))

    def draw(n: int, mix: np.ndarray, offset: np.ndarray, g: np.random.Generator):
        y = g.choice(n_classes, size=n, p=mix)
        x = means[y] + offset + g.normal(size=(n, n_features))
        return x.astype(np.float32), y.astype(np.int64)

    clients = []
    for k in range(n_clients):
        g = np.random.default_rng([seed, 2024, k + 1])
        mix = g.dirichlet(np.full(n_classes, label_skew))
        clients.append(draw(n_per_client, mix, g.normal(0.0, shift, size=n_features), g))
    test = draw(n_test, np.full(n_classes, 1.0 / n_classes), np.zeros(n_features), np.random.default_rng([seed, 7]))
    return {"clients": clients, "test": test}


#: the scenario: 16 clients, 3 classes, FLoPS keeping 20% of the MLP's weights
CONFIG: dict[str, Any] = {
    "data": {"kind": "custom", "task": "mc", "loader": make_federation, "n_clients": 16, "n_classes": 3,
             "loader_kwargs": {"n_features": 40, "n_informative": 6}},
    "model": {"module": MLP, "kwargs": {"hidden": 32}},
    "algorithm": {"name": "flops", "rho": 0.2, "batch_size": 20},
    "participation": {"rate": 0.5},
    "run": {"name": "custom-model", "progress": False},
}


def main(argv: list[str] | None = None) -> raysim.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("ray", "local"), default="ray",
                        help="ray: server and client actors on Ray; local: everything in this process")
    parser.add_argument("--rounds", type=int, default=30, help="rounds (default 30)")
    parser.add_argument("--out", default="runs/examples", help="parent folder of the run directory")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    args = parser.parse_args(argv)

    res = raysim.run(CONFIG, run__rounds=args.rounds, run__out_dir=args.out, run__plots=not args.no_plots,
                     cluster__backend=args.backend, cluster__num_actors=2)
    final = res.summary["final"]
    print(f"accuracy {final['accuracy']:.3f}  log loss {final['log_loss']:.3f}  "
          f"non-zero weights {final['nnz']} of {res.summary.get('p', '?')} gated (m = {final['m']})")
    print(Path(res.run_dir))
    return res


if __name__ == "__main__":
    main()
