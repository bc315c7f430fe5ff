"""What every command shares beyond its generated flags: saying things unless --quiet."""
from __future__ import annotations

import click


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message)
