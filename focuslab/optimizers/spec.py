"""The optimizer spec grammar, shared by scan, refine, plot, mnist and gpt2.  Pure text: no torch.

::

    LIST     := SPEC ("," SPEC)*                 commas inside (), [] or quotes do not split
    SPEC     := TARGET (":" SETTING)*
    TARGET   := NAME                             a built-in (adam, adamw, signum, focus, sgd, lion),
                                                 else a pytorch_optimizer registry name (adabelief)
              | MODULE "." CLASS                 a class by import path (torch.optim.NAdam,
                                                 pytorch_optimizer.AdaBelief, mypkg.opt.MyOpt)
              | PATH ".py:" CLASS                a class in a file (path/to/my_opt.py:MyOpt)
    SETTING  := KEY "=" VALUE                    a constructor argument (betas=(0.9,0.95))
              | "group." KEY "=" VALUE           a key of every param group (group.use_muon=True)
    VALUE    := number | pi arithmetic | True | False | None | word | 'quoted' | (tuple) | [list]

A bare NAME is a built-in if focuslab defines one by that name (so ``lion`` is focuslab's Lion;
write ``pytorch_optimizer.Lion`` for that library's).  ``lr`` and ``weight_decay`` are never
settings: the learning rate is an axis of every study and weight decay comes from the study's
``weight_decay`` (the toy's ω).  Values are normalised (``0.90`` -> ``0.9``), so one optimizer
with one setting always gets the same table name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import FocuslabError
from ..values import format_value, parse_value

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_OPEN, _CLOSE = "([{", ")]}"
RESERVED = ("lr", "weight_decay", "params")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes; unbalanced brackets are an error."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise FocuslabError(f"unbalanced {ch!r} in {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise FocuslabError(f"unclosed {'quote' if quote else 'bracket'} in {text!r}")
    parts.append(text[start:])
    return parts


def split_values(text: str, where: str) -> list[str]:
    """The items of a comma list whose items may hold commas inside brackets or quotes
    (``(0.9,0.999),(0.99,0.999)``), stripped; an empty item is an error."""
    try:
        items = [s.strip() for s in _split_top(str(text), ",")]
    except FocuslabError as err:
        raise FocuslabError(f"{where}: {err}") from None
    if not all(items):
        raise FocuslabError(f"{where}: an empty value in {text!r}")
    return items


def split_list(spec, where: str = "--optimizers") -> list[str]:
    """The specs of a list: a comma-separated string (top-level commas only) or a list of specs."""
    try:
        items = _split_top(spec, ",") if isinstance(spec, str) else [str(s) for s in (spec or ())]
    except FocuslabError as err:
        raise FocuslabError(f"{where}: {err}") from None
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise FocuslabError(f"{where}: give at least one optimizer")
    return items


@dataclass(frozen=True)
class Parsed:
    """One spec, split but not yet resolved."""

    text: str
    kind: str  # "name" (built-in or registry name), "path" (module.Class) or "file"
    target: str  # the name, the dotted path, or the file path
    cls: str = ""  # the class, for a file
    settings: dict = field(default_factory=dict)  # constructor arguments, parsed values
    group: dict = field(default_factory=dict)  # param-group keys, parsed values


def parse_spec(text: str, where: str = "--optimizers") -> Parsed:
    """Split one spec into its target and settings (see the module docstring)."""
    text = str(text).strip()
    try:
        parts = [p.strip() for p in _split_top(text, ":")]
    except FocuslabError as err:
        raise FocuslabError(f"{where}: {err}") from None
    head, rest = parts[0], parts[1:]
    if not head:
        raise FocuslabError(f"{where}: {text!r} names no optimizer")
    if head.endswith(".py"):
        if not rest or "=" in rest[0] or not _IDENT.fullmatch(rest[0]):
            raise FocuslabError(f"{where}: {text!r}: a file needs its class, as {head}:ClassName")
        kind, target, cls, rest = "file", head, rest[0], rest[1:]
    elif _DOTTED.fullmatch(head):
        kind, target, cls = "path", head, ""
    elif _IDENT.fullmatch(head):
        kind, target, cls = "name", head, ""
    else:
        raise FocuslabError(f"{where}: {text!r}: {head!r} is neither a name, a module.Class path nor a "
                            "file.py:Class")
    settings, group = {}, {}
    for pair in rest:
        key, sep, value = pair.partition("=")
        key = key.strip()
        into = settings
        if key.startswith("group."):
            key, into = key[len("group."):], group
        if not sep or not _IDENT.fullmatch(key):
            raise FocuslabError(f"{where}: in {text!r}, expected KEY=VALUE, got {pair!r}")
        if key in RESERVED and into is settings:
            why = {"lr": "the learning rate is the study's lr axis (--lr)",
                   "weight_decay": "weight decay is the study's own (--weight-decay)",
                   "params": "the parameters are the study's"}[key]
            raise FocuslabError(f"{where}: {text!r} sets {key}, but {why}")
        if key in into:
            raise FocuslabError(f"{where}: {text!r} sets {key} twice")
        into[key] = parse_value(value, f"{where}: {text!r}: {key}")
    return Parsed(text, kind, target, cls, settings, group)


def settings_text(settings: dict, group: dict | None = None, order=None) -> str:
    """``:key=value`` pairs in a stable order (``order`` first, then alphabetical)."""
    order = list(order or ())
    keys = [k for k in order if k in settings] + sorted(k for k in settings if k not in order)
    pairs = [f"{k}={format_value(settings[k])}" for k in keys]
    pairs += [f"group.{k}={format_value(v)}" for k, v in sorted((group or {}).items())]
    return "".join(":" + p for p in pairs)


def file_slug(label: str) -> str:
    """A label as a file-name-safe string ('focus:gamma=0.4' -> 'focus_gamma-0.4')."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", label).replace("=", "-")
