"""Work kept and writes that fail said in one line (issue #30): Ctrl-C in the first unit of an MNIST
study keeps the unit's in-flight checkpoint (the whole directory was deleted); torch.save on a full
disk (a RuntimeError, not an OSError) in MNIST's in-flight checkpoint and GPT-2's checkpoint; `gpt2
prepare` into a directory it cannot create or fill.

A full disk is a real refused write here: the subprocess runs with a file-size limit
(RLIMIT_FSIZE; SIGXFSZ ignored, so the write fails with EFBIG), which refuses writes inside torch's
C++ writer exactly as a full disk refuses them."""
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from faults_helpers import cli, one_line_error  # noqa: E402
from conftest import interruptible  # noqa: E402

pytestmark = pytest.mark.faults

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}




def focuslab(*args, env=None, limit=None, timeout=600):
    """`python -m focuslab ARGS` in a fresh process; ``limit``: the largest file it may write (bytes)."""
    def setup():
        interruptible()
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "focuslab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})}, preexec_fn=setup)


MNIST = ["mnist", "--batch-size", "8", "--optimizers", "adamw", "--lr", "1e-3,1e-2", "--replicates", "2", "-j", "1",
         "-q"]


@pytest.mark.slow
def test_ctrl_c_in_the_first_mnist_unit_keeps_its_checkpoint_and_the_rerun_finishes_it_exactly(tmp_path):
    """The issue's case: one SIGINT half-way through the first unit deleted the whole directory,
    its in-flight checkpoint with it, while the message said the work was saved."""
    out = tmp_path / "MI"
    cmd = [sys.executable, "-m", "focuslab", *MNIST, "--steps", "60", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**ENV, "FOCUSLAB_CHECKPOINT_EVERY": "0"}, preexec_fn=interruptible)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("units/.inflight/*.pt")) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "completed work is saved" in err
    (ckpt,) = out.glob("units/.inflight/*.pt")  # the promise kept: the unit's work is there
    assert 0 < torch.load(ckpt, weights_only=False)["t"] < 60
    assert not list(out.glob("units/*.parquet"))  # no unit had finished: only the checkpoint holds work
    again = focuslab(*MNIST, "--steps", 60, "--out", out)
    assert again.returncode == 0, again.stderr
    assert cli(*MNIST, "--steps", 60, "--out", tmp_path / "whole").exit_code == 0
    for table in ("runs.parquet", "best.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(tmp_path / "whole" / table))


def test_ctrl_c_inside_torch_save_is_an_interrupt_and_keeps_the_previous_file(tmp_path):
    """Ctrl-C in the middle of a checkpoint's write: torch.save's zip writer then fails in its own
    cleanup ('unexpected pos', a RuntimeError) and that, not the interrupt, reached the user as a
    traceback (seen in CI).  The interrupt is what is raised; the previous checkpoint stands whole."""
    from focuslab.results import atomic_write_with

    path = tmp_path / "ckpt.pt"
    state = {"t": 1, "w": torch.arange(100_000, dtype=torch.float32)}
    atomic_write_with(path, lambda fh: torch.save(state, fh))
    before = path.read_bytes()

    class Interrupting:  # the file torch.save writes into; Ctrl-C arrives at its third write
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(path, lambda fh: torch.save({**state, "t": 2}, Interrupting(fh)))
    assert path.read_bytes() == before and torch.load(path, weights_only=False)["t"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file is left


def test_a_full_disk_at_an_mnist_in_flight_checkpoint_is_said_once_and_the_unit_trains_on(tmp_path):
    """The checkpoint (megabytes) cannot be written; the unit's tables (kilobytes) can: the study
    finishes, each unit saying once that it trained unprotected (it was a traceback)."""
    out = tmp_path / "m"
    res = focuslab(*MNIST, "--steps", 20, "--out", out, env={"FOCUSLAB_CHECKPOINT_EVERY": "0"}, limit=1 << 20)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    warned = [line for line in res.stderr.splitlines() if "cannot write the in-flight checkpoint" in line]
    assert len(warned) == 1 and warned[0].startswith("focuslab: warning:"), res.stderr  # once, not every step
    assert "File too large" in warned[0] and "the unit trains on without it" in warned[0]
    assert len(pd.read_parquet(out / "runs.parquet")) == 4 and not list(out.rglob("*.tmp"))


GPT2 = ["gpt2", "--config", "gpt2-nano", "--n-embd", 128, "--dropout", 0, "--eval-iters", 2, "--eval-interval", 10,
        "--warmup-iters", 2, "--lr-decay-iters", 30, "-q"]


def test_a_full_disk_at_a_gpt2_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path):
    """torch.save into a file that the system refuses to grow raises RuntimeError ('unexpected pos'),
    with the OSError only in its context: it was a traceback, now the one line a full disk gets."""
    run = tmp_path / "run"
    first = focuslab(*GPT2, "--max-iters", 10, "--out", run)
    assert first.returncode == 0, first.stderr
    kept = (run / "ckpt.pt").read_bytes()
    assert len(kept) > 2 << 20  # the checkpoint is bigger than the limit below; the run's other files are not
    res = focuslab(*GPT2, "--max-iters", 30, "--out", run, limit=2 << 20)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0] == (f"focuslab: error: {run / 'ckpt.pt'}: cannot write the checkpoint (File too large); the "
                        "checkpoint at iter 10 is kept")
    assert (run / "ckpt.pt").read_bytes() == kept and not list(run.glob(".ckpt.pt.*"))
    assert json.loads((run / "gpt2.json").read_text())["iter"] == 10
    assert focuslab(*GPT2, "--max-iters", 30, "--out", run).returncode == 0  # room again: it resumes


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_gpt2_prepare_into_a_directory_it_cannot_create_is_one_line(tmp_path, monkeypatch, code):
    """Tests run as root, whom a read-only directory does not stop: the refusal is the system's own
    error, raised where the directory is made."""
    import pathlib

    real = pathlib.Path.mkdir
    ro = tmp_path / "ro"

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(ro)):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    src = tmp_path / "text.md"
    src.write_text("word " * 2000)
    one_line_error(cli("gpt2", "prepare", "--input", src, "--out", ro / "prep", "--tokenizer", "bytes"),
                   f"--out {ro / 'prep'}: cannot create ({os.strerror(code)})")
    assert not ro.exists()


def test_gpt2_prepare_on_a_full_disk_is_one_line_and_leaves_no_half_prepared_directory(tmp_path, monkeypatch):
    from focuslab import results

    real, calls = os.fsync, {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # train.bin is written, val.bin is not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(results.os, "fsync", full)
    src = tmp_path / "text.md"
    src.write_text("word " * 2000)
    out = tmp_path / "prep"
    one_line_error(cli("gpt2", "prepare", "--input", src, "--out", out, "--tokenizer", "bytes"), "the disk is full")
    assert not out.exists()
    monkeypatch.undo()
    res = cli("gpt2", "prepare", "--input", src, "--out", out, "--tokenizer", "bytes")
    assert res.exit_code == 0 and sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
