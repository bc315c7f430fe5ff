"""`focuslab gpt2`: training, data preparation, exact resume, DDP on CPU (gloo), launch scripts."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from focuslab.cli.main import main  # noqa: E402
from focuslab.gpt2.data import byte_decode  # noqa: E402

NANO = ["--preset", "gpt2-nano", "--dropout", "0", "--eval-iters", "4", "-q"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


from distributed_helpers import launch_with_retries  # noqa: E402


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
    # a prepared directory trains
    res = cli("gpt2", *NANO, "--data", tmp_path / "tok", "--max-iters", 5, "--eval-interval", 5,
              "--block-size", 32, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    common = [*NANO, "--eval-interval", 10, "--lr-decay-iters", 40, "--warmup-iters", 5]
    assert cli("gpt2", *common, "--max-iters", 40, "--out", tmp_path / "full").exit_code == 0
    assert cli("gpt2", *common, "--max-iters", 20, "--out", tmp_path / "part").exit_code == 0
    res = cli("gpt2", *common, "--max-iters", 40, "--out", tmp_path / "part", "--resume")
    assert res.exit_code == 0, res.output
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


def test_sbatch_and_dry_run(tmp_path):
    res = cli("gpt2", "--config", "gpt2-small-focus", "--nodes", 4, "--gpus-per-node", 2, "--out", tmp_path / "r",
              "--sbatch", tmp_path / "job.sh", "--sbatch-option", "partition=gpu")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "job.sh").read_text()
    for needle in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --partition=gpu", "srun", "torchrun", "--nproc-per-node=2", "--rdzv-backend=c10d",
                   "--rdzv-id=\"$SLURM_JOB_ID\"", "-m focuslab.gpt2.worker"):
        assert needle in text, needle
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    cfg = json.loads((tmp_path / "r" / "run-config.json").read_text())
    assert cfg["n_layer"] == 12 and cfg["optimizer"] == "focus" and cfg["learning_rate"] == 6e-4
    res = cli("gpt2", *NANO, "--gpus-per-node", 2, "--gradient-accumulation-steps", 2, "--dry-run",
              "--out", tmp_path / "d")
    assert res.exit_code == 0
    assert "torch.distributed.run --nnodes=1 --nproc-per-node=2 --rdzv-backend=c10d" in res.output
    assert "--rdzv-endpoint=127.0.0.1:29500" in res.output and not (tmp_path / "d").exists()


def test_plot_of_several_runs(tmp_path):
    for opt in ("focus", "adamw"):
        assert cli("gpt2", *NANO, "--optimizer", opt, "--max-iters", 10, "--eval-interval", 5,
                   "--out", tmp_path / opt).exit_code == 0
    res = cli("plot", tmp_path / "focus", tmp_path / "adamw", "--out", tmp_path / "fig", "--format", "png,pdf")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig" / "val_loss.png").exists() and (tmp_path / "fig" / "val_loss.pdf").exists()
    assert "FOCUS, lr 0.002" in res.output


@pytest.mark.parametrize("args,needle", [
    (["--optimizer", "sgd"], "unknown optimizer"), (["--n-embd", "65"], "multiple of --n-head"),
    (["--gpus-per-node", "2"], "multiple of the world size"), (["--dtype", "bfloat16"], "mixed precision"),
    (["--resume"], "no checkpoint"), (["--data", "/no/such/dir"], "not a prepared token directory"),
    (["--preset", "gpt2-huge"], "no gpt2 preset named 'gpt2-huge' (available: gpt2-mini"), (["--learning-rate", "-1"], "--learning-rate"),
    (["--nodes", "2", "--gradient-accumulation-steps", "2"], "--rdzv-endpoint"), (["--device", "tpu"], "--device"),
])
def test_bad_options_exit_2(tmp_path, args, needle):
    res = cli("gpt2", *NANO, "--max-iters", 2, *args, "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    common = [*NANO, "--max-iters", 6, "--eval-interval", 3]
    assert cli("gpt2", *common, "--out", tmp_path / "eager").exit_code == 0
    res = cli("gpt2", *common, "--compile", "--out", tmp_path / "compiled")
    assert res.exit_code == 0, res.output
    for (i, tr, va), (j, tr2, va2) in zip(val_rows(tmp_path / "eager"), val_rows(tmp_path / "compiled")):
        assert i == j and tr == pytest.approx(tr2, rel=1e-4) and va == pytest.approx(va2, rel=1e-4)
