"""Torch optimizers that focuslab did not write: a class by import path, a class in a user's file,
or a name from pytorch_optimizer's registry.  Imports torch (and the class's module) only when a
spec names such an optimizer.

An external optimizer is resolved to its *target* -- ``module.Class`` as the user can import it
(``torch.optim.NAdam``, ``pytorch_optimizer.AdaBelief``), or ``/abs/path/file.py:Class`` -- its
settings (constructor arguments, checked against the signature) and param-group keys, and an
*origin* that says which code it is (the distribution and version that provide the module, or the
SHA-256 of a user's file), which goes into every study's digest: a study resumed after an upgrade
of the optimizer's package, or an edit of the file, is refused rather than mixed.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from functools import lru_cache
from pathlib import Path

from ..errors import FocuslabError
from ..values import parse_bool, pythonic
from .lookup import ZOO, ZOO_HINT, precheck
from .spec import Parsed



def _torch_optimizer_base():
    try:
        import torch
    except ImportError:
        raise FocuslabError("an external optimizer is a torch class, and torch is not installed: "
                            "pip install torch (see README for the CPU build)") from None
    return torch.optim.Optimizer


def _import(module: str, where: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        hint = f": {ZOO_HINT}" if module.split(".")[0] == ZOO else ""
        raise FocuslabError(f"{where}: cannot import module {module!r} ({err}){hint}") from None
    except Exception as err:  # the module itself failed
        raise FocuslabError(f"{where}: importing {module!r} failed: {type(err).__name__}: {err}") from None


def zoo_names() -> dict[str, str]:
    """pytorch_optimizer's registry: lower-case name -> class name (empty if not installed)."""
    try:
        import pytorch_optimizer as po
    except ImportError:
        return {}
    out = {}
    for name in po.get_supported_optimizers():
        cls = po.load_optimizer(name)
        out[name.lower()] = cls.__name__
    return out


@lru_cache(maxsize=None)
def _zoo_names_cached() -> tuple:
    return tuple(sorted(zoo_names().items()))


def find_in_zoo(name: str, where: str) -> str:
    """A bare name as ``pytorch_optimizer.Class`` (case-insensitive), or a one-line error."""
    names = dict(_zoo_names_cached())
    if not names:
        raise FocuslabError(f"{where}: unknown optimizer {name!r}; a bare name is a built-in (adam, adamw, "
                            f"signum, focus, sgd, lion) or a pytorch_optimizer name ({ZOO_HINT}); a torch class "
                            "is module.Class or path/to/file.py:Class")
    cls = names.get(name.lower())
    if cls is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(names), n=3)
        raise FocuslabError(f"{where}: unknown optimizer {name!r}"
                            + (f" (did you mean {', '.join(close)}?)" if close else "")
                            + "; built-ins: adam, adamw, signum, focus, sgd, lion; pytorch_optimizer has "
                            f"{len(names)} more (`focuslab optimizers` lists them)")
    return f"{ZOO}.{cls}"


@lru_cache(maxsize=None)
def _packages() -> dict:
    from importlib import metadata

    return metadata.packages_distributions()


@lru_cache(maxsize=None)
def _distribution(module_name: str) -> str:
    """'pytorch_optimizer 4.1.0' for a module of an installed distribution, else ''."""
    from importlib import metadata

    top = module_name.split(".")[0]
    try:
        dists = _packages().get(top, [])
        if dists:
            return f"{dists[0]} {metadata.version(dists[0])}"
    except Exception:
        pass
    return ""


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_path(target: str, where: str):
    """The class at ``module.Class`` (the longest importable module prefix)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and not module.startswith(err.name):  # the module exists, one of ITS imports is missing
                raise FocuslabError(f"{where}: importing {module!r} failed: {err}") from None
            continue
        except Exception as err:
            raise FocuslabError(f"{where}: importing {module!r} failed: {type(err).__name__}: {err}") from None
        obj = mod
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise FocuslabError(f"{where}: module {module!r} has no {'.'.join(parts[cut:])!r}") from None
        return obj, module
    _import(parts[0], where)  # raises the import error with the hint
    raise FocuslabError(f"{where}: cannot import {target!r}")


def load_file(path: str, cls: str, where: str):
    """The class ``cls`` defined in the Python file ``path``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FocuslabError(f"{where}: file not found: {path}")
    p = p.resolve()
    digest = _file_digest(p)
    name = f"focuslab_user_{p.stem}_{digest}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, p)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise FocuslabError(f"{where}: running {p} failed: {type(err).__name__}: {err}") from None
    if not hasattr(module, cls):
        raise FocuslabError(f"{where}: {p} defines no {cls!r}")
    return getattr(module, cls), p, digest


def check_class(obj, where: str):
    base = _torch_optimizer_base()
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        what = type(obj).__name__ if not inspect.isclass(obj) else f"class {obj.__name__}"
        raise FocuslabError(f"{where}: {what} is not a torch.optim.Optimizer")
    return obj


