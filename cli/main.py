"""The ``focuslab`` command group: dispatch, and one-line errors with exit code 2."""
from __future__ import annotations

import sys

import click


class FocuslabGroup(click.Group):
    """A group whose errors are one line on stderr: bad input exits 2, Ctrl-C exits 130."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from focuslab.errors import FocuslabError

        if args is None:
            args = sys.argv[1:]
        if not list(args):  # a bare `focuslab`: the help, not an error
            with self.make_context(prog_name or "focuslab", ["--help"], resilient_parsing=True) as ctx:
                click.echo(self.get_help(ctx))
            if standalone_mode:
                sys.exit(0)
            return 0
        try:
            return super().main(args=args, prog_name=prog_name or "focuslab",
                                complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"focuslab: error: {exc.format_message()}{hint}", err=True)
            code = 2
        except click.ClickException as exc:
            click.echo(f"focuslab: error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except FocuslabError as exc:
            click.echo(f"focuslab: error: {exc}", err=True)
            code = 2
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("focuslab: interrupted; completed work is saved, re-run the same command "
                       "to resume", err=True)
            code = 130
        else:
            code = 0
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=FocuslabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="focuslab", prog_name="focuslab")
def main():
    """focuslab: reproduce and extend the FOCUS optimizer paper (arXiv 2501.12243).

    Every command takes any optimizer (built-ins, torch classes by import path or file, or
    pytorch_optimizer names); `focuslab COMMAND --help` shows each flag with its default.
    """


from .bridge import bridge  # noqa: E402
from .gpt2 import gpt2  # noqa: E402
from .merge import merge  # noqa: E402
from .mnist import mnist  # noqa: E402
from .optimizers import optimizers  # noqa: E402
from .plot import plot  # noqa: E402
from .refine import refine  # noqa: E402
from .scan import scan  # noqa: E402
from .selftest import selftest  # noqa: E402

main.add_command(scan)
main.add_command(refine)
main.add_command(plot)
main.add_command(merge)
main.add_command(mnist)
main.add_command(gpt2)
main.add_command(optimizers)
main.add_command(selftest)
main.add_command(bridge)
