"""Faults of `focuslab gpt2` (issue #22): every bad input or broken state gives exit 2 and one line
naming the flag or file, no traceback, no hang (each bounded by a timeout), nothing finished lost,
and no directory left behind by a run that failed before its first checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from focuslab.cli.main import main  # noqa: E402
from conftest import interruptible  # noqa: E402

pytestmark = pytest.mark.faults

NANO = ["--config", "gpt2-nano", "--dropout", "0", "--eval-iters", "2", "-q"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, needle, code=2):
    err = res.stderr if hasattr(res, "stderr") else ""
    assert res.exit_code == code, (res.output, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, err
    assert needle in lines[0], lines[0]
    return lines[0]


def focuslab(*args, timeout=240, env=None):
    return subprocess.run([sys.executable, "-m", "focuslab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def params(run):
    return torch.load(run / "ckpt.pt", weights_only=False)["model"]


# --- the share of an iteration per process (nanoGPT's rule, or a split micro-batch) ---------------

def test_layout_keeps_tokens_per_iteration_and_refuses_only_the_impossible():
    from focuslab.errors import FocuslabError
    from focuslab.gpt2.config import build_train_config, layout

    small = build_train_config("gpt2-small")  # 12 x 1024 x 40
    for world, accum, micro in ((1, 40, 12), (8, 5, 12), (40, 1, 12), (16, 3, 10), (80, 1, 6), (480, 1, 1)):
        share = layout(small, world)
        assert (share.accum, share.micro_batch) == (accum, micro), world
        assert share.accum * share.micro_batch * world == 480 and share.tokens == 480 * 1024
    nano = build_train_config(None)  # 8 sequences, accumulation 1
    assert (layout(nano, 4).accum, layout(nano, 4).micro_batch) == (1, 2)
    assert "nanoGPT's rule" in layout(small, 8).describe(small) and layout(nano, 1).describe(nano) == ""
    with pytest.raises(FocuslabError, match="3 processes cannot share the 8 sequences"):
        layout(nano, 3)
    with pytest.raises(FocuslabError, match="cannot share the 480 sequences"):
        layout(small, 7)


def test_sequences_split_across_processes_are_the_one_process_batches(tmp_path):
    from focuslab.gpt2.data import TokenData, embedded_corpus, prepare

    prepare(embedded_corpus()[:30000], tmp_path, "bytes")
    data = TokenData(tmp_path)
    whole = [data.batch("train", 6, 16, 3, 7, m) for m in range(4)]  # 4 micro-batches of 6 = 24 sequences
    x = torch.cat([b[0] for b in whole])
    for per in (1, 4, 5, 8, 12, 24):  # any split, including ones that straddle micro-batches
        parts = [data.sequences("train", 6, 16, 3, 7, s, min(per, 24 - s))[0] for s in range(0, 24, per)]
        assert torch.equal(torch.cat(parts), x), per


def test_nodes_as_typed_dry_run_prints_what_the_run_does(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli("gpt2", "--nodes", 4, "--rdzv-endpoint", f"127.0.0.1:{port}", "--dry-run", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "4 processes share 8 sequences per iteration" in res.output and "512 tokens per iteration" in res.output
    command = [line for line in res.output.splitlines() if not line.startswith("#")]
    assert len(command) == 1 and "--nnodes=4 --nproc-per-node=1 --rdzv-backend=c10d" in command[0]
    assert f"--rdzv-endpoint=127.0.0.1:{port}" in command[0] and not (tmp_path / "r").exists()
    # one process: the config it prints is the one the run writes and trains
    args = [*NANO, "--max-iters", 2, "--eval-interval", 2, "--out", tmp_path / "one"]
    dry = cli("gpt2", *args, "--dry-run")
    printed = json.loads("\n".join(line[4:] for line in dry.output.splitlines() if line.startswith("#   ")))
    assert cli("gpt2", *args).exit_code == 0
    assert printed == json.loads((tmp_path / "one" / "run-config.json").read_text())
    command = [line for line in dry.output.splitlines() if not line.startswith("#")][0]
    assert command.endswith(f"-m focuslab.gpt2.worker {(tmp_path / 'one' / 'run-config.json').resolve()}")


# --- refused before anything runs: exit 2, one line, nothing written ------------------------------

@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("endpoint,needle", [
    ("nonsense", "expected HOST:PORT"), (":29500", "expected HOST:PORT"),
    ("127.0.0.1:99999", "the port must be a number from 1 to 65535"), ("127.0.0.1:0", "from 1 to 65535"),
    ("127.0.0.1:http", "the port must be a number"), ("no such host:29500", "is not a host name"),
    ("nonsense.invalid:29500", "cannot resolve the host 'nonsense.invalid'"),
    ("192.0.2.1:29500", "is not an address of this machine"), ("BUSY", "is already in use on this machine"),
])
def test_bad_rendezvous_endpoints_are_refused_before_launch(tmp_path, endpoint, needle, busy_port):
    endpoint = f"127.0.0.1:{busy_port}" if endpoint == "BUSY" else endpoint
    t0 = time.time()
    for extra in ([], ["--dry-run"]):  # the dry run refuses what the run would
        res = cli("gpt2", *NANO, "--gpus-per-node", 2, "--rdzv-endpoint", endpoint, *extra, "--out", tmp_path / "r")
        line = one_line_error(res, needle)
        assert line.startswith(f"focuslab: error: --rdzv-endpoint {endpoint}")
    assert time.time() - t0 < 30 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,needle", [
    (["--min-lr", "1"], "--min-lr 1 is above --lr 0.002"),
    (["--block-size", "100000"], "--block-size 100000: the val split of the embedded corpus has only"),
    (["--vocab-size", "100"], "--vocab-size 100 is smaller than the tokenizer's 256"),
    (["--node-rank", "3", "--nodes", "2", "--rdzv-endpoint", "127.0.0.1:29500"], "--node-rank 3"),
    (["--rdzv-timeout", "0", "--gpus-per-node", "2"], "--rdzv-timeout"),
])
@pytest.mark.parametrize("procs", [1, 2])
def test_bad_settings_are_one_line_and_leave_no_directory(tmp_path, args, needle, procs):
    out = tmp_path / "new" / "run"
    res = cli("gpt2", *NANO, "--max-iters", 2, "--gpus-per-node", procs, *args, "--out", out)
    one_line_error(res, needle)
    assert not (tmp_path / "new").exists()  # nor the parent it created


def test_an_sbatch_path_that_is_a_directory_is_refused_before_anything_is_written(tmp_path):
    one_line_error(cli("gpt2", *NANO, "--sbatch", tmp_path, "--out", tmp_path / "r"), f"--sbatch {tmp_path}: is a directory")
    assert not (tmp_path / "r").exists()


def test_block_size_beyond_the_data_is_refused_at_once_not_after_minutes(tmp_path):
    t0 = time.time()
    res = focuslab("gpt2", *NANO, "--block-size", 100000, "--out", tmp_path / "r", timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "use --block-size 46626 or less" in res.stderr and time.time() - t0 < 60
    assert not (tmp_path / "r").exists()


def test_a_failed_run_in_an_existing_directory_removes_nothing_of_it(tmp_path):
    (tmp_path / "notes.log").write_text("keep me")  # a file a run directory may hold (a job's log)
    one_line_error(cli("gpt2", *NANO, "--vocab-size", 100, "--out", tmp_path), "--vocab-size 100")
    assert (tmp_path / "notes.log").read_text() == "keep me"
    (tmp_path / "mine.txt").write_text("keep me too")  # not a run directory's: refused before anything is written
    before = sorted(p.name for p in tmp_path.rglob("*"))
    one_line_error(cli("gpt2", *NANO, "--max-iters", 2, "--out", tmp_path), "holds files that are not focuslab results")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and (tmp_path / "mine.txt").read_text() == "keep me too"


def test_another_commands_directory_is_refused_both_ways(tmp_path):
    """A GPT-2 run never writes into a scan's directory, nor a scan into a run's: one line, exit 2,
    nothing written (the dry run and --sbatch refuse it too)."""
    scan = tmp_path / "scan"
    assert cli("scan", "--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", 2, "--steps", 5,
               "-j", 1, "-q", "--out", scan).exit_code == 0
    before = sorted(p.name for p in scan.rglob("*"))
    for extra in ([], ["--dry-run"], ["--sbatch", tmp_path / "job.sh"]):
        line = one_line_error(cli("gpt2", *NANO, "--max-iters", 2, *extra, "--out", scan), f"--out {scan} holds a scan")
        assert "give the GPT-2 run a directory of its own" in line
    assert sorted(p.name for p in scan.rglob("*")) == before and not (tmp_path / "job.sh").exists()
    run = tmp_path / "run"
    assert cli("gpt2", *NANO, "--max-iters", 2, "--eval-interval", 2, "--out", run).exit_code == 0
    before = sorted(p.name for p in run.rglob("*"))
    line = one_line_error(cli("scan", "--sharpness", "1,10", "--noise", "0,1", "-q", "--out", run),
                          f"--out {run} holds a GPT-2 run (gpt2.json)")
    assert "give the scan a directory of its own" in line and sorted(p.name for p in run.rglob("*")) == before
    # a run prepared by --sbatch (run-config.json, no gpt2.json yet) is a run's directory: the job may start it
    prepared = tmp_path / "prepared"
    assert cli("gpt2", *NANO, "--max-iters", 2, "--eval-interval", 2, "--sbatch", tmp_path / "p.sh",
               "--out", prepared).exit_code == 0
    assert sorted(p.name for p in prepared.iterdir()) == ["run-config.json"]
    res = cli("gpt2", *NANO, "--max-iters", 2, "--eval-interval", 2, "--out", prepared)
    assert res.exit_code == 0, res.stderr
    assert json.loads((prepared / "gpt2.json").read_text())["status"] == "complete"


# --- checkpoints: corrupt, truncated, a full disk --------------------------------------------------

COMMON = [*NANO, "--eval-interval", 10, "--lr-decay-iters", 30, "--warmup-iters", 5]


def test_truncated_checkpoint_resumes_from_the_previous_one_exactly(tmp_path):
    assert cli("gpt2", *COMMON, "--max-iters", 30, "--out", tmp_path / "clean").exit_code == 0
    run = tmp_path / "run"
    assert cli("gpt2", *COMMON, "--max-iters", 20, "--out", run).exit_code == 0
    assert torch.load(run / "ckpt.prev.pt", weights_only=False)["iter"] == 10
    good = (run / "ckpt.pt").read_bytes()
    (run / "ckpt.pt").write_bytes(good[: len(good) // 3])  # a copy cut short
    loud = [a for a in COMMON if a != "-q"]
    res = cli("gpt2", *loud, "--max-iters", 30, "--out", run)
    assert res.exit_code == 0, res.output
    assert f"{run / 'ckpt.pt'} is unreadable (truncated or corrupt" in res.output
    assert f"moved to {run / 'ckpt.pt.corrupt'}; resuming from {run / 'ckpt.prev.pt'} (iter 10)" in res.output
    assert "Traceback" not in res.output and (run / "ckpt.pt.corrupt").stat().st_size == len(good) // 3
    a, b = params(run), params(tmp_path / "clean")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not a checkpoint"])
def test_unreadable_checkpoint_without_a_good_one_is_one_line_and_force_starts_over(tmp_path, damage):
    run = tmp_path / "run"
    assert cli("gpt2", *COMMON, "--max-iters", 10, "--out", run).exit_code == 0
    good = (run / "ckpt.pt").read_bytes()
    bad = {"truncated": good[:5000], "empty": b"", "garbage": os.urandom(4096)}.get(damage)
    if bad is None:
        torch.save({"hello": 1}, run / "ckpt.pt")
        bad = (run / "ckpt.pt").read_bytes()
    for name in ("ckpt.pt", "ckpt.prev.pt"):
        (run / name).write_bytes(bad)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = one_line_error(cli("gpt2", *COMMON, "--max-iters", 20, "--out", run), f"{run / 'ckpt.pt'} is unreadable")
    assert "no earlier good checkpoint" in line and "metrics up to iter 10 are kept" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing changed
    res = cli("gpt2", *COMMON, "--max-iters", 20, "--out", run, "--force")
    assert res.exit_code == 0, res.output
    assert (run / "ckpt.pt.corrupt").read_bytes() == bad and (run / "ckpt.prev.pt.corrupt").read_bytes() == bad
    assert torch.load(run / "ckpt.pt", weights_only=False)["iter"] == 20


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, monkeypatch):
    import errno

    run = tmp_path / "run"
    assert cli("gpt2", *COMMON, "--max-iters", 10, "--out", run).exit_code == 0
    before = (run / "ckpt.pt").read_bytes()
    real = torch.save

    def full(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    line = one_line_error(cli("gpt2", *COMMON, "--max-iters", 30, "--out", run),
                          f"{run / 'ckpt.pt'}: cannot write the checkpoint (No space left on device)")
    assert "the checkpoint at iter 10 is kept" in line
    assert (run / "ckpt.pt").read_bytes() == before and not list(run.glob(".ckpt.pt.*"))


def test_a_torn_metrics_line_is_recomputed_on_resume(tmp_path):
    run = tmp_path / "run"
    assert cli("gpt2", *COMMON, "--max-iters", 20, "--out", run).exit_code == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"iter": 21, "tok')  # a hard stop mid-write
    assert cli("gpt2", *COMMON, "--max-iters", 30, "--out", run).exit_code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["val_loss"] is not None] == [0, 10, 20, 30]


# --- diagnostics asked of a finished run -----------------------------------------------------------

def test_diagnostics_of_a_finished_run_are_measured_on_its_checkpoint(tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    args = [*NANO, "--max-iters", 10, "--eval-interval", 5, "--out", run]
    assert cli("gpt2", *args).exit_code == 0
    before = (run / "ckpt.pt").read_bytes()
    loud = [a for a in args if a != "-q"]
    res = cli("gpt2", *loud, "--diagnostics-every", 5)
    assert res.exit_code == 0, res.output
    assert "finished (10 iterations) without diagnostics along training: measured on its final checkpoint " \
           "(step 10" in res.output and "retrain with --force" in res.output
    rows = pd.read_parquet(run / "diagnostics.parquet")
    assert list(rows["step"]) == [10] and rows["lambda_max"].iloc[0] > 0
    assert (run / "ckpt.pt").read_bytes() == before  # the run itself is untouched
    assert json.loads((run / "gpt2.json").read_text())["diagnostics_on_checkpoint"]["step"] == 10
    res = cli("gpt2", *loud, "--diagnostics-every", 5)
    assert "already complete (10 iterations), with its diagnostics (1 measurements); nothing to do" in res.output


# --- Ctrl-C: honoured within seconds, during the first batches too --------------------------------

def _interrupt_when(run, ready, cmd, wait=1.0):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=ENV, preexec_fn=interruptible)
    deadline = time.time() + 180
    while time.time() < deadline and not ready():
        time.sleep(0.05)
    time.sleep(wait)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, time.time() - t0, out, err


@pytest.mark.slow
def test_ctrl_c_in_the_first_batch_of_a_big_model_stops_within_seconds_and_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "focuslab", "gpt2", "--config", "gpt2-small", "--device", "cpu", "--no-compile",
           "--eval-iters", "1", "--out", str(run)]
    code, took, out, err = _interrupt_when(run, lambda: (run / "gpt2.json").exists(), cmd)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    assert took < 10, took  # one slow matrix product of grace at most, on a loaded 2-core machine
    assert not run.exists()  # nothing was trained: nothing is left


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_it_and_its_workers_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "focuslab", "gpt2", *NANO, "--max-iters", "100000", "--eval-interval", "20",
           "--gpus-per-node", "2", "--out", str(run)]
    code, took, out, err = _interrupt_when(run, lambda: (run / "ckpt.pt").exists(), cmd)
    assert code == 130 and "Traceback" not in err, err
    assert took < 20, took
    meta = json.loads((run / "gpt2.json").read_text())
    assert meta["status"] == "interrupted" and meta["iter"] >= 0 and (run / "ckpt.pt").exists()
    left = subprocess.run(["pgrep", "-f", str(run / "run-config.json")], capture_output=True, text=True).stdout
    assert not left.strip(), left  # no worker outlives the command


def test_the_launcher_marks_a_run_interrupted_when_rank_0_could_not(tmp_path):
    """Rank 0 may be ended by torchrun while it waits in a collective on a worker that already
    stopped: its record still says "running".  The launcher then marks it, at the checkpoint's
    iteration; a run without a checkpoint, or one not running, is left as it is."""
    from focuslab.gpt2.checkpoint import mark_interrupted

    run = tmp_path / "run"
    run.mkdir()
    record = {"kind": "gpt2", "status": "running", "iter": 40, "digest": "d"}
    (run / "gpt2.json").write_text(json.dumps(record))
    assert not mark_interrupted(run)  # no checkpoint yet: nothing to resume from, nothing to claim
    assert json.loads((run / "gpt2.json").read_text())["status"] == "running"
    (run / "ckpt.pt").write_bytes(b"x")
    assert mark_interrupted(run)
    assert json.loads((run / "gpt2.json").read_text()) == {**record, "status": "interrupted"}
    (run / "gpt2.json").write_text(json.dumps({**record, "status": "complete"}))
    assert not mark_interrupted(run)
    assert json.loads((run / "gpt2.json").read_text())["status"] == "complete"
    assert not mark_interrupted(tmp_path / "missing")


# --- torchrun failures: one line, torchrun's output in the run's log --------------------------------

FAULTY = '''
import os
import torch
from focuslab.errors import FocuslabError


class Faulty(torch.optim.SGD):
    """SGD that fails on rank 1 of a real model (never in the one-process probes)."""

    def step(self, closure=None):
        big = sum(p.numel() for g in self.param_groups for p in g["params"]) > 10000
        if big and os.environ.get("RANK") == "1":
            if os.environ.get("FAULT") == "crash":
                raise RuntimeError("boom: injected crash")
            raise FocuslabError("injected: rank 1 refuses")
        return super().step(closure)
'''


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "refusal"])
def test_a_failing_worker_is_one_line_and_its_traceback_goes_to_the_log(tmp_path, fault):
    (tmp_path / "faulty.py").write_text(FAULTY)
    run = tmp_path / "run"
    res = focuslab("gpt2", *NANO, "--optimizer", f"{tmp_path / 'faulty.py'}:Faulty", "--max-iters", 4,
                   "--eval-interval", 2, "--gpus-per-node", 2, "--out", run,
                   env={**ENV, "FAULT": fault})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    log = run / "torchrun.log"
    if fault == "crash":
        assert ("a worker process failed with RuntimeError: boom: injected crash (torchrun exited with status 1; "
                "its traceback is in") in lines[0]  # the error itself, where the log may be gone (selftest)
        assert "boom: injected crash" in log.read_text()
    else:
        assert lines[0].startswith("focuslab: error: injected: rank 1 refuses (in a worker;")
    assert f"{log}" in lines[0]
    # the evaluation at iter 0 was checkpointed before the failing step: it is kept, and said so
    assert "the checkpoint at iter 0 is kept: re-run the same command to resume" in lines[0]
    assert (run / "ckpt.pt").exists()


def test_a_workers_exception_line_is_read_from_torchruns_log():
    from focuslab.gpt2.torchrun import EXCEPTION_LINE

    def read(line):
        found = EXCEPTION_LINE.match(line)
        return found.group(1) if found else None

    assert read("[rank1]: RuntimeError: Connection closed by peer [127.0.0.1]:5000\n") == \
        "RuntimeError: Connection closed by peer [127.0.0.1]:5000"
    assert read("torch.distributed.DistBackendError: NCCL error\n") == "torch.distributed.DistBackendError: NCCL error"
    assert read("KeyboardInterrupt\n") == "KeyboardInterrupt"
    for quiet in ("UserWarning: a warning\n", "ERROR:torch.distributed.elastic:failed\n", "  File \"x.py\", line 3\n"):
        assert read(quiet) is None, quiet
