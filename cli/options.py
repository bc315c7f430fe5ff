"""Click options generated from settings dataclasses (focuslab.options): one flag per field, one
name per concept, every default shown the same way, ``[default: VALUE]``, with its value."""
from __future__ import annotations

import click

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def show(value) -> str:
    """A default as the help shows it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value) or "none"
    if isinstance(value, dict):
        parts = [f"{k}.{kk}={show(vv)}" for k, v in value.items() for kk, vv in (v.items() if isinstance(v, dict)
                                                                                   else [("", v)])]
        return "; ".join(parts) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(f, defaults: dict | None = None) -> str:
    """A field's help with its default: the preset's value where the preset sets it."""
    from focuslab.options import default_of

    m = f.metadata
    value = (defaults or {}).get(f.name, default_of(f))
    shown = m["shown"] if m["shown"] and (defaults or {}).get(f.name) is None else show(value)
    return f"{m['help']} [default: {shown}]"


def _kind(f):
    kind = f.metadata.get("kind")
    if kind is not None:
        return kind
    t = f.type if not isinstance(f.type, str) else _TYPES.get(f.type.split("|")[0].strip(), str)
    return t if t in (int, float, str, bool) else str


def _deprecated(new_flag: str, dest: str):
    def note(ctx, param, value):
        if value is not None and value != () and value is not False:
            click.echo(f"focuslab: note: {param.opts[0]} is now {new_flag} (the old spelling works until "
                       "focuslab 0.3)", err=True)
            ctx.meta.setdefault("focuslab_deprecated", {})[dest] = value
        return value
    return note


def given(values: dict) -> dict:
    """A command's option values with those given under a deprecated spelling filled in."""
    ctx = click.get_current_context()
    out = dict(values)
    for dest, value in ctx.meta.get("focuslab_deprecated", {}).items():
        if out.get(dest) in (None, (), False):
            out[dest] = value
    return out


def field_option(f, defaults: dict | None = None):
    """The Click option(s) of one settings field."""
    from focuslab.options import flag

    m = f.metadata
    name = flag(f)
    kind = _kind(f)
    help_ = help_text(f, defaults)
    decls = [name] + ([m["short"]] if m["short"] else []) + list(m["aliases"])
    kwargs = {"default": None, "help": help_, "show_default": False}
    if kind is bool:
        negatable = m["negatable"] if m["negatable"] is not None else f.default is not False
        if negatable:
            decls = [f"{name}/--no-{f.name.replace('_', '-')}"] + decls[1:]
        else:
            kwargs.update(is_flag=True, default=False)
    elif m["multiple"]:
        kwargs.update(multiple=True, default=(), metavar=m["metavar"])
    elif m["choices"]:
        kwargs.update(type=click.Choice(m["choices"]))
    else:
        kwargs.update(type=kind, metavar=m["metavar"] or kind.__name__.upper())
    main = click.option(*decls, f.name, **kwargs)
    olds = []
    for old in m["deprecated"]:
        extra = {k: v for k, v in kwargs.items() if k not in ("help", "show_default")}
        olds.append(click.option(old, f"_old_{f.name}_{old.strip('-').replace('-', '_')}", hidden=True,
                                 expose_value=False, callback=_deprecated(name, f.name), **extra))

    def apply(fn):
        for o in olds:
            fn = o(fn)
        return main(fn)
    return apply


def generated(*classes, defaults: dict | None = None, skip=()):
    """A decorator adding one option per declared field of ``classes`` (in order)."""
    from focuslab.options import declared

    def deco(fn):
        for cls in reversed(classes):
            for f in reversed(declared(cls)):
                if f.name not in skip:
                    fn = field_option(f, defaults)(fn)
        return fn
    return deco


def split(values: dict, cls) -> dict:
    """The given (not None, not empty) values of ``cls``'s declared fields."""
    from focuslab.options import declared

    names = {f.name for f in declared(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None and v != ()}


def with_defaults(values: dict, cls) -> dict:
    """``values`` of ``cls``'s fields with the fields' own defaults where nothing was given (for
    settings whose defaults are code's, not a preset's)."""
    from focuslab.options import declared, default_of

    out = dict(values)
    for f in declared(cls):
        if out.get(f.name) in (None, ()):
            out[f.name] = default_of(f) if not f.metadata["multiple"] else (out.get(f.name) or ())
    return out


def study_inputs(values: dict, settings_cls, run_cls):
    """What a study command was given: (its run options: Common's and ``run_cls``'s, the settings
    flags with --opt-param and --tune parsed).  The library reads the --config file."""
    from focuslab.errors import FocuslabError
    from focuslab.options import Common
    from focuslab.optimizers import parse_opt_params

    values = given(values)
    run = {**split(values, Common), **split(values, run_cls)}
    if run.get("jobs") is not None and run["jobs"] < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {run['jobs']}")
    flags = split(values, settings_cls)
    if "optimizer" in flags:
        flags["optimizer"] = parse_opt_params(flags["optimizer"])
    if "tune" in flags:
        from focuslab.tuning import parse_tune

        flags["tune"] = parse_tune(flags["tune"])
    return run, flags
