"""A dry run refuses what the run refuses (issue #30): one validation path, called by both.  scan
--dry-run runs the plan checks (memory, the one-week limit, naming --allow-long); gpt2 --dry-run the
data, dtype, vocabulary and optimizer checks (but only warns about a rendezvous host this machine
cannot resolve: a job prepared on a login node for node001); mnist gets a --dry-run and always
prints its plan and ETA before it trains; a GPT-2 run that ends inside its warm-up says so."""

import pytest

from faults_helpers import cli, one_line_error

pytestmark = pytest.mark.faults




# --- scan ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--sharpness", "0.1:1000:1000:log", "--noise", "0:3:1000", "--phi", "0.1:1:1000"], "more than half of this machine"),
    (["--steps", "1000000000"], "per worker"),
    (["--sharpness", "0.1:1000:300:log", "--noise", "0:3:300", "--replicates", "1000", "--steps", "100000"],
     "pass --allow-long"),
])
def test_a_scan_dry_run_refuses_the_plans_the_run_refuses(tmp_path, args, needle):
    out = tmp_path / "r"
    dry = one_line_error(cli("scan", *args, "--dry-run", "--out", out), needle)
    run = one_line_error(cli("scan", *args, "-q", "--out", out), needle)
    assert dry == run and not out.exists()  # the same check, the same words


def test_a_long_scan_dry_run_passes_with_allow_long_and_prints_its_eta(tmp_path):
    args = ["--sharpness", "0.1:1000:300:log", "--noise", "0:3:300", "--replicates", "1000", "--steps", "100000"]
    res = cli("scan", *args, "--allow-long", "--dry-run", "--out", tmp_path / "r")
    assert res.exit_code == 0 and "optimizer steps" in res.output and "h" in res.output.split("~")[-1], res.output
    assert not (tmp_path / "r").exists()


