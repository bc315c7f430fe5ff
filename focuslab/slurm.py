"""SLURM job scripts: a self-contained driver that submits an array job and a dependent job."""
from __future__ import annotations

import shlex


def sbatch_lines(options: dict) -> str:
    return "\n".join(f"#SBATCH --{k}={v}" if v is not None else f"#SBATCH --{k}"
                     for k, v in options.items())


def parse_sbatch_options(items) -> dict:
    """['partition=gpu', 'time=02:00:00', 'exclusive'] -> {'partition': 'gpu', ...}."""
    from .errors import FocuslabError

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or any(c.isspace() for c in key):
            raise FocuslabError(f"--sbatch-option: expected NAME=VALUE or NAME, got {item!r}")
        out[key] = value.strip() if sep else None
    return out


def scan_array_script(*, out: str, config_toml: str, shards: int, cpus: int, extra: dict,
                      python: str | None = None) -> str:
    """Driver script: writes the resolved config beside the results, submits one array task per
    shard, then `focuslab merge` as a job that runs after all of them succeeded.  Jobs run
    ``python -m focuslab`` with the interpreter that wrote the script (compute nodes' PATH often
    lacks the login node's environment); $FOCUSLAB_PYTHON overrides it."""
    import sys

    q = shlex.quote
    python = python or sys.executable
    pyline = f'PYTHON="${{FOCUSLAB_PYTHON:-{python}}}"'
    focuslab = '"$PYTHON" -m focuslab'
    cfg = f"{out}/scan.toml"
    array_opts = {"job-name": "focuslab-scan", "array": f"1-{shards}", "cpus-per-task": cpus,
                  "output": f"{out}/slurm/scan-%A_%a.log", **extra}
    merge_opts = {"job-name": "focuslab-merge", "cpus-per-task": 1,
                  "output": f"{out}/slurm/merge-%j.log", **{k: v for k, v in extra.items()
                                                             if k not in ("cpus-per-task", "array")}}
    return f"""#!/bin/bash
# focuslab scan on a SLURM cluster: {shards} array tasks (one shard each, balanced by cost), then
# `focuslab merge` as a job that starts once every shard succeeded.  Submit with:  bash THIS_FILE
# Re-submitting resumes: each shard computes only its chunks that are not on disk yet.  The jobs
# run {python} -m focuslab (set FOCUSLAB_PYTHON to use another interpreter).
set -euo pipefail
mkdir -p {q(out)}/slurm
cat > {q(cfg)} <<'FOCUSLAB_CONFIG'
{config_toml.rstrip()}
FOCUSLAB_CONFIG

array_id=$(sbatch --parsable <<'FOCUSLAB_ARRAY'
#!/bin/bash
{sbatch_lines(array_opts)}
{pyline}
srun {focuslab} scan --config {q(cfg)} --out {q(out)} --shard "${{SLURM_ARRAY_TASK_ID}}/{shards}" --jobs "${{SLURM_CPUS_PER_TASK:-1}}" --quiet
FOCUSLAB_ARRAY
)
array_id=${{array_id%%;*}}

merge_id=$(sbatch --parsable --dependency=afterok:${{array_id}} <<'FOCUSLAB_MERGE'
#!/bin/bash
{sbatch_lines(merge_opts)}
{pyline}
srun {focuslab} merge {q(out)} --out {q(out)}
FOCUSLAB_MERGE
)
echo "submitted array job ${{array_id}} ({shards} shards) and merge job ${{merge_id%%;*}}; results in {out}"
"""
