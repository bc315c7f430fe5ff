"""``focuslab merge``: assemble the tables of a sharded scan."""
from __future__ import annotations

from pathlib import Path

import click

from focuslab.scan import MergeSettings

from .common import say
from .options import generated, with_defaults


@click.command(short_help="assemble the tables of a sharded scan")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@generated(MergeSettings)
def merge(dirs, **values):
    """Check that the shards in DIRS form one complete scan (same config and seed, none missing or
    duplicated) and write tables identical to an unsharded run."""
    from focuslab.errors import FocuslabError
    from focuslab.scan import merge_shards

    v = with_defaults(values, MergeSettings)
    if v["out"] is None:
        raise FocuslabError("merge: give --out DIR (where runs.parquet, best.parquet and scan.json go; may be one "
                            "of DIRS)")
    info = merge_shards(list(dirs), v["out"])
    say(f"{v['out']}: merged {info['shards']} shards ({info['chunks']} chunks) into runs.parquet, best.parquet, "
        "scan.json", v["quiet"])
