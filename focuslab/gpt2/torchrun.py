"""Running torchrun (or srun + torchrun) and watching it: its stdout relayed line by line, its
stderr (torchrun's logging, the workers' tracebacks) kept in RUN/torchrun.log, a launch whose workers
never start stopped ``GRACE`` seconds past --rdzv-timeout, Ctrl-C passed on to torchrun and its
workers, and a failure said in one line (what failed, what was kept, where the log is).  ``plan`` is
always a focuslab.gpt2.launch.LaunchPlan (not imported: the launch imports this module)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

TORCHRUN_LOG = "torchrun.log"
#: First line each worker prints (before importing torch): the rendezvous is over, workers run.
MARKER = "@focuslab-gpt2-worker"
#: Seconds past --rdzv-timeout after which a launch whose workers never started is stopped.
GRACE = 30
#: The last line of a Python traceback in torchrun's log ("[rank1]: RuntimeError: ..." or bare).
EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)\b(?::.*\S)?)\s*$")


def _kept(run: Path) -> str:
    from .checkpoint import _peek_iter

    if (run / "ckpt.pt").exists() or (run / "ckpt.prev.pt").exists():
        return f"the checkpoint at iter {_peek_iter(run)} is kept: re-run the same command to resume"
    return "nothing was trained"


def failure_message(plan, result: dict) -> str:
    run = Path(plan.cfg.out)
    log = plan.log_path
    where = f"--rdzv-endpoint {plan.endpoint}" if plan.endpoint else "the local rendezvous"
    if not result["started"]:
        if result["timed_out"]:
            what = (f"the rendezvous at {where} did not complete: no worker had started {plan.timeout + GRACE} s "
                    f"after launch (--rdzv-timeout {plan.timeout} s + {GRACE} s), so torchrun was stopped")
        elif result["rendezvous"] == "Timeout":
            what = f"not all {plan.nodes} nodes joined the rendezvous at {where} within --rdzv-timeout {plan.timeout} s"
        elif result["rendezvous"]:
            what = f"torchrun could not reach the rendezvous at {where} (Rendezvous{result['rendezvous']}Error)"
        else:
            what = f"torchrun exited with status {result['code']} before any worker started"
        hint = (f"; check that each of the {plan.nodes} nodes runs this command with {where} and can reach it"
                if plan.nodes > 1 else "")
        return f"{what}{hint}; {_kept(run)}; torchrun's output: {log}"
    if result["worker_error"]:
        return f"{result['worker_error']} (in a worker; {_kept(run)}; torchrun's output: {log})"
    raised = f" with {result['exception']}" if result.get("exception") else ""
    return (f"a worker process failed{raised} (torchrun exited with status {result['code']}; its traceback is in "
            f"{log}); {_kept(run)}")


def run_torchrun(plan, say=print) -> dict:
    """Run the plan's torchrun (or srun) command and watch it: stdout relayed to ``say`` line by
    line, stderr (torchrun's logging, the workers' tracebacks) appended to RUN/torchrun.log.

    Returns {code, started, timed_out, worker_error}.  Ctrl-C stops torchrun (SIGINT, which it
    passes on to its workers; SIGTERM and SIGKILL if they linger) and re-raises."""
    import subprocess
    import threading

    cmd = ["bash", "-c", plan.command] if isinstance(plan.command, str) else list(plan.command)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = plan.log_path
    started = threading.Event()
    pids: list[int] = []
    lock = threading.Lock()
    with open(log_path, "a") as logf:
        logf.write(f"=== focuslab gpt2, {time.strftime('%Y-%m-%d %H:%M:%S')}: {plan.command_text().strip()}\n")
        logf.flush()
        offset = logf.tell()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, text=True, bufsize=1)

        def relay():
            for line in proc.stdout:
                if line.startswith(MARKER):
                    for word in line.split():
                        if word.startswith("pid="):
                            pids.append(int(word[4:]))
                    started.set()
                    continue
                with lock:
                    logf.write(line)
                    logf.flush()
                say(line.rstrip("\n"))

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        deadline = time.monotonic() + plan.timeout + GRACE
        timed_out = False
        try:
            while proc.poll() is None:
                if not started.is_set() and time.monotonic() > deadline:
                    timed_out = True
                    _stop(proc, pids, at_once=True)  # no workers yet: torchrun may sit in a C++ connect loop
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            _stop(proc, pids, at_once=not started.is_set(), srun=isinstance(plan.command, str))
            raise
        finally:
            reader.join(2)
        code = proc.wait()
    worker_error = rendezvous = exception = None
    try:
        with open(log_path) as fh:
            fh.seek(offset)
            for line in fh:
                if line.startswith("focuslab: error: ") and worker_error is None:
                    worker_error = line[len("focuslab: error: "):].strip()
                found = re.search(r"\bRendezvous(Timeout|Connection|Closed)Error\b", line)
                if found:
                    rendezvous = found.group(1)
                raised = EXCEPTION_LINE.match(line)
                if raised and exception is None:  # the first worker's own error, not torchrun's summary of it
                    exception = raised.group(1)[:300]
    except OSError:
        pass
    return {"code": code, "started": started.is_set(), "timed_out": timed_out, "worker_error": worker_error,
            "rendezvous": rendezvous, "exception": exception}


def _stop(proc, pids, at_once: bool = False, srun: bool = False) -> None:
    """SIGINT to torchrun (it stops its workers), then SIGTERM, then SIGKILL to it and the workers;
    ``at_once`` (no worker has started, so none can be orphaned): SIGKILL.  srun takes a single
    SIGINT as a request for its status, so it gets SIGTERM first (which it passes to its tasks)."""
    import signal

    first = ((signal.SIGTERM, 10),) if srun else ((signal.SIGINT, 10), (signal.SIGTERM, 5))
    steps = ((signal.SIGKILL, 5),) if at_once else first + ((signal.SIGKILL, 5),)
    for sig, wait in steps:
        for target in [proc.pid] + (pids if sig == signal.SIGKILL else []):
            try:
                (os.killpg if target == proc.pid else os.kill)(target, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(wait)
            return
        except Exception:  # subprocess.TimeoutExpired
            continue
