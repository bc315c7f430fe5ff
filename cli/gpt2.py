"""``focuslab gpt2``: GPT-2 training (one process, torchrun, SLURM) and ``focuslab gpt2 prepare``."""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click

# TrainConfig fields exposed as flags spelled like nanoGPT's config keys (--batch-size, ...)
_FLAG_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias", "data",
                "optimizer", "batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval",
                "eval_iters", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay",
                "beta1", "beta2", "gamma", "grad_clip", "device", "dtype", "compile", "seed", "wandb")


def _training_options(fn):
    from focuslab.gpt2.config import TrainConfig  # torch-free

    types = {f.name: f.type for f in fields(TrainConfig)}
    for name in reversed(_FLAG_FIELDS):
        flag = "--" + name.replace("_", "-")
        kind = types[name] if not isinstance(types[name], str) else {"int": int, "float": float, "str": str,
                                                                      "bool": bool}[types[name]]
        if kind is bool:
            fn = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None,
                              help=f"[{getattr(TrainConfig, name)}]")(fn)
        else:
            fn = click.option(flag, name, type=kind, default=None,
                              help=f"[{getattr(TrainConfig, name)!r}]")(fn)
    return fn


@click.group(invoke_without_command=True)
@click.option("--preset", help="model/training preset: gpt2-nano, gpt2-mini, gpt2-small-focus, gpt2-small-adamw.")
@click.option("--config", "config_file", metavar="FILE", help="TOML with a [gpt2] table (flags override it).")
@_training_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run directory [results/gpt2-<preset>-<optimizer>].")
@click.option("--resume", is_flag=True, help="continue from the run directory's checkpoint.")
@click.option("--nodes", type=int, default=1, show_default=True, help="machines (torchrun agents).")
@click.option("--gpus-per-node", type=int, default=1, show_default=True,
              help="processes per node (GPUs; on CPU, gloo processes).")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", default=None, help="c10d rendezvous [127.0.0.1:29500 on one node].")
@click.option("--node-rank", type=int, default=None, help="this node's rank (optional with c10d).")
@click.option("--sbatch", "sbatch_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write a SLURM job script (srun + torchrun) instead of running.")
@click.option("--sbatch-option", multiple=True, metavar="NAME=VALUE", help="extra #SBATCH line (repeatable).")
@click.option("--dry-run", is_flag=True, help="print the exact launch command and exit.")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def gpt2(ctx, preset, config_file, out, resume, nodes, gpus_per_node, rdzv_endpoint, node_rank,
         sbatch_file, sbatch_option, dry_run, quiet, **flags):
    """Train GPT-2 with FOCUS, AdamW or Signum.  `focuslab gpt2 --preset gpt2-nano` trains a tiny model
    on an embedded corpus on CPU; `--nodes N --gpus-per-node G` runs DistributedDataParallel through
    torchrun (inside SLURM: srun + torchrun), `--sbatch FILE` writes the job script."""
    if ctx.invoked_subcommand is not None:
        return

    from focuslab.config import load_toml
    from focuslab.errors import FocuslabError
    from focuslab.gpt2.launch import (in_slurm, sbatch_script, slurm_command, torchrun_args,
                                      write_run_config)
    from focuslab.gpt2.config import TrainConfig, validate
    from focuslab.gpt2.train import train
    from focuslab.slurm import parse_sbatch_options

    values = {}
    for source in (preset, config_file):
        if source:
            table = load_toml(source, "gpt2")
            unknown = set(table) - set(TrainConfig.keys())
            if unknown:
                raise FocuslabError(f"unknown gpt2 config key(s): {', '.join(sorted(unknown))}")
            values.update(table)
    values.update({k: v for k, v in flags.items() if v is not None})
    if out is not None:
        values["out"] = str(out)
    elif "out" not in values:
        values["out"] = f"results/gpt2-{preset or 'run'}-{values.get('optimizer', 'focus')}"
    cfg = TrainConfig(**values)
    if nodes < 1 or gpus_per_node < 1:
        raise FocuslabError("--nodes and --gpus-per-node must be >= 1")
    validate(cfg, nodes * gpus_per_node)
    distributed = nodes > 1 or gpus_per_node > 1
    if sbatch_file:
        path = write_run_config(cfg) if not dry_run else str((Path(cfg.out) / "run-config.json").resolve())
        script = sbatch_script(nodes=nodes, gpus=gpus_per_node, config_path=path, out=str(Path(cfg.out).resolve()),
                               resume=resume, extra=parse_sbatch_options(sbatch_option))
        if dry_run:
            click.echo(script, nl=False)
            return
        sbatch_file.write_text(script)
        click.echo(f"wrote {sbatch_file}: {nodes} node(s) x {gpus_per_node}; submit with `sbatch {sbatch_file}`")
        return
    if not distributed and not dry_run:
        train(cfg, resume=resume, log=(lambda *_: None) if quiet else click.echo)
        return
    path = str((Path(cfg.out) / "run-config.json").resolve()) if dry_run else write_run_config(cfg)
    if in_slurm() and nodes > 1:
        command = slurm_command(procs=gpus_per_node, config_path=path, resume=resume)
        if dry_run:
            click.echo(command, nl=False)
            return
        sys.exit(subprocess.run(["bash", "-c", command]).returncode)
    if nodes > 1 and not rdzv_endpoint:
        raise FocuslabError("--nodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node), "
                            "or run inside a SLURM allocation")
    args = torchrun_args(nodes=nodes, procs=gpus_per_node, endpoint=rdzv_endpoint or "127.0.0.1:29500",
                         node_rank=node_rank, run_id=f"focuslab-{Path(cfg.out).name}", config_path=path,
                         resume=resume)
    if dry_run:
        click.echo(shlex.join(args))
        return
    code = subprocess.run(args).returncode
    if code:
        raise FocuslabError(f"torchrun exited with status {code}")


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
