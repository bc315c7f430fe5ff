"""README.md is the front page: short, and every quick command in it runs as written from a fresh
directory (as a doctest would), the main job printing exactly the summary the README quotes."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

#: Commands of the README that the test runs (everything before a " # " comment), and those it does
#: not, each with the reason.  A command in neither is an error: a new command gets classified.
QUICK = ("focuslab scan", "focuslab plot results/default", "focuslab --version", "focuslab optimizers",
         "focuslab scan --help")
NOT_RUN = {
    "pip install": "installs packages (CI's .ci/run does, on a fresh machine)",
    "python -m pytest -q": "the test suite itself",
}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """Every shell command of the README's bash blocks, `a && b` split into a and b."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out += [part.strip() for part in line.split("&&")]
    return out


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_the_readme_is_a_short_front_page():
    lines = README.splitlines()
    assert len(lines) <= 200, len(lines)
    for heading in ("## Setup: two commands", "## The main job", "## Headline results", "## Commands",
                    "## How to cite"):
        assert heading in lines, heading
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", README):  # local links resolve
        assert (ROOT / target).exists(), target


def test_every_readme_command_is_run_here_or_says_why_not():
    for command in _commands():
        assert command in QUICK or any(command.startswith(p) for p in NOT_RUN), \
            f"README command {command!r}: add it to QUICK (run by this test) or NOT_RUN (with the reason)"


@pytest.mark.slow
def test_the_quick_commands_run_as_written_from_a_fresh_directory(tmp_path):
    """The main job as the README gives it (writing only under results/), then the quick commands; the
    main job's summary is the README's, line for line."""
    ran = []
    for command in _commands():
        if command not in QUICK:
            continue
        res = _run(command, tmp_path)
        assert res.returncode == 0, f"{command}: {res.stderr}"
        ran.append(command)
        if command == "focuslab plot results/default":
            quoted = next(b for b in _blocks("text") if "raw argmin (paper's picture)" in b)
            assert res.stdout.strip().splitlines() == quoted.strip().splitlines()
        if command == "focuslab --version":
            from focuslab import __version__

            assert res.stdout.strip() == f"focuslab, version {__version__}"
    assert "focuslab scan" in ran and "focuslab plot results/default" in ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # the main job writes only under results/
    assert (tmp_path / "results" / "default" / "phase.png").exists()
