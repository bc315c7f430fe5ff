"""Scan orchestration: reproducibility, resumption, tables, and the paper's picture."""
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from focuslab.config import build_scan_config
from focuslab.errors import FocuslabError
from focuslab.phase import best_per_cell
from focuslab.scan import plan_chunks, run_scan

SMALL = {"sharpness": "0.5:50:3:log", "noise": "0:2.5:4", "lr": "1e-3:1:5:log", "replicates": 6,
         "steps": 150, "optimizers": "adam,signum,focus"}


def _tables(path):
    return pd.read_parquet(path / "runs.parquet"), pd.read_parquet(path / "best.parquet")


def _assert_identical(p, q):
    for x, y in zip(_tables(p), _tables(q)):
        pd.testing.assert_frame_equal(x, y, check_exact=True)


def test_tables_have_the_promised_columns(tmp_path):
    cfg = build_scan_config(None, SMALL)
    run_scan(cfg, tmp_path, jobs=1, progress=False)
    runs, best = _tables(tmp_path)
    for col in ["optimizer", "sharpness", "noise", "weight_decay", "phi", "c", "lr", "replicates",
                "final_loss_mean", "final_loss_std", "final_loss_sem", "min_loss_mean",
                "progress_mean", "diverged"]:
        assert col in runs.columns
    assert len(runs) == 3 * 12 * 5 and len(best) == 3 * 12
    assert {"best_lr", "all_diverged", "lr_at_edge"} <= set(best.columns)
    assert (runs["replicates"] == 6).all()
    # sem is std / sqrt(replicates)
    np.testing.assert_allclose(runs.final_loss_sem, runs.final_loss_std / math.sqrt(6))
    # best is the argmin of final_loss_mean over lr within each (optimizer, cell)
    keys = ["optimizer", "sharpness", "noise"]
    expect = runs.loc[runs.groupby(keys, sort=False).final_loss_mean.idxmin()]
    np.testing.assert_array_equal(best.best_lr.to_numpy(), expect.lr.to_numpy())
    import json
    meta = json.loads((tmp_path / "scan.json").read_text())
    assert meta["status"] == "complete" and meta["seed"] == 0 and meta["version"]
    assert meta["config"]["values"]["noise"] == [0.0, 2.5 / 3, 5 / 3, 2.5]
    assert meta["timings"]["attempts"][0]["steps_computed"] == cfg.total_steps()


def test_bit_identical_across_jobs_and_chunking(tmp_path):
    base = build_scan_config(None, SMALL)
    run_scan(base, tmp_path / "j1", jobs=1, progress=False)
    run_scan(base, tmp_path / "j2", jobs=2, progress=False)
    _assert_identical(tmp_path / "j1", tmp_path / "j2")
    fine = build_scan_config(None, {**SMALL, "chunk_steps": 5000})
    assert len(plan_chunks(fine)) > len(plan_chunks(base))
    run_scan(fine, tmp_path / "fine", jobs=2, progress=False)
    _assert_identical(tmp_path / "j1", tmp_path / "fine")


def test_a_cell_gets_the_same_numbers_in_any_grid(tmp_path):
    big = build_scan_config(None, SMALL)
    one = build_scan_config(None, {**SMALL, "sharpness": big.axes["sharpness"].values[1],
                                   "noise": big.axes["noise"].values[2]})
    run_scan(big, tmp_path / "big", jobs=1, progress=False)
    run_scan(one, tmp_path / "one", jobs=1, progress=False)
    rb, _ = _tables(tmp_path / "big")
    ro, _ = _tables(tmp_path / "one")
    sel = rb[(rb.sharpness == ro.sharpness[0]) & (rb.noise == ro.noise[0])].reset_index(drop=True)
    pd.testing.assert_frame_equal(sel, ro, check_exact=True)


