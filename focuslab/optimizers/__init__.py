"""Every optimizer a focuslab study can name, resolved one way for scan, refine, plot, mnist and gpt2.

* Built-ins (focuslab.optimizers.builtin): adam (= adamw), signum, focus, sgd, lion -- one
  definition each, with the toy's numba rule and a torch optimizer.
* External torch optimizers (focuslab.optimizers.external): ``module.Class`` by import path,
  ``path/to/file.py:Class``, or a pytorch_optimizer registry name.

The grammar is focuslab.optimizers.spec's.  ``parse_list`` turns a list into ``OptimizerEntry``
records; an entry's ``label`` is the tables' ``optimizer`` column: the name as written for a
built-in (``adamw``), ``module.Class`` for a class (``pytorch_optimizer.AdaBelief``), ``stem.Class``
for a file, followed by the settings written in the spec, normalised (``focus:gamma=0.4``).  Its
``slug`` is the same, file-name safe.  Settings given by ``--opt-param`` or a config table fill in
what an entry does not set itself and are not part of its label.

This package imports neither numba nor torch; external classes are imported when named.
"""
from __future__ import annotations

from ..errors import FocuslabError
from ..values import parse_value
from . import builtin
from .entries import BuiltinEntry, ExternalEntry, OptimizerEntry, describe, digest_view, plans, study_record
from .settings import legend as _legend
from .spec import file_slug, parse_spec, settings_text, split_list

__all__ = ["OptimizerEntry", "BuiltinEntry", "ExternalEntry", "parse_list", "parse_one", "parse_opt_params",
           "file_slug", "builtin", "plans", "describe", "study_record", "digest_view"]


def parse_opt_params(items, where: str = "--opt-param") -> dict:
    """``['focus.gamma=0.4', 'pytorch_optimizer.AdaBelief.eps=1e-12']`` -> ``{'focus': {'gamma': 0.4}, ...}``:
    the setting is after the last dot."""
    out: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        opt, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not opt.strip() or not name.strip():
            raise FocuslabError(f"{where}: expected OPTIMIZER.SETTING=VALUE, got {item!r}")
        out.setdefault(opt.strip(), {})[name.strip()] = parse_value(value, f"{where} {key.strip()}")
    return out


def identity_of(text: str, where: str) -> str:
    """The canonical name an opt-param key refers to (a built-in's name, or a class's target)."""
    p = parse_spec(text, where)
    if p.kind == "name" and p.target in builtin.SPELLINGS:
        return builtin.SPELLINGS[p.target]
    from . import external

    return external.resolve_class(p.kind, p.target, p.cls, where)[1]


def parse_one(text: str, extra: dict | None = None, where: str = "--optimizers") -> OptimizerEntry:
    """One spec -> its entry; ``extra`` are settings that apply unless the spec sets them."""
    p = parse_spec(text, where)
    extra = {k: parse_value(v, f"{where} {text}.{k}") for k, v in (extra or {}).items()}
    if p.kind == "name" and p.target in builtin.SPELLINGS:
        b = builtin.get(p.target)
        if p.group:
            raise FocuslabError(f"{where}: {text!r}: group keys are for external torch optimizers")
        inline = b.resolve(p.settings, p.target)
        inline = {k: inline[k] for k in p.settings}
        settings = b.resolve({**extra, **p.settings}, p.target)
        label = p.target + settings_text(inline, order=list(b.defaults))
        return BuiltinEntry(label=label, name=b.name, settings=settings, spec=label, title=b.title_for(p.target),
                            defaults=b.defaults)
    from . import external

    cls, target, origin, short = external.resolve_class(p.kind, p.target, p.cls, f"{where}: {text!r}")
    inline = external.check_settings(cls, p.settings, f"{where}: {text!r}")  # amsgrad=1 is amsgrad=True
    settings = external.check_settings(cls, {**extra, **inline}, f"{where}: {text!r}")
    label = short + settings_text(inline, p.group)
    spec = target + settings_text(inline, p.group)
    return ExternalEntry(label=label, name=target, settings=settings, spec=spec, title=cls.__name__,
                         defaults=external.defaults_of(cls), origin=origin, group=dict(p.group))


