"""Rooms that must not pull in heavy engines: numba only for the simulator, torch only for its commands."""
import subprocess
import sys

import pytest


def _modules_after(code: str) -> set:
    res = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return set(__import__("json").loads(res.stdout.strip().splitlines()[-1]))


def test_config_plots_and_tables_do_not_import_numba_or_torch():
    mods = _modules_after(
        "import focuslab.config, focuslab.axes, focuslab.optimizers, focuslab.toy.landscape\n"
        "import focuslab.phase, focuslab.results, focuslab.plot.phase, focuslab.plot.style\n"
        "from focuslab.config import build_scan_config, load_toml\n"
        "build_scan_config(load_toml('fig2a', 'scan'), {'optimizers': 'adam,focus:gamma=0.4'})")
    assert "numba" not in mods and "torch" not in mods


@pytest.mark.parametrize("module", ["focuslab.mnist.study", "focuslab.gpt2.config", "focuslab.plot.mnist",
                                    "focuslab.plot.gpt2", "focuslab.optimizers.probe", "focuslab.mnist.steppers"])
def test_torch_rooms_do_not_import_numba(module):
    pytest.importorskip("torch")
    assert "numba" not in _modules_after(f"import {module}")
