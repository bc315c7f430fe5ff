"""mkdocs hook: a page's ``<!-- focuslab-help: COMMAND -->`` becomes that command's ``--help``, as the
installed focuslab prints it, so every flag and default on a command page is the code's own (the
flags are generated from the settings dataclasses; nothing is copied by hand)."""
from __future__ import annotations

import re

MARKER = re.compile(r"<!-- focuslab-help: ([a-z0-9-]+) -->")


def help_text(command: str) -> str:
    from click.testing import CliRunner

    from focuslab.cli.main import main

    args = [command, "--help"] if command != "focuslab" else ["--help"]
    res = CliRunner().invoke(main, args, terminal_width=100)
    if res.exit_code != 0:
        raise RuntimeError(f"focuslab {command} --help failed: {res.output}")
    return res.output.rstrip()


def on_page_markdown(markdown, page, config, files):
    def block(match):
        command = match.group(1)
        shown = "focuslab --help" if command == "focuslab" else f"focuslab {command} --help"
        return f"```text\n$ {shown}\n{help_text(command)}\n```"

    return MARKER.sub(block, markdown)
