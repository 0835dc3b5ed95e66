"""The layering of the raysim package (docs/architecture.md, "Layers"), read from the source.

Every import statement of every module is read with ``ast`` (function-local imports too):

* Ray is imported only under ``raysim/cluster/``;
* no module under ``raysim/cluster/`` imports the run or anything above it;
* every import points down (or sideways, within one layer) in the layer table below, which is
  the table of docs/architecture.md;
* the imports executed when a module is imported (module level, not inside functions) form no
  cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "raysim"

#: bottom to top; a module may import modules of its own layer or of a lower one.
#: Keep in step with the table in docs/architecture.md, "Layers".
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("raysim.errors", "raysim.catalog", "raysim.defaults", "raysim.rng", "raysim.outcome",
                    "raysim.quiet", "raysim.gates", "raysim.metrics", "raysim.checkpoint", "raysim.commands",
                    "raysim.plugins", "raysim.lazy")),
    ("config", ("raysim.config", "raysim.registry")),
    ("model and data", ("raysim.data", "raysim.models", "raysim.algorithms", "raysim.plotstyle", "raysim.report")),
    ("compute", ("raysim.engine", "raysim.preflight")),
    ("backends", ("raysim.local", "raysim.reference", "raysim.cluster")),
    ("simulation", ("raysim.simulation",)),
    ("run", ("raysim.runner",)),
    ("many runs", ("raysim.many",)),
    ("experiment tools", ("raysim.experiments",)),
    ("experiments", ("raysim.compare", "raysim.stress", "raysim.tuning", "raysim.bench")),
    ("interface", ("raysim.cli", "raysim.api", "raysim.__main__", "raysim")),
]

#: what raysim/cluster must never import (the run and everything above it)
ABOVE_CLUSTER = ("raysim.simulation", "raysim.runner", "raysim.many", "raysim.cli", "raysim.api", "raysim.report",
                 "raysim.experiments", "raysim.compare", "raysim.stress", "raysim.tuning", "raysim.bench")


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _package_of(module: str, is_pkg: bool) -> str:
    return module if is_pkg else module.rpartition(".")[0]


def _imports(module: str, path: Path, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported module name, line) of every import in ``path``: ``import a.b`` gives a.b,
    ``from a import b`` gives a.b when that is a module of raysim, else a. Relative imports are
    resolved. With ``module_level_only``, imports inside function bodies and ``if
    TYPE_CHECKING:`` blocks are skipped (they do not run when the module is imported)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = _package_of(module, path.name == "__init__.py")
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = pkg.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, child.lineno))
            elif isinstance(child, ast.Call):
                # importlib.import_module("x") / __import__("x") with a literal name
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name in ("import_module", "__import__") and child.args and isinstance(child.args[0], ast.Constant) \
                        and isinstance(child.args[0].value, str):
                    found.append((child.args[0].value, child.lineno))
            visit(child)

    visit(tree)
    return found


def _raysim_target(name: str) -> str | None:
    """The raysim module an imported name refers to (its longest known prefix), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _layer(module: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None
    for rank, (layer, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if module == pre or module.startswith(pre + "."):
                if best is None or len(pre) > best[0]:
                    best = (len(pre), rank, layer)
    assert best is not None, f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md, 'Layers'"
    return best[1], best[2]


def test_the_walk_sees_the_package():
    """The checks below read every module, function-local imports included (guards the walk)."""
    assert {"raysim.runner", "raysim.cluster.driver", "raysim.cluster.warm", "raysim.many", "raysim.config",
            "raysim.data.real", "raysim.tuning.study"} <= set(MODULES)
    assert "ray" in {n for n, _ in _imports("raysim.cluster.actors", MODULES["raysim.cluster.actors"], False)}
    # function-local imports are seen: the runner opens its simulation inside a function
    assert "raysim.simulation" in {n for n, _ in _imports("raysim.runner", MODULES["raysim.runner"], False)}
    assert "raysim.simulation" not in {n for n, _ in _imports("raysim.runner", MODULES["raysim.runner"], True)}


def test_ray_is_imported_only_under_raysim_cluster():
    bad = []
    for mod, path in MODULES.items():
        if mod == "raysim.cluster" or mod.startswith("raysim.cluster."):
            continue
        for name, line in _imports(mod, path, module_level_only=False):
            if name == "ray" or name.startswith("ray."):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "Ray outside raysim/cluster/ (docs/architecture.md, 'Layers'):\n" + "\n".join(bad)


def test_no_raw_ray_import_line_outside_cluster():
    """The issue's own check: ``grep -rn "import ray" raysim | grep -v raysim/cluster/`` prints nothing."""
    # literally, as grep does: any line holding the text, code or prose, in any file under raysim/
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "raysim").rglob("*"))
           if p.is_file() and "cluster" not in p.relative_to(ROOT / "raysim").parts[:1]
           and p.suffix in (".py", ".toml", ".md", ".txt", ".cfg")
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if "import ray" in line]
    assert not bad, bad


