"""Launching: in-process for one process, torchrun (c10d rendezvous) for several, srun + torchrun
inside SLURM, and a ready sbatch script.  torch.distributed does the work; this module plans the
launch, checks what can be checked before it, and watches torchrun.

* ``plan_launch`` settles everything a run will do -- the mode, the per-process share of an
  iteration (config.layout), the rendezvous endpoint, the exact command -- and refuses in one line
  what cannot work (a malformed or unreachable endpoint, a world size that cannot share the batch).
  ``--dry-run`` prints that plan; the run executes it, so the two never disagree.
* ``execute`` runs it: in this process for one process; otherwise the data are prepared and
  checked and the checkpoint read *here*, before torchrun starts, so that bad input is one line
  and not one traceback per worker.  torchrun itself is run and watched by focuslab.gpt2.torchrun:
  its own output goes to RUN/torchrun.log; the workers' progress is relayed.  Waiting for other
  nodes is bounded by --rdzv-timeout (torchrun's join timeout, and a watchdog ``GRACE`` seconds
  past it); Ctrl-C stops torchrun and its workers.
* ``plan_run`` and ``write_sbatch`` are what ``focuslab gpt2`` calls with its run options
  (``Gpt2Run``) and the run's config (focuslab.gpt2.config.run_config).

Scripts and commands call the Python interpreter that wrote them (``python -m
torch.distributed.run``, ``python -m focuslab``), never ``torchrun``/``focuslab`` from PATH: on a
cluster the compute nodes' PATH often lacks the login node's virtual environment.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import FocuslabError
from ..options import setting
from .config import RUN_CONFIG, TrainConfig, layout, write_run_config
from .torchrun import GRACE, MARKER, TORCHRUN_LOG, failure_message, run_torchrun  # noqa: F401  (MARKER re-exported)

#: Files a run writes into its directory (what --force clears and a failed first attempt removes).
RUN_FILES = ("ckpt.pt", "ckpt.prev.pt", "gpt2.json", "metrics.csv", "metrics.jsonl", RUN_CONFIG,
             "diagnostics.parquet")


@dataclass(frozen=True)
class Gpt2Run:
    """``focuslab gpt2``'s own run options (beside focuslab.options.Common's --config, --device and
    --quiet): where the run goes and how it is launched, never what it trains."""

    out: str = setting(None, "the run directory", metavar="DIR",
                       shown="results/gpt2-PRESET-OPTIMIZER, plus -DIGEST when other flags are set")
    force: bool = setting(False, "start over in --out when it holds a run with a different config, or an unreadable "
                                 "checkpoint and no earlier one (that one is moved aside, not deleted)")
    nodes: int = setting(1, "machines (one torchrun agent each)", metavar="N")
    gpus_per_node: int = setting(1, "processes per node (GPUs; on CPU, gloo processes)", metavar="N")
    rdzv_endpoint: str = setting(None, "c10d rendezvous, the same on every node; checked before launch",
                                 metavar="HOST:PORT", shown="one node: torchrun --standalone, a free local port")
    rdzv_timeout: int = setting(300, "how long to wait for all nodes to join (torchrun's join timeout; a launch whose "
                                     f"workers have not started {GRACE} s after it is stopped)", metavar="SECONDS")
    node_rank: int = setting(None, "this node's rank (optional with c10d)", metavar="N")
    sbatch: str = setting(None, "write a SLURM job script (srun + torchrun) instead of running", metavar="FILE")
    sbatch_option: str = setting(None, "an extra #SBATCH line for --sbatch, e.g. partition=gpu (repeatable)",
                                 metavar="NAME=VALUE", multiple=True)
    dry_run: bool = setting(False, "print what the run would do and exit, writing nothing: each process's share of "
                                   "an iteration, the full config, the exact command (or the --sbatch script)")


def run_config_path(cfg: TrainConfig) -> str:
    return str((Path(cfg.out) / RUN_CONFIG).resolve())


def in_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_NNODES" in os.environ


# --- the rendezvous endpoint -------------------------------------------------------------------

def parse_endpoint(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port), or a one-line error."""
    flag = f"--rdzv-endpoint {text}"
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host:
        raise FocuslabError(f"{flag}: expected HOST:PORT, e.g. node01:29500 or 10.0.0.5:29500")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host) or "/" in host or (":" in host and not text.startswith("[")):
        raise FocuslabError(f"{flag}: {host!r} is not a host name or address (IPv6 goes in brackets: [::1]:29500)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FocuslabError(f"{flag}: the port must be a number from 1 to 65535, got {port!r}")
    return host, int(port)


def _resolve(host: str, port: int, timeout: float = 10.0) -> str | None:
    """None when ``host`` resolves (within ``timeout`` s), else why not."""
    import threading

    start = time.monotonic()

    def look():
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return None
        except OSError as err:
            return err.strerror or str(err)

    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("why", look()), daemon=True)
    worker.start()
    while worker.is_alive() and time.monotonic() - start < timeout:
        worker.join(0.1)
    if worker.is_alive():
        return f"no answer from the resolver within {timeout:.0f} s"
    return box.get("why")


