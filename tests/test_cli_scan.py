"""`focuslab scan` from the command line: config precedence and one-line errors (exit 2)."""
import json

import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.config import build_scan_config, load_toml, parse_grid
from focuslab.errors import FocuslabError

FAST = ["--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "3",
        "--steps", "20", "--jobs", "1"]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_scan_runs_and_reports(tmp_path):
    """The command's tables hold what the kernel computes for the grid it was given."""
    import math

    import numpy as np
    import pandas as pd

    from focuslab.axes import cell_array
    from focuslab.optimizers.builtin import get
    from focuslab.toy import kernel
    from focuslab.toy.rng import trajectory_keys

    res = invoke("scan", *FAST, "--out", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    assert "runs.parquet" in res.output and "4 cells x 3 optimizers x 2 lrs x 3 replicates" in res.output
    runs = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    best = pd.read_parquet(tmp_path / "r" / "best.parquet")
    assert len(runs) == 4 * 3 * 2 and len(best) == 4 * 3
    assert json.loads((tmp_path / "r" / "scan.json").read_text())["status"] == "complete"
    cell = cell_array(sharpness=10.0, noise=1.0, weight_decay=0.1, phi=math.pi / 6, c=0.1)
    out = kernel.run(get("signum"), get("signum").resolve({}), cell, np.array([0.01, 0.1]),
                     trajectory_keys(0, cell, np.arange(3)), 20)
    rows = runs[(runs.optimizer == "signum") & (runs.sharpness == 10.0) & (runs.noise == 1.0)].sort_values("lr")
    np.testing.assert_array_equal(rows.final_loss_mean.to_numpy(), out["final_loss"][0].mean(-1))
    one = best[(best.optimizer == "signum") & (best.sharpness == 10.0) & (best.noise == 1.0)].iloc[0]
    assert one.best_lr == [0.01, 0.1][int(np.argmin(out["final_loss"][0].mean(-1)))]


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[scan]\nsharpness = "2,3"\nnoise = 0.5\nsteps = 7\nreplicates = 2\n'
                   'lr = [0.01]\n[scan.optimizer.focus]\ngamma = 0.3\n')
    res = invoke("scan", "--config", str(cfg), "--steps", "9", "--optimizers", "focus",
                 "--opt-param", "focus.beta2=0.8", "--out", str(tmp_path / "o"), "-q", "-j", "1")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "scan.json").read_text())["config"]
    assert meta["steps"] == 9 and meta["replicates"] == 2 and meta["sharpness"] == "2,3"
    assert meta["optimizer"]["focus"] == {"beta1": 0.9, "beta2": 0.8, "gamma": 0.3, "decay": "theta"}
    assert meta["phi"] == "pi/6"  # untouched keys come from the default preset


def test_presets_parse_with_paper_resolution():
    a = build_scan_config(load_toml("fig2a", "scan"))
    assert (len(a.axes["sharpness"]), len(a.axes["noise"]), len(a.axes["lr"])) == (96, 100, 20)
    assert a.axes["sharpness"].is_log and a.replicates == 50 and a.total_steps() == 2.88e10
    b = build_scan_config(load_toml("fig2b", "scan"))
    assert b.scanned_axes == ["noise", "weight_decay"] and b.axes["sharpness"].values == (10.0,)
    for name in ("fig2b-quick", "default"):
        assert build_scan_config(load_toml(name, "scan")).total_steps() < 1e10


def test_grid_syntax():
    assert parse_grid("0:3:4").values == (0.0, 1.0, 2.0, 3.0)
    assert parse_grid("0.1:1000:5:log").values == pytest.approx((0.1, 1, 10, 100, 1000))
    assert parse_grid("1,10,100").values == (1.0, 10.0, 100.0)
    assert parse_grid("pi/6").values == pytest.approx((0.5235987755982988,))
    for bad in ("1:2", "1:2:0", "1:2:3:cubic", "0:1:5:log", "a,b", "1:2:x", "__import__('os')"):
        with pytest.raises(FocuslabError):
            parse_grid(bad, "noise")