def test_cluster_never_imports_the_layers_above_it():
    bad = []
    for mod, path in MODULES.items():
        if not mod.startswith("raysim.cluster"):
            continue
        for name, line in _imports(mod, path, module_level_only=False):
            target = _raysim_target(name)
            if target and any(target == a or target.startswith(a + ".") for a in ABOVE_CLUSTER):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "raysim/cluster/ calls back up (docs/architecture.md, 'Layers'):\n" + "\n".join(bad)


def test_every_import_points_down():
    bad = []
    for mod, path in MODULES.items():
        rank, layer = _layer(mod)
        for name, line in _imports(mod, path, module_level_only=False):
            target = _raysim_target(name)
            if target is None or target == mod:
                continue
            t_rank, t_layer = _layer(target)
            if t_rank > rank:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} ({layer}) imports {target} ({t_layer})")
    assert not bad, "imports pointing up (docs/architecture.md, 'Layers'):\n" + "\n".join(bad)


def _module_level_graph() -> dict[str, set[str]]:
    """Which raysim modules importing a module executes (its module-level imports, and for an
    import of ``a.b.c`` the packages ``a`` and ``a.b`` too, whose ``__init__`` runs first)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for name, _ in _imports(mod, path, module_level_only=True):
            target = _raysim_target(name)
            if target is None:
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                t = ".".join(parts[:i])
                if t in MODULES and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = dfs(u)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    """The cycle check can fail: a made-up graph with a circle is caught."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_module_level():
    cycle = _find_cycle(_module_level_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_config_and_data_do_not_import_each_other():
    """The circle config.py <-> data/ of issue 12: ConfigError and the dataset/task table live
    below both (raysim.errors, raysim.catalog); the old names still work."""
    cfg_imports = {_raysim_target(n) for n, _ in _imports("raysim.config", MODULES["raysim.config"], False)}
    assert not any(t and t.startswith("raysim.data") for t in cfg_imports), cfg_imports
    from raysim import catalog, errors
    from raysim.config import ConfigError
    from raysim.data.real import TASKS, check_task

    assert ConfigError is errors.ConfigError and TASKS is catalog.TASKS and check_task is catalog.check_task


def test_subcommands_register_without_importing_the_cli():
    for mod in ("raysim.compare", "raysim.stress", "raysim.tuning.cli", "raysim.bench"):
        targets = {_raysim_target(n) for n, _ in _imports(mod, MODULES[mod], False)}
        assert "raysim.cli" not in targets, mod
    from raysim.cli import build_parser
    from raysim.commands import COMMANDS

    build_parser()
    assert {"run", "report", "config", "compare", "stress", "tune", "bench"} <= set(COMMANDS)


def test_modules_above_cluster_import_without_ray():
    """Importing the run loop and the layers above it loads no Ray (Ray arrives with a Ray backend)."""
    import subprocess
    import sys

    mods = ["raysim.runner", "raysim.many", "raysim.simulation", "raysim.local", "raysim.experiments.plan",
            "raysim.experiments.collect", "raysim.experiments.plots", "raysim.experiments.cli", "raysim.compare",
            "raysim.stress",
            "raysim.tuning.study", "raysim.cli"]
    code = f"import sys; import {', '.join(mods)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"importing {mods} imports Ray"


def test_the_ray_driver_imports_without_torch():
    """The driver of a Ray run, a warm study or a comparison never needs torch (the actors do):
    importing the run loop, the many-runs layer and the Ray driver side loads no torch, which
    keeps a second of imports off the start of every study on a laptop."""
    import subprocess
    import sys

    mods = ["raysim.runner", "raysim.many", "raysim.cluster.driver", "raysim.cluster.warm", "raysim.cluster.parallel",
            "raysim.tuning.study", "raysim.compare", "raysim.stress", "raysim.preflight", "raysim.models"]
    code = f"import sys; import {', '.join(mods)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"importing {mods} imports torch"
