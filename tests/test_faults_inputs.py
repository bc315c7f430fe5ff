"""Bad input refused in one line (exit 2) and nothing written, where today's code accepted it or
wrote something first (issue #30): a NaN significance, one replicate, boolean settings read loosely,
an overlay with no noise axis, misspelt optimizers (refused before torch is imported, with "did you
mean"), and corrupt tables whose errors say which command recovers."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from faults_helpers import cli, one_line_error

pytestmark = pytest.mark.faults

TINY = ["--lr", "0.01,0.1", "--replicates", "3", "--steps", "20", "-j", "1", "-q"]




def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def scan2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "r"
    res = cli("scan", "--sharpness", "1,10", "--noise", "0,1", *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_significance_that_is_not_a_finite_number_is_refused(scan2d, tmp_path, value):
    one_line_error(cli("plot", scan2d, "--significance", value, "--out", tmp_path / "figs"), "--significance")
    assert not (tmp_path / "figs").exists()


def test_one_replicate_is_refused_where_standard_errors_are_needed(tmp_path):
    line = one_line_error(cli("scan", "--sharpness", "1,10", "--noise", "0,1", *TINY[:2], "--replicates", 1,
                              "--steps", 20, "-q", "--out", tmp_path / "r"), "--replicates")
    assert "at least 2" in line and not (tmp_path / "r").exists()


def test_a_one_replicate_scan_of_an_older_version_is_plotted_only_as_raw_argmin(tmp_path):
    """A scan with one replicate has no standard errors: plot draws its raw argmin (--significance
    0) but refuses to call winners beyond K standard errors (it reported Adam 100 %, undecided 0 %)."""
    from dataclasses import replace

    from focuslab.config import build_scan_config
    from focuslab.scan import run_scan

    config = build_scan_config(None, {"sharpness": "1,10", "noise": "0,1", "lr": "0.01,0.1", "replicates": 2,
                                      "steps": 10})
    run_scan(replace(config, replicates=1), tmp_path / "old", jobs=1, progress=False)
    line = one_line_error(cli("plot", tmp_path / "old", "--out", tmp_path / "figs"), "1 replicate")
    assert "--significance 0" in line and not (tmp_path / "figs").exists()
    res = cli("plot", tmp_path / "old", "--significance", 0, "--out", tmp_path / "figs", "-q")
    assert res.exit_code == 0, res.output


# --- boolean settings: true/false/1/0, anything else refused ---------------------------------------

@pytest.mark.parametrize("spec", ["torch.optim.Adam:amsgrad=no", "torch.optim.Adam:amsgrad=yes",
                                  "torch.optim.Adam:amsgrad=2", "torch.optim.Adam:foreach=off"])
def test_a_boolean_optimizer_setting_that_is_not_true_or_false_is_refused(tmp_path, spec):
    pytest.importorskip("torch")
    line = one_line_error(cli("scan", "--sharpness", "1,10", "--noise", "0,1", *TINY, "--optimizers", spec,
                              "--out", tmp_path / "r"), "expected true or false")
    assert spec.split(":")[1].split("=")[0] in line and not (tmp_path / "r").exists()
    name, setting = spec.split(":")
    one_line_error(cli("scan", "--sharpness", "1,10", "--noise", "0,1", *TINY, "--optimizers", name,
                       "--opt-param", f"{name}.{setting}", "--out", tmp_path / "r"), "expected true or false")


def test_boolean_settings_read_true_false_1_0_in_any_case_and_words_stay_words():
    pytest.importorskip("torch")
    from focuslab.optimizers import parse_list

    labels = [e.label for e in parse_list("torch.optim.Adam:amsgrad=1,torch.optim.Adam:amsgrad=FALSE:foreach=None,"
                                          "torch.optim.LBFGS:line_search_fn=strong_wolfe,focus:decay=average")]
    assert labels == ["torch.optim.Adam:amsgrad=True", "torch.optim.Adam:amsgrad=False:foreach=None",
                      "torch.optim.LBFGS:line_search_fn=strong_wolfe", "focus:decay=average"]
    (a,) = parse_list("torch.optim.Adam:amsgrad=true")
    assert a.settings["amsgrad"] is True


def test_a_boolean_in_a_config_file_that_is_not_true_or_false_is_refused(tmp_path):
    from focuslab.errors import FocuslabError
    from focuslab.gpt2.config import build_train_config

    assert build_train_config(None, {"bias": "false"}).bias is False
    with pytest.raises(FocuslabError, match="bias: expected true or false"):
        build_train_config(None, {"bias": "no"})
    cfg = tmp_path / "run.toml"
    cfg.write_text('[gpt2]\ncompile = "yes"\n')
    one_line_error(cli("gpt2", "--config", cfg, "--dry-run", "--out", tmp_path / "r"), "compile: expected true or false")


# --- plot --overlay on a scan without a noise axis ----------------------------------------------------

@pytest.mark.parametrize("axes", [["--sharpness", "1,10", "--phi", "0.3,0.6"], ["--sharpness", "1,10,100"]])
def test_an_overlay_on_a_scan_without_a_noise_axis_is_refused_and_writes_nothing(tmp_path, axes):
    scan = tmp_path / "s"
    assert cli("scan", *axes, "--noise", "0.5", *TINY, "--out", scan).exit_code == 0
    before = listing(scan)
    run = tmp_path / "run"  # the overlay is judged by the scan first: the run needs no diagnostics
    run.mkdir()
    one_line_error(cli("plot", scan, "--overlay", run), "--overlay")
    assert listing(scan) == before
    one_line_error(cli("plot", scan, "--overlay", run, "--out", tmp_path / "figs"), "--overlay")
    assert not (tmp_path / "figs").exists()


# --- optimizer names: refused before torch is imported, "did you mean" for classes too -----------------

NOT_IMPORTED = r"""
import json, sys, time
from click.testing import CliRunner
from focuslab.cli.main import main
t0 = time.time()
res = CliRunner().invoke(main, ["scan", "--sharpness", "1,10", "--noise", "0,1", "--optimizers", sys.argv[1],
                                "--dry-run", "--out", "r"])
