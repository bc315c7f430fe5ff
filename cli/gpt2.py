"""``focuslab gpt2``: GPT-2 training (one process, torchrun, SLURM) and ``focuslab gpt2 prepare``."""
from __future__ import annotations

from pathlib import Path

import click

from focuslab.results import default_out

from .common import say


def opt_param_option(fn):
    return click.option("--opt-param", "opt_param", multiple=True, metavar="OPT.SETTING=VALUE",
                        help="a setting of the run's optimizer, e.g. focus.gamma=0.4 (repeatable).")(fn)

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _training_options(fn):
    """One flag per TrainConfig field (focuslab.gpt2.config holds their help and choices)."""
    from focuslab.gpt2.config import FLAG_FIELDS

    for f in reversed(FLAG_FIELDS):
        kind = _TYPES.get(f.type, f.type) if isinstance(f.type, str) else f.type
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [default: the preset's]"
        if kind is bool:
            fn = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=help_text)(fn)
        else:
            choices = f.metadata.get("choices")
            fn = click.option(flag, f.name, type=click.Choice(choices) if choices else kind, default=None,
                              help=help_text,
                              metavar=None if choices else (f.metadata.get("metavar") or kind.__name__.upper()))(fn)
    return fn


def _moved(ctx, param, value):
    if value is not None:
        from focuslab.errors import FocuslabError

        name = param.name
        raise FocuslabError(f"--{name} is an optimizer setting now: --opt-param OPTIMIZER.{name}=VALUE "
                            f"(e.g. --opt-param adamw.{name}={value}) or --optimizer NAME:{name}={value}")
    return value


@click.group(invoke_without_command=True, short_help="GPT-2 with any optimizer (paper Fig. 3), one CPU to multi-node")
@click.option("--preset", default=None, metavar="NAME",
              help="model preset: gpt2-nano (the default: CPU, seconds), gpt2-mini (CPU, minutes), gpt2-small "
                   "(the paper's model; GPUs); each holds the paper's settings for every optimizer.")
@click.option("--config", "config_file", metavar="FILE", help="TOML with a [gpt2] table (flags override it).")
@_training_options
@opt_param_option
@click.option("--beta1", callback=_moved, expose_value=False, hidden=True)
@click.option("--beta2", callback=_moved, expose_value=False, hidden=True)
@click.option("--gamma", callback=_moved, expose_value=False, hidden=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run directory [results/gpt2-PRESET-OPTIMIZER, plus -DIGEST when other flags are set].")
@click.option("--force", is_flag=True, help="start over in --out when it holds a run with a different config, or an unreadable "
                   "checkpoint and no earlier one (that one is moved aside, not deleted).")
@click.option("--nodes", type=int, default=1, show_default=True, help="machines (one torchrun agent each).")
@click.option("--gpus-per-node", type=int, default=1, show_default=True,
              help="processes per node (GPUs; on CPU, gloo processes).")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", default=None,
              help="c10d rendezvous, the same on every node; checked before launch [one node: torchrun "
                   "--standalone, a free local port].")
@click.option("--rdzv-timeout", type=int, default=300, show_default=True, metavar="SECONDS",
              help="how long to wait for all nodes to join (torchrun's join timeout; a launch whose workers "
                   "have not started 30 s after it is stopped).")
@click.option("--node-rank", type=int, default=None, help="this node's rank (optional with c10d).")
@click.option("--sbatch", "sbatch_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write a SLURM job script (srun + torchrun) instead of running.")
@click.option("--sbatch-option", multiple=True, metavar="NAME=VALUE", help="extra #SBATCH line (repeatable).")
@click.option("--dry-run", is_flag=True, help="print what the run would do and exit, writing nothing: each process's share of an "
                   "iteration, the full config, the exact command (or the --sbatch script).")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors.")
