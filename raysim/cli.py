"""The ``raysim`` command line.

    raysim run [CONFIG.toml] [--set key=value ...]     one experiment (default scenario without a file)
    raysim run ... --dry-run                           print what would run; start nothing
    raysim report RUN_DIR [--format png|pdf|svg]       re-draw plots and print the summary of a run
    raysim --version
    raysim config [CONFIG.toml] [--set ...] [--doc]    print the resolved config, or every key documented
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from raysim.commands import COMMANDS, PLUGINS, Command, command  # noqa: F401 - the registry, re-exported
from raysim.config import Config, ConfigError, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="TOML config file (default: the built-in default scenario)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set algorithm.rho=0.1 (repeatable)")


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


# -- run ---------------------------------------------------------------------------------------

def _run_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--out", help="run directory (default: <run.out_dir>/<run.name>-<timestamp>)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar or summary table; print only the run directory (for scripts)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and print what would run; start nothing (no Ray), exit 0")
    p.add_argument("--force", action="store_true",
                   help="replace a finished or unfinished run already in --out (its files are removed first)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a killed run from its newest readable checkpoint (uses RUN_DIR/config.toml; "
                        "checkpoints are written every run.checkpoint_every rounds)")


@command("run", "run one federated experiment")(_run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from raysim.runner import load_resume_config, run

    if args.resume:
        if args.force:
            raise ConfigError("--force replaces a run, --resume continues it; use one of them")
        if args.config or args.out:
            raise ConfigError("--resume takes the configuration and the directory of the run it continues; "
                              "drop the CONFIG file and --out")
        extra = list(args.overrides) + (["run.progress=false"] if args.no_progress else [])
        cfg = load_resume_config(args.resume)
        if extra:
            from raysim.config import apply_overrides, validate

            cfg = validate(apply_overrides(cfg.to_toml_dict(), extra))
        if args.dry_run:
            print(describe_run(cfg, resume=args.resume))
            return 0
        res = run(cfg, resume=True)
        if not cfg.run.progress:
            print(res.run_dir)
        return _outcome(res)
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.run_dir={json.dumps(args.out)}")
    if args.no_progress:
        overrides.append("run.progress=false")
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        print(describe_run(cfg))
        return 0
    res = run(cfg, force=args.force)
    if not cfg.run.progress:
        print(res.run_dir)
    return _outcome(res)


def _outcome(res) -> int:
    """The exit code of a finished run (``raysim.outcome``); a run that is not ok says why."""
    from raysim.outcome import EXPLAIN, OK, exit_code

    status = res.summary.get("status", OK)
    if status != OK:
        print(f"raysim: run ended with status {status}: {res.summary.get('status_reason', '')}; "
              f"{EXPLAIN.get(status, '')} (exit code {exit_code(status)})", file=sys.stderr)
    return exit_code(status)


def describe_run(cfg: Config, resume: str | None = None) -> str:
    """What ``raysim run`` would do with this config (for --dry-run): one line per fact."""
    d, a, r, c = cfg.data, cfg.algorithm, cfg.run, cfg.cluster
    where = (f"{resume} (resumed from its newest checkpoint)" if resume else
             r.run_dir or f"{r.out_dir}/{r.name}-<timestamp>")
    source = (f"real data {d.dataset}" + (f" ({d.emnist_split})" if d.dataset == "emnist" else "")
              if d.kind == "real" else f"custom data from {d.loader}" if d.kind == "custom" else f"synthetic, p = {d.p}")
    if getattr(cfg, "model", None) is not None and cfg.model.module:
        source += f", model {cfg.model.module}"
    ray_at = (c.address or f"RAY_ADDRESS={_env('RAY_ADDRESS')}") if (c.address or _env("RAY_ADDRESS")) \
        else "a new local Ray instance"
    backend = getattr(c, "backend", "ray")
    rho = getattr(a, "rho", None)
    lines = [
        f"would run: {a.name} on task {d.task}, {source}, {d.n_clients} clients",
        f"  rounds {r.rounds}, eval every {r.eval_every}, seed {r.seed}"
        + (f", density target rho = {rho:g}" if rho is not None else ""),
        f"  participation: {cfg.participation.kind}, rate {cfg.participation.rate:g}"
        + (f", dropout {cfg.participation.dropout:g}" if cfg.participation.dropout else "")
        + (f"; partition {cfg.partition.kind}" if d.kind == "real" else ""),
        ("  backend: in this process (cluster.backend = local, no Ray)" if backend == "local" else
         f"  Ray: {cfg.n_actors()} client actors x {c.num_cpus:g} CPU + server {c.server_num_cpus:g} CPU on {ray_at}"),
        f"  run directory: {where}",
        f"  plots: {r.plot_format if r.plots else 'none'}; checkpoint every {r.checkpoint_every or 'never'}",
        "dry run: nothing started",
    ]
    return "\n".join(lines)


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name)


# -- report ------------------------------------------------------------------------------------

def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `raysim run`")
    p.add_argument("--format", choices=["png", "pdf", "svg"], default=None,
                   help="file format of the plots (default: run.plot_format of the run's config.toml)")


@command("report", "re-draw the plots and print the summary of a run directory")(_report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from raysim.report import plot_run
    from raysim.runner import print_summary

    d = Path(args.run_dir)
    if not (d / "metrics.csv").exists():
        raise ConfigError(f"{d} is not a run directory (no metrics.csv); give the folder `raysim run` printed")
    paths = plot_run(d, fmt=args.format)
    summary_path = d / "summary.json"
    if summary_path.exists():
        print_summary(json.loads(summary_path.read_text()), d)
    for p in paths:
        print(p)
    return 0


# -- config ------------------------------------------------------------------------------------

def _cfg_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--doc", action="store_true", help="list every key with its default and meaning")


@command("config", "print the resolved configuration (or document every key)")(_cfg_args)
def cmd_config(args: argparse.Namespace) -> int:
    if args.doc:
        print(config_doc())
        return 0
    import tomli_w

    print(tomli_w.dumps(_load(args).to_toml_dict()))
    return 0


def _key_lines(fields: dict[str, Any]) -> list[str]:
    out = []
    for key, kf in fields.items():
        ann = kf.annotation
        allowed = ""
        args = getattr(ann, "__args__", None)
        if getattr(ann, "__origin__", None) is not None and args and all(isinstance(a, str) for a in args):
            allowed = f" (one of: {', '.join(args)})"
        out.append(f"{key} = {kf.default!r}  # {kf.description or ''}{allowed}")
    return out


def algorithm_doc() -> list[str]:
    """The ``[algorithm]`` part of ``raysim config --doc``: the common knobs, then every
    registered algorithm with the knobs of its own (docs/algorithms.md section 10)."""
    from raysim import registry
    from raysim.config import AlgorithmSection

    common = AlgorithmSection.model_fields
    lines = ["[algorithm]  # the chosen algorithm and its knobs; a key the chosen algorithm does not have is an error",
             "# knobs of every algorithm:"]
    lines += _key_lines(common)
    lines += ["# [algorithm.NAME] sub-tables hold knobs for algorithm NAME and the algorithms built on it, applied",
              "# only when one of them runs (scenario files shared by several algorithms).", ""]
    for name in registry.names():
        cls = registry.algorithm_class(name)
        bases = registry.built_on(name)[1:]
        para = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        head = f"# algorithm.name = {name!r}: {para}"
        inherited = set(common)
        if bases:
            head += f" Built on {bases[0]}: its knobs, and those below."
            inherited |= set(registry.algorithm_class(bases[0]).Params.model_fields)
        lines.append(head)
        own = {k: f for k, f in cls.Params.model_fields.items() if k not in inherited}
        lines += [f"#   {ln}" for ln in _key_lines(own)] or ["#   (no knobs of its own)"]
    lines.append("")
    return lines


def config_doc() -> str:
    lines = ["# raysim configuration keys (section.key = default  # meaning)", ""]
    for sec_name, f in Config.model_fields.items():
        if sec_name == "algorithm":
            lines += algorithm_doc()
            continue
        model = f.annotation
        lines.append(f"[{sec_name}]  # {(model.__doc__ or '').strip().splitlines()[0]}")
        lines += _key_lines(model.model_fields)  # type: ignore[union-attr]
        lines.append("")
    from raysim import defaults

    lines.append("# Per-task defaults: keys left unset (None above) take their task's value.")
    for ln in (defaults.__doc__ or "").strip().splitlines()[2:]:
        lines.append(f"# {ln}".rstrip())
    keys = list(defaults.KEYS)
    lines.append("# task   " + "  ".join(keys))
    for task, table in defaults.TASK_DEFAULTS.items():
        lines.append(f"# {task:<6} " + "  ".join(f"{table[k]:<{len(k)}g}" for k in keys))
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    import importlib

    for mod in PLUGINS:
        importlib.import_module(mod)
    parser = argparse.ArgumentParser(prog="raysim", description="Ray-based simulation of sparse federated learning.")
    parser.add_argument("--version", action="version", version=version_string(),
                        help="print the raysim version (and those of Ray, Optuna, PyTorch) and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def version_string() -> str:
    """``raysim X.Y.Z (ray ..., optuna ..., torch ..., python ...)`` from the installed metadata."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from raysim import __version__

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return (f"raysim {__version__} (ray {v('ray')}, optuna {v('optuna')}, torch {v('torch')}, "
            f"python {platform.python_version()})")


