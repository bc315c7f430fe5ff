"""Bounded retries for launching real multi-process jobs in tests.

torch.distributed jobs on loopback occasionally fail to *start* on this sandboxed machine (a c10d
store connection refused, gloo aborting with "terminate called without an active exception") while
the same test passes on the next try; seen 2 of ~10 full-suite runs.  Only the launch is retried,
with a fresh port each time; every assertion on the results stays as strict, and a job that still
crashes on its last try fails the test.
"""
import socket

ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_with_retries(launch):
    """``launch(port)`` returns (ok, detail); retried up to ATTEMPTS times; returns the last detail."""
    detail = None
    for _ in range(ATTEMPTS):
        ok, detail = launch(free_port())
        if ok:
            return detail
    raise AssertionError(f"distributed job failed {ATTEMPTS} times; last output:\n{detail}")
