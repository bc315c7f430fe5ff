"""``python -m focuslab`` and the ``focuslab`` command (``run``).

The command tree is imported inside ``run``: importing it (click, numpy, pandas, pyarrow) takes a
good part of a second, and a Ctrl-C in that window is an interrupt like any other -- one line,
exit 130 -- not a traceback from the middle of some library's import."""
import sys


def run() -> None:
    try:
        from focuslab.cli.main import main
    except KeyboardInterrupt:
        print("focuslab: interrupted while starting; nothing was done", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