def test_resume_recomputes_only_missing_chunks(tmp_path):
    cfg = build_scan_config(None, {**SMALL, "chunk_steps": 5000})
    full = run_scan(cfg, tmp_path / "full", jobs=1, progress=False)
    part = tmp_path / "part"
    run_scan(cfg, part, jobs=1, progress=False)
    chunk_files = sorted((part / "chunks").glob("*.parquet"))
    for f in chunk_files[1::3]:  # as if interrupted with these chunks unfinished
        f.unlink()
    (part / "runs.parquet").unlink()
    again = run_scan(cfg, part, jobs=2, progress=False)
    assert again["chunks_computed"] == len(chunk_files[1::3]) < full["chunks_computed"]
    _assert_identical(tmp_path / "full", part)
    nothing = run_scan(cfg, part, jobs=1, progress=False)
    assert nothing["chunks_computed"] == 0


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    args = ["--sharpness", "1,10", "--noise", "0:3:20", "--lr", "1e-3:1:5:log", "--replicates", "50",
            "--steps", "20000", "--optimizers", "signum,adam", "--chunk-steps", "5000000",
            "--jobs", "1", "--quiet"]
    cmd = [sys.executable, "-m", "focuslab", "scan", *args]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(out)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "chunks").glob("*.parquet"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "chunks").glob("*.parquet")))
    assert 3 <= done < 40 and not (out / "runs.parquet").exists(), "kill did not land mid-scan"
    subprocess.run(cmd + ["--out", str(out)], check=True)
    subprocess.run(cmd + ["--out", str(tmp_path / "clean")], check=True)
    _assert_identical(out, tmp_path / "clean")


def test_different_config_in_existing_out_is_refused_unless_forced(tmp_path):
    run_scan(build_scan_config(None, SMALL), tmp_path, jobs=1, progress=False)
    other = build_scan_config(None, {**SMALL, "seed": 1})
    with pytest.raises(FocuslabError, match="different config"):
        run_scan(other, tmp_path, jobs=1, progress=False)
    run_scan(other, tmp_path, jobs=1, progress=False, force=True)
    fresh = tmp_path.parent / "fresh"
    run_scan(other, fresh, jobs=1, progress=False)
    _assert_identical(tmp_path, fresh)


def test_diverged_runs_never_win_and_never_give_nan():
    runs = pd.DataFrame({"optimizer": ["sgd"] * 3 + ["adam"] * 3, "sharpness": 1.0, "noise": 0.0,
                         "weight_decay": 0.1, "phi": 0.5, "c": 0.1,
                         "lr": [0.01, 0.1, 1.0] * 2,
                         "final_loss_mean": [np.inf, np.inf, np.inf, -0.5, np.inf, -0.7]})
    best = best_per_cell(runs)
    sgd, adam = best.iloc[0], best.iloc[1]
    assert sgd.all_diverged and math.isnan(sgd.best_lr) and sgd.final_loss_mean == np.inf
    assert not adam.all_diverged and adam.best_lr == 1.0 and adam.lr_at_edge


def test_paper_picture_adam_wins_sharp_noiseless_signum_wins_noisy():
    """Fig. 2a in two cells, judged with the replicate standard errors (Welch)."""
    cfg = build_scan_config(None, {"sharpness": "1,100", "noise": "0,2.5", "replicates": 50,
                                   "optimizers": "adam,signum"})
    from focuslab.scan import compute_chunk, plan_chunks
    runs = pd.concat([compute_chunk(cfg, c) for c in plan_chunks(cfg)], ignore_index=True)
    best = best_per_cell(runs).set_index(["optimizer", "sharpness", "noise"])

    def margin(winner, loser, a, s):
        w, l = best.loc[(winner, a, s)], best.loc[(loser, a, s)]
        return (l.final_loss_mean - w.final_loss_mean) / math.hypot(w.final_loss_sem, l.final_loss_sem)

    assert margin("adam", "signum", 100.0, 0.0) > 3
    assert margin("signum", "adam", 1.0, 2.5) > 3