def main(argv: list[str] | None = None) -> int:
    from raysim import outcome
    from raysim.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except outcome.RunRefused as exc:
        print(f"raysim: error: {exc}", file=sys.stderr)
        return outcome.exit_code(exc.status)
    except outcome.Busy as exc:
        print(f"raysim: error: {exc}", file=sys.stderr)
        return outcome.EXIT_BUSY
    except (ConfigError, CheckpointError) as exc:
        print(f"raysim: error: {exc}", file=sys.stderr)
        return outcome.EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"raysim: error: {exc}", file=sys.stderr)
        return outcome.EXIT_USAGE
    except BrokenPipeError:
        # the reader of our output went away (``raysim ... | head``): not an error of raysim; point
        # stdout at /dev/null so that the interpreter's final flush does not raise again
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return outcome.EXIT_OK
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"raysim: error: {exc.strerror}"
                  f"{' writing ' + str(exc.filename) if exc.filename else ''}: free space on that disk or give the "
                  "run a directory on another one (--out); a checkpointed run continues with --resume",
                  file=sys.stderr)
            return outcome.EXIT_USAGE
        raise
    except KeyboardInterrupt:
        print("raysim: interrupted; rows already written stay in the run directory", file=sys.stderr)
        return outcome.EXIT_INTERRUPTED


if __name__ == "__main__":
    # Run through the imported module so plugin sub-commands register where main() looks.
    from raysim.cli import main as _main

    sys.exit(_main())
