"""The one interface the run loop drives, and the choice of the backend behind it.

``raysim.runner`` runs a whole run against a :class:`Simulation` and never imports Ray
(docs/architecture.md, "Layers" and "Backends"). Three backends implement it:

* ``cluster.backend = "ray"`` (default): :class:`raysim.cluster.driver.RaySimulation`, a server
  actor and client actors on Ray (started here, with Ray itself when no instance is running);
* ``cluster.backend = "local"``: :class:`raysim.local.LocalSimulation`, the same compute cores
  in this process, no Ray (grown from the single-process reference, ``raysim.reference``);
* a run on a warm pool of actors (:class:`raysim.cluster.warm.WarmSimulation`), which the
  many-runs layer hands to the run as a ``simulation(cfg)`` factory.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from raysim.config import Config


class Simulation(Protocol):
    """One run's compute, advanced round by round by ``raysim.runner``.

    ``info``: the run's facts (``p``, ``P``, ``m``, ``total_steps``, ``steps_per_round``,
    ``prune_start``, ``federation`` statistics, the server's ``pid`` and ``node``); ``actors``,
    ``blocks`` (client ids per actor), ``imbalance`` and ``actor_info``: the layout written to
    ``federation.json``.
    """

    info: dict[str, Any]
    actors: list[Any]
    blocks: list[np.ndarray]
    imbalance: float | None
    actor_info: list[dict[str, Any]]

    @property
    def total_rounds(self) -> int: ...

    def run_round(self) -> dict[str, Any]:
        """Run the next round's steps; its server-side statistics (``round``, ``round_s``, ...)."""

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        """The deployed model's metrics and the clients' fairness scores."""

    def deployed(self, final: bool = True) -> np.ndarray:
        """The deployed parameter vector."""

    def client_scores(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-client held-out scores of the final deployed model, as (client ids, scores) pairs."""

    def state_dict(self) -> dict[str, Any]:
        """The server state and the position (between rounds), for a checkpoint."""

    def restore(self, sd: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""

    def close(self) -> None:
        """Release the backend's resources (actors; Ray itself when it was started for this run)."""


def open_simulation(cfg: Config, placement_group: Any = None,
                    simulation: Callable[[Config], Simulation] | None = None,
                    data_checked: bool = False) -> Simulation:
    """The simulation of one run: in this process for ``cluster.backend = "local"``, else the
    ``simulation(cfg)`` factory's (a warm pool), else fresh Ray actors (in ``placement_group``
    when given; Ray is started, or joined, as ``docs/architecture.md, "Where Ray runs"`` says, and
    ended by :meth:`Simulation.close`). ``data_checked``: the caller has run the data preflight
    (``raysim.preflight.check_run``), so the Ray backend does not read the data files again."""
    if cfg.cluster.backend == "local":
        from raysim.local import LocalSimulation

        return LocalSimulation(cfg)
    if simulation is not None:
        return simulation(cfg)
    from raysim.cluster.driver import open_ray_simulation

    return open_ray_simulation(cfg, placement_group=placement_group, check_data=not data_checked)
