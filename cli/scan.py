"""``focuslab scan``: flags from focuslab.config.ScanSettings, focuslab.options.Common and
focuslab.scan.ScanRun; build the config, run the scan, say where results went."""
from __future__ import annotations

from pathlib import Path

import click

from focuslab.config import ScanSettings, load_toml
from focuslab.options import Common
from focuslab.scan import ScanRun

from .common import say
from .options import generated, study_inputs


@click.command(short_help="toy-landscape phase-diagram scans, any optimizer (numba kernel, torch engine, GPU)")
@generated(Common, ScanSettings, ScanRun, defaults={**load_toml("default", "scan"), "config": "default"})
@click.option("--theta", "old_theta", metavar="GRID", hidden=True)
def scan(old_theta, **values):
    """Scan the narrowing-valley toy model over a grid; write runs/best tables and scan.json.

    Without options it runs the `default` preset: a quick Fig. 2a-style sharpness x noise phase
    diagram.  Re-running the same command resumes an interrupted scan.  Presets: default, fig2a,
    fig2b, fig2b-quick, zoo.
    """
    from focuslab.config import build_scan_config
    from focuslab.errors import FocuslabError
    from focuslab.results import default_out
    from focuslab.scan import describe_plan, parse_shard, run_scan, write_sbatch

    if old_theta is not None:
        raise FocuslabError("--theta was renamed --phi (the valley angle; theta is the parameter vector)")
    run, flags, file_values = study_inputs(values, ScanSettings, ScanRun, "scan")
    config_file = run.get("config")
    config = build_scan_config(file_values, flags)
    out = run.get("out")
    if out is None:  # results/default, results/fig2a, ... or results/scan-DIGEST for an ad-hoc grid
        preset = Path(config_file).stem if config_file else "default"
        out = default_out(preset, config.digest(), build_scan_config(file_values).digest(),
                          adhoc=preset if config_file else "scan")
    out, quiet, jobs = Path(out), run.get("quiet", False), run.get("jobs")
    if run.get("dry_run") and not run.get("sbatch") and run.get("shards") is None:  # the run's own checks first
        click.echo(describe_plan(config, out, jobs, force=run.get("force", False), backend=run.get("backend"),
                                 scheduler=run.get("scheduler"), device=run.get("device", "auto"),
                                 allow_long=run.get("allow_long", False),
                                 shard=parse_shard(run["shard"]) if run.get("shard") else None))
        return
    if run.get("sbatch") or run.get("dry_run") or run.get("shards") is not None:
        click.echo(write_sbatch(config, out, run.get("sbatch"), run.get("shards"), jobs, run.get("sbatch_option"),
                                run.get("dry_run", False)), nl=False)
        return
    shard = parse_shard(run["shard"]) if run.get("shard") else None
    summary = run_scan(config, out, jobs=jobs, force=run.get("force", False), progress=not quiet,
                       backend=run.get("backend"), scheduler=run.get("scheduler"), shard=shard,
                       device=run.get("device", "auto"), allow_long=run.get("allow_long", False),
                       announce=lambda eta: say(f"focuslab scan: results in {out} ({config.total_steps():.3g} "
                                                f"optimizer steps, {eta})", quiet))
    say(summary_line(config, out, summary, shard), quiet)


def summary_line(config, out, summary, shard) -> str:
    if summary.get("already_complete"):
        return (f"{out}: this scan is already complete ({summary['chunks_total']} chunks); nothing to do "
                f"(`focuslab plot {out}` draws it)")
    if shard:
        return (f"{out}: shard {shard[0]}/{shard[1]} done ({summary['chunks_computed']}/{summary['chunks_total']} "
                "chunks computed); `focuslab merge` assembles the tables")
    speed = summary["ns_per_step_per_worker"]
    tables = "runs.parquet, best.parquet" + (", best_defaults.parquet, tuning.parquet" if config.tuning else "")
    return (f"{out}: {tables}, scan.json ({config.shape_text()}; "
            f"{summary['chunks_computed']}/{summary['chunks_total']} chunks computed in {summary['wall_seconds']:.1f} s"
            + (f", {speed:.1f} ns/step per worker)" if speed else ")"))