@pytest.mark.parametrize("args,needle", [
    (["--sharpness", "1:2"], "malformed grid"),
    (["--noise", "-0.5"], "must be >= 0"),
    (["--lr", "0,0.1"], "--lr: 0 must be > 0"),
    (["--steps", "0"], "--steps: must be >= 1"),
    (["--replicates", "-3"], "--replicates"),
    (["--optimizers", "adam,rmsporp"], "unknown optimizer 'rmsporp' (did you mean rmsprop?)"),
    (["--opt-param", "focus.delta=1"], "unknown setting focus.delta"),
    (["--opt-param", "adam.beta1=1.5"], "adam.beta1 must be in [0, 1)"),
    (["--opt-param", "focus.decay=sideways"], "focus.decay must be one of"),
    (["--opt-param", "gamma"], "expected OPTIMIZER.SETTING=VALUE"),
    (["--config", "/no/such/file.toml"], "config file not found"),
    (["--config", "nosuchpreset"], "no scan preset named 'nosuchpreset' (available: bridge-toy, default, fig2a, fig2b-quick, fig2b, gamma-slice, zoo)"),
    (["--jobs", "0"], "--jobs"),
    (["--steps", "many"], "'many' is not a valid integer"),
    (["--frobnicate"], "No such option"),
    (["--sharpness", "abc"], "--sharpness: not a number: 'abc'"),
    (["--sharpness", "0.1:1000:0:log"], "--sharpness: in '0.1:1000:0:log', NUM must be >= 1, got 0"),
    (["--optimizers", "adam", "--opt-param", "focus.gamma=0.4"], "focus is not among the optimizers (adam)"),
    (["--optimizers", "focus,focus:gamma=0.2"], "repeats 'focus' (same settings)"),
    (["--optimizers", "focus:gamma"], "expected KEY=VALUE, got 'gamma'"),
    (["--theta", "0.5"], "--theta was renamed --phi"),
    # plans that cannot fit, or would run for weeks: refused before anything is allocated or written
    (["--noise", "0:3:100000000"], "NUM 100000000 is more than 100000 values"),
    (["--steps", "1000000000000"], "--steps 1000000000000 needs"),
    (["--sharpness", "0.1:1000:10000:log", "--noise", "0:3:10000"], "make tables of"),
    (["--sharpness", "0.1:1000:100:log", "--noise", "0:3:100", "--replicates", "1000", "--steps", "1000000"],
     "pass --allow-long"),
])
def test_bad_input_gives_one_line_and_exit_2(args, needle, tmp_path):
    res = invoke("scan", *args, "--out", str(tmp_path / "x"))
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "x").exists()  # nothing written
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output
    assert "gpt2" not in res.stderr and "mnist" not in res.stderr  # only this command's presets