heavy = sorted(m for m in ("torch", "pytorch_optimizer") if m in sys.modules)
print(json.dumps({"code": res.exit_code, "stderr": res.stderr, "imported": heavy, "seconds": time.time() - t0}))
"""


def refuse_cheaply(spec, cwd):
    """The scan's refusal of ``spec`` in a fresh process: its exit code, stderr and which of torch
    and pytorch_optimizer it imported."""
    res = subprocess.run([sys.executable, "-c", NOT_IMPORTED, spec], capture_output=True, text=True, timeout=120,
                         cwd=cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("spec,suggestion", [
    ("adamm", "adam"), ("torch.optim.Nadam", "torch.optim.NAdam"), ("torch.optim.Adamm", "torch.optim.Adam"),
    ("adam,torch.optim.Adamm", "torch.optim.Adam"), ("adabelif", "adabelief"),
    ("pytorch_optimizer.AdaBelif", "pytorch_optimizer.AdaBelief"), ("torch.optim.adam.Adamm", "torch.optim.adam.Adam"),
])
def test_a_misspelt_optimizer_is_refused_before_torch_is_imported_with_a_suggestion(tmp_path, spec, suggestion):
    if "adabel" in spec.lower():
        pytest.importorskip("pytorch_optimizer")
    got = refuse_cheaply(spec, tmp_path)
    assert got["code"] == 2 and len(got["stderr"].strip().splitlines()) == 1, got
    assert f"did you mean {suggestion}?" in got["stderr"], got
    assert got["imported"] == [], got  # neither torch nor pytorch_optimizer: refused in a moment
    assert not (tmp_path / "r").exists()


def test_a_missing_module_or_file_class_is_refused_before_torch_is_imported(tmp_path):
    (tmp_path / "mine.py").write_text("import torch\n\nclass MyOpt(torch.optim.SGD):\n    pass\n")
    for spec, needle in (("nosuchpkg.Opt", "cannot import module 'nosuchpkg'"),
                         (f"{tmp_path / 'mine.py'}:MyOtp", "did you mean MyOpt")):
        got = refuse_cheaply(spec, tmp_path)
        assert got["code"] == 2 and needle in got["stderr"] and got["imported"] == [], got


def test_the_cheap_name_check_sees_every_optimizer_the_imports_see():
    """The check before import refuses only names the source shows absent: every optimizer class
    torch.optim and pytorch_optimizer export is among the names it reads, and its registry is
    pytorch_optimizer's own."""
    torch = pytest.importorskip("torch")
    from focuslab.optimizers import lookup

    for module in (torch.optim, pytest.importorskip("pytorch_optimizer")):
        names = lookup.module_names(module.__name__)
        real = {n for n in dir(module) if isinstance(getattr(module, n), type)
                and issubclass(getattr(module, n), torch.optim.Optimizer)}
        assert names is not None and real and real <= names, sorted(real - (names or set()))
    from focuslab.optimizers.external import zoo_names

    assert lookup.zoo_registry() == frozenset(zoo_names())


