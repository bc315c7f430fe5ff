"""Pieces every command shares: default output directories and saying where results go."""
from __future__ import annotations

from pathlib import Path

import click

RESULTS = Path("results")


def default_out(preset: str, digest: str, preset_digest: str, adhoc: str | None = None) -> Path:
    """results/PRESET for a run of exactly the preset (or config file), else results/ADHOC-DIGEST8
    (ADHOC defaults to PRESET): the same command finds (and resumes) its own directory, and a
    different one never lands in another's."""
    return RESULTS / (preset if digest == preset_digest else f"{adhoc or preset}-{digest[:8]}")


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message)


def opt_param_option(fn):
    return click.option("--opt-param", "opt_param", multiple=True, metavar="OPT.NAME=VALUE",
                        help="optimizer setting for every entry of OPT, e.g. focus.gamma=0.4 (repeatable).")(fn)
