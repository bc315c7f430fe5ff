"""``focuslab selftest``: the environment and every stage run briefly on the device, as a table.
Flags from focuslab.selftest.SelftestSettings."""
from __future__ import annotations

import click

from focuslab.selftest import SelftestSettings

from .options import generated, with_defaults


@click.command()
@generated(SelftestSettings)
def selftest(**values):
    """Check this machine before real work: numba's target and SIMD width, torch and CUDA, the
    optional extras; then a toy scan (the built-in optimizers and torch.optim.AdamW through the
    plug-in engine), refine, an MNIST unit, GPT-2 (eager and torch.compile; bf16 and fused AdamW on
    a GPU) and 2-process DDP, each briefly, with their speeds.  Writes only to a temporary
    directory; exits 1 when a stage fails."""
    import sys

    from focuslab.selftest import run_selftest

    v = with_defaults(values, SelftestSettings)
    results = run_selftest(v["device"], out=click.echo)
    if any(r.status == "FAIL" for r in results):
        sys.exit(1)  # not click's Exit: the focuslab group returns (does not exit with) its code
