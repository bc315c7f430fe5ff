"""Test-wide settings: tests write only to temporary directories.

* every test runs with its working directory set to its own temporary directory, so a command run
  without --out (whose default is under ./results) cannot land in the repository;
* subprocesses that a test interrupts start with SIGINT's default action (``interruptible`` as
  their ``preexec_fn``): a shell that runs pytest in the background starts it with SIGINT ignored,
  children inherit that, and the Ctrl-C the test sends would never arrive;
* numba's on-disk kernel cache goes to a temporary directory for the session (subprocesses and
  worker processes inherit it), instead of focuslab/toy/__pycache__.
"""
import os
import signal
import sys
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(__file__))  # tests/distributed_helpers.py
_CACHE = tempfile.TemporaryDirectory(prefix="focuslab-numba-cache-")
os.environ["NUMBA_CACHE_DIR"] = _CACHE.name  # before numba is imported by any test module


def interruptible() -> None:
    """preexec_fn of a subprocess that will get Ctrl-C: SIGINT's default action, whatever the
    test runner inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
