"""`focuslab gpt2`: training, data preparation, exact resume, DDP on CPU (gloo), launch scripts."""
import json
import math
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from focuslab.cli.main import main  # noqa: E402
from focuslab.gpt2.data import byte_decode  # noqa: E402

NANO = ["--config", "gpt2-nano", "--dropout", "0", "--eval-iters", "4", "-q"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


from distributed_helpers import launch_with_retries  # noqa: E402
from conftest import interruptible  # noqa: E402


def val_rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["train_loss"], r["val_loss"]) for r in rows if r["val_loss"] is not None]


def params(run):
    return torch.load(run / "ckpt.pt", weights_only=False)["model"]


def test_cli_import_does_not_import_torch():
    code = "import sys, focuslab.cli.main; sys.exit('torch' in sys.modules or 'numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("optimizer", ["focus", "adamw", "signum"])
def test_loss_falls_on_the_embedded_corpus(tmp_path, optimizer):
    res = cli("gpt2", *NANO, "--optimizer", optimizer, "--max-iters", 60, "--eval-interval", 30,
              "--out", tmp_path)
    assert res.exit_code == 0, res.output
    rows = val_rows(tmp_path)
    assert rows[0][0] == 0 and rows[-1][0] == 60
    assert rows[-1][2] < rows[0][2] - 1.0  # byte-level loss starts at ~ln(256) = 5.5
    meta = json.loads((tmp_path / "gpt2.json").read_text())
    assert meta["status"] == "complete" and meta["data_meta"]["tokenizer"] == "bytes"


