"""The command-line options that ``raysim compare``, ``raysim stress`` and ``raysim tune`` share,
added by one function, :func:`add_experiment_options`, so that each means the same everywhere
(docs/architecture.md, "Experiments"):

``--set KEY=VALUE`` (repeatable), ``--out DIR``, ``--max-parallel K`` (``--parallel K`` for
``tune``), ``--cold``, ``--plot-format png|pdf|svg``, ``--dry-run``, ``--no-progress``.

Each command names its own things in the help texts (runs, cells, trials) and adds its own
options.
"""

from __future__ import annotations

import argparse
import json

PLOT_FORMATS = ("png", "pdf", "svg")


def add_experiment_options(p: argparse.ArgumentParser, *, runs: str = "runs", set_help: str, out_help: str,
                           parallel_help: str, plot_help: str, dry_run_help: str,
                           progress_help: str = "no progress bar", parallel_flag: str = "--max-parallel",
                           dry_run_flags: tuple[str, ...] = ("--dry-run",), dry_run_dest: str = "dry_run") -> None:
    """Add the shared options to the parser of an experiment command.

    ``runs``: what one unit of the command is called in the help of ``--cold``; ``parallel_flag``
    is ``--max-parallel`` (compare, stress) or ``--parallel`` (tune), stored as
    ``args.max_parallel`` / ``args.parallel``; ``dry_run_flags`` / ``dry_run_dest`` let ``tune``
    keep ``--check`` as the first spelling of its dry run."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--out", help=out_help)
    p.add_argument(parallel_flag, type=int, default=None, help=parallel_help)
    p.add_argument("--cold", action="store_true",
                   help=f"each of the {runs} with fresh actors in its own placement group (default: {runs} that "
                        "share their data run batched on a warm pool of actors)")
    p.add_argument("--plot-format", choices=list(PLOT_FORMATS), default=None, help=plot_help)
    p.add_argument(*dry_run_flags, dest=dry_run_dest, action="store_true", help=dry_run_help)
    p.add_argument("--no-progress", action="store_true", help=progress_help)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, with ``--plot-format`` as ``run.plot_format`` when given."""
    fmt = getattr(args, "plot_format", None)
    return list(args.overrides) + ([f"run.plot_format={json.dumps(fmt)}"] if fmt else [])
