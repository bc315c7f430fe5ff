"""``focuslab scan``: parse options, build a frozen config, run the scan, say where results went."""
from __future__ import annotations

from pathlib import Path

import click

from .common import default_out, opt_param_option, say

AXIS_HELP = "grid: START:STOP:NUM, START:STOP:NUM:log, a comma list, or one value"


@click.command()
@click.option("--config", "config_file", metavar="FILE|PRESET",
              help="TOML file or preset name (default = quick Fig. 2a, fig2a, fig2b, fig2b-quick); "
                   "flags override it.")
@click.option("--sharpness", metavar="GRID", help=f"valley sharpness a; {AXIS_HELP}.")
@click.option("--noise", metavar="GRID", help=f"gradient noise: std of the N(1, noise^2) factors; {AXIS_HELP}.")
@click.option("--weight-decay", metavar="GRID", help=f"weight decay omega; {AXIS_HELP}.")
@click.option("--lr", metavar="GRID", help=f"learning rates (best one is kept); {AXIS_HELP}.")
@click.option("--phi", metavar="GRID", help=f"valley angle phi in radians (may use pi); {AXIS_HELP}.")
@click.option("--theta", "old_theta", metavar="GRID", hidden=True)
@click.option("--c", "c", metavar="GRID", help=f"slope along the valley; {AXIS_HELP}.")
@click.option("--optimizers", metavar="LIST",
              help="comma list of adam (= adamw), signum, focus, sgd, lion; settings after colons, "
                   "e.g. focus:gamma=0.4.")
@opt_param_option
@click.option("--replicates", type=int, help="trajectories per (cell, optimizer, lr).")
@click.option("--steps", type=int, help="optimizer steps per trajectory.")
@click.option("--seed", type=int, help="base seed of all random streams.")
@click.option("--chunk-steps", type=int, help="work per resumable chunk (fixes the chunk layout).")
@click.option("--jobs", "-j", type=int, default=None, help="worker processes [all cores].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="output directory [results/PRESET for a preset as it is (results/default without "
                   "--config), else results/NAME-DIGEST].")
@click.option("--force", is_flag=True, help="replace a scan with a different config in --out.")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar or summary.")
@click.option("--shard", metavar="K/N", help="compute only shard K of N (balanced by cost); "
              "`focuslab merge` assembles the tables.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto", "torch-cpu"]), default="cpu", show_default=True,
              help="where trajectories run: cpu (the numba kernel), cuda (a GPU through torch), auto (cuda when "
                   "present), torch-cpu (the GPU code path on the CPU, for checks; slow).")
@click.option("--backend", type=click.Choice(["loky", "dask"]), default=None,
              help="where chunks run: local processes (loky, default) or a Dask cluster.")
@click.option("--scheduler", metavar="tcp://HOST:PORT", help="Dask scheduler (with --backend dask).")
@click.option("--sbatch", "sbatch_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write a SLURM driver script (array of --shards tasks + merge) instead of running.")
@click.option("--shards", type=int, default=None, help="number of array tasks for --sbatch.")
@click.option("--sbatch-option", multiple=True, metavar="NAME=VALUE",
              help="extra #SBATCH line for --sbatch, e.g. partition=cpu or time=01:00:00.")
