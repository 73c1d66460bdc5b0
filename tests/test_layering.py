"""The package's layers point one way, down the data path, and no modules import each other in a cycle.

A layer may import only from layers listed before it (and from itself). The order is the order data
flows: the patient's biology, who the patients are, what is observed, how it is graded, how it is managed,
how it is integrated, one patient's course, running cohorts, fitting, trial questions, reports, commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vpop"
LAYERS = (
    ("errors", "stats", "tracing", "configs", "data"),
    ("model",),
    ("population",),
    ("observation",),
    ("grading",),
    ("policy",),
    ("solver",),
    ("engine",),
    ("run",),
    ("fitting",),
    ("trials",),
    ("report",),
    ("cli",),
)
FACADES = {"vpop", "vpop.__main__"}  # the package's front door may re-export from any layer
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every vpop module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vpop"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("vpop"):
            for alias in node.names:  # `from vpop.pkg import module` imports the module, else a name of pkg
                candidate = PACKAGE.parent / (node.module.replace(".", "/") + f"/{alias.name}")
                if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                    found.add(f"{node.module}.{alias.name}")
                else:
                    found.add(node.module)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    unplaced = sorted(m for m in all_modules() if m not in FACADES and layer(m) not in RANK)
    assert not unplaced, f"modules outside every layer (add them to LAYERS or move them): {unplaced}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imports in graph.items():
        if module in FACADES:
            continue
        for target in imports:
            if target in ("vpop",) and module != "vpop":
                if not target.startswith("vpop."):
                    continue
            own, other = layer(module), layer(target)
            if other is None or other not in RANK or own not in RANK:
                continue
            if RANK[other] > RANK[own]:
                bad.append(f"{module} imports {target} ({other} is above {own})")
    return bad


def test_no_module_imports_from_a_layer_above():
    assert upward_imports(all_modules()) == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle among modules (packages' __init__ re-exports count as edges), or None."""
    nodes = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(nodes[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(nodes):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = {m: ts for m, ts in all_modules().items() if m not in FACADES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_reaches_into_another_modules_private_names():
    """`from vpop.x import _helper` across modules couples them to internals."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vpop"):
                bad += [f"{module_name(path)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id.endswith("_mod"):
                bad.append(f"{module_name(path)}: {node.value.id}.{node.attr}")
    assert bad == []


# The checks themselves must be able to fail.
def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"vpop.model.equations": {"vpop.engine.course"}, "vpop.engine.course": {"vpop.model.equations"}}
    assert upward_imports(graph) == ["vpop.model.equations imports vpop.engine.course (engine is above model)"]
    assert find_cycle(graph) is not None
    assert find_cycle({"vpop.a.x": {"vpop.a.y"}, "vpop.a.y": set()}) is None


@pytest.mark.parametrize("name", ["engine", "run", "fitting"])
def test_layers_are_packages(name):
    assert (PACKAGE / name / "__init__.py").exists()
