"""``focuslab bridge``: the toy read at the noise real runs measure.  Flags from
focuslab.bridge.BridgeSettings and focuslab.options.Common (--jobs, --device, --force, --quiet)."""
from __future__ import annotations

import click

from focuslab.bridge import BridgeSettings
from focuslab.options import Common

from .common import say
from .options import generated, given, split, with_defaults

#: Common's run options the bridge has no use for: it has no preset of its own (--toy-config names the
#: toy map's scan), and its --out is BridgeSettings' (results/bridge).
NOT_COMMON = ("config", "out")


@click.command(short_help="the toy read at the gradient noise real runs measured: predicted vs observed winners")
@generated(BridgeSettings)
@generated(Common, skip=NOT_COMMON)
def bridge(**values):
    """Does the toy, at the noise a real model's training measures, predict which optimizer wins?
    Reads the toy map (--toy, scanned first from --toy-config when the directory holds none) at the
    sigma_equiv of an MNIST study and/or GPT-2 runs made with --diagnostics-every, and writes the
    predictions beside the observations into --out; `focuslab plot DIR` draws them."""
    from focuslab.bridge import run_bridge
    from focuslab.errors import FocuslabError

    values = given(values)
    run = with_defaults(split(values, Common), Common)
    if run["jobs"] is not None and run["jobs"] < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {run['jobs']}")
    settings = BridgeSettings(**with_defaults(split(values, BridgeSettings), BridgeSettings))
    quiet = run["quiet"]
    result = run_bridge(settings, jobs=run["jobs"], force=run["force"], device=run["device"], progress=not quiet,
                        say=lambda line: say(line, quiet))
    for line in result["lines"]:
        say(line, quiet)
    say(f"{result['out']}: bridge.json and its tables (`focuslab plot {result['out']}` draws them)", quiet)
