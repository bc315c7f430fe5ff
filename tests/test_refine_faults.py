"""Faults a user meets with ``focuslab refine`` (issue 30): a read-only results directory, a scan whose
every optimizer diverged, refine's own tables cut short, and the dry run that must check what the
run checks and write nothing.  Each gives the right result or one line and exit 2."""
import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from test_faults import cli, one_line_error  # the faults' one way to run a command and judge its error

pytestmark = pytest.mark.faults

FAST = ["--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "3", "--steps", "20",
        "--optimizers", "adam,signum", "--jobs", "1", "-q"]
REFINE = ["--initial-replicates", "20", "--max-replicates", "40", "-j", "1"]
TABLES = ("decisions.parquet", "replicates.parquet", "refine/lrs.parquet")


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes (what a command that writes nothing leaves alone)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture
def scanned(tmp_path):
    out = tmp_path / "s"
    assert cli("scan", *FAST, "--out", out).exit_code == 0
    return out


def read_only(monkeypatch, root: Path, access: bool = True) -> None:
    """Make ``root`` behave like a read-only mount for this process, as it does for root too: every
    open for writing, file creation and mkdir under it fails with EROFS (an existing directory still
    says EEXIST), and with ``access`` os.access(W_OK) says no, as access(2) does on such a mount, and
    statvfs reports the mount read-only (ST_RDONLY)."""
    import builtins
    import io

    root = os.path.realpath(root)

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        return os.path.realpath(os.fsdecode(path)).startswith(root)

    def refused(path):
        return OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_open, real_os_open, real_mkdir, real_access, real_statvfs = (builtins.open, os.open, os.mkdir, os.access,
                                                                     os.statvfs)

    def ro_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            raise refused(file)
        return real_open(file, mode, *args, **kwargs)

    def ro_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise refused(path)
        return real_os_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if under(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            raise refused(path)
        return real_mkdir(path, *args, **kwargs)

    def ro_statvfs(path):
        real = real_statvfs(path)
        if not under(path):
            return real
        values = list(real)
        values[8] |= os.ST_RDONLY  # f_flag
        return os.statvfs_result(values)

    def ro_access(path, mode, *args, **kwargs):
        if mode & os.W_OK and under(path):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(io, "open", ro_open)
    monkeypatch.setattr(os, "open", ro_os_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    if access:
        monkeypatch.setattr(os, "access", ro_access)
        monkeypatch.setattr(os, "statvfs", ro_statvfs)


# --- a read-only mount ------------------------------------------------------------------------------
@pytest.mark.parametrize("access", [False, True], ids=["found-at-the-lock", "found-before"])
def test_refine_on_a_read_only_directory_is_one_line_that_says_what_to_do(scanned, monkeypatch, access):
    """Whether os.access tells (a read-only mount) or only the first write does (a file system whose
    access() does not know), the run stops with one line naming the directory and the way out, and
    writes nothing."""
    before = snapshot(scanned)
    read_only(monkeypatch, scanned, access=access)
    res = cli("refine", scanned, *REFINE)
    one_line_error(res, f"{scanned}")
    assert "read-only" in res.stderr and "cp -r" in res.stderr
    monkeypatch.undo()
    assert snapshot(scanned) == before


# --- every optimizer diverges -----------------------------------------------------------------------
def test_refine_of_a_scan_where_everything_diverged_decides_diverged_everywhere(tmp_path):
    out = tmp_path / "d"
    scan = list(FAST)
    scan[scan.index("--lr") + 1] = "1e10"
    assert cli("scan", *scan, "--out", out).exit_code == 0
    res = cli("refine", out, *REFINE)
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "diverged 100.0%" in res.output
    decisions = pd.read_parquet(out / "decisions.parquet")
    assert len(decisions) == 4 and (decisions.outcome == "diverged").all()
    assert (decisions.winner == "").all() and (decisions.replicates == 0).all() and (decisions.steps == 0).all()
    reps, lrs = pd.read_parquet(out / "replicates.parquet"), pd.read_parquet(out / "refine" / "lrs.parquet")
    assert len(reps) == 0 and {"cell", "optimizer", "lr", "replicate", "final_loss"} <= set(reps.columns)
    assert len(lrs) == 0 and {"cell", "optimizer", "lr", "selected", "optimizer_state"} <= set(lrs.columns)
    assert json.loads((out / "scan.json").read_text())["refine"]["fractions"]["diverged"] == 1.0
    assert "already refined" in cli("refine", out, *REFINE).output
    res = cli("plot", out)
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "diverged 100.0%" in res.output and (out / "phase_decisive.png").exists()


# --- refine's tables cut short ----------------------------------------------------------------------
@pytest.mark.parametrize("table", TABLES)
def test_a_cut_refine_table_is_rebuilt_from_the_work_units(scanned, table):
    assert cli("refine", scanned, *REFINE, "-q").exit_code == 0
    before = {name: pd.read_parquet(scanned / name) for name in TABLES}
    units = snapshot(scanned / "refine" / "units")
    data = (scanned / table).read_bytes()
    (scanned / table).write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short
    if table == "decisions.parquet":  # plot reads it: one line that ends with the command that recovers
        res = cli("plot", scanned)
        one_line_error(res, "decisions.parquet")
        assert res.stderr.strip().endswith(f"`focuslab refine {scanned} --initial-replicates 20 --max-replicates 40`")
    res = cli("refine", scanned, *REFINE)
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "already refined" not in res.output
    assert "unreadable" in res.stderr and "rebuilding" in res.stderr
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(scanned / name), before[name], check_exact=True)
    assert snapshot(scanned / "refine" / "units") == units  # rebuilt, not recomputed
    assert cli("plot", scanned).exit_code == 0


def test_a_lost_decisions_table_is_named_by_plot_and_rebuilt_by_refine(scanned):
    assert cli("refine", scanned, *REFINE, "-q").exit_code == 0
    before = pd.read_parquet(scanned / "decisions.parquet")
    (scanned / "decisions.parquet").unlink()
    res = cli("plot", scanned)
    one_line_error(res, "decisions.parquet is not found")
    assert res.stderr.strip().endswith(f"`focuslab refine {scanned} --initial-replicates 20 --max-replicates 40`")
    res = cli("refine", scanned, *REFINE)
    assert res.exit_code == 0 and "rebuilding" in res.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(scanned / "decisions.parquet"), before, check_exact=True)


