"""Settings declared once: a dataclass field carries a setting's name, default, type, choices and
help, and every command's flags are generated from these fields (cli/options.py), so a setting is
never written in two places.  Imports nothing of focuslab's and neither Click, numba nor torch.

* ``setting(default, help, ...)``: a field with that metadata.  The flag is ``--NAME`` (underscores
  as dashes); ``short`` adds ``-X``; ``aliases`` are other spellings that work silently;
  ``deprecated`` are old spellings that work for one release with a one-line note.  ``cli=False``
  keeps a field out of the command line (a resolved value, not a choice).  A boolean gets a
  ``--no-NAME`` spelling when its default is on, or always with ``negatable=True`` (a setting a
  preset or config file may turn on, which a flag must be able to turn off again).
* ``shown``: what the help says the default is when it is not a plain value ("results/NAME").
* ``Common``: the run options every study command shares (--config, --out, --force, --jobs,
  --device, --quiet).  Study settings (what determines the numbers) live in each command's own
  dataclass; their defaults are the preset's, which the help shows with their values.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields


def setting(default=None, help: str = "", *, kind=None, metavar: str | None = None, choices=None,
            multiple: bool = False, cli: bool = True, short: str | None = None, aliases=(), deprecated=(),
            shown: str | None = None, negatable: bool | None = None, name: str | None = None):
    """A dataclass field that declares a setting (see the module docstring); ``name`` overrides the
    flag when the config key and the flag differ (the [scan.optimizer] table is --opt-param)."""
    meta = {"help": help, "kind": kind, "metavar": metavar, "choices": tuple(choices) if choices else None,
            "name": name,
            "multiple": multiple, "cli": cli, "short": short, "aliases": tuple(aliases),
            "deprecated": tuple(deprecated), "shown": shown, "negatable": negatable}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def flag(name) -> str:
    """The flag of a field (or of a field name)."""
    if not isinstance(name, str):
        return name.metadata.get("name") or flag(name.name)
    return "--" + name.replace("_", "-")


def declared(cls) -> list:
    """The fields of ``cls`` that are settings of the command line, in declaration order."""
    return [f for f in fields(cls) if f.metadata.get("cli", False)]


def default_of(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


@dataclass(frozen=True)
class Common:
    """Run options of every study command (scan, refine, mnist, gpt2): where and how, never what."""

    config: str = setting(None, "a TOML file, or a preset by name; flags override it", metavar="FILE|PRESET",
                          aliases=("--preset",), shown="the command's base preset")
    out: str = setting(None, "the results directory", metavar="DIR",
                       shown="results/PRESET for a preset as it is, else results/NAME-DIGEST")
    force: bool = setting(False, "start over: replace what --out holds (another config, or this one)")
    jobs: int = setting(None, "worker processes", short="-j", metavar="N", shown="the cores this process may use")
    device: str = setting("auto", "where the work runs: auto (CUDA when a GPU is visible and the work can use "
                                  "it, else the CPU), cpu, cuda or cuda:N", metavar="DEVICE")
    quiet: bool = setting(False, "print nothing but errors", short="-q")