def test_unreadable_config_and_unwritable_out(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[scan\nsteps = ")
    res = invoke("scan", "--config", str(bad))
    assert res.exit_code == 2 and "not valid TOML" in res.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[scan]\nstepz = 3\n")
    res = invoke("scan", "--config", str(unknown))
    assert res.exit_code == 2 and "unknown scan config key(s): stepz (known: budget, c, chunk_steps," in res.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = invoke("scan", *FAST, "--out", str(blocker / "sub"))
    assert res.exit_code == 2 and "--out" in res.stderr and len(res.stderr.splitlines()) == 1


def test_changed_config_refused_with_clear_message(tmp_path):
    assert invoke("scan", *FAST, "--out", str(tmp_path), "-q").exit_code == 0
    res = invoke("scan", *FAST, "--seed", "4", "--out", str(tmp_path), "-q")
    assert res.exit_code == 2 and "different config" in res.stderr and "--force" in res.stderr
    assert invoke("scan", *FAST, "--seed", "4", "--out", str(tmp_path), "-q", "--force").exit_code == 0


def test_descending_grids_are_the_same_axis_in_ascending_order():
    up = build_scan_config(None, {"noise": "0:3:4", "sharpness": "1,10,100", "lr": "0.01,0.1"})
    down = build_scan_config(None, {"noise": "3:0:4", "sharpness": "100,1,10", "lr": "0.1,0.01"})
    assert down.axes["noise"].values == (0.0, 1.0, 2.0, 3.0) and down.axes["sharpness"].values == (1.0, 10.0, 100.0)
    assert down.digest() == up.digest()  # the same scan: it resumes, and its maps are never mirrored


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path):
    """Run from a directory holding a folder ``default/`` (or ``gpt2-nano/``): the preset still loads,
    for the command's defaults at import and for ``--config default``; a folder that is no preset
    is one line saying so."""
    import subprocess
    import sys

    (tmp_path / "default").mkdir()
    (tmp_path / "mydir").mkdir()
    assert load_toml("default", "scan")["optimizers"]  # the cwd is tmp_path (conftest)
    res = invoke("scan", "--config", "default", *FAST, "--dry-run", "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert "4 cells x 3 optimizers x 2 lrs x 3 replicates" in res.output
    res = invoke("scan", "--config", "mydir", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "cannot read config mydir: is a directory" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1
    # a fresh process imports the command tree (whose defaults read the preset) in that directory
    proc = subprocess.run([sys.executable, "-m", "focuslab", "scan", *FAST, "--dry-run", "--out", "o"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4 cells x 3 optimizers" in proc.stdout and "Traceback" not in proc.stderr


def test_the_library_names_the_default_directories_the_commands_use(tmp_path):
    """scan_job, mnist_job and gpt2's run_config resolve a command's config and name its default results
    directory without Click: results/PRESET for a preset as it is, else NAME-DIGEST8 of that very config;
    `focuslab scan --dry-run` reports the directory the library named."""
    from pathlib import Path

    from focuslab.gpt2.config import run_config
    from focuslab.mnist.study import mnist_job
    from focuslab.scan import scan_job

    job = scan_job()
    assert job.out == Path("results/default") and job.action == "run" and job.shard is None
    adhoc = scan_job({"steps": 7}, jobs=1, shard="2/3")
    assert adhoc.out == Path(f"results/scan-{adhoc.config.digest()[:8]}") and adhoc.shard == (2, 3)
    assert adhoc.config.steps == 7 and adhoc.jobs == 1
    assert scan_job(config="fig2a").out == Path("results/fig2a")
    seeded = scan_job({"seed": 3}, config="fig2a")
    assert seeded.out == Path(f"results/fig2a-{seeded.config.digest()[:8]}")
    assert scan_job(out=tmp_path / "x", dry_run=True).action == "plan"
    assert scan_job(sbatch="job.sh", shards=2).action == "script"
    res = invoke("scan", "--steps", "7", "--dry-run")
    assert res.exit_code == 0 and res.output.startswith(f"{adhoc.out}: "), res.output
    assert mnist_job().out == Path("results/mnist-fig2cd")
    one = mnist_job({"replicates": 1})
    assert one.out == Path(f"results/mnist-{one.config.digest()[:8]}")
    assert run_config().out == "results/gpt2-nano-focus"
    assert run_config("gpt2-small", {"optimizer": "adamw"}).out == "results/gpt2-small-adamw"
    fast = run_config(None, {"learning_rate": 1e-3})
    assert fast.out == f"results/gpt2-nano-focus-{fast.digest()[:8]}" and fast.learning_rate == 1e-3
    assert run_config(None, {"optimizer": "signum"}, device="cpu", out=tmp_path / "r").out == str(tmp_path / "r")
    with pytest.raises(FocuslabError, match="unknown scan config key"):
        scan_job({"stepz": 3})
