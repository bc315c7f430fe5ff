"""Test-wide settings: tests write only to temporary directories.

* every test runs with its working directory set to its own temporary directory, so a command run
  without --out (whose default is under ./results) cannot land in the repository;
* numba's on-disk kernel cache goes to a temporary directory for the session (subprocesses and
  worker processes inherit it), instead of focuslab/toy/__pycache__.
"""
import os
import sys
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(__file__))  # tests/distributed_helpers.py
_CACHE = tempfile.TemporaryDirectory(prefix="focuslab-numba-cache-")
os.environ["NUMBA_CACHE_DIR"] = _CACHE.name  # before numba is imported by any test module


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