@click.option("--dry-run", is_flag=True, help="print the plan (and with --sbatch the script); compute and write nothing.")
@click.option("--allow-long", is_flag=True, help="run a plan estimated at more than a week on this machine.")
def scan(config_file, sharpness, noise, weight_decay, lr, phi, old_theta, c, optimizers, opt_param,
         replicates, steps, seed, chunk_steps, jobs, out, force, quiet, shard, device, backend, scheduler,
         sbatch_file, shards, sbatch_option, dry_run, allow_long):
    """Scan the narrowing-valley toy model over a grid; write runs/best tables and scan.json.

    Without options it runs the `default` preset: a quick Fig. 2a-style sharpness x noise phase
    diagram.  Re-running the same command resumes an interrupted scan.
    """
    from focuslab.config import build_scan_config, load_toml
    from focuslab.optimizers import parse_opt_params
    from focuslab.errors import FocuslabError
    from focuslab.scan import parse_shard, run_scan

    if old_theta is not None:
        raise FocuslabError("--theta was renamed --phi (the valley angle; theta is the parameter vector)")
    if jobs is not None and jobs < 1:
        raise FocuslabError(f"--jobs: must be >= 1, got {jobs}")
    file_values = load_toml(config_file, "scan") if config_file else None
    flags = {"sharpness": sharpness, "noise": noise, "weight_decay": weight_decay, "lr": lr,
             "phi": phi, "c": c, "optimizers": optimizers, "replicates": replicates,
             "steps": steps, "seed": seed, "chunk_steps": chunk_steps,
             "optimizer": parse_opt_params(opt_param)}
    config = build_scan_config(file_values, {k: v for k, v in flags.items() if v is not None})
    if out is None:  # results/default, results/fig2a, ... or results/scan-DIGEST for an ad-hoc grid
        preset = Path(config_file).stem if config_file else "default"
        out = default_out(preset, config.digest(), build_scan_config(file_values).digest(),
                          adhoc=preset if config_file else "scan")
    if dry_run and not sbatch_file and shards is None:
        return _print_plan(config, out, jobs)
    if sbatch_file or dry_run or shards is not None:
        return _write_sbatch(config, out, sbatch_file, shards, jobs, sbatch_option, dry_run)
    shard_kn = parse_shard(shard) if shard else None
    from focuslab.scan import resolve_device

    resolve_device(device)  # a missing GPU or torch is reported before anything else
    summary = run_scan(config, out, jobs=jobs, force=force, progress=not quiet, backend=backend,
                       scheduler=scheduler, shard=shard_kn, device=device, allow_long=allow_long,
                       announce=lambda: say(f"focuslab scan: results in {out} ({config.total_steps():.3g} optimizer "
                                            "steps)", quiet))
    if summary.get("already_complete"):
        say(f"{out}: this scan is already complete ({summary['chunks_total']} chunks); nothing to do "
            f"(`focuslab plot {out}` draws it)", quiet)
    elif shard_kn:
        say(f"{out}: shard {shard_kn[0]}/{shard_kn[1]} done ({summary['chunks_computed']}/"
            f"{summary['chunks_total']} chunks computed); `focuslab merge` assembles the tables", quiet)
    else:
        done = summary["chunks_computed"]
        speed = summary["ns_per_step_per_worker"]
        say(f"{out}: runs.parquet, best.parquet, scan.json "
            f"({config.n_cells} cells x {len(config.optimizers)} optimizers x "
            f"{len(config.axes['lr'])} lrs x {config.replicates} replicates; "
            f"{done}/{summary['chunks_total']} chunks computed in {summary['wall_seconds']:.1f} s"
            + (f", {speed:.1f} ns/step per worker)" if speed else ")"), quiet)


def _print_plan(config, out, jobs):
    import os

    from focuslab.runner import _duration
    from focuslab.scan import plan_scan

    p = plan_scan(config, jobs or os.cpu_count() or 1)
    click.echo(f"{out}: {p['cells']} cells x {len(config.entries)} optimizers x {len(config.axes['lr'])} lrs x "
               f"{config.replicates} replicates = {p['trajectories']:.3g} trajectories, {p['steps']:.3g} optimizer "
               f"steps in {p['chunks']} chunks; tables ~{p['table_bytes'] / 2 ** 20:.3g} MiB; ~"
               f"{_duration(p['eta_seconds'])} on {jobs or os.cpu_count() or 1} worker(s) at the numba kernel's speed "
               "(external optimizers are probed when the scan starts)")


def _write_sbatch(config, out, sbatch_file, shards, jobs, sbatch_option, dry_run):
    from focuslab.config import config_to_toml
    from focuslab.errors import FocuslabError
    from focuslab.results import atomic_write_bytes
    from focuslab.scan import plan_chunks
    from focuslab.slurm import parse_sbatch_options, scan_array_script

    if not sbatch_file and not dry_run:
        raise FocuslabError("--shards goes with --sbatch FILE (or --dry-run)")
    if shards is None or shards < 1:
        raise FocuslabError("--sbatch needs --shards N (N >= 1 array tasks)")
    n_chunks = len(plan_chunks(config))
    if shards > n_chunks:
        raise FocuslabError(f"--shards {shards}: this scan has only {n_chunks} chunks "
                            "(lower --shards or --chunk-steps)")
    script = scan_array_script(out=str(Path(out).resolve()), config_toml=config_to_toml(config),
                               shards=shards, cpus=jobs or 2,
                               extra=parse_sbatch_options(sbatch_option))
    if dry_run:
        click.echo(script, nl=False)
        return
    try:
        atomic_write_bytes(Path(sbatch_file), script.encode())
    except OSError as err:
        raise FocuslabError(f"--sbatch {sbatch_file}: cannot write ({err.strerror})") from None
    Path(sbatch_file).chmod(0o755)
    click.echo(f"wrote {sbatch_file}: {shards} array tasks + merge; submit with `bash {sbatch_file}`")
