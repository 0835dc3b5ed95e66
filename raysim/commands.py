"""The registry of ``raysim`` sub-commands, below every module that adds one.

A module that adds a sub-command (``raysim.compare``, ``raysim.stress``, ``raysim.tuning.cli``,
``raysim.bench``) registers it here with :func:`command`; ``raysim.cli`` imports those modules
(:data:`PLUGINS`) and builds its parser from :data:`COMMANDS`. The sub-commands never import
``raysim.cli``, so the command line and its sub-commands do not import each other
(docs/architecture.md, "Layers").
"""

from __future__ import annotations

import argparse
from typing import Callable

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {}
#: modules that register more sub-commands with :func:`command` (imported by ``raysim.cli.build_parser``)
PLUGINS: list[str] = ["raysim.stress", "raysim.compare", "raysim.tuning.cli", "raysim.bench"]


def command(name: str, help_text: str):
    """Register a sub-command: the decorated function adds arguments; returns the runner."""
    def deco(add_args):
        def wrap(run_fn: Command):
            COMMANDS[name] = (add_args, run_fn, help_text)
            return run_fn
        return wrap
    return deco