def _bind_error(host: str, port: int) -> int | None:
    """errno of binding (host, port) here, None when it binds."""
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        addr = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
    except OSError:
        return errno.EADDRNOTAVAIL
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as err:
            return err.errno
    return None


def check_endpoint(text: str, nodes: int, warn=None) -> str:
    """The endpoint, checked before launch: its syntax, that its host resolves, and on one node that
    it is an address of this machine whose port is free (torchrun would otherwise wait on it).
    ``warn``: where a host that does not resolve here goes instead of an error (a dry run of a
    multi-node launch, prepared on a login node for nodes whose names only they resolve)."""
    import errno

    host, port = parse_endpoint(text)
    why = _resolve(host, port)
    if why:
        message = f"--rdzv-endpoint {text}: cannot resolve the host {host!r} ({why})"
        if warn is None or nodes == 1:
            raise FocuslabError(message)
        warn(f"{message} on this machine; the launch refuses it where the host does not resolve")
        return text
    if nodes == 1:
        if _bind_error(host, 0) is not None:
            raise FocuslabError(f"--rdzv-endpoint {text}: {host} is not an address of this machine, and with --nodes 1 "
                                "the rendezvous runs here; omit --rdzv-endpoint, or give 127.0.0.1:PORT")
        if _bind_error(host, port) == errno.EADDRINUSE:
            raise FocuslabError(f"--rdzv-endpoint {text}: port {port} is already in use on this machine (another "
                                "run's rendezvous?); choose another port, or omit --rdzv-endpoint for a free one")
    return text


# --- the plan ----------------------------------------------------------------------------------

