"""``focuslab merge``: assemble the tables of a sharded scan."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="where to write runs.parquet, best.parquet and scan.json (may be one of DIRS).")
@click.option("--quiet", "-q", is_flag=True)
def merge(dirs, out, quiet):
    """Check that the shards in DIRS form one complete scan (same config and seed, none missing or
    duplicated) and write tables identical to an unsharded run."""
    from focuslab.scan import merge_shards

    info = merge_shards(list(dirs), out)
    if not quiet:
        click.echo(f"{out}: merged {info['shards']} shards ({info['chunks']} chunks) into "
                   "runs.parquet, best.parquet, scan.json")
