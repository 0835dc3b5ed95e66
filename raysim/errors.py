"""The user-facing error of raysim, at the bottom of the import graph.

``ConfigError`` is raised by the configuration, the data loaders, the run and the many-runs
layers alike; it lives here, importing nothing, so that ``raysim.data`` does not have to
import ``raysim.config`` for it (docs/architecture.md, "Layers"). ``raysim.config`` and
``raysim`` re-export it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user (field, value, fix)."""
