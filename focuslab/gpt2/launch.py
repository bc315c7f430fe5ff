"""Launching: in-process for one process, torchrun (c10d rendezvous) for several, srun + torchrun
inside SLURM, and a ready sbatch script.  torch.distributed does the work; this only builds commands.

Scripts and commands call the Python interpreter that wrote them (``python -m
torch.distributed.run``, ``python -m focuslab``), never ``torchrun``/``focuslab`` from PATH: on a
cluster the compute nodes' PATH often lacks the login node's virtual environment.  Every launch
states how long it waits for the other nodes (``--rdzv-timeout``).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import FocuslabError
from .config import TrainConfig

RUN_CONFIG = "run-config.json"


def run_config_path(cfg: TrainConfig) -> str:
    return str((Path(cfg.out) / RUN_CONFIG).resolve())


def torchrun_args(*, nodes: int, procs: int, endpoint: str, node_rank: int | None, run_id: str,
                  config_path: str, timeout: int, python: str = sys.executable) -> list[str]:
    args = [python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={procs}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}",
            f"--rdzv-conf=join_timeout={timeout}", "--max-restarts=0"]
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


def write_run_config(cfg: TrainConfig) -> str:
    run = Path(cfg.out)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FocuslabError(f"--out {run}: cannot create ({err.strerror})") from None
    from ..results import atomic_write_bytes

    path = run / RUN_CONFIG
    atomic_write_bytes(path, json.dumps(asdict(cfg), indent=2).encode())
    return str(path.resolve())


def in_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_NNODES" in os.environ