def parse_list(spec, opt_params: dict | None = None, where: str = "--optimizers",
               base_params: dict | None = None) -> tuple[OptimizerEntry, ...]:
    """Resolve an optimizer list (a comma string or a list of specs).  ``opt_params`` maps an
    optimizer (as any spelling of it) to settings that fill in what its entries do not set; one
    that names no optimizer of the list is an error.  ``base_params`` (a preset's tables) do the
    same, below ``opt_params``, but may name optimizers the list does not use.  Two entries with the
    same optimizer and settings are an error."""
    from .lookup import precheck

    items = split_list(spec, where)
    for item in items:  # every name checked cheaply before any optimizer's module is imported
        precheck(parse_spec(item, where), f"{where}: {item!r}")
    for key in (opt_params or {}):
        precheck(parse_spec(key, where), f"{where.replace('--optimizers', '--opt-param')} {key}")
    wanted, given, spelled = {}, set(), {}
    for params, strict in ((base_params, False), (opt_params, True)):
        for key, values in (params or {}).items():
            ident = identity_of(key, f"{where.replace('--optimizers', '--opt-param')} {key}")
            wanted.setdefault(ident, {}).update(values)
            if strict:
                given.add(ident)
                spelled[ident] = key
    entries, used = [], set()
    for item in items:
        p = parse_spec(item, where)
        ident = builtin.SPELLINGS.get(p.target) if p.kind == "name" else None
        if ident is None:
            ident = identity_of(item, f"{where}: {item!r}")
        entry = parse_one(item, wanted.get(ident), where)
        used.add(ident)
        for other in entries:
            if other.identity() == entry.identity() or other.label == entry.label:
                raise FocuslabError(f"{where}: {item!r} repeats {other.label!r} (same settings)")
            if other.slug == entry.slug:
                raise FocuslabError(f"{where}: {item!r} and {other.label!r} would share file names ({entry.slug})")
        entries.append(entry)
    for ident, values in wanted.items():
        if ident in given and ident not in used:
            listed = ", ".join(e.label for e in entries)
            name = spelled[ident]
            if where == "--optimizer":  # one optimizer per run (gpt2)
                raise FocuslabError(f"--opt-param {name}.{next(iter(values))}=...: this run trains {listed}, "
                                    f"not {name}")
            raise FocuslabError(f"--opt-param {name}.{next(iter(values))}=...: {name} is not among the "
                                f"optimizers ({listed})")
    return tuple(entries)


def legend_for(label: str, settings: dict | None = None, external: dict | None = None,
               base: dict | None = None) -> str:
    """Legend text for a table's ``label`` from what a results directory recorded: the settings of
    each label (``settings``), the records of external optimizers (``external``: title and
    defaults) and the settings a study's preset gives every entry of an optimizer (``base``, e.g.
    the toy's FOCUS beta2 = 0.9), which are not news in a legend.  Needs no optimizer import
    (plots need no torch)."""
    mine = (settings or {}).get(label)
    rec = (external or {}).get(label)
    if rec:
        return _legend(rec.get("title") or label, mine, rec.get("defaults"))
    head = label.split(":", 1)[0]
    if head not in builtin.SPELLINGS:
        return label
    b = builtin.get(head)
    defaults = dict(b.defaults)
    for key, values in (base or {}).items():
        if builtin.SPELLINGS.get(key) == b.name:
            defaults.update({k: parse_value(v) for k, v in values.items()})
    if mine is None:
        mine = {**defaults, **parse_spec(label).settings}
    return _legend(b.title_for(head), mine, defaults)


def builtin_lines() -> list[str]:
    """The built-ins, their settings, defaults and where each default comes from (for
    ``focuslab optimizers``)."""
    lines = []
    for b in builtin.BUILTINS:
        names = ", ".join([b.name, *b.aliases])
        lines.append(f"{names}: {b.doc}")
        for h in b.hyper:
            tuned = f"  [--tune space: {h.space}]" if h.space else ""
            lines.append(f"    {h.name} = {h.default:g}  in {h.interval}: {h.doc}  [default: {h.source}]{tuned}")
        for o in b.options:
            tuned = f"  [--tune space: {','.join(o.choices)}]" if o.tuned else ""
            lines.append(f"    {o.name} = {o.default}  ({' | '.join(o.choices)}): {o.doc}  [default: {o.source}]{tuned}")
    return lines