def torchrun_args(*, nodes: int, procs: int, endpoint: str | None, node_rank: int | None, run_id: str,
                  config_path: str, timeout: int, python: str = sys.executable) -> list[str]:
    """torchrun's command.  One node without an endpoint: ``--standalone`` (a rendezvous on a free
    local port, so two runs on one machine never collide)."""
    args = [python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={procs}"]
    if endpoint is None:
        args.append("--standalone")
    else:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    args += [f"--rdzv-conf=join_timeout={timeout}", "--max-restarts=0"]
    if node_rank is not None:
        args.append(f"--node-rank={node_rank}")
    return args + ["-m", "focuslab.gpt2.worker", config_path]


def slurm_command(*, procs: int, config_path: str, timeout: int, port: int = 29500,
                  python: str | None = None) -> str:
    """srun + torchrun for the current allocation: rendezvous on the first node of the job.
    ``python`` is a shell word for the interpreter (default: this one, quoted)."""
    python = python or shlex.quote(sys.executable)
    return ("head=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
            f"srun --nodes=\"$SLURM_NNODES\" --ntasks-per-node=1 {python} -m torch.distributed.run "
            f"--nnodes=\"$SLURM_NNODES\" --nproc-per-node={procs} --rdzv-backend=c10d "
            f"--rdzv-endpoint=\"$head:{port}\" --rdzv-id=\"$SLURM_JOB_ID\" --rdzv-conf=join_timeout={timeout} "
            f"--max-restarts=0 -m focuslab.gpt2.worker {shlex.quote(config_path)}\n")


def sbatch_script(*, nodes: int, gpus: int, config_path: str, out: str, timeout: int, extra: dict,
                  python: str = sys.executable) -> str:
    from ..slurm import sbatch_lines

    opts = {"job-name": "focuslab-gpt2", "nodes": nodes, "ntasks-per-node": 1, "gpus-per-node": gpus,
            "cpus-per-task": max(1, 8 * gpus), "output": f"{out}/slurm-%j.log", **extra}
    return ("#!/bin/bash\n# GPT-2 training with focuslab: one torchrun agent per node, "
            f"{gpus} processes each, c10d rendezvous on the first node.\n"
            "# It runs the Python that wrote it (below), which the nodes must see; set FOCUSLAB_PYTHON\n"
            "# to use another.  Re-submitting resumes from the run's checkpoint.\n"
            f"{sbatch_lines(opts)}\nset -euo pipefail\n"
            f"PYTHON=\"${{FOCUSLAB_PYTHON:-{python}}}\"\n"
            + slurm_command(procs=gpus, config_path=config_path, timeout=timeout, python='"$PYTHON"'))


@dataclass
class LaunchPlan:
    """What a run will do.  ``mode``: local (this process), torchrun, slurm (srun + torchrun in this
    allocation) or sbatch (a job script).  ``command``: the exact command (a list; a shell text for
    slurm and sbatch)."""

    cfg: TrainConfig
    nodes: int
    procs: int
    mode: str
    timeout: int
    endpoint: str | None = None
    node_rank: int | None = None
    command: list | str = field(default_factory=list)
    note: str = ""  # lines to say first: the per-process share of an iteration, a run inside its warm-up
    warnings: list = field(default_factory=list)  # what a dry run found this machine cannot do (its launch refuses)

    @property
    def world(self) -> int:
        return self.nodes * self.procs

    @property
    def config_path(self) -> str:
        return run_config_path(self.cfg)

    @property
    def log_path(self) -> Path:
        return Path(self.cfg.out) / TORCHRUN_LOG

    def command_text(self) -> str:
        return self.command if isinstance(self.command, str) else shlex.join(self.command)

    def dry_run_text(self) -> str:
        """Everything --dry-run prints: a shell text whose comment lines give the share of an
        iteration and the run's full config, and whose command is what the run executes."""
        if self.mode == "sbatch":  # the script first, so that what is printed stays a script
            return self.command + "\n".join(self._comments()) + "\n"
        lines = self._comments()
        if self.mode == "local":
            lines.append("# one process: the run trains in the focuslab process itself, exactly as this command would:")
        elif self.mode == "slurm":
            lines.append("# inside this SLURM allocation: srun starts one torchrun agent per node:")
        elif self.nodes > 1:
            lines.append(f"# run the same command on each of the {self.nodes} nodes; torchrun waits "
                         f"{self.timeout} s (--rdzv-timeout) for all of them:")
        return "\n".join(lines) + "\n" + self.command_text().rstrip("\n") + "\n"

    def _comments(self) -> list[str]:
        lines = ["# focuslab gpt2 --dry-run: nothing is written"]
        lines += [f"# {line}" for line in self.note.splitlines()]
        lines += [f"# warning: {line}" for line in self.warnings]
        exists = Path(self.config_path).exists()
        lines.append(f"# the run's config, {'as' if exists else 'which the run writes to'} {self.config_path}"
                     + ("" if exists else " (it does not exist yet: running this command without --dry-run writes it)"))
        lines += [f"#   {line}" for line in json.dumps(asdict(self.cfg), indent=2).splitlines()]
        return lines


def warmup_note(cfg: TrainConfig) -> str:
    """One line when the run ends inside its warm-up (the learning rate never reaches --lr)."""
    from .config import lr_at

    if not cfg.warmup_iters or cfg.warmup_iters < cfg.max_iters:
        return ""
    top = lr_at(cfg, max(0, cfg.max_iters - 1))
    return (f"gpt2: --max-iters {cfg.max_iters} ends inside the warm-up (--warmup-iters {cfg.warmup_iters}): the learning "
            f"rate climbs to {top:.3g} and never reaches --lr {cfg.learning_rate:g}; lower --warmup-iters to train at it")


def plan_launch(cfg: TrainConfig, nodes: int = 1, procs: int = 1, *, endpoint: str | None = None,
                timeout: int = 300, node_rank: int | None = None, sbatch: bool = False,
                extra: dict | None = None, dry_run: bool = False, force: bool = False) -> LaunchPlan:
    """Everything a launch needs, checked: one-line errors for what could not work.  The checks are
    the run's own (``focuslab.gpt2.train.preflight``), whether it runs, is a --dry-run or writes an
    --sbatch script; only what depends on the machine differs: a dry run (prepared, maybe, on a login
    node for a GPU node) warns about a device this machine does not have, a dry run of a multi-node
    launch about a rendezvous host this machine cannot resolve, and an --sbatch job's device is
    checked where it runs."""
    from ..devices import resolve
    from ..results import claim_dir
    from .train import preflight

    if nodes < 1 or procs < 1:
        raise FocuslabError("--nodes and --gpus-per-node must be >= 1")
    if timeout < 1:
        raise FocuslabError("--rdzv-timeout: must be >= 1 second")
    if node_rank is not None and not 0 <= node_rank < nodes:
        raise FocuslabError(f"--node-rank {node_rank}: must be from 0 to --nodes - 1 = {nodes - 1}")
    if nodes > 1 and not (endpoint or in_slurm() or sbatch):
        raise FocuslabError(f"--nodes {nodes} needs the other machines: give --rdzv-endpoint HOST:PORT (the same on "
                            "every node, each running this command), run inside a SLURM allocation, or write a "
                            "job script with --sbatch FILE")
    world = nodes * procs
    warnings: list = []
    elsewhere = dry_run and nodes > 1  # the printed command runs on other machines too
    claim_dir(cfg.out, "gpt2", own=RUN_FILES + ("data", TORCHRUN_LOG))  # not another command's directory
    device = None
    if not sbatch:
        try:
            device = resolve(cfg.device)
        except FocuslabError as err:  # a dry run may be prepared on a machine without the run's GPU
            if not dry_run:
                raise
            warnings.append(f"{err} (on this machine: the run refuses it where it has no such device)")
    preflight(cfg, world, device, force)
    note = "\n".join(line for line in (layout(cfg, world).describe(cfg), warmup_note(cfg)) if line)
    path = run_config_path(cfg)
    plan = LaunchPlan(cfg, nodes, procs, "local", timeout, None, node_rank, note=note, warnings=warnings)
    if sbatch:
        plan.mode = "sbatch"
        plan.command = sbatch_script(nodes=nodes, gpus=procs, config_path=path, out=str(Path(cfg.out).resolve()),
                                     timeout=timeout, extra=extra or {})
    elif world == 1:
        plan.command = [sys.executable, "-m", "focuslab.gpt2.worker", path]
    elif in_slurm() and nodes > 1:
        plan.mode = "slurm"
        plan.command = slurm_command(procs=procs, config_path=path, timeout=timeout)
    else:
        plan.mode = "torchrun"
        plan.endpoint = check_endpoint(endpoint, nodes, warnings.append if elsewhere else None) if endpoint else None
        plan.command = torchrun_args(nodes=nodes, procs=procs, endpoint=plan.endpoint, node_rank=node_rank,
                                     run_id=f"focuslab-{Path(cfg.out).name}", config_path=path, timeout=timeout)
    return plan


def plan_run(cfg: TrainConfig, run: Gpt2Run) -> LaunchPlan:
    """The launch ``focuslab gpt2``'s run options (``run``) ask for, checked (``plan_launch``)."""
    from ..slurm import parse_sbatch_options

    return plan_launch(cfg, run.nodes, run.gpus_per_node, endpoint=run.rdzv_endpoint, timeout=run.rdzv_timeout,
                       node_rank=run.node_rank, sbatch=bool(run.sbatch), extra=parse_sbatch_options(run.sbatch_option),
                       dry_run=bool(run.dry_run), force=bool(run.force))


def write_sbatch(plan: LaunchPlan, sbatch_file: Path) -> str:
    """--sbatch: the job script and the run's run-config.json (which the script's workers read);
    returns what to say (where they went, how to submit, the plan's note)."""
    from ..results import atomic_write_bytes

    sbatch_file = Path(sbatch_file)
    if sbatch_file.is_dir():  # refused before the run's config is written
        raise FocuslabError(f"--sbatch {sbatch_file}: is a directory; give the job script's file name")
    path = write_run_config(plan.cfg)
    try:
        atomic_write_bytes(sbatch_file, plan.command.encode())
    except OSError as err:
        raise FocuslabError(f"--sbatch {sbatch_file}: cannot write ({err.strerror})") from None
    sbatch_file.chmod(0o755)
    lines = [f"wrote {sbatch_file} and {path}: {plan.nodes} node(s) x {plan.procs}; submit with `sbatch {sbatch_file}`"]
    return "\n".join(lines + ([plan.note] if plan.note else []))


# --- running it --------------------------------------------------------------------------------

class FreshRunDir:
    """A run directory this command creates: if the run fails before it wrote a checkpoint, what it
    left there (and the directories it created above it) is removed, so a refused or failed first
    attempt leaves nothing behind -- except the names in ``keep`` (torchrun's log of a failure)."""

    def __init__(self, run: Path):
        self.run = Path(run).absolute()
        self.top = None
        p = self.run
        while not p.exists():
            self.top = p
            p = p.parent
        self.keep: set = set()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import shutil

        if exc_type is None or self.top is None or not self.run.is_dir():
            return False
        if any((self.run / name).exists() for name in ("ckpt.pt", "ckpt.prev.pt")):
            return False  # work was saved: it stays
        for child in self.run.iterdir():
            if child.name in self.keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        p = self.run
        while True:
            try:
                p.rmdir()
            except OSError:
                break
            if p == self.top:
                break
            p = p.parent
        return False


def clear_run(run: Path) -> None:
    """--force: remove a run's files (logs and checkpoints moved aside as *.corrupt stay)."""
    import shutil

    run = Path(run)
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "data", ignore_errors=True)


