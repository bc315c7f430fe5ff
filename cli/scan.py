"""``focuslab scan``: flags from focuslab.config.ScanSettings, focuslab.options.Common and
focuslab.scan.ScanRun; the library resolves the job (config, results directory), runs it, and this
says where the results went."""
from __future__ import annotations

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
    from focuslab.errors import FocuslabError
    from focuslab.scan import scan_job

    if old_theta is not None:
        raise FocuslabError("--theta was renamed --phi (the valley angle; theta is the parameter vector)")
    run, flags = study_inputs(values, ScanSettings, ScanRun)
    quiet = run.pop("quiet", False)
    job = scan_job(flags, **run)  # results/default, results/fig2a, ... or results/scan-DIGEST when --out is not given
    if job.action == "plan":  # --dry-run: the run's own checks first
        click.echo(job.describe())
        return
    if job.action == "script":  # --sbatch / --shards
        click.echo(job.script(), nl=False)
        return
    summary = job.execute(progress=not quiet,
                          announce=lambda eta: say(f"focuslab scan: results in {job.out} "
                                                   f"({job.config.total_steps():.3g} optimizer steps, {eta})", quiet))
    say(summary_line(job.config, job.out, summary, job.shard), quiet)


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
