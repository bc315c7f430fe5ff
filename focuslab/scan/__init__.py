"""Scan orchestration: grid -> chunks -> joblib workers -> results store.

The scan knows nothing about update rules (it hands an optimizer's name and resolved settings to
the kernel) and the kernel knows nothing about grids or files.  A chunk is one optimizer on a
contiguous run of grid cells with all of their replicates and all of their learning rates (a
single cell too large for a chunk is split by learning rate); its table is written atomically
by the worker that computed it, so an interrupted scan (Ctrl-C, kill -9) loses at most the chunks
in flight and the same command resumes.  The chunk layout depends only on the config, and every
trajectory's noise only on (seed, cell coordinates, replicate), so the tables are bit-identical
whatever --jobs, backend or interruption history.

One module per job: ``plan`` (the chunk layout, costs, shards, device and the checks a scan refuses
before it writes anything; the SLURM script), ``compute`` (a chunk simulated and summarised into
runs-table rows), ``store`` (the results directory, scan.json, the finished tables, ``merge``) and
``run`` (``run_scan`` and ``ScanJob``, one ``focuslab scan`` resolved).  Every name other modules
import from ``focuslab.scan`` is re-exported here.
"""
from __future__ import annotations

from ..axes import CELL_NAMES  # noqa: F401  (re-exported: older callers import it from here)
from .compute import (_compute_unit, compute_chunk, simulate_trials, summarise,  # noqa: F401
                      torch_batches, trial_columns)
from .plan import (LONG_SECONDS, ROW_BYTES, Chunk, assign_shards, available_memory, cell_values,  # noqa: F401
                   check_plan, describe_plan, engine_speeds, parse_shard, plan_chunks, plan_scan, preflight,
                   resolve_device, write_sbatch)
from .run import ScanJob, ScanRun, run_scan, scan_job  # noqa: F401
from .store import (TUNED, MergeSettings, assemble_runs, config_from_meta, finish_scan,  # noqa: F401
                    merge_shards, open_scan_dir)
