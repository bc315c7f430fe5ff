"""Optimizer names checked before anything heavy is imported: a misspelt ``torch.optim.Nadam`` or
``adabelif`` is refused in a moment, with "did you mean", instead of after the 10-30 s that importing
torch and pytorch_optimizer takes on a loaded machine.

The check reads source, never imports: the names a module binds at its top level (imports,
assignments, functions, classes, and what its ``from M import *`` lines bring, followed through
the modules they name), found with ``ast`` from the module's file, which ``importlib`` locates
without importing the package.  It refuses only where it is sure: a module that computes its names
(a module ``__getattr__``, a star import it cannot follow, no source file) gives no answer, and the
name is then resolved by importing, as before.  pytorch_optimizer's registry (its bare names) is
read the same way, from the ``OPTIMIZER_LIST`` its ``load_optimizer`` indexes; tests check both
against the imported modules.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path

from ..errors import FocuslabError
from . import builtin
from .spec import Parsed

ZOO = "pytorch_optimizer"
ZOO_HINT = "pip install 'focuslab[zoo]' (pytorch-optimizer)"


@lru_cache(maxsize=None)
def _package_root(top: str):
    """(directory or file of the installed top-level module ``top``) without importing it; None when
    it is not installed."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else False


def installed(top: str) -> bool:
    return _package_root(top) is not None


def source_of(module: str) -> Path | None:
    """The .py file of ``module`` (a package's __init__.py), found without importing; None when
    there is none to read (not installed, a compiled extension, a namespace package)."""
    parts = module.split(".")
    root = _package_root(parts[0])
    if not root:
        return None
    if root.is_file():
        return root if len(parts) == 1 else None
    path = root
    for part in parts[1:]:
        if (path / part / "__init__.py").is_file():
            path = path / part
        elif (path / f"{part}.py").is_file() and part == parts[-1]:
            return path / f"{part}.py"
        else:
            return None
    init = path / "__init__.py"
    return init if init.is_file() else None


def _top_level(body):
    """The statements at a module's top level, including those inside if/try/with/for blocks."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or type(node).__name__ == "TryStar":
            for field in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, field, None) or [])
            for handler in getattr(node, "handlers", None) or []:
                yield from _top_level(handler.body)


@lru_cache(maxsize=256)
def names_in_file(path: str, package: str = "", depth: int = 0) -> frozenset | None:
    """Names the module in ``path`` binds at its top level (None: cannot be told from its source).
    ``package``: the module's package, to follow relative star imports."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names: set[str] = set()
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None  # names made on demand
            names.add(node.name)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name != "*":
                    names.add(a.asname or a.name)
                    continue
                base = node.module or ""
                if node.level:
                    pkg = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                    base = ".".join([*pkg, base] if base else pkg)
                found = module_names(base, depth + 1) if base and depth < 4 else None
                if found is None:
                    return None
                names.update(n for n in found if not n.startswith("_"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return frozenset(names)


def module_names(module: str, depth: int = 0) -> frozenset | None:
    """Names ``module`` binds at its top level, read from its source (None: cannot be told)."""
    path = source_of(module)
    if path is None:
        return None
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return names_in_file(str(path), package, depth)


@lru_cache(maxsize=None)
def zoo_registry() -> frozenset | None:
    """pytorch_optimizer's registry names (lower case), read from the source of its optimizer
    package: the classes of ``OPTIMIZER_LIST``, which ``load_optimizer`` indexes by lower-case
    name.  None when that list cannot be read (another layout: the import decides)."""
    path = source_of(f"{ZOO}.optimizer")
    if path is None:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "OPTIMIZER_LIST" and isinstance(node.value, ast.List):
            if all(isinstance(e, ast.Name) for e in node.value.elts):
                return frozenset(e.id.lower() for e in node.value.elts)
    return None


def close(name: str, candidates, n: int = 1) -> list[str]:
    """The candidates closest to ``name``: those that differ only in case first (the nearest in
    case first), then difflib's, with case, then without."""
    candidates = sorted(set(candidates))
    same = [c for c in candidates if c.lower() == name.lower()]
    if same:
        return sorted(same, key=lambda c: -difflib.SequenceMatcher(None, name, c).ratio())[:n]
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.75)
    if found:
        return found
    lower = {c.lower(): c for c in candidates}
    return [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.75)]


def _mean(matches, prefix: str = "") -> str:
    return f" (did you mean {prefix}{matches[0]}?)" if matches else ""


def precheck(p: Parsed, where: str) -> None:
    """Refuse ``p`` in one line if its source shows it cannot resolve (see the module docstring);
    say nothing when the source cannot tell."""
    if p.kind == "name":
        if p.target in builtin.SPELLINGS:
            return
        if not installed(ZOO):
            raise FocuslabError(f"{where}: unknown optimizer {p.target!r}{_mean(close(p.target, builtin.SPELLINGS))}; a "
                                "bare name is a built-in (adam, adamw, signum, focus, sgd, lion) or a pytorch_optimizer "
                                f"name ({ZOO_HINT}); a torch class is module.Class or path/to/file.py:Class")
        registry = zoo_registry()
        if registry is None or p.target.lower() in registry:
            return
        raise FocuslabError(f"{where}: unknown optimizer {p.target!r}"
                            f"{_mean(close(p.target, [*builtin.SPELLINGS, *registry]))}; built-ins: adam, adamw, "
                            f"signum, focus, sgd, lion; pytorch_optimizer has {len(registry)} more (`focuslab "
                            "optimizers --zoo` lists them)")
    if p.kind == "file":
        path = Path(p.target).expanduser()
        if not path.is_file():
            raise FocuslabError(f"{where}: file not found: {p.target}")
        names = names_in_file(str(path.resolve()))
        if names is not None and p.cls not in names:
            raise FocuslabError(f"{where}: {path.resolve()} defines no {p.cls!r}{_mean(close(p.cls, names))}")
        return
    parts = p.target.split(".")
    if not installed(parts[0]):
        hint = f": {ZOO_HINT}" if parts[0] == ZOO else ""
        raise FocuslabError(f"{where}: cannot import module {parts[0]!r} (no module named {parts[0]!r}){hint}")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if source_of(module) is None:
            continue
        names = module_names(module)
        attr = parts[cut]
        if names is not None and attr not in names:
            public = [n for n in names if not n.startswith("_")]
            raise FocuslabError(f"{where}: module {module!r} has no {attr!r}{_mean(close(attr, public), module + '.')}")
        return