def test_a_scan_dry_run_refuses_another_config_in_its_directory(tmp_path):
    out = tmp_path / "r"
    small = ["--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "2", "--steps", "5", "-j", "1"]
    assert cli("scan", *small, "-q", "--out", out).exit_code == 0
    one_line_error(cli("scan", *small, "--seed", "3", "--dry-run", "--out", out), "different config (seed: 0 -> 3)")
    assert cli("scan", *small, "--seed", "3", "--dry-run", "--force", "--out", out).exit_code == 0


def test_a_scan_says_its_eta_before_it_computes(tmp_path):
    res = cli("scan", "--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "2", "--steps", "5",
              "-j", "1", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith(f"focuslab scan: results in {tmp_path / 'r'} (") and " on 1 worker(s))" in first, first


# --- gpt2 ------------------------------------------------------------------------------------------

NANO = ["--config", "gpt2-nano", "--dropout", "0", "--eval-iters", "2", "-q"]


@pytest.mark.parametrize("args,needle", [
    (["--block-size", 1000000], "--block-size 1000000: the val split of the embedded corpus has only"),
    (["--dtype", "bfloat16", "--device", "cpu"], "--dtype bfloat16: mixed precision is for CUDA"),
    (["--data", "/nonexistent"], "--data /nonexistent: not a prepared token directory"),
    (["--vocab-size", 10], "--vocab-size 10 is smaller than the tokenizer's 256"),
    (["--optimizer", "torch.optim.LBFGS"], "--optimizer torch.optim.LBFGS: needs a closure"),
])
def test_a_gpt2_dry_run_refuses_what_the_run_refuses(tmp_path, args, needle):
    pytest.importorskip("torch")
    out = tmp_path / "new" / "run"
    dry = one_line_error(cli("gpt2", *NANO, *args, "--max-iters", 2, "--dry-run", "--out", out), needle)
    assert not (tmp_path / "new").exists()
    run = one_line_error(cli("gpt2", *NANO, *args, "--max-iters", 2, "--out", out), needle)
    assert dry == run and not (tmp_path / "new").exists()
    sbatch = one_line_error(cli("gpt2", *NANO, *args, "--max-iters", 2, "--sbatch", tmp_path / "job.sh", "--out", out),
                            needle)
    assert sbatch == run and not (tmp_path / "job.sh").exists()


def test_a_gpt2_dry_run_refuses_another_runs_directory_as_the_run_does(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    assert cli("gpt2", *NANO, "--max-iters", 2, "--eval-interval", 2, "--out", out).exit_code == 0
    dry = one_line_error(cli("gpt2", *NANO, "--max-iters", 2, "--eval-interval", 2, "--seed", 7, "--dry-run",
                             "--out", out), "holds a GPT-2 run with a different config")
    assert "--force" in dry
    assert cli("gpt2", *NANO, "--max-iters", 2, "--eval-interval", 2, "--seed", 7, "--dry-run", "--force",
               "--out", out).exit_code == 0


def test_a_multi_node_dry_run_warns_about_a_host_it_cannot_resolve_and_the_launch_refuses(tmp_path):
    """A job prepared on a login node for node001, whose name only the cluster's nodes resolve."""
    pytest.importorskip("torch")
    endpoint = "node001.invalid:29500"
    args = [*NANO, "--nodes", 2, "--rdzv-endpoint", endpoint, "--max-iters", 2, "--out", tmp_path / "run"]
    res = cli("gpt2", *args, "--dry-run")
    assert res.exit_code == 0, res.output + res.stderr
    assert f"# warning: --rdzv-endpoint {endpoint}: cannot resolve the host 'node001.invalid'" in res.output
    command = [line for line in res.output.splitlines() if not line.startswith("#")]
    assert len(command) == 1 and f"--rdzv-endpoint={endpoint}" in command[0]
    one_line_error(cli("gpt2", *args), f"--rdzv-endpoint {endpoint}: cannot resolve the host")
    assert not (tmp_path / "run").exists()


def test_a_dry_run_on_a_machine_without_the_runs_gpu_warns_and_the_run_refuses(tmp_path):
    """The paper's config prepared on a login node (or a laptop) for a GPU node."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [*NANO, "--device", "cuda", "--max-iters", 2, "--out", tmp_path / "run"]
    res = cli("gpt2", *args, "--dry-run")
    assert res.exit_code == 0 and res.stderr == "", res.output + res.stderr
    assert "# warning: --device cuda: no CUDA device is visible" in res.output
    one_line_error(cli("gpt2", *args), "--device cuda: no CUDA device is visible")
    assert not (tmp_path / "run").exists()


def test_a_run_that_ends_inside_its_warm_up_says_so(tmp_path):
    pytest.importorskip("torch")
    loud = [a for a in NANO if a != "-q"]
    dry = cli("gpt2", *loud, "--max-iters", 20, "--dry-run", "--out", tmp_path / "a")  # the preset warms up 20
    assert dry.exit_code == 0, dry.output
    assert "# gpt2: --max-iters 20 ends inside the warm-up (--warmup-iters 20): the learning rate climbs to" in dry.output
    res = cli("gpt2", *loud, "--max-iters", 4, "--eval-interval", 4, "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    note = [line for line in res.output.splitlines() if "ends inside the warm-up" in line]
    assert len(note) == 1 and "never reaches --lr 0.002" in note[0], res.output
    ok = cli("gpt2", *loud, "--max-iters", 4, "--warmup-iters", 2, "--eval-interval", 4, "--out", tmp_path / "c")
    assert ok.exit_code == 0 and "warm-up" not in ok.output


# --- mnist -----------------------------------------------------------------------------------------

MNIST = ["--batch-size", "8,64", "--optimizers", "adamw,signum", "--lr", "1e-2,1e-1", "--replicates", "2",
         "--steps", "5", "-j", "1"]


def test_an_mnist_dry_run_prints_the_plan_and_eta_and_writes_nothing(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "m"
    res = cli("mnist", *MNIST, "--dry-run", "--out", out)
    assert res.exit_code == 0, res.output + res.stderr
    assert f"{out}: mnist: 4 units, 80 model-steps; estimated ~" in res.output and "on this machine" in res.output
    assert not out.exists()
    data = tmp_path / "data"
    data.mkdir()
    res = cli("mnist", *MNIST, "--dataset", "mnist", "--data-dir", data, "--dry-run", "--out", out)
    assert res.exit_code == 0, res.output + res.stderr
    assert f"the run first downloads MNIST (~11 MB) into {data / 'mnist'}" in res.output
    assert list(data.iterdir()) == [] and not out.exists()  # nothing downloaded


def test_an_mnist_dry_run_refuses_what_the_run_refuses(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "m"
    big = [*MNIST[:1], "8,5000", *MNIST[2:]]
    dry = one_line_error(cli("mnist", *big, "--dry-run", "--out", out), "--batch-size 5000 exceeds the 4000 training")
    run = one_line_error(cli("mnist", *big, "-q", "--out", out), "--batch-size 5000")
    assert dry == run and not out.exists()
    assert cli("mnist", *MNIST, "-q", "--out", out).exit_code == 0
    one_line_error(cli("mnist", *MNIST, "--seed", 3, "--dry-run", "--out", out), "different config (seed: 0 -> 3)")
    res = cli("mnist", *MNIST, "--dry-run", "--out", out)
    assert res.exit_code == 0 and "nothing to train (all 4 units are on disk)" in res.output, res.output


def test_every_mnist_study_prints_its_plan_and_eta_before_it_trains(tmp_path):
    """Not only studies above 200k model-steps: the docs' `--batch-size 8` is 96k and ~45 minutes."""
    pytest.importorskip("torch")
    res = cli("mnist", *MNIST, "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    plan = [line for line in res.stderr.splitlines() if "model-steps; estimated ~" in line]
    assert len(plan) == 1 and plan[0].startswith("mnist: 4 units, 80 model-steps"), res.stderr
