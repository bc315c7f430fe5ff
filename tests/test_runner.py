"""What every command shares: default directories, safe reruns, progress in logs, corrupt units,
file modes."""
import io
import os
import stat
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.results import atomic_write_bytes
from focuslab.runner import Progress

FAST = ["--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "3", "--steps", "20",
        "--jobs", "1"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ad_hoc_scans_get_their_own_directories_and_a_rerun_is_a_no_op():
    first = cli("scan", *FAST)
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    out = lines[0].split("results in ")[1].split(" ")[0]
    assert out.startswith("results/scan-") and lines[-1].startswith(out)  # said at start and at end
    again = cli("scan", *FAST)
    assert again.exit_code == 0 and f"results in {out}" in again.output
    assert "already complete" in again.output and "nothing to do" in again.output
    other = cli("scan", *FAST, "--seed", "3")
    assert other.exit_code == 0, other.output
    assert f"results in {out}" not in other.output and "results in results/scan-" in other.output


def test_a_config_as_it_is_lands_in_results_NAME_and_a_variant_beside_it():
    from focuslab.results import default_out
    from focuslab.config import build_scan_config

    assert str(default_out("default", build_scan_config().digest(), build_scan_config().digest(),
                           adhoc="scan")) == "results/default"  # `focuslab scan` with no options
    with open("quick.toml", "w") as fh:
        fh.write('[scan]\nsharpness = "1,10"\nnoise = "0,1"\nlr = "0.01,0.1"\nreplicates = 3\nsteps = 20\n')
    res = cli("scan", "--config", "quick.toml", "-j", 1)
    assert res.exit_code == 0 and "results in results/quick (" in res.output, res.output
    res = cli("scan", "--config", "quick.toml", "--seed", 2, "-j", 1)
    assert res.exit_code == 0 and "results in results/quick-" in res.output, res.output


def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = Progress(1000, "steps", "scan x", stream=stream, interval=0.0, unit_total=4, unit_name="chunks")
    bar.update(250, units=1)
    bar.update(250, units=1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("scan x: 2/4 chunks, 500/1e3 steps (50%)") and "steps/s" in lines[1]
    assert "ETA" in lines[1] and "elapsed" in lines[1]


def test_scan_prints_progress_to_a_log_file(tmp_path):
    env = {**os.environ, "FOCUSLAB_PROGRESS_EVERY": "0"}
    res = subprocess.run([sys.executable, "-m", "focuslab", "scan", *FAST, "--chunk-steps", "200",
                          "--out", str(tmp_path / "r")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    progress = [line for line in res.stderr.splitlines() if " chunks, " in line]
    assert len(progress) >= 3 and "ETA" in progress[-1] and "100%" in progress[-1]


def test_a_corrupt_chunk_is_moved_aside_reported_and_recomputed(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--chunk-steps", "200", "--out", out, "-q").exit_code == 0
    good = pd.read_parquet(out / "runs.parquet")
    victim = sorted((out / "chunks").glob("*.parquet"))[1]
    victim.write_bytes(b"PAR1 this is not a parquet file")
    (out / "runs.parquet").unlink()
    res = CliRunner().invoke(main, ["scan", *FAST, "--chunk-steps", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{victim} was unreadable" in res.stderr and "1/" in res.output.splitlines()[-1]
    aside = list((out / "chunks" / "corrupt").iterdir())
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"PAR1 this")
    pd.testing.assert_frame_equal(good, pd.read_parquet(out / "runs.parquet"), check_exact=True)


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        assert cli("scan", *FAST, "--out", tmp_path / "r", "-q").exit_code == 0
        for name in ("scan.json", "runs.parquet", "best.parquet"):
            assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644, name
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "b.json", b"{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def _slow_unit(path, steps):
    import time

    from focuslab.runner import InflightReporter

    report = InflightReporter(path, every=0.0)
    for t in range(1, steps + 1):
        time.sleep(0.1)
        report(t / steps)
    return {"": pd.DataFrame({"x": [steps]})}


def test_in_flight_work_shows_in_the_progress_line(tmp_path, monkeypatch):
    """A long unit (an MNIST batch-4000 unit runs for tens of minutes) reports the fraction it has
    done; the progress line counts it before the unit ends."""
    from focuslab import runner

    monkeypatch.setattr(runner, "WATCH_EVERY", 0.05)
    stream = io.StringIO()
    inflight = tmp_path / ".inflight"
    units = [runner.Unit("u", 100.0, (str(inflight / "u.json"), 20))]
    bar = runner.Progress(100.0, "work", "study", stream=stream, interval=0.0, unit_total=1,
                          count_total=5000, count_what="model-steps")
    runner.run_units(tmp_path, units, _slow_unit, jobs=1, progress=bar, inflight=inflight, counts={"u": 5000})
    lines = stream.getvalue().splitlines()
    partial = [line for line in lines if line.startswith("study: 0/1 units")]
    assert partial, lines  # progress while the only unit was still running
    assert any("% of the work" in line and "model-steps" in line and "ETA" in line for line in partial)
    assert (tmp_path / "u.parquet").exists() and not (inflight / "u.json").exists()
    # a finished unit is counted once: its last report no longer adds to the total (it did: 103 %)
    assert bar.done + bar.partial == pytest.approx(100.0) and bar.count + bar.partial_count == pytest.approx(5000)
