"""The fault sweep (validation/faults.py) in this process: every bad input and broken state it holds,
across scan, refine, plot, mnist, gpt2, merge, optimizers and selftest, gives one line and exit 2 (or
the result it should), no traceback, and leaves its directory as it was.  The Ctrl-C and kill -9
cases need processes of their own: `python validation/faults.py` runs them (and every case in a
process of its own); tests/test_faults*.py hold them one by one."""
import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults


def test_the_fault_sweep_is_clean():
    pytest.importorskip("torch")
    path = Path(__file__).parent.parent / "validation" / "faults.py"
    spec = importlib.util.spec_from_file_location("focuslab_fault_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sweep  # its dataclasses look their module up
    spec.loader.exec_module(sweep)
    lines = []
    counts = sweep.sweep(in_process=True, report=lines.append)
    assert counts["cases"] >= 140, lines[-3:]
    bad = [f"{r.case.name}: {r.verdict}: {r.detail}" for r in counts["results"] if r.verdict != "clean"]
    assert not bad, "\n".join(bad)
