"""No setting is written in two places: every command's flags come from its settings dataclasses,
with the same names, defaults and help text, and every default is shown as ``[default: VALUE]``."""
import re

import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.cli.options import help_text
from focuslab.options import declared, flag


def _commands():
    """name -> (settings classes, the defaults the help shows, fields of those classes left out)."""
    from focuslab.bridge import BridgeSettings
    from focuslab.config import ScanSettings, load_toml
    from focuslab.options import Common
    from focuslab.plot import PlotSettings
    from focuslab.refine import RefineParams, RefineRun
    from focuslab.scan import MergeSettings, ScanRun
    from focuslab.selftest import SelftestSettings

    table = {
        "scan": ([Common, ScanSettings, ScanRun], {**load_toml("default", "scan"), "config": "default"}, ()),
        "refine": ([RefineParams, RefineRun, Common], {}, ("config", "out", "device", "force")),
        "plot": ([PlotSettings], {}, ()),
        "merge": ([MergeSettings], {}, ()),
        "selftest": ([SelftestSettings], {}, ()),
        "bridge": ([BridgeSettings, Common], {}, ("config", "out")),
    }
    from focuslab.gpt2.config import DEFAULT_PRESET, TrainConfig
    from focuslab.gpt2.launch import Gpt2Run

    table["gpt2"] = ([Common, TrainConfig, Gpt2Run], {**load_toml(DEFAULT_PRESET, "gpt2"), "config": DEFAULT_PRESET},
                     ("out", "force", "jobs"))  # Common's: Gpt2Run has --out and --force of its own
    try:
        from focuslab.mnist.study import PRESET, MnistRun, MnistSettings

        table["mnist"] = ([Common, MnistSettings, MnistRun], {**load_toml(PRESET, "mnist"), "config": PRESET}, ())
    except ImportError:  # torch-free install
        pass
    return table


COMMANDS = _commands()


def _fields(name):
    classes, defaults, skip = COMMANDS[name]
    return [(cls, f) for cls in classes for f in declared(cls) if not (cls.__name__ == "Common" and f.name in skip)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_are_the_dataclass_fields_with_their_defaults_and_help(name):
    classes, defaults, skip = COMMANDS[name]
    command = main.commands[name]
    options = {o.name: o for o in command.params if o.param_type_name == "option"}
    fields = _fields(name)
    assert len({f.name for _, f in fields}) == len(fields), f"{name}: two settings share a name"
    for cls, f in fields:
        assert f.name in options, f"{name}: no flag for {cls.__name__}.{f.name}"
        opt = options[f.name]
        assert flag(f) in opt.opts, (name, f.name, opt.opts)
        assert opt.help == help_text(f, defaults), (name, f.name)
        assert re.search(r"\[default: [^\]]+\]$", opt.help), (name, f.name, opt.help)
    extra = {n for n, o in options.items() if not o.hidden and n not in {f.name for _, f in fields}
             and n not in ("help",)}
    assert not extra, f"{name}: flags not declared in a settings dataclass: {extra}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_flag_and_the_presets_values(name):
    classes, defaults, skip = COMMANDS[name]
    res = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for _, f in _fields(name):
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


def test_gpt2_help_shows_the_default_presets_values_and_one_name_per_concept():
    res = CliRunner().invoke(main, ["gpt2", "--help"], terminal_width=200)
    text = " ".join(res.output.split())
    assert "the preset's]" not in text
    assert "--lr LR peak learning rate [default: 0.002]" in text and "[default: 300]" in text  # gpt2-nano's
    assert "--config, --preset FILE|PRESET" in text and "[default: gpt2-nano]" in text
    assert re.search(r"--device DEVICE where the work runs: auto .*\[default: auto\]", text)
    assert "--compile / --no-compile" in text and "focus.gamma=0.2" in text
    for gone in ("--learning-rate", "--beta1", "--beta2", "--gamma", "--preset NAME"):
        assert gone not in text, gone


def test_selftest_device_defaults_to_auto_and_says_so():
    res = CliRunner().invoke(main, ["selftest", "--help"], terminal_width=200)
    text = " ".join(res.output.split())
    assert "--device [auto|cpu|cuda]" in text and "[default: auto]" in text


#: Every deprecated spelling, with a command that uses it and what the output must then hold (the
#: value reached the setting).  A new deprecated spelling needs a case here.
DEPRECATED = {
    ("gpt2", "--learning-rate"): (["gpt2", "--learning-rate", "1e-3", "--dry-run"], '"learning_rate": 0.001'),
}


def test_every_deprecated_spelling_has_a_case():
    spelled = {(name, old) for name in COMMANDS for _, f in _fields(name) for old in f.metadata["deprecated"]}
    assert spelled == set(DEPRECATED)


@pytest.mark.parametrize("key", sorted(DEPRECATED))
def test_a_deprecated_spelling_works_and_prints_one_note(tmp_path, key):
    args, needle = DEPRECATED[key]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output + res.stderr
    assert needle in res.stdout
    new = next(flag(f) for _, f in _fields(key[0]) if key[1] in f.metadata["deprecated"])
    assert res.stderr.splitlines() == [f"focuslab: note: {key[1]} is now {new} (the old spelling works until "
                                       "focuslab 0.3)"]
    plain = CliRunner().invoke(main, [new if a == key[1] else a for a in args] + ["--out", str(tmp_path / "o")])
    assert plain.exit_code == 0 and plain.stderr == "" and plain.stdout == res.stdout


def test_preset_is_a_silent_alias_of_config(tmp_path):
    a = CliRunner().invoke(main, ["gpt2", "--preset", "gpt2-small", "--dry-run", "--out", str(tmp_path / "r")])
    b = CliRunner().invoke(main, ["gpt2", "--config", "gpt2-small", "--dry-run", "--out", str(tmp_path / "r")])
    assert a.exit_code == b.exit_code == 0 and a.stderr == "" and a.stdout == b.stdout
    assert '"n_layer": 12' in a.stdout


@pytest.mark.parametrize("old", ["--beta1", "--beta2", "--gamma"])
def test_gpt2s_moved_optimizer_flags_are_gone(old):
    res = CliRunner().invoke(main, ["gpt2", old, "0.9", "--dry-run"])
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert re.search(rf"No such option:? '?{old}\b", res.stderr), res.stderr  # Click's wording varies by version


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if n != "selftest"))  # selftest's output is its report
def test_quiet_is_documented_everywhere(name):
    res = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
    assert "-q, --quiet" in res.output and "print nothing but errors" in res.output
