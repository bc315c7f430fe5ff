"""What the fault tests share: a command run in-process, and the check of a one-line refusal."""
from click.testing import CliRunner

from focuslab.cli.main import main


def cli(*args):
    """``focuslab ARGS`` through Click's test runner (stderr apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, needle, code=2):
    """Exit ``code``, exactly one line on stderr that holds ``needle``, no traceback; the line."""
    assert res.exit_code == code, (res.output, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    assert needle in lines[0], lines[0]
    return lines[0]
