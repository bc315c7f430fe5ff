"""Numbers and setting values as users write them, parsed and printed one way everywhere.

A leaf module (it imports nothing else from focuslab but the error type), so the config, the
optimizer definitions and the plots can all use it without import cycles.

* ``parse_number`` reads a float from a literal or a tiny arithmetic expression over numbers and
  ``pi`` (``pi/6``, ``2*pi``, ``1e-3``).
* ``parse_value`` reads an optimizer setting: a number (arithmetic with ``pi`` allowed), ``True`` /
  ``False`` (also ``true`` / ``false``), ``None``, a quoted string, a bare word (a string, e.g.
  ``decay=average``), or a tuple / list of those (``betas=(0.9,0.95)``).
* ``parse_bool`` reads a boolean setting strictly: ``True``/``False``/``true``/``false`` (any case) and
  ``1``/``0``; anything else (``no``, ``yes``, ``2``) is refused in one line, never read as truthy.
* ``format_value`` writes a value back so that ``parse_value(format_value(v)) == v``: the shortest
  text that round-trips (``0.9``, ``1e-08``, ``(0.9,0.95)``), which makes labels stable.
"""
from __future__ import annotations

import ast
import math
import operator
import re

from .errors import FocuslabError

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


class _Bad(Exception):
    pass


def _arith(node):
    """A float from numbers, ``pi`` and + - * / ** (anything else raises _Bad)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.left), _arith(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.operand))
    raise _Bad


def parse_number(text, where: str | None = None) -> float:
    """A float from a literal or a tiny arithmetic expression over numbers and ``pi``.
    ``where`` (e.g. "--sharpness") prefixes the error message."""
    prefix = f"{where}: " if where else ""
    if isinstance(text, bool):
        raise FocuslabError(f"{prefix}expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return _arith(ast.parse(str(text).strip(), mode="eval").body)
    except (_Bad, ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        raise FocuslabError(f"{prefix}not a number: {text!r}") from None


def _literal(node):
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, (bool, str)):
            return node.value
        if isinstance(node.value, int):
            return node.value
        if isinstance(node.value, float):
            return node.value
        raise _Bad
    if isinstance(node, ast.Name):
        return {"true": True, "false": False, "none": None, "True": True, "False": False,
                "None": None}.get(node.id, math.pi if node.id == "pi" else node.id)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, int) and not isinstance(node.operand.value, bool):
        return -node.operand.value
    return _arith(node)  # arithmetic over numbers and pi -> float


def parse_value(text, where: str = "value"):
    """A setting's value from its text (see the module docstring); non-strings pass through."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    if not s:
        raise FocuslabError(f"{where}: empty value")
    if _WORD.fullmatch(s) and s not in ("pi",) and not s.lower() in ("true", "false", "none"):
        return s  # a bare word: a string (decay=average, projection_type=std)
    try:
        return _literal(ast.parse(s, mode="eval").body)
    except (_Bad, SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        raise FocuslabError(f"{where}: cannot read {text!r} (a number, True/False, None, a word, a quoted "
                            "string, or a tuple such as (0.9,0.95))") from None


_TRUE, _FALSE = ("true", "1"), ("false", "0")


def parse_bool(value, where: str = "value", allow_none: bool = False):
    """A boolean setting's value, strictly (see the module docstring).  ``None`` (or the text
    ``None``) only where ``allow_none``: a setting whose default is None."""
    if isinstance(value, bool):
        return value
    if value is None and allow_none:
        return None
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if text == "none" and allow_none:
            return None
    raise FocuslabError(f"{where}: expected true or false (or 1/0{', or None' if allow_none else ''}), got {value!r}")


def format_value(value) -> str:
    """The shortest text that ``parse_value`` reads back as ``value``."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, str):
        return value if _WORD.fullmatch(value) and value.lower() not in ("true", "false", "none", "pi") \
            else repr(value)
    if isinstance(value, tuple):
        inner = ",".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return repr(value)


def jsonable(value):
    """``value`` as JSON writes it back (tuples become lists), so digests survive a round trip."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def pythonic(value):
    """The inverse for calling code: lists (from JSON or TOML) become tuples, as constructors expect."""
    if isinstance(value, (list, tuple)):
        return tuple(pythonic(v) for v in value)
    return value
