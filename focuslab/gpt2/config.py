"""GPT-2 configuration, torch-free and written once: every field with its default, help text and
choices, declared once with focuslab.options.setting.  ``GPTConfig`` holds the model's fields;
``TrainConfig`` adds training and system fields by inheritance; ``focuslab gpt2`` generates one flag
per field (cli/options.py); TOML presets (configs/gpt2-*.toml, one per model) and saved run configs
use the field names (``learning_rate``, whose flag is ``--lr`` as in every other command).

The optimizer is ``optimizer``, any spec of focuslab's grammar (focuslab.optimizers.spec): a
built-in (``adamw``, ``signum``, ``focus:gamma=0.4``) or a torch class (``torch.optim.NAdam``,
``pytorch_optimizer.SOAP``, ``path/to/my_opt.py:MyOpt``).  Its settings come from the optimizer's
defaults, then the preset's ``[gpt2.optimizer_settings.NAME]`` table (the paper's values for that
model), then ``--opt-param`` and the inline settings.  The run keeps the spec that rebuilds the
optimizer (``optimizer``) and its resolved settings (``optimizer_settings``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..config import StudyConfig, layered, load_toml
from ..errors import FocuslabError
from ..options import setting
from ..values import jsonable, parse_bool

DEFAULT_PRESET = "gpt2-nano"


@dataclass(frozen=True)
class GPTConfig:
    """The model (nanoGPT's names): the paper's GPT-2 small is 12 x 12 x 768, context 1024."""

    n_layer: int = setting(12, "transformer blocks")
    n_head: int = setting(12, "attention heads per block")
    n_embd: int = setting(768, "embedding width (a multiple of --n-head)")
    block_size: int = setting(1024, "context length in tokens")
    vocab_size: int = setting(50304, "vocabulary size (0: the data's tokenizer; GPT-2's 50257 is padded to 50304)")
    dropout: float = setting(0.0, "dropout probability")
    bias: bool = setting(True, "biases in Linear and LayerNorm layers")

    def model_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(GPTConfig)}


@dataclass(frozen=True)
class TrainConfig(GPTConfig, StudyConfig):
    # data
    data: str = setting("", "prepared token directory (`focuslab gpt2 prepare`)", metavar="DIR",
                        shown="CPython's pydoc topics as bytes, prepared into the run directory")
    # optimisation (nanoGPT's names)
    optimizer: str = setting("focus", "a built-in (adamw, signum, focus, sgd, lion) or a torch optimizer "
                                      "(torch.optim.NAdam, pytorch_optimizer.SOAP, file.py:Class), settings after "
                                      "colons (focus:gamma=0.4); the preset gives the paper's values per optimizer",
                             metavar="SPEC")
    # the [gpt2.optimizer_settings.NAME] tables and --opt-param; the run keeps the resolved settings
    optimizer_settings: dict = setting(None, "a setting of the run's optimizer where its spec does not set it, e.g. "
                                             "focus.gamma=0.4 (repeatable; a config file's "
                                             "[gpt2.optimizer_settings.NAME] table)",
                                       metavar="OPT.SETTING=VALUE", multiple=True, name="--opt-param")
    optimizer_origin: str = setting("", "which code an external optimizer is (distribution and version, or the "
                                        "file's SHA-256)", cli=False)
    batch_size: int = setting(12, "sequences per micro-step (several processes may split it further: "
                                  "see --gradient-accumulation-steps)")
    gradient_accumulation_steps: int = setting(1, "micro-steps per iteration, summed over all processes: N processes "
                                                  "run 1/N of them each (nanoGPT's rule), or split the micro-batch "
                                                  "when N does not divide them; tokens per iteration stay the same")
    max_iters: int = setting(600000, "training iterations")
    eval_interval: int = setting(1000, "evaluate (and checkpoint) every N iterations")
    eval_iters: int = setting(200, "batches per evaluation")
    # the config key is nanoGPT's (saved run configs and presets keep it); the flag is every command's --lr
    learning_rate: float = setting(6e-4, "peak learning rate", metavar="LR", name="--lr",
                                   deprecated=("--learning-rate",))
    min_lr: float = setting(6e-5, "learning rate at the end of the cosine decay", metavar="LR")
    warmup_iters: int = setting(2000, "linear warmup iterations")
    lr_decay_iters: int = setting(0, "cosine decay length (0: --max-iters); set it to extend a run later")
    weight_decay: float = setting(0.1, "decoupled weight decay on 2-D Linear weights")
    grad_clip: float = setting(1.0, "gradient-norm clipping (0: off)")
    # system (the flag --device is focuslab.options.Common's, as in every command)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto (CUDA when present)", metavar="DEVICE", cli=False)
    dtype: str = setting("auto", "auto: bf16 on CUDA when supported (else fp16), fp32 on CPU",
                         choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = setting(False, "torch.compile the model", negatable=True)
    seed: int = setting(1337, "seed of the initial weights and of the data order")
    # diagnostics (focuslab.diagnostics); they never change the training itself
    diagnostics_every: int = setting(0, "measure gradient noise, noise scale and sharpness at iteration 0 and every "
                                        "N iterations into diagnostics.parquet (0: off)")
    diagnostics_batches: int = setting(8, "K: diagnostic micro-batches of batch-size/K sequences (one iteration's "
                                          "worth); the noise is reported at the run's batch")
    diagnostics_reference: int = setting(1, "further batches (of --batch-size sequences) in the noise sample (mean "
                                            "and variance), besides the K micro-batches and the training step's own "
                                            "gradient")
    diagnostics_preconditioned: bool = setting(False, "also measure the optimizer's preconditioned lambda_max "
                                                      "(Adam's sqrt(v); a second Lanczos solve, ~1.7x a "
                                                      "measurement's cost)", negatable=True)
    out: str = setting("results/gpt2", "run directory", cli=False)  # the flag is focuslab.gpt2.launch.Gpt2Run's
    wandb: bool = setting(False, "also log to Weights & Biases", negatable=True)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def model_config(self, vocab: int):
        """The model's GPTConfig; vocab_size 0 takes the tokenizer's ``vocab``."""
        model = self.model_dict()
        model["vocab_size"] = self.vocab_size or vocab
        return GPTConfig(**model)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def entries(self) -> tuple:
        """The run's one optimizer (StudyConfig's ``entries``)."""
        return (optimizer_entry(self),)

    def digest_dict(self) -> dict:
        """What makes two runs the same experiment (so a rerun resumes): everything but the run
        directory, logging and compilation -- and the length, when the schedule does not depend on
        it (--lr-decay-iters set), so such a run can be extended by raising --max-iters."""
        d = self.to_dict()
        if not d["optimizer_origin"]:  # built-ins: keep the digests runs had before this field
            d.pop("optimizer_origin")
        for key in ("out", "wandb", "compile", "diagnostics_every", "diagnostics_batches", "diagnostics_reference",
                    "diagnostics_preconditioned"):
            d.pop(key)
        if self.lr_decay_iters:
            d.pop("max_iters")
        return d


MOVED = ("beta1", "beta2", "gamma")  # were training keys; now optimizer settings


def build_train_config(preset: str | None = None, file_values: dict | None = None,
                       flags: dict | None = None, opt_params: dict | None = None, *,
                       out: str | None = None) -> TrainConfig:
    """Preset (default gpt2-nano) < file < flags, then the optimizer resolved: its defaults < the
    preset's and file's [gpt2.optimizer_settings.NAME] < --opt-param < inline settings."""
    from ..optimizers import parse_list

    layers = [dict(load_toml(preset or DEFAULT_PRESET, "gpt2")), dict(file_values or {}), dict(flags or {})]
    tables: dict = {}
    for layer in layers:
        for key in MOVED:
            if key in layer:
                raise FocuslabError(f"gpt2: {key} is an optimizer setting now: --opt-param NAME.{key}=VALUE "
                                    f"or [gpt2.optimizer_settings.NAME] {key} = VALUE")
        table = layer.pop("optimizer_settings", None) or {}
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise FocuslabError("[gpt2.optimizer_settings] must hold one table per optimizer, "
                                "e.g. [gpt2.optimizer_settings.adamw]")
        for opt, params in table.items():
            tables.setdefault(opt, {}).update(params)
    known = set(TrainConfig.keys()) - {"optimizer_settings", "optimizer_origin"}
    merged = layered(known, *layers, what="gpt2 config")
    spec = str(merged.get("optimizer", "focus"))
    entries = parse_list(spec, opt_params, where="--optimizer", base_params=tables)
    if len(entries) != 1:
        raise FocuslabError(f"--optimizer: one optimizer per run, got {spec!r}")
    entry = entries[0]
    merged["optimizer"] = entry.spec
    merged["optimizer_settings"] = jsonable(entry.settings)
    merged["optimizer_origin"] = entry.origin
    for f in fields(TrainConfig):  # bias = "no" in a config file is refused, never read as true
        if f.type in (bool, "bool") and f.name in merged:
            merged[f.name] = parse_bool(merged[f.name], f"gpt2 config {f.name}")
    if out is not None:
        merged["out"] = str(out)
    return TrainConfig(**merged)


def run_config(config: str | None = None, flags: dict | None = None, opt_params: dict | None = None, *,
               device: str | None = None, out: str | Path | None = None) -> TrainConfig:
    """``focuslab gpt2``'s run: ``config`` (a preset is the base of the run's config; a file goes over
    gpt2-nano), its flags (TrainConfig's fields), ``--opt-param`` and ``--device``, built once; its
    ``out`` the given run directory or the one the library names: results/gpt2-PRESET-OPTIMIZER
    (a file NAME.toml: results/gpt2-NAME-OPTIMIZER) for the preset as it is with that optimizer at
    its settings there, plus -DIGEST8 when anything else was changed."""
    from ..config import names_preset
    from ..results import default_out

    flags = dict(flags or {})
    if device is not None:
        flags["device"] = device
    preset = config if config and names_preset(config) else None
    file_values = load_toml(config, "gpt2") if config and preset is None else None
    cfg = build_train_config(preset, file_values, flags, opt_params)
    if out is None:
        entry = optimizer_entry(cfg)
        plain = build_train_config(preset, file_values, {"optimizer": entry.bare()})
        base = Path(config).stem if config else DEFAULT_PRESET
        base = base if base.startswith("gpt2") else f"gpt2-{base}"
        out = default_out(f"{base}-{entry.slug}", cfg.digest(), plain.digest())
    return replace(cfg, out=str(out))


def optimizer_entry(cfg: TrainConfig):
    """The run's optimizer (focuslab.optimizers.OptimizerEntry), rebuilt from its spec and settings."""
    from ..optimizers import parse_one

    entry = parse_one(cfg.optimizer, cfg.optimizer_settings or {}, "--optimizer")
    entry.check_origin(cfg.optimizer_origin, "--optimizer")
    return entry


def validate(cfg: TrainConfig, world: int = 1) -> None:
    """One-line errors for bad settings; ``world`` = number of processes (nodes x per node)."""
    def need(cond, msg):
        if not cond:
            raise FocuslabError(msg)

    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                "max_iters", "eval_interval", "eval_iters"):
        need(isinstance(getattr(cfg, key), int) and getattr(cfg, key) >= 1,
             f"--{key.replace('_', '-')}: must be an integer >= 1, got {getattr(cfg, key)!r}")
    need(cfg.n_embd % cfg.n_head == 0, f"--n-embd {cfg.n_embd} must be a multiple of --n-head {cfg.n_head}")
    need(cfg.learning_rate > 0 and cfg.min_lr >= 0, "--lr must be > 0 and --min-lr >= 0")
    need(cfg.min_lr <= cfg.learning_rate, f"--min-lr {cfg.min_lr:g} is above --lr {cfg.learning_rate:g}: "
         "the cosine decay would climb to it; use --min-lr <= --lr (nanoGPT takes a tenth)")
    need(cfg.weight_decay >= 0 and cfg.grad_clip >= 0, "--weight-decay and --grad-clip must be >= 0")
    need(0 <= cfg.dropout < 1, "--dropout must be in [0, 1)")
    need(cfg.warmup_iters >= 0 and cfg.lr_decay_iters >= 0, "--warmup-iters/--lr-decay-iters must be >= 0")
    need(cfg.device.split(":")[0] in ("cpu", "cuda", "auto"), f"--device: expected cpu, cuda, cuda:N or auto, "
         f"got {cfg.device!r}")
    need(cfg.dtype in ("auto", "float32", "bfloat16", "float16"), "--dtype: expected auto, float32, bfloat16 or float16")
    need(isinstance(cfg.diagnostics_reference, int) and cfg.diagnostics_reference >= 0,
         f"--diagnostics-reference: must be an integer >= 0, got {cfg.diagnostics_reference!r}")
    need(cfg.diagnostics_every >= 0, f"--diagnostics-every: must be >= 0, got {cfg.diagnostics_every}")
    need(cfg.diagnostics_batches >= 2, f"--diagnostics-batches: must be >= 2 (8 or more recommended), got "
         f"{cfg.diagnostics_batches}")
    layout(cfg, world)


