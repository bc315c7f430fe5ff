"""GPT-2 run configuration (torch-free, so the CLI can build its options without importing torch)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import FocuslabError

OPTIMIZERS = ("focus", "adamw", "signum")


@dataclass(frozen=True)
class TrainConfig:
    # model
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    block_size: int = 64
    vocab_size: int = 0  # 0: from the data's tokenizer
    dropout: float = 0.0
    bias: bool = True
    # data
    data: str = ""  # prepared token dir; "" = the embedded corpus (prepared into the run dir)
    # optimisation (names as nanoGPT's config keys)
    optimizer: str = "focus"
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_iters: int = 200
    eval_interval: int = 50
    eval_iters: int = 10
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 20
    lr_decay_iters: int = 0  # 0: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    gamma: float = 0.2
    grad_clip: float = 1.0
    # system
    device: str = "cpu"
    dtype: str = "auto"  # auto: bf16 on CUDA when supported, else fp16 on CUDA, fp32 on CPU
    compile: bool = False
    seed: int = 1337
    out: str = "results/gpt2"
    wandb: bool = False

    def model_config(self, vocab: int):
        from .model import GPTConfig

        return GPTConfig(self.n_layer, self.n_head, self.n_embd, self.block_size,
                         self.vocab_size or vocab, self.dropout, self.bias)

    @classmethod
    def keys(cls):
        return [f.name for f in fields(cls)]


def validate(cfg: TrainConfig, world: int = 1) -> None:
    """One-line errors for bad settings; ``world`` = number of processes (nodes x per node)."""
    def need(cond, msg):
        if not cond:
            raise FocuslabError(msg)

    need(cfg.optimizer in OPTIMIZERS, f"--optimizer: unknown optimizer {cfg.optimizer!r} (focus, adamw, signum)")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                "max_iters", "eval_interval", "eval_iters"):
        need(getattr(cfg, key) >= 1, f"--{key.replace('_', '-')}: must be >= 1, got {getattr(cfg, key)}")
    need(cfg.gradient_accumulation_steps % world == 0,
         f"--gradient-accumulation-steps {cfg.gradient_accumulation_steps} must be a multiple of the "
         f"world size {world} (nodes x gpus-per-node): the global batch stays the same whatever the world size")
    need(cfg.n_embd % cfg.n_head == 0, f"--n-embd {cfg.n_embd} must be a multiple of --n-head {cfg.n_head}")
    need(cfg.learning_rate > 0 and cfg.min_lr >= 0, "--learning-rate must be > 0 and --min-lr >= 0")
    need(0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, "--beta1/--beta2 must be in [0, 1)")
    need(cfg.weight_decay >= 0 and cfg.gamma >= 0 and cfg.grad_clip >= 0,
         "--weight-decay, --gamma and --grad-clip must be >= 0")
    need(0 <= cfg.dropout < 1, "--dropout must be in [0, 1)")
    need(cfg.warmup_iters >= 0 and cfg.lr_decay_iters >= 0, "--warmup-iters/--lr-decay-iters must be >= 0")
    need(cfg.device.split(":")[0] in ("cpu", "cuda", "auto"), f"--device: expected cpu, cuda or auto, got {cfg.device!r}")
    need(cfg.dtype in ("auto", "float32", "bfloat16", "float16"), "--dtype: expected auto, float32, bfloat16 or float16")


def lr_at(cfg: TrainConfig, it: int) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