def signature(cls) -> tuple[dict, bool]:
    """(named constructor arguments -> default (inspect._empty if none), accepts **kwargs)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}, True
    named, var = {}, False
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 or name == "params":
            continue
        if p.kind is p.VAR_KEYWORD:
            var = True
        elif p.kind is not p.VAR_POSITIONAL:
            named[name] = p.default
    return named, var


def check_settings(cls, settings: dict, where: str) -> dict:
    """``settings`` checked against the constructor's arguments, with boolean settings read
    strictly (``boolean_settings``): ``amsgrad=no`` is refused, never passed on as a truthy string."""
    named, _ = signature(cls)
    flags = boolean_settings(cls)
    out = {}
    for key, value in settings.items():
        if key not in named:
            known = ", ".join(k for k in named if k not in ("lr", "weight_decay"))
            raise FocuslabError(f"{where}: {cls.__name__} takes no setting {key!r} (settings: {known or 'none'}; "
                                "param-group keys are written group.KEY=VALUE)")
        out[key] = parse_bool(value, f"{where}: {key}", allow_none=flags[key]) if key in flags else value
    return out


_BOOL_TEXTS = {"bool", "Optional[bool]", "typing.Optional[bool]", "bool | None", "None | bool",
               "Union[bool, None]", "typing.Union[bool, NoneType]"}


def boolean_settings(cls) -> dict:
    """The constructor's boolean settings -> whether None is allowed: those whose default is a bool,
    or whose annotation is ``bool`` or ``Optional[bool]`` (``foreach: Optional[bool] = None``).  A
    setting whose default is a word (``decay="average"``) is not one: its words stay words."""
    import typing

    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    out = {}
    for name, p in params.items():
        ann = p.annotation
        if isinstance(ann, str):
            is_bool = ann.replace("typing.", "") in _BOOL_TEXTS or ann in _BOOL_TEXTS
            optional = "None" in ann
        else:
            args = typing.get_args(ann) or (ann,)  # by identity: Callable[[int], float]'s args hold a list
            is_bool = any(a is bool for a in args) and all(a is bool or a is type(None) for a in args)
            optional = any(a is type(None) for a in args)
        if isinstance(p.default, bool) or is_bool:
            out[name] = optional or p.default is None
    return out


def defaults_of(cls) -> dict:
    """The constructor's defaults (what an unset setting is), JSON-able where possible."""
    named, _ = signature(cls)
    out = {}
    for k, v in named.items():
        if k in ("lr", "weight_decay") or v is inspect.Parameter.empty:
            continue
        if isinstance(v, (int, float, str, bool, tuple, list)) or v is None:
            out[k] = v
    return out


def takes_weight_decay(cls) -> bool:
    return "weight_decay" in signature(cls)[0]


def resolve_class(kind: str, target: str, cls_name: str, where: str):
    """(class, canonical target, origin, short name) for a spec's target (cached per process;
    a file is read again when it changes)."""
    precheck(Parsed(target, kind, target, cls_name), where)  # a misspelt name: refused before any import
    stamp = ""
    if kind == "file":
        try:
            st = Path(target).expanduser().stat()
            stamp = f"{st.st_mtime_ns}:{st.st_size}"
        except OSError:
            pass
    try:
        return _resolve_cached(kind, target, cls_name, stamp)
    except FocuslabError as err:
        raise FocuslabError(f"{where}{err}") from None  # the message starts ": ..."


@lru_cache(maxsize=256)
def _resolve_cached(kind: str, target: str, cls_name: str, stamp: str):
    where = ""  # messages read ": reason"; resolve_class puts the spec in front
    if kind == "file":
        cls, path, digest = load_file(target, cls_name, where)
        check_class(cls, where)
        return cls, f"{path}:{cls_name}", f"sha256:{digest}", f"{path.stem}.{cls_name}"
    if kind == "name":
        target = find_in_zoo(target, where)
    cls, module = load_path(target, where)
    check_class(cls, where)
    origin = _distribution(module) or _distribution(cls.__module__)
    if not origin:
        src = inspect.getsourcefile(cls)
        origin = f"sha256:{_file_digest(Path(src))}" if src else "unknown"
    return cls, target, origin, target


def build(cls, param_groups, lr: float, settings: dict, group: dict, where: str):
    """An instance of ``cls`` over ``param_groups`` (dicts with "params", optionally "weight_decay"
    and "lr"), with ``settings`` as constructor arguments and ``group`` keys in every group."""
    groups = []
    wd_used = False
    for g in param_groups:
        g = dict(g) if isinstance(g, dict) else {"params": g}
        g.update(pythonic_dict(group))
        if "weight_decay" in g:
            if not takes_weight_decay(cls):
                if g["weight_decay"]:
                    raise FocuslabError(f"{where}: {cls.__name__} takes no weight_decay, and this study decays "
                                        f"weights by {g['weight_decay']:g}: set the study's weight decay to 0")
                del g["weight_decay"]
            else:
                wd_used = True
        groups.append(g)
    kwargs = pythonic_dict(settings)
    if wd_used:
        kwargs.setdefault("weight_decay", 0.0)
    try:
        return cls(groups, lr=lr, **kwargs)
    except FocuslabError:
        raise
    except Exception as err:
        text = str(err).splitlines()[0] if str(err) else ""
        hint = " (a param-group key goes in the spec as group.KEY=VALUE)" if isinstance(err, KeyError) or \
            "must be set" in text else ""
        raise FocuslabError(f"{where}: {cls.__name__}(...) failed: {type(err).__name__}: {text}{hint}") from None


def pythonic_dict(d: dict) -> dict:
    return {k: pythonic(v) for k, v in (d or {}).items()}
