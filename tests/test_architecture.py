"""The module graph (every import, lazy ones too) has no cycle and no upward import.

Layers, low to high (docs/ARCHITECTURE.md):
  0  errors, values, grids, axes, devices, options, optim (torch optimizer classes: import nothing of
     focuslab's)
  1  toy (the simulator's engines: they run the rules and torch classes they are handed, and know
     no optimizer by name)
  2  config, optimizers (the spec grammar, the definitions, the one optimizer interface over the
     engines), tuning (search spaces, the design, tuning curves), results, runner, phase (the store,
     reductions)
  3  scan, refine (a package), mnist, gpt2, diagnostics, slurm, selftest (studies)
  4  plot (figures from results), bridge (reads other studies' results, as plot does, and runs the
     toy scan it needs), report (the docs' tables from results)
  5  cli (the command tree, installed as focuslab.cli), focuslab.__main__
A module may import its own layer or lower ones, never a higher one.  Inside the refine package the
same holds for its rooms, in the order REFINE_ROOMS (statistics lowest, run highest), and no room
holds more than REFINE_MAX_LINES lines; likewise for the rooms of scan, bridge and diagnostics
(ROOMS), and no module anywhere is over MAX_LINES lines unless LONG_ON_PURPOSE names it.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "errors": 0, "values": 0, "axes": 0, "optim": 0, "devices": 0, "options": 0, "grids": 0,
    "toy": 1,
    "config": 2, "optimizers": 2, "tuning": 2, "results": 2, "runner": 2, "phase": 2,
    "scan": 3, "refine": 3, "mnist": 3, "gpt2": 3, "diagnostics": 3, "slurm": 3, "selftest": 3,
    "plot": 4, "bridge": 4, "report": 4,
    "cli": 5, "__main__": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "focuslab").rglob("*.py"):
        rel = path.relative_to(ROOT / "focuslab").with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["focuslab", *parts])] = path
    for path in (ROOT / "cli").rglob("*.py"):
        rel = path.relative_to(ROOT / "cli").with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["focuslab", "cli", *parts])] = path
    return out


def _imports(name: str, path: Path, known: set) -> set:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def _graph():
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else "focuslab"
    return LAYERS.get(part, 0)


def test_every_module_has_a_layer():
    missing = {m.split(".")[1] for m in _graph() if m.count(".") and m.split(".")[1] not in LAYERS}
    assert not missing, f"give these a layer in tests/test_architecture.py and docs/ARCHITECTURE.md: {missing}"


def test_no_upward_import():
    bad = [(m, t) for m, targets in _graph().items() for t in targets
           if t != "focuslab" and _layer(t) > _layer(m)]
    assert not bad, "\n".join(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})" for m, t in bad)


def test_no_import_cycle():
    graph = _graph()
    graph = {m: {t for t in ts if t != "focuslab" and not m.startswith(t + ".")} for m, ts in graph.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


#: focuslab.refine's rooms, low to high: a room imports only rooms before it.  The race sees its
#: candidates only through the lattice, and the simulator only through the samplers.
REFINE_ROOMS = ["statistics", "settings", "lattice", "evidence", "procedure", "samplers", "tables", "plan", "run"]
REFINE_MAX_LINES = 500


def test_the_refine_package_imports_downward_room_by_room():
    graph = _graph()
    rank = {f"focuslab.refine.{room}": i for i, room in enumerate(REFINE_ROOMS)}
    assert set(rank) | {"focuslab.refine"} == {m for m in graph if m == "focuslab.refine" or
                                               m.startswith("focuslab.refine.")}, "name new rooms in REFINE_ROOMS"
    bad = [(m, t) for m in rank for t in graph[m] if t in rank and rank[t] >= rank[m]]
    assert not bad, "\n".join(f"{m} imports {t}, a room at or above it" for m, t in bad)
    assert not [m for m in rank if "focuslab.refine" in graph[m]], "a room imports the package's __init__"
    # the procedure and the lattice know nothing of files, tables or the simulator
    for room in ("statistics", "settings", "lattice", "evidence", "procedure"):
        outside = {t for t in graph[f"focuslab.refine.{room}"] if not t.startswith("focuslab.refine")}
        assert outside <= {"focuslab", "focuslab.errors", "focuslab.options"}, (room, outside)


def test_no_refine_room_is_over_the_limit():
    long = {p.name: n for p in (ROOT / "focuslab" / "refine").glob("*.py")
            if (n := len(p.read_text().splitlines())) > REFINE_MAX_LINES}
    assert not long, long


#: Packages split into rooms along their seams, low to high: a room imports only rooms before it and
#: never its package's __init__ (which re-exports the rooms' names for the rest of focuslab).
ROOMS = {
    "scan": ["plan", "compute", "store", "run"],
    "bridge": ["inputs", "readings"],
    "diagnostics": ["gradients", "noise", "sharpness"],
}
#: No module of focuslab (or cli) is longer than this, unless it is named here with the reason in its
#: module docstring (one job that reads better whole).
MAX_LINES = 500
LONG_ON_PURPOSE: dict[str, str] = {}


@pytest.mark.parametrize("package", sorted(ROOMS))
def test_split_packages_import_downward_room_by_room(package):
    graph = _graph()
    rank = {f"focuslab.{package}.{room}": i for i, room in enumerate(ROOMS[package])}
    assert set(rank) | {f"focuslab.{package}"} == {m for m in graph if m == f"focuslab.{package}" or
                                                   m.startswith(f"focuslab.{package}.")}, "name new rooms in ROOMS"
    bad = [(m, t) for m in rank for t in graph[m] if t in rank and rank[t] >= rank[m]]
    assert not bad, "\n".join(f"{m} imports {t}, a room at or above it" for m, t in bad)
    assert not [m for m in rank if f"focuslab.{package}" in graph[m]], "a room imports the package's __init__"


def test_no_module_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in [*(ROOT / "focuslab").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= set(LONG_ON_PURPOSE), {k: v for k, v in long.items() if k not in LONG_ON_PURPOSE}
    for path, reason in LONG_ON_PURPOSE.items():
        assert reason in (ROOT / path).read_text(), f"{path}: its docstring should say why it is whole"


def test_every_package_is_listed_for_the_wheel():
    """pyproject's explicit package list must name every package under focuslab/: an editable install
    finds a missing one anyway, a wheel (`pip install .`) silently leaves it out."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "focuslab").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
    assert {"focuslab.cli", "focuslab.presets"} <= listed