@dataclass(frozen=True)
class Layout:
    """How ``world`` processes share an iteration of ``sequences`` sequences: each runs ``accum``
    micro-steps of ``micro_batch`` sequences; process r takes sequences r * per_process onward."""

    world: int
    accum: int
    micro_batch: int
    sequences: int
    tokens: int

    @property
    def per_process(self) -> int:
        return self.accum * self.micro_batch

    def describe(self, cfg: "TrainConfig") -> str:
        """One line for the user (empty on one process: nothing was changed)."""
        if self.world == 1:
            return ""
        total = (f"{self.sequences} sequences per iteration (--batch-size {cfg.batch_size} x "
                 f"--gradient-accumulation-steps {cfg.gradient_accumulation_steps})")
        each = f"{self.accum} micro-step{'s' * (self.accum != 1)} of {self.micro_batch} sequences"
        how = (f"{cfg.gradient_accumulation_steps} / {self.world}, nanoGPT's rule" if self.micro_batch == cfg.batch_size
               else "the micro-batch split, as the accumulation steps do not divide among them")
        return (f"gpt2: {self.world} processes share {total}: each runs {each} ({how}); "
                f"{self.tokens} tokens per iteration, as on one process")


def layout(cfg: TrainConfig, world: int) -> Layout:
    """The per-process share of an iteration, keeping its tokens whatever the world size.

    nanoGPT divides the accumulation steps by the world size; when they do not divide, the
    iteration's sequences are split instead, into the fewest micro-steps of at most --batch-size
    sequences each.  Impossible only when the world size does not divide the iteration's sequences."""
    world = max(1, int(world))
    total = cfg.batch_size * cfg.gradient_accumulation_steps
    tokens = total * cfg.block_size
    if cfg.gradient_accumulation_steps % world == 0:
        return Layout(world, cfg.gradient_accumulation_steps // world, cfg.batch_size, total, tokens)
    if total % world:
        raise FocuslabError(f"{world} processes cannot share the {total} sequences of an iteration (--batch-size "
                            f"{cfg.batch_size} x --gradient-accumulation-steps {cfg.gradient_accumulation_steps}) "
                            f"evenly: make --gradient-accumulation-steps a multiple of {world}, or use a number of "
                            f"processes (--nodes x --gpus-per-node) that divides {total}")
    share = total // world
    accum = next(a for a in range(-(-share // cfg.batch_size), share + 1) if share % a == 0)
    return Layout(world, accum, share // accum, total, tokens)


def lr_at(cfg: TrainConfig, it: int) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


RUN_CONFIG = "run-config.json"  # the full config of a run, beside its checkpoints
#: How a run whose gpt2.json is damaged recovers: its checkpoint carries the config's digest.
RECOVER_META = ("delete it and rerun the `focuslab gpt2` command that wrote it (the same flags and --out {run}): it "
                "resumes from {run}/ckpt.pt, whose config is checked")


def make_run_dir(run) -> None:
    """The run directory (and its parents), or a one-line error naming --out."""
    from ..results import make_dir

    make_dir(run)


def write_run_config(cfg: "TrainConfig") -> str:
    """The full config as RUN/run-config.json (what `python -m focuslab.gpt2.worker FILE` trains)."""
    import json
    from pathlib import Path

    from ..results import atomic_write_bytes

    run = Path(cfg.out)
    make_run_dir(run)
    path = run / RUN_CONFIG
    atomic_write_bytes(path, json.dumps(asdict(cfg), indent=2).encode())  # a refused write: one line
    return str(path.resolve())
