"""The package's import rule, checked on the source (AST): the shape in docs/architecture.md holds.

    fileio -> leaves (geometry, autotune, models, fidelity) -> kernels -> masks, step_cache_policies
        -> config -> plans -> runtime -> ops -> graph -> passes -> report, backend, explain, demo, cli

1. A module imports only modules of its own unit or of units in earlier layers (`fileio`, the
   atomic file writes, imports none of the package; the leaves import only `fileio`).
2. No import cycles between modules.
3. No function-local (or class-level) imports of the package's own modules: the dependency graph
   is what the top of each file says. Optional third-party packages may still be imported lazily.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = "ditcompile"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: list[set[str]] = [
    {"fileio"},                                            # atomic file writes: the standard library only
    {"geometry", "autotune", "models", "fidelity", "compat"},  # leaves: torch, stdlib (and diffusers), fileio
    {"kernels"},
    {"masks", "step_cache_policies"},
    {"config"},
    {"plans"},
    {"runtime"},
    {"ops"},
    {"graph"},
    {"passes"},
    {"report", "backend", "explain", "demo", "tuning", "cli", "__init__", "__main__"},
]
LEAVES = LAYERS[1]


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def unit_of(module: str, package: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(unit: str, layers: list[set[str]]) -> int:
    for i, layer in enumerate(layers):
        if unit in layer:
            return i
    raise AssertionError(f"unit {unit!r} is in no layer of tests/test_layers.py: place it in LAYERS")


def resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool, modules: set[str]) -> list[str]:
    """The package modules an import statement names (submodules when `from x import sub`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.append(sub if sub in modules else target)
    return found


def module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run when the module is imported: the body and the branches of
    top-level if / try blocks, not the bodies of functions or classes."""
    out = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.If):
            out += module_level(stmt.body) + module_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            out += module_level(stmt.body) + module_level(stmt.orelse) + module_level(stmt.finalbody)
            for handler in stmt.handlers:
                out += module_level(handler.body)
    return out


def _imports_by_name(node: ast.AST, package: str) -> bool:
    """`importlib.import_module("<package>...")` or `__import__("<package>...")` with a literal name."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return False
    name = node.args[0].value
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return called in ("import_module", "__import__") and isinstance(name, str) and (
        name == package or name.startswith(package + "."))


def scan(root: Path, package: str) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> package modules it imports, function-local import violations)."""
    files = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    edges: dict[str, set[str]] = {m: set() for m in files}
    local: list[str] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        top_level = {id(n) for n in module_level(tree.body)}
        for node in ast.walk(tree):
            if _imports_by_name(node, package):
                local.append(f"{path.relative_to(root.parent)}:{node.lineno}: import by name "
                             f"{node.args[0].value!r}: import the module at the top of the file")
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in resolve(node, module, is_package, modules)
                       if t == package or t.startswith(package + ".")]
            if not targets:
                continue
            if id(node) not in top_level:
                local.append(f"{path.relative_to(root.parent)}:{node.lineno}: function-local import of {targets}")
            edges[module].update(targets)
    return edges, local


def layer_violations(edges: dict[str, set[str]], package: str, layers: list[set[str]]) -> list[str]:
    """Imports that go sideways or up the layers (the last layer's units may import each other)."""
    out = []
    for module, targets in edges.items():
        unit = unit_of(module, package)
        for target in sorted(targets):
            other = unit_of(target, package)
            if other == unit:
                continue
            mine, theirs = layer_of(unit, layers), layer_of(other, layers)
            if mine == 0:
                out.append(f"{module} imports {target}: {unit!r} is in the first layer: it imports none of the package")
            elif theirs > mine or (theirs == mine and mine != len(layers) - 1):
                out.append(f"{module} imports {target}: {other!r} is not in a layer before {unit!r}")
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (one path per cycle)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def check(root: Path, package: str, layers: list[set[str]]) -> list[str]:
    edges, local = scan(root, package)
    problems = local + layer_violations(edges, package, layers)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def test_the_package_follows_the_import_rule():
    problems = check(ROOT, PACKAGE, LAYERS)
    assert not problems, "\n".join(problems)


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p, ROOT, PACKAGE), PACKAGE) for p in ROOT.rglob("*.py")}
    for unit in units:
        layer_of(unit, LAYERS)


def test_the_checker_finds_upward_imports_cycles_and_local_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "kernels").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "geometry.py": "from .kernels import k\n",                        # a leaf importing the package
        "kernels/__init__.py": "",
        "kernels/k.py": "from ..passes import p\n",                       # upward
        "passes.py": "def f():\n    from . import geometry\n",            # function-local
        "report.py": ("import importlib\nif True:\n    def g():\n        from .ops import x\n"
                      "h = importlib.import_module('pkg.ops')\n"),               # local inside a top-level if; by name
        "ops.py": "from . import graph\n",                                # cycle ops <-> graph ...
        "graph.py": "from .ops import x\n",                               # ... and graph -> ops is fine alone
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    layers = [{"geometry"}, {"kernels"}, {"ops"}, {"graph"}, {"passes"}, {"__init__", "report"}]
    problems = "\n".join(check(pkg, "pkg", layers))
    assert "pkg.geometry imports pkg.kernels.k" in problems
    assert "pkg.kernels.k imports pkg.passes" in problems
    assert "function-local import of ['pkg.geometry']" in problems
    assert "import cycle: pkg.graph -> pkg.ops -> pkg.graph" in problems
    assert "pkg.ops imports pkg.graph" in problems
    assert "pkg.graph imports pkg.ops" not in problems
    assert "report.py:4: function-local import of ['pkg.ops']" in problems
    assert "report.py:5: import by name 'pkg.ops'" in problems
