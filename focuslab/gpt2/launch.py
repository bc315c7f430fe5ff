"""Launching: in-process for one process, torchrun (c10d rendezvous) for several, srun + torchrun
inside SLURM, and a ready sbatch script.  torch.distributed does the work; this only builds commands."""
from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import FocuslabError
from .config import TrainConfig


def torchrun_args(*, nodes: int, procs: int, endpoint: str, node_rank: int | None, run_id: str,
                  config_path: str, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={procs}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    if node_rank is not None:
        args.append(f"--node-rank={node_rank}")
    args += ["-m", "focuslab.gpt2.worker", config_path]
    return args + (["--resume"] if resume else [])


def slurm_command(*, procs: int, config_path: str, resume: bool, port: int = 29500) -> str:
    """srun + torchrun for the current allocation: rendezvous on the first node of the job."""
    return ("head=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
            f"srun --nodes=\"$SLURM_NNODES\" --ntasks-per-node=1 torchrun --nnodes=\"$SLURM_NNODES\" "
            f"--nproc-per-node={procs} --rdzv-backend=c10d --rdzv-endpoint=\"$head:{port}\" "
            f"--rdzv-id=\"$SLURM_JOB_ID\" -m focuslab.gpt2.worker {shlex.quote(config_path)}"
            + (" --resume" if resume else "") + "\n")


def sbatch_script(*, nodes: int, gpus: int, config_path: str, out: str, resume: bool, extra: dict) -> str:
    from ..slurm import sbatch_lines

    opts = {"job-name": "focuslab-gpt2", "nodes": nodes, "ntasks-per-node": 1, "gpus-per-node": gpus,
            "cpus-per-task": max(1, 8 * gpus), "output": f"{out}/slurm-%j.log", **extra}
    return ("#!/bin/bash\n# GPT-2 training with focuslab: one torchrun agent per node, "
            f"{gpus} processes each, c10d rendezvous on the first node.\n"
            f"{sbatch_lines(opts)}\nset -euo pipefail\n" + slurm_command(procs=gpus, config_path=config_path,
                                                                          resume=resume))


def write_run_config(cfg: TrainConfig) -> str:
    run = Path(cfg.out)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FocuslabError(f"--out {run}: cannot create ({err.strerror})") from None
    path = run / "run-config.json"
    path.write_text(json.dumps(asdict(cfg), indent=2))
    return str(path.resolve())


def in_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_NNODES" in os.environ
