"""No setting is written in two places: every command's flags come from its settings dataclasses,
with the same names, defaults and help text, and every default is shown as ``[default: VALUE]``."""
import re

import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.cli.options import help_text
from focuslab.options import declared, flag


def _commands():
    from focuslab.config import ScanSettings, load_toml
    from focuslab.options import Common
    from focuslab.plot import PlotSettings
    from focuslab.scan import MergeSettings, ScanRun

    table = {
        "scan": ([Common, ScanSettings, ScanRun], {**load_toml("default", "scan"), "config": "default"}),
        "plot": ([PlotSettings], {}),
        "merge": ([MergeSettings], {}),
    }
    try:
        from focuslab.mnist.study import PRESET, MnistRun, MnistSettings

        table["mnist"] = ([Common, MnistSettings, MnistRun], {**load_toml(PRESET, "mnist"), "config": PRESET})
    except ImportError:  # torch-free install
        pass
    return table


COMMANDS = _commands()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_are_the_dataclass_fields_with_their_defaults_and_help(name):
    classes, defaults = COMMANDS[name]
    command = main.commands[name]
    options = {o.name: o for o in command.params if o.param_type_name == "option"}
    fields = [f for cls in classes for f in declared(cls)]
    for f in fields:
        assert f.name in options, f"{name}: no flag for {cls.__name__}.{f.name}"
        opt = options[f.name]
        assert flag(f) in opt.opts, (name, f.name, opt.opts)
        assert opt.help == help_text(f, defaults), (name, f.name)
        assert re.search(r"\[default: [^\]]+\]$", opt.help), (name, f.name, opt.help)
    extra = {n for n, o in options.items() if not o.hidden and n not in {f.name for f in fields}
             and n not in ("help",)}
    assert not extra, f"{name}: flags not declared in a settings dataclass: {extra}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_flag_and_the_presets_values(name):
    classes, defaults = COMMANDS[name]
    res = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for cls in classes:
        for f in declared(cls):
            assert flag(f) in text, (name, f.name)
            shown = " ".join(help_text(f, defaults).split())
            assert shown in text, (name, f.name, shown)


def test_scan_help_shows_the_default_presets_values():
    res = CliRunner().invoke(main, ["scan", "--help"], terminal_width=200)
    text = " ".join(res.output.split())
    assert "[default: 0.1:1000:48:log]" in text and "[default: adam,signum,focus]" in text
    assert "[default: focus.beta2=0.9; focus.decay=theta]" in text and "[default: 20]" in text


def test_bare_focuslab_prints_its_help_once():
    res = CliRunner().invoke(main, [])
    assert res.exit_code == 0 and "error" not in res.output.lower()
    assert res.output.count("scan ") == 1 and res.output.count("Commands:") == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quiet_is_documented_everywhere(name):
    res = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
    assert "-q, --quiet" in res.output and "print nothing but errors" in res.output
