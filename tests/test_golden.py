"""Behaviour unchanged by refactors: the tables of the default scan, of a refine and of a plug-in
scan, bit for bit, against digests stored from the code as it was before the house's second pass
(tests/golden/tables.json).

A digest covers named columns in their row order, each value's exact bits (float64 bit patterns,
integers as int64, strings as UTF-8), so that a column added later does not change it but any
changed number, row order or label does.  Regenerate only when a change of numbers is intended
and said in CHANGELOG.md: ``FOCUSLAB_GOLDEN_WRITE=1 python -m pytest tests/test_golden.py``.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main

GOLDEN = Path(__file__).parent / "golden" / "tables.json"

RUNS_COLS = ["optimizer", "sharpness", "noise", "weight_decay", "phi", "c", "lr", "replicates", "final_loss_mean",
             "final_loss_std", "final_loss_sem", "final_loss_median", "min_loss_mean", "min_loss_std", "min_loss_sem",
             "progress_mean", "progress_std", "progress_sem", "diverged"]
BEST_COLS = ["optimizer", "sharpness", "noise", "weight_decay", "phi", "c", "best_lr", "final_loss_mean",
             "final_loss_sem", "all_diverged", "lr_at_edge"]
DECISION_COLS = ["cell", "sharpness", "noise", "outcome", "winner", "tied", "leader", "runner_up", "lead", "lead_low",
                 "lead_high", "margin", "scale", "p_value", "q_value", "replicates", "estimation_replicates", "looks",
                 "steps", "lr_extended", "lr_refined"]
REPLICATE_COLS = ["cell", "optimizer", "lr", "replicate", "selection", "final_loss", "diverged"]
LR_COLS = ["cell", "optimizer", "lr", "level", "steps_beyond_grid", "joined_look", "left_look", "replicates",
           "selected", "diverged", "selection_mean", "estimation_mean", "optimizer_state"]

SMALL = ["--sharpness", "1,30,300", "--noise", "0,1.5,3", "--lr", "3e-3,1e-2,3e-2,1e-1", "--replicates", "8",
         "--steps", "80", "-j", "1", "-q"]


def column_bytes(values: pd.Series) -> bytes:
    """A column's values as exact bytes (see the module docstring)."""
    v = values.to_numpy()
    if v.dtype == object or pd.api.types.is_string_dtype(values.dtype) or isinstance(values.dtype, pd.CategoricalDtype):
        return "\0".join(str(x) for x in values.astype(str)).encode()
    if v.dtype.kind == "f":
        return np.ascontiguousarray(v, dtype=np.float64).tobytes()
    if v.dtype.kind in "iub":
        return np.ascontiguousarray(v, dtype=np.int64).tobytes()
    raise TypeError(f"no canonical bytes for dtype {v.dtype}")


def table_digest(df: pd.DataFrame, cols: list[str]) -> str:
    h = hashlib.sha256(str(len(df)).encode())
    for c in cols:
        h.update(c.encode() + b"\1" + column_bytes(df[c]) + b"\2")
    return h.hexdigest()


def _check(name: str, digests: dict) -> None:
    """Compare with (or, with FOCUSLAB_GOLDEN_WRITE=1, store) the digests filed under ``name``."""
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("FOCUSLAB_GOLDEN_WRITE") == "1":
        stored[name] = digests
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        return
    assert name in stored, f"no stored digests for {name} ({GOLDEN})"
    assert digests == stored[name]


def _run(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + str(res.exception)


@pytest.mark.slow
def test_the_default_scan_gives_the_stored_tables_bit_for_bit(tmp_path):
    out = tmp_path / "default"
    _run(["scan", "-q", "-j", "2", "--out", str(out)])
    _check("default_scan", {"runs": table_digest(pd.read_parquet(out / "runs.parquet"), RUNS_COLS),
                            "best": table_digest(pd.read_parquet(out / "best.parquet"), BEST_COLS)})


def test_a_refine_gives_the_stored_tables_bit_for_bit(tmp_path):
    out = tmp_path / "s"
    _run(["scan", *SMALL, "--optimizers", "adam,signum,focus", "--out", str(out)])
    _run(["refine", str(out), "--initial-replicates", "20", "--max-replicates", "80", "-j", "1", "-q"])
    _check("small_refine", {
        "runs": table_digest(pd.read_parquet(out / "runs.parquet"), RUNS_COLS),
        "decisions": table_digest(pd.read_parquet(out / "decisions.parquet"), DECISION_COLS),
        "replicates": table_digest(pd.read_parquet(out / "replicates.parquet"), REPLICATE_COLS),
        "lrs": table_digest(pd.read_parquet(out / "refine" / "lrs.parquet"), LR_COLS)})


def test_a_plugin_scan_gives_the_stored_tables_bit_for_bit(tmp_path):
    """Built-ins on the kernel, an element-wise class (batched mode) and a per-tensor one."""
    pytest.importorskip("torch")
    pytest.importorskip("pytorch_optimizer")
    import torch

    # torch's vectorised CPU kernels round differently per instruction set (AVX2 and AVX-512 agree;
    # the scalar DEFAULT build does not), so the digests are filed per ATen CPU capability
    capability = torch.backends.cpu.get_cpu_capability()
    name = f"plugin_scan_{capability}"
    if os.environ.get("FOCUSLAB_GOLDEN_WRITE") != "1" and name not in json.loads(GOLDEN.read_text()):
        pytest.skip(f"no digests stored for torch's {capability} kernels (stored: AVX2, AVX512, DEFAULT)")
    out = tmp_path / "p"
    args = [a for a in SMALL]
    args[args.index("--steps") + 1] = "30"
    _run(["scan", *args, "--optimizers", "adam,torch.optim.AdamW,pytorch_optimizer.SGDSaI", "--out", str(out)])
    _check(name, {"runs": table_digest(pd.read_parquet(out / "runs.parquet"), RUNS_COLS)})
