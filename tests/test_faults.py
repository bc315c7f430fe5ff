"""Faults a user meets: corrupt tables, another command's directory, a changed config, a refused
first attempt.  Each gives the right result or one line and exit 2; nothing finished is lost."""
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main

pytestmark = pytest.mark.faults

FAST = ["--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "3", "--steps", "20",
        "--jobs", "1", "-q"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    assert needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("table", ["runs.parquet", "best.parquet"])
def test_a_cut_top_level_table_is_rebuilt_from_the_chunks(tmp_path, table):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    before = pd.read_parquet(out / table)
    data = (out / table).read_bytes()
    (out / table).write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short
    res = cli("scan", *FAST[:-1], "--out", out)
    assert res.exit_code == 0, res.output
    assert "unreadable; rebuilding from the" in res.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out / table), before)


def test_force_always_redoes(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    first = json.loads((out / "scan.json").read_text())
    res = cli("scan", *FAST[:-1], "--out", out, "--force")
    assert res.exit_code == 0 and "already complete" not in res.output
    again = json.loads((out / "scan.json").read_text())
    assert again["created"] >= first["created"] and len(again["timings"]["attempts"]) == 1


def test_a_changed_config_is_refused_naming_what_differs(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    res = cli("scan", *FAST, "--out", out, "--seed", "4", "--steps", "21")
    one_line_error(res, "different config (seed: 0 -> 4; steps: 20 -> 21)")


def test_another_commands_directory_is_refused(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    pytest.importorskip("torch")
    res = cli("mnist", "--batch-size", "8", "--steps", "2", "--out", out)
    one_line_error(res, "holds a scan (scan.json); give the MNIST study a directory of its own")
    study = tmp_path / "m"
    study.mkdir()
    (study / "mnist.json").write_text("{}")
    one_line_error(cli("scan", *FAST, "--out", study), "holds a MNIST study (mnist.json)")


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(cli("scan", *FAST, "--out", tmp_path), "holds files that are not focuslab results (notes.txt)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_refused_first_attempt_leaves_no_directory(tmp_path, monkeypatch):
    """A failure after the directory was made (here: the workers fail) removes it when nothing was
    finished; a resumed directory keeps its finished chunks."""
    from focuslab import scan

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan, "run_units", boom, raising=False)
    import focuslab.runner as runner

    monkeypatch.setattr(runner, "run_units", boom)
    out = tmp_path / "new"
    res = cli("scan", *FAST, "--out", out)
    assert res.exit_code == 130 and not out.exists()
    monkeypatch.undo()
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    monkeypatch.setattr(runner, "run_units", boom)
    (out / "runs.parquet").unlink()
    for chunk in list((out / "chunks").glob("*.parquet"))[1:]:
        chunk.unlink()
    res = cli("scan", *FAST, "--out", out)
    assert res.exit_code == 130 and len(list((out / "chunks").glob("*.parquet"))) == 1  # kept


def test_a_full_disk_is_one_line_and_keeps_what_was_finished(tmp_path, monkeypatch):
    """ENOSPC while a chunk is written: one line that names the file; the chunks written before stay,
    no partial file is left, and the same command finishes the scan once there is room."""
    import errno
    import os

    from focuslab import results

    out = tmp_path / "r"
    real = os.fsync
    calls = {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(results.os, "fsync", full)
    res = cli("scan", *FAST, "--out", out)
    one_line_error(res, "the disk is full; what was finished before is kept")
    assert not list(out.rglob(".*.tmp"))
    kept = len(list((out / "chunks").glob("*.parquet")))
    monkeypatch.undo()
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    assert len(list((out / "chunks").glob("*.parquet"))) >= kept and (out / "runs.parquet").exists()


def test_plot_to_an_unwritable_place_is_one_line(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(cli("plot", out, "--out", blocker / "figs"), "--out")


def test_plot_to_a_read_only_directory_is_one_line(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os_can_write(ro):  # root ignores permissions: nothing to test there
            pytest.skip("this user can write anywhere")
        one_line_error(cli("plot", out, "--out", ro), "cannot write")
    finally:
        ro.chmod(0o700)


def os_can_write(path):
    import os

    probe = path / ".probe"
    try:
        probe.write_text("")
        os.unlink(probe)
        return True
    except OSError:
        return False