# --- corrupt files: the error ends with the command that recovers -----------------------------------

def test_a_corrupt_best_table_names_the_command_that_rebuilds_it(tmp_path):
    out = tmp_path / "r"
    assert cli("scan", "--sharpness", "1,10", "--noise", "0,1", *TINY, "--out", out).exit_code == 0
    data = (out / "best.parquet").read_bytes()
    (out / "best.parquet").write_bytes(data[: len(data) // 2])
    line = one_line_error(cli("plot", out), "best.parquet")
    assert line.endswith(f"rerun the `focuslab scan` command that wrote it (the same flags and --out {out}): "
                         "it rebuilds runs.parquet and best.parquet from its chunk files"), line


def test_a_corrupt_scan_json_names_the_command_that_recovers(tmp_path):
    out = tmp_path / "r"
    args = ["scan", "--sharpness", "1,10", "--noise", "0,1", *TINY, "--out", out]
    assert cli(*args).exit_code == 0
    (out / "scan.json").write_text('{"kind": "scan", "conf')
    line = one_line_error(cli("plot", out), "scan.json")
    assert "--force" in line and line.rstrip(")").endswith("--force"), line
    line = one_line_error(cli(*args), "scan.json")
    assert "--force" in line, line
    res = cli(*args, "--force")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "scan.json").read_text())["status"] == "complete"


def test_a_corrupt_mnist_table_names_the_command_that_rebuilds_it(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "m"
    args = ["mnist", "--batch-size", "8", "--optimizers", "adamw", "--lr", "1e-2,1e-1", "--replicates", "2",
            "--steps", "3", "-j", "1", "-q", "--out", out]
    assert cli(*args).exit_code == 0
    data = (out / "best.parquet").read_bytes()
    (out / "best.parquet").write_bytes(data[:100])
    line = one_line_error(cli("plot", out, "--out", tmp_path / "f"), "best.parquet")
    assert "rerun the `focuslab mnist` command that wrote it" in line
    (out / "mnist.json").write_text("{")
    line = one_line_error(cli("plot", out, "--out", tmp_path / "f"), "mnist.json")
    assert "--force" in line
    assert pd.read_parquet(out / "runs.parquet").shape[0] == 4


def test_boolean_settings_of_a_class_whose_annotations_hold_lists():
    """typing.get_args(Callable[[int], float]) holds a list: hashing the args made `focuslab
    optimizers` a traceback for such a class (pytorch_optimizer has several)."""
    from typing import Callable, Optional

    from focuslab.optimizers.external import boolean_settings

    class Odd:
        def __init__(self, params, lr: float = 0.1, hook: Callable[[int], float] = print,
                     flag: bool = False, maybe: Optional[bool] = None, word: str = "x"):
            pass

    assert boolean_settings(Odd) == {"flag": False, "maybe": True}
