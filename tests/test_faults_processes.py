"""Processes a study leaves and meets (issue #30): after kill -9 of a scan its worker processes exit
(they stayed behind, idle); two scans into one --out do not both compute everything (the second is
refused in one line naming the first; shards of one scan still run side by side)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from conftest import interruptible

pytestmark = pytest.mark.faults

#: A scan of many small chunks (tens of ms each) that lasts minutes: the tests stop it long before.
LONG = ["scan", "--sharpness", "0.1:1000:16:log", "--noise", "0:3:16", "--replicates", "50", "--steps", "30000",
        "--chunk-steps", "3000000"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "focuslab", *LONG, *map(str, extra), "-q", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def wait_for(condition, seconds: float = 240.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_after_kill_9_of_a_scan_its_workers_exit(tmp_path):
    out = tmp_path / "r"
    proc = start(out, "-j", 2)
    workers: list = []
    try:
        assert wait_for(lambda: len(loky_workers(proc.pid)) == 2), \
            f"exit {proc.returncode}: {proc.stderr.read()}" if proc.poll() is not None else "no workers"
        workers += loky_workers(proc.pid)
        assert wait_for(lambda: any((out / "chunks").glob("*.parquet")))  # they compute
        proc.kill()
        proc.wait(30)
        assert wait_for(lambda: not any(alive(w) for w in workers), 20), \
            [(_cmdline(w), alive(w)) for w in workers]  # within seconds, mid-chunk or idle
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in [*workers, *children(proc.pid)]:  # a failed test leaves no orphans behind
            if alive(w) and "loky" in _cmdline(w):
                os.kill(w, signal.SIGKILL)


def loky_workers(pid: int) -> list[int]:
    """The worker processes of a scan: loky's resource trackers, also its children and with "loky"
    in their command line, are not counted (whether one has started yet is a race)."""
    return [c for c in children(pid) if "popen_loky_posix" in _cmdline(c)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_second_scan_into_the_same_directory_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "r"
    first = start(out, "-j", 1)
    try:
        assert wait_for(lambda: (out / "scan.json").exists())
        try:  # refused at once (it computed everything a second time beside the first)
            res = subprocess.run([sys.executable, "-m", "focuslab", *LONG, "-j", "1", "-q", "--out", str(out)],
                                 capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the second scan was not refused: it computes beside the first")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--out {out} is in use by another focuslab scan (pid {first.pid} on" in lines[0]
        assert "wait for it to finish, or stop it and rerun this command" in lines[0]
        assert first.poll() is None  # the first one computes on, untouched
    finally:
        first.kill()
        first.wait(30)
    from focuslab.results import hold

    with hold(out, "scan"):  # kill -9 released its lock
        pass
    assert (out / "scan.json").exists()  # and nothing of the first was removed by the refused second


def test_shards_of_one_scan_run_side_by_side_but_not_twice_nor_beside_the_whole(tmp_path):
    from focuslab.errors import FocuslabError
    from focuslab.results import hold

    out = tmp_path / "r"
    with hold(out, "scan", "1-of-2"), hold(out, "scan", "2-of-2"):
        with pytest.raises(FocuslabError, match="in use by another focuslab scan"):
            with hold(out, "scan", "1-of-2"):
                pass
        with pytest.raises(FocuslabError, match=r"in use by another focuslab scan \(its shards are being computed\)"):
            with hold(out, "scan"):
                pass
    with hold(out, "scan"):
        with pytest.raises(FocuslabError, match=f"pid {os.getpid()} on"):
            with hold(out, "scan", "1-of-2"):
                pass


STARTING = '''
import sys
class Interrupt:  # Ctrl-C arrives while the command tree is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "focuslab.cli.main":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from focuslab.__main__ import run
run()
'''


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130():
    """A Ctrl-C in the first fraction of a second (importing click, numpy, pandas, pyarrow) printed
    a traceback from inside pyarrow's import."""
    res = subprocess.run([sys.executable, "-c", STARTING], capture_output=True, text=True, timeout=120)
    assert res.returncode == 130, res.stderr
    assert res.stderr.strip().splitlines() == ["focuslab: interrupted while starting; nothing was done"]


def test_the_installed_command_starts_through_the_guarded_entry_point():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "focuslab"]
    assert script.value == "focuslab.__main__:run"


def test_the_default_worker_count_is_the_cpus_this_process_may_use(tmp_path):
    """Under taskset or SLURM's --cpus-per-task a study starts as many workers as it was given
    cores, not one per core of the machine."""
    one = sorted(os.sched_getaffinity(0))[:1]
    res = subprocess.run([sys.executable, "-m", "focuslab", "scan", "--dry-run", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: os.sched_setaffinity(0, one))
    assert res.returncode == 0, res.stderr
    assert "on 1 worker(s)" in res.stdout + res.stderr, res.stdout
    from focuslab.devices import usable_cpus

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))  # a cgroup quota may lower it further