@click.pass_context
def gpt2(ctx, preset, config_file, opt_param, out, force, nodes, gpus_per_node, rdzv_endpoint, rdzv_timeout,
         node_rank, sbatch_file, sbatch_option, dry_run, quiet, **flags):
    """Train GPT-2 with FOCUS, AdamW or Signum.

    `focuslab gpt2` trains a tiny model (preset gpt2-nano) on an embedded corpus on CPU;
    `--preset gpt2-small --optimizer adamw` is the paper's run.  `--nodes N --gpus-per-node G` runs
    DistributedDataParallel through torchrun (inside SLURM: srun + torchrun); `--sbatch FILE`
    writes the job script.  Re-running the same command resumes from the run's checkpoint; a
    finished run is left as it is.
    """
    if ctx.invoked_subcommand is not None:
        return
    from focuslab.config import load_toml
    from focuslab.optimizers import parse_opt_params
    from focuslab.gpt2.config import DEFAULT_PRESET, build_train_config
    from focuslab.gpt2.launch import plan_launch
    from focuslab.slurm import parse_sbatch_options

    file_values = load_toml(config_file, "gpt2") if config_file else None
    given = {k: v for k, v in flags.items() if v is not None}
    opt_params = parse_opt_params(opt_param)
    cfg = build_train_config(preset, file_values, given, opt_params)
    preset_name = preset or DEFAULT_PRESET
    if out is None:
        from focuslab.gpt2.config import optimizer_entry

        entry = optimizer_entry(cfg)
        plain = build_train_config(preset, file_values, {"optimizer": entry.label.split(":", 1)[0]
                                                         if entry.kind == "builtin" else entry.name})
        base = Path(config_file).stem if config_file else preset_name
        base = base if base.startswith("gpt2") else f"gpt2-{base}"
        out = default_out(f"{base}-{entry.slug}", cfg.digest(), plain.digest())
    cfg = build_train_config(preset, file_values, given, opt_params, out=str(out))
    plan = plan_launch(cfg, nodes, gpus_per_node, rdzv_endpoint, rdzv_timeout, node_rank, sbatch=bool(sbatch_file),
                       extra=parse_sbatch_options(sbatch_option))
    if dry_run:
        click.echo(plan.dry_run_text(), nl=False)
        return
    if sbatch_file:
        return _write_sbatch(plan, Path(sbatch_file))
    from focuslab.gpt2.launch import execute

    say(f"focuslab gpt2: results in {out}", quiet)
    if plan.note:
        say(plan.note, quiet)
    if plan.mode != "local" and plan.nodes > 1:
        say(f"waiting for {nodes} nodes at {plan.endpoint or 'the first node of the allocation'} (timeout "
            f"{rdzv_timeout} s; start the same command on every node)", quiet)
    echo = (lambda *_: None) if quiet else click.echo
    info = execute(plan, force=force, log=echo, progress=not quiet)
    if info.get("diagnostics") == "present":
        say(f"{out}: this run is already complete ({info['iter']} iterations), with its diagnostics "
            f"({info['diagnostics_rows']} measurements); nothing to do (`focuslab plot {out}` draws them)", quiet)
    elif info.get("diagnostics"):
        pass  # measured on the finished run's checkpoint: the library said so
    elif info.get("already_complete"):
        say(f"{out}: this run is already complete ({info['iter']} iterations); nothing to do "
            f"(`focuslab plot {out}` draws it; raise --max-iters with --lr-decay-iters set to extend it)", quiet)
    else:
        say(f"{out}: metrics.csv, metrics.jsonl, ckpt.pt, gpt2.json", quiet)


def _write_sbatch(plan, sbatch_file: Path):
    """--sbatch: the job script and the run's run-config.json (which the script's workers read)."""
    from focuslab.errors import FocuslabError
    from focuslab.gpt2.config import write_run_config
    from focuslab.results import atomic_write_bytes

    path = write_run_config(plan.cfg)
    try:
        atomic_write_bytes(sbatch_file, plan.command.encode())
    except OSError as err:
        raise FocuslabError(f"--sbatch {sbatch_file}: cannot write ({err.strerror})") from None
    sbatch_file.chmod(0o755)
    click.echo(f"wrote {sbatch_file} and {path}: {plan.nodes} node(s) x {plan.procs}; submit with "
               f"`sbatch {sbatch_file}`")
    if plan.note:
        click.echo(plan.note)


@gpt2.command()
@click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path),
              help="text files or directories (repeatable).")
@click.option("--dataset", type=click.Choice(["openwebtext"]), default=None,
              help="prepare the paper's corpus through the datasets library (needs network).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--tokenizer", type=click.Choice(["auto", "gpt2", "bytes"]), default="auto", show_default=True,
              help="GPT-2 BPE (tiktoken) when available, else bytes.")
def prepare(inputs, dataset, out, tokenizer):
    """Tokenize text into nanoGPT's format: train.bin / val.bin (uint16) + meta.json."""
    from focuslab.errors import FocuslabError
    from focuslab.gpt2.data import prepare as do_prepare
    from focuslab.gpt2.data import prepare_openwebtext, read_texts

    if dataset:
        meta = prepare_openwebtext(out)
    elif inputs:
        meta = do_prepare(read_texts(inputs), out, tokenizer, source=", ".join(map(str, inputs)))
    else:
        raise FocuslabError("prepare: give --input FILES_OR_DIR or --dataset openwebtext")
    click.echo(f"{out}: {meta['train_tokens']} train + {meta['val_tokens']} val tokens; tokenizer: "
               f"{meta['tokenizer_note']}")