def test_prepare_round_trips_and_rejects_bad_input(tmp_path):
    text = "Hello, valley! Ünïcödé survives the byte tokenizer.\n" * 40
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(text)
    res = cli("gpt2", "prepare", "--input", tmp_path / "in", "--out", tmp_path / "tok", "--tokenizer", "bytes")
    assert res.exit_code == 0 and "byte-level" in res.output
    import numpy as np
    tokens = np.concatenate([np.fromfile(tmp_path / "tok" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert byte_decode(tokens) == text
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["vocab_size"] == 256 and meta["train_tokens"] + meta["val_tokens"] == len(text.encode())
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("   \n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x9c" * 50)
    for args, needle in (([tmp_path / "empty"], "no files"), ([tmp_path / "blank.txt"], "no text"),
                         ([tmp_path / "bin.txt"], "unreadable"), ([tmp_path / "nope"], "no such file")):
        res = cli("gpt2", "prepare", "--input", *args, "--out", tmp_path / "x")
        assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.splitlines()) == 1
    # a prepared directory trains: on its tokens (not the embedded corpus), every evaluation logged,
    # the loss starting at ln(256) (an untrained model over the byte tokens) and falling
    run = tmp_path / "run"
    res = cli("gpt2", *NANO, "--data", tmp_path / "tok", "--max-iters", 20, "--eval-interval", 10,
              "--warmup-iters", 0, "--block-size", 32, "--out", run)
    assert res.exit_code == 0, res.output
    rows = val_rows(run)
    assert [r[0] for r in rows] == [0, 10, 20]
    assert abs(rows[0][2] - math.log(256)) < 0.2, rows
    assert rows[1][2] < rows[0][2] - 0.5 and rows[2][2] < rows[1][2], rows  # 5.5 -> 3.9 -> 3.4 here
    meta = json.loads((run / "gpt2.json").read_text())
    assert meta["status"] == "complete" and meta["iter"] == 20 and meta["config"]["data"] == str(tmp_path / "tok")
    assert meta["model_config"]["vocab_size"] == 256 and meta["model_config"]["block_size"] == 32
    assert meta["data_meta"]["train_tokens"] == json.loads((tmp_path / "tok" / "meta.json").read_text())["train_tokens"]
    assert not (run / "data").exists()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    common = [*NANO, "--eval-interval", 10, "--lr-decay-iters", 40, "--warmup-iters", 5]
    assert cli("gpt2", *common, "--max-iters", 40, "--out", tmp_path / "full").exit_code == 0
    assert cli("gpt2", *common, "--max-iters", 20, "--out", tmp_path / "part").exit_code == 0
    loud = [a for a in common if a != "-q"]
    res = cli("gpt2", *loud, "--max-iters", 40, "--out", tmp_path / "part")  # a rerun continues
    assert res.exit_code == 0, res.output
    assert "resuming at iter 20" in res.output
    assert val_rows(tmp_path / "full") == val_rows(tmp_path / "part")
    for k, v in params(tmp_path / "full").items():
        assert torch.equal(v, params(tmp_path / "part")[k]), k


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_same_global_batch(tmp_path):
    common = [*NANO, "--max-iters", 6, "--eval-interval", 6, "--gradient-accumulation-steps", 2,
              "--device", "cpu"]
    assert cli("gpt2", *common, "--out", tmp_path / "one").exit_code == 0

    def launch(port):
        res = cli("gpt2", *common, "--gpus-per-node", 2, "--rdzv-endpoint", f"127.0.0.1:{port}",
                  "--out", tmp_path / "two")
        return res.exit_code == 0, res.output

    launch_with_retries(launch)
    a, b = params(tmp_path / "one"), params(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert json.loads((tmp_path / "two" / "gpt2.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_torchrun_agents_form_a_two_node_rendezvous(tmp_path):
    def launch(port):
        args = [sys.executable, "-m", "focuslab", "gpt2", *map(str, NANO), "--max-iters", "4",
                "--eval-interval", "4", "--gradient-accumulation-steps", "2", "--nodes", "2",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--out", str(tmp_path / "run")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        agents = [subprocess.Popen(args + ["--node-rank", str(r)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
        outs = [p.communicate(timeout=240)[0] for p in agents]
        return [p.returncode for p in agents] == [0, 0], outs

    launch_with_retries(launch)
    meta = json.loads((tmp_path / "run" / "gpt2.json").read_text())
    assert meta["status"] == "complete" and meta["world_size"] == 2
    assert val_rows(tmp_path / "run")[-1][0] == 4


def test_prepare_names_tiktoken_when_it_is_missing(tmp_path):
    try:
        import tiktoken  # noqa: F401
        pytest.skip("tiktoken is installed")
    except ImportError:
        pass
    (tmp_path / "a.txt").write_text("some text " * 50)
    res = cli("gpt2", "prepare", "--input", tmp_path / "a.txt", "--out", tmp_path / "tok", "--tokenizer", "gpt2")
    assert res.exit_code == 2 and "tiktoken is not installed (pip install tiktoken)" in res.stderr
    res = cli("gpt2", "prepare", "--input", tmp_path / "a.txt", "--out", tmp_path / "tok")
    assert res.exit_code == 0 and "tiktoken is not installed" in res.output


def test_sbatch_and_dry_run(tmp_path):
    res = cli("gpt2", "--config", "gpt2-small", "--optimizer", "focus", "--nodes", 4, "--gpus-per-node", 2,
              "--out", tmp_path / "r",
              "--sbatch", tmp_path / "job.sh", "--sbatch-option", "partition=gpu")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "job.sh").read_text()
    for needle in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --partition=gpu", "srun", "-m torch.distributed.run", "--nproc-per-node=2",
                   "--rdzv-backend=c10d", "join_timeout=300", sys.executable,
                   "--rdzv-id=\"$SLURM_JOB_ID\"", "-m focuslab.gpt2.worker"):
        assert needle in text, needle
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    cfg = json.loads((tmp_path / "r" / "run-config.json").read_text())
    assert cfg["n_layer"] == 12 and cfg["optimizer"] == "focus" and cfg["learning_rate"] == 6e-4
    res = cli("gpt2", *NANO, "--gpus-per-node", 2, "--gradient-accumulation-steps", 2, "--dry-run",
              "--out", tmp_path / "d")
    assert res.exit_code == 0
    assert "torch.distributed.run --nnodes=1 --nproc-per-node=2 --standalone" in res.output  # a free local port
    assert "each runs 1 micro-step of 8 sequences" in res.output and not (tmp_path / "d").exists()


def test_plot_of_several_runs(tmp_path):
    for opt in ("focus", "adamw"):
        assert cli("gpt2", *NANO, "--optimizer", opt, "--max-iters", 10, "--eval-interval", 5,
                   "--out", tmp_path / opt).exit_code == 0
    res = cli("plot", tmp_path / "focus", tmp_path / "adamw", "--out", tmp_path / "fig", "--format", "png,pdf")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig" / "val_loss.png").exists() and (tmp_path / "fig" / "val_loss.pdf").exists()
    assert "FOCUS, lr 0.002" in res.output


@pytest.mark.parametrize("args,needle", [
    (["--optimizer", "sgdd"], "unknown optimizer 'sgdd'"), (["--n-embd", "65"], "multiple of --n-head"),
    (["--gpus-per-node", "3"], "3 processes cannot share the 8 sequences"), (["--dtype", "bfloat16"], "mixed precision"),
    (["--gamma", "0.4"], "No such option"), (["--data", "/no/such/dir"], "not a prepared token directory"),
    (["--config", "gpt2-huge"], "no gpt2 preset named 'gpt2-huge' (available: gpt2-mini"), (["--lr", "-1"], "--lr must be > 0"),
    (["--nodes", "2", "--gradient-accumulation-steps", "2"], "--rdzv-endpoint"), (["--device", "tpu"], "--device"),
    (["--nodes", "4"], "--nodes 4 needs the other machines"),  # before any batch arithmetic
    (["--device", "cuda"], "--device cuda: no CUDA device is visible to torch"),
    (["--optimizer", "adamw,focus"], "one optimizer per run"),
    (["--opt-param", "adamw.beta2=0.9"], "this run trains focus, not adamw"),
])
def test_bad_options_exit_2(tmp_path, args, needle):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    res = cli("gpt2", *NANO, "--max-iters", 2, *args, "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    common = [*NANO, "--max-iters", 6, "--eval-interval", 3]
    assert cli("gpt2", *common, "--out", tmp_path / "eager").exit_code == 0
    res = cli("gpt2", *common, "--compile", "--out", tmp_path / "compiled")
    assert res.exit_code == 0, res.output
    eager, compiled = val_rows(tmp_path / "eager"), val_rows(tmp_path / "compiled")
    assert [r[0] for r in eager] == [r[0] for r in compiled] == [0, 3, 6]
    for (i, tr, va), (j, tr2, va2) in zip(eager, compiled):
        assert tr == pytest.approx(tr2, rel=1e-4) and va == pytest.approx(va2, rel=1e-4)


def _nano_cmd(out, *extra):
    return [sys.executable, "-m", "focuslab", "gpt2", "--config", "gpt2-nano", "--dropout", "0", "--eval-iters", "2",
            "--eval-interval", "50", "--max-iters", "300", "--out", str(out), *map(str, extra)]


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_a_plain_rerun_resumes_exactly(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(_nano_cmd(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=interruptible)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    while time.time() < deadline and sum(1 for _ in open(run / "metrics.jsonl")) < 4:
        time.sleep(0.02)  # past the first evaluation, mid-interval
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "completed work is saved, re-run the same command to resume" in err
    meta = json.loads((run / "gpt2.json").read_text())
    stopped = torch.load(run / "ckpt.pt", weights_only=False)["iter"]
    assert meta["status"] == "interrupted" and 0 < stopped < 300 and stopped % 50 != 0, (meta, stopped)
    again = subprocess.run(_nano_cmd(run), capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert f"resuming at iter {stopped}" in again.stdout
    clean = subprocess.run(_nano_cmd(tmp_path / "clean"), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    a, b = params(run), params(tmp_path / "clean")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert val_rows(run) == val_rows(tmp_path / "clean")


def test_rerun_of_a_finished_run_is_a_no_op_and_another_config_is_refused(tmp_path):
    loud = [a for a in NANO if a != "-q"]
    args = [*loud, "--max-iters", 10, "--eval-interval", 5, "--out", tmp_path]
    assert cli("gpt2", *args).exit_code == 0
    before = (tmp_path / "ckpt.pt").read_bytes()
    res = cli("gpt2", *args)
    assert res.exit_code == 0 and "already complete" in res.output and "nothing to do" in res.output
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    res = cli("gpt2", *args, "--lr", "1e-3")
    assert res.exit_code == 2 and "different config" in res.stderr and "--force" in res.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    res = cli("gpt2", *args, "--lr", "1e-3", "--force")
    assert res.exit_code == 0 and "resuming" not in res.output
    assert json.loads((tmp_path / "gpt2.json").read_text())["config"]["learning_rate"] == 1e-3


def test_default_run_directories_follow_preset_optimizer_and_flags():
    res = cli("gpt2", "--optimizer", "adamw", "--max-iters", 2, "--eval-interval", 2, "--eval-iters", 1, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "results/gpt2-nano-adamw-" in res.output  # --max-iters differs from the preset: a digest
    res = cli("gpt2", "--optimizer", "adamw", "--dry-run")
    assert "results/gpt2-nano-adamw/run-config.json" in res.output
    assert "does not exist yet: running this command without --dry-run writes it" in res.output


def test_optimizer_settings_come_from_the_preset_then_opt_param_then_inline():
    from focuslab.gpt2.config import build_train_config

    small = build_train_config("gpt2-small", flags={"optimizer": "adamw"})
    assert small.optimizer_settings == {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8}
    c = build_train_config("gpt2-small", flags={"optimizer": "focus:gamma=0.4"}, opt_params={"focus": {"beta2": "0.9"}})
    assert c.optimizer == "focus:gamma=0.4" and c.optimizer_settings["beta2"] == 0.9 and c.optimizer_settings["gamma"] == 0.4
    from focuslab.errors import FocuslabError

    with pytest.raises(FocuslabError, match="this run trains focus, not adamw"):
        build_train_config(None, opt_params={"adamw": {"beta2": "0.9"}})


def test_sbatch_scripts_use_the_interpreter_that_wrote_them(tmp_path):
    res = cli("gpt2", "--nodes", 2, "--gpus-per-node", 2, "--gradient-accumulation-steps", 4, "--out", tmp_path / "r",
              "--sbatch", tmp_path / "g.sh")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "g.sh").read_text()
    assert f'PYTHON="${{FOCUSLAB_PYTHON:-{sys.executable}}}"' in text and '"$PYTHON" -m torch.distributed.run' in text
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert any(line.startswith("srun --nodes") for line in commands)
    assert not any("torchrun " in line for line in commands)  # python -m torch.distributed.run instead
    res = cli("scan", "--sharpness", "1,10", "--noise", "0,1", "--lr", "0.1", "--out", tmp_path / "s", "--sbatch",
              tmp_path / "s.sh", "--shards", 2)
    assert res.exit_code == 0, res.output
    text = (tmp_path / "s.sh").read_text()
    assert text.count('"$PYTHON" -m focuslab') == 2 and "srun focuslab" not in text


@pytest.mark.slow
def test_a_missing_node_is_reported_after_the_stated_timeout(tmp_path):
    from distributed_helpers import free_port

    port = free_port()
    loud = [a for a in NANO if a != "-q"]
    res = subprocess.run([sys.executable, "-m", "focuslab", "gpt2", *map(str, loud), "--max-iters", "2",
                          "--gradient-accumulation-steps", "2", "--nodes", "2", "--rdzv-endpoint",
                          f"127.0.0.1:{port}", "--rdzv-timeout", "5", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 2, res.stderr
    assert f"waiting for 2 nodes at 127.0.0.1:{port} (timeout 5 s" in res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"not all 2 nodes joined the rendezvous at --rdzv-endpoint 127.0.0.1:{port} within --rdzv-timeout 5 s" \
        in err[0]
    log = tmp_path / "r" / "torchrun.log"
    assert f"torchrun's output: {log}" in err[0] and "nothing was trained" in err[0]
    assert "RendezvousTimeoutError" in log.read_text()  # torchrun's own traceback, kept in the log
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["torchrun.log"]  # nothing else left