def execute(plan: LaunchPlan, force: bool = False, log=print, progress: bool = True) -> dict:
    """Run ``plan`` (not sbatch): resume, refuse or (``force``) start over in the run directory,
    then train.  A first attempt that fails before its first checkpoint leaves no directory."""
    from .train import is_complete, read_checkpoint, run_state, token_data, train
    from .checkpoint import mark_interrupted

    cfg = plan.cfg
    run = Path(cfg.out)
    with FreshRunDir(run) as fresh:
        try:
            meta = run_state(run, cfg)
        except FocuslabError:
            if not force:
                raise
            clear_run(run)
            meta = None
        if is_complete(meta, cfg):  # answered here (already complete, or diagnostics on its checkpoint)
            return train(cfg, log=log, progress=progress, force=force)
        if plan.mode == "local":  # train writes run-config.json once it starts
            return train(cfg, log=log, progress=progress, force=force)
        write_run_config(cfg)  # what every worker would refuse was refused once, here, by plan_launch
        token_data(cfg)  # the embedded corpus prepared, the block size checked
        repair = plan.nodes == 1 or plan.node_rank == 0
        read_checkpoint(run, "cpu", force=force and repair, repair=repair, log=log)
        try:
            result = run_torchrun(plan, log)
        except KeyboardInterrupt:
            if repair:  # the process that owns the run directory keeps its record honest
                mark_interrupted(run)
            raise
        if result["code"] == 0:
            return {"run": str(run), "iter": cfg.max_iters, "world": plan.world}
        fresh.keep = {TORCHRUN_LOG}
        raise FocuslabError(failure_message(plan, result))
