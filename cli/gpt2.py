"""``focuslab gpt2``: GPT-2 training (one process, torchrun, SLURM) and ``focuslab gpt2 prepare``.
The library builds the run's config and names its directory (focuslab.gpt2.config.run_config), plans
the launch from the typed run options (focuslab.gpt2.launch.plan_run) and runs it; this parses and
says what happened."""
from __future__ import annotations

from pathlib import Path

import click

from focuslab.config import load_toml
from focuslab.gpt2.config import DEFAULT_PRESET, TrainConfig
from focuslab.gpt2.launch import Gpt2Run
from focuslab.options import Common

from .common import say
from .options import generated, given, split, with_defaults

#: Defaults the help shows: the default preset's values.
DEFAULTS = {**load_toml(DEFAULT_PRESET, "gpt2"), "config": DEFAULT_PRESET}
#: Common's run options that a GPT-2 run takes from its own Gpt2Run (--out, --force: what they mean
#: for a run directory) or has no use for (--jobs: the processes are --nodes x --gpus-per-node).
NOT_COMMON = ("out", "force", "jobs")


@click.group(invoke_without_command=True, short_help="GPT-2 with any optimizer (paper Fig. 3), one CPU to multi-node")
@generated(Common, defaults=DEFAULTS, skip=NOT_COMMON)
@generated(TrainConfig, Gpt2Run, defaults=DEFAULTS)
@click.pass_context
def gpt2(ctx, **values):
    """Train GPT-2 with FOCUS, AdamW or Signum.

    `focuslab gpt2` trains a tiny model (preset gpt2-nano) on an embedded corpus on CPU;
    `--config gpt2-small --optimizer adamw` is the paper's run (presets: gpt2-nano, gpt2-mini,
    gpt2-small; each holds the paper's settings for every optimizer).  `--nodes N --gpus-per-node G`
    runs DistributedDataParallel through torchrun (inside SLURM: srun + torchrun); `--sbatch FILE`
    writes the job script.  Re-running the same command resumes from the run's checkpoint; a
    finished run is left as it is.
    """
    if ctx.invoked_subcommand is not None:
        return
    from focuslab.gpt2.config import run_config
    from focuslab.gpt2.launch import plan_run, write_sbatch
    from focuslab.optimizers import parse_opt_params

    values = given(values)
    run = Gpt2Run(**with_defaults(split(values, Gpt2Run), Gpt2Run))
    common = split(values, Common)
    flags = split(values, TrainConfig)
    opt_params = parse_opt_params(flags.pop("optimizer_settings", ()))
    cfg = run_config(common.get("config"), flags, opt_params, device=common.get("device"), out=run.out)
    out, quiet = run.out or cfg.out, common.get("quiet", False)
    plan = plan_run(cfg, run)
    if run.dry_run:
        click.echo(plan.dry_run_text(), nl=False)
        return
    if run.sbatch:
        click.echo(write_sbatch(plan, Path(run.sbatch)))
        return
    from focuslab.gpt2.launch import execute

    say(f"focuslab gpt2: results in {out}", quiet)
    if plan.note:
        say(plan.note, quiet)
    if plan.mode != "local" and plan.nodes > 1:
        say(f"waiting for {run.nodes} nodes at {plan.endpoint or 'the first node of the allocation'} (timeout "
            f"{run.rdzv_timeout} s; start the same command on every node)", quiet)
    echo = (lambda *_: None) if quiet else click.echo
    info = execute(plan, force=run.force, log=echo, progress=not quiet)
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