# --- the dry run ------------------------------------------------------------------------------------
def test_the_dry_run_prints_the_plan_and_writes_nothing(scanned):
    before = snapshot(scanned)
    res = cli("refine", scanned, *REFINE, "--dry-run")
    assert res.exit_code == 0, res.output + str(res.exception)
    text = res.output
    assert f"{scanned}" in text and "4 cells" in text and "adam, signum" in text
    assert "looks at 20, 40 estimation replicates" in text and "candidate lrs" in text
    assert "optimizer steps" in text and "ETA" in text
    assert snapshot(scanned) == before


def test_the_dry_run_bounds_the_work_the_run_does(scanned):
    """The plan's least (every cell to its first look on the candidates the scan starts it from) and
    most (every candidate the race can hold, at every look) bound the steps a real run simulates in
    its first pass over the map."""
    from focuslab.refine import RefineParams, RefineRun, plan_refine

    params = RefineParams(initial_replicates=20, max_replicates=40)
    plan = plan_refine(scanned, params, RefineRun(), jobs=1)
    work = plan.work
    assert 0 < work.steps_least < work.steps_most and 0 < work.seconds_least < work.seconds_most
    assert cli("refine", scanned, *REFINE, "-q").exit_code == 0
    first = sum(int(pd.read_parquet(f)["steps"].sum()) for f in (scanned / "refine" / "units").glob("c*.parquet")
                if f.name.count(".") == 1)
    assert work.steps_least <= first <= work.steps_most
    done = plan_refine(scanned, params, RefineRun(), jobs=1)
    assert done.complete and "already refined" in cli("refine", scanned, *REFINE, "--dry-run").output


@pytest.mark.parametrize("args,needle", [
    (["--fdr", "2"], "--fdr: must be in (0, 1)"),
    (["--initial-replicates", "21"], "--initial-replicates: must be an even number"),
    (["--shard", "3/2"], "--shard: need 1 <= K <= N"),
    (["-j", "0"], "--jobs: must be >= 1"),
])
def test_the_dry_run_refuses_what_the_run_refuses(scanned, args, needle):
    before = snapshot(scanned)
    for extra in ([], ["--dry-run"]):
        one_line_error(cli("refine", scanned, *REFINE, *args, *extra), needle)
    assert snapshot(scanned) == before


def test_the_dry_run_refuses_other_settings_as_the_run_does_and_follows_force(scanned, tmp_path):
    assert cli("refine", scanned, *REFINE, "-q").exit_code == 0
    before = snapshot(scanned)
    other = [*REFINE, "--fdr", "0.1"]
    for extra in (["--dry-run"], []):
        one_line_error(cli("refine", scanned, *other, *extra), "was refined with other settings")
    res = cli("refine", scanned, *other, "--force", "--dry-run")
    assert res.exit_code == 0 and "starts over" in res.output
    assert snapshot(scanned) == before
    one_line_error(cli("refine", tmp_path / "nothing", "--dry-run"), "not found")
    assert not (tmp_path / "nothing").exists()


def test_the_dry_run_on_a_read_only_directory_says_what_the_run_would(scanned, monkeypatch):
    read_only(monkeypatch, scanned)
    res = cli("refine", scanned, *REFINE, "--dry-run")
    one_line_error(res, "read-only")
