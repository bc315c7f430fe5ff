"""``focuslab optimizers``: what can be named, and how a given optimizer runs on the toy."""
from __future__ import annotations

import click


@click.command(short_help="the built-in optimizers, and how any torch optimizer runs on the toy")
@click.argument("specs", nargs=-1, metavar="[SPEC]...")
@click.option("--zoo", is_flag=True, help="list pytorch_optimizer's registry names (usable as bare names).")
def optimizers(specs, zoo):
    """List the built-in optimizers with their settings and the sources of their defaults; with
    SPECs (e.g. pytorch_optimizer.AdamP, torch.optim.NAdam, file.py:MyOpt), resolve each and
    probe how it runs on the toy (batched, vmapped, per tensor or one instance per trajectory, and
    the mode a chunk falls back to; closure; Hessian-vector products; how it applies weight decay;
    speed)."""
    from focuslab.optimizers import builtin_lines, parse_list
    from focuslab.optimizers.external import zoo_names

    if zoo:
        names = zoo_names()
        if not names:
            from focuslab.errors import FocuslabError
            from focuslab.optimizers.external import ZOO_HINT

            raise FocuslabError(f"pytorch_optimizer is not installed: {ZOO_HINT}")
        click.echo(f"pytorch_optimizer ({len(names)}): " + ", ".join(sorted(names)))
        return
    if specs:
        from focuslab.optimizers import describe

        for line in describe(parse_list(list(specs))):
            click.echo(line)
        return
    for line in builtin_lines():
        click.echo(line)
    click.echo("Any torch optimizer works too: module.Class (torch.optim.NAdam, pytorch_optimizer.SOAP), "
               "path/to/file.py:Class, or a pytorch_optimizer name (`focuslab optimizers --zoo`); settings after "
               "colons: pytorch_optimizer.AdaBelief:betas=(0.9,0.95), group keys as group.KEY=VALUE.")
