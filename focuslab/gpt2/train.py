"""The GPT-2 training loop (single process, or one rank of a torchrun/DDP job).

Global batch per iteration = batch_size x block_size x gradient_accumulation_steps tokens, the same
whatever the world size: each of W ranks runs gradient_accumulation_steps / W micro-steps, and the
micro-step j of iteration it always draws the same batch (TokenData.batch), so 1 process and W
processes train on exactly the same data.  Checkpoints (model, optimizer, iteration, config) are
written atomically at each evaluation; --resume continues exactly (data order is a function of the
iteration, the LR schedule of the iteration).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import FocuslabError
from ..results import atomic_write_bytes, write_json
from .config import TrainConfig, lr_at, optimizer_entry, validate
from .model import GPT

def make_optimizer(cfg: TrainConfig, model: GPT, device: str = "cpu"):
    """The run's optimizer (its own torch class) with its resolved settings.  One that needs a
    closure or a gradient with its graph (Hessian-vector products) is refused: the training loop
    computes one gradient per micro-step, under autocast, DDP and torch.compile."""
    from ..optimizers.probe import calling_convention

    entry = optimizer_entry(cfg)
    if entry.kind != "builtin":
        closure, graph = calling_convention(lambda groups: entry.build_torch(groups, 1e-3), entry.label)
        if closure or graph:
            raise FocuslabError(f"--optimizer {entry.label}: needs {'a closure' if closure else 'Hessian-vector products'}"
                                "; GPT-2 training takes one plain gradient per micro-step (MNIST and the toy support it)")
    return entry.build_torch(model.param_groups(cfg.weight_decay), cfg.learning_rate, device)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise FocuslabError(f"--device {device}: no CUDA device is available (torch {torch.__version__} is {build}); "
                            "use --device cpu, or auto to take CUDA when present")
    return device


def run_state(run: Path, cfg: TrainConfig) -> dict | None:
    """What a run directory holds for ``cfg``: None (nothing), or gpt2.json's record; raises a
    one-line error when it holds a run with a different config."""
    meta_path = Path(run) / "gpt2.json"
    if not meta_path.exists():
        return None
    from ..results import read_json

    meta = read_json(meta_path)
    if meta.get("digest") != cfg.digest():
        raise FocuslabError(f"--out {run} holds a GPT-2 run with a different config (digest {meta.get('digest')} "
                            f"vs {cfg.digest()}); use another --out, or --force to start it over")
    return meta


def _atomic_save(obj, path: Path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class Metrics:
    """metrics.csv + metrics.jsonl, appended by the master process; truncated to the resume point."""

    COLS = ("iter", "tokens", "lr", "train_loss", "val_loss", "step_time", "tokens_per_s", "mfu")

    def __init__(self, run: Path, start_iter: int):
        self.csv, self.jsonl = run / "metrics.csv", run / "metrics.jsonl"
        rows = []
        if start_iter and self.jsonl.exists():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            # keep what precedes the checkpoint; its evaluation row is logged again on resume
            rows = [r for r in rows if r["iter"] < start_iter or (r["iter"] == start_iter and r["val_loss"] is None)]
        self.csv.write_text(",".join(self.COLS) + "\n" + "".join(self._line(r) for r in rows))
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def _line(self, row):
        return ",".join("" if row.get(c) is None else str(row[c]) for c in self.COLS) + "\n"

    def log(self, row: dict):
        with open(self.csv, "a") as f:
            f.write(self._line(row))
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")


class _Interrupt:
    """SIGINT during training: finish the current iteration, checkpoint, then stop (single process)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def train(cfg: TrainConfig, log=print, progress: bool = True) -> dict:
    """Train (this rank of) a run in ``cfg.out``, resuming from its checkpoint when there is one for
    the same config; a run that already reached ``max_iters`` returns at once
    (``already_complete``).  Under torchrun, RANK/WORLD_SIZE are set.  Ctrl-C (one process)
    checkpoints at the next iteration boundary before stopping."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..runner import Progress
    from .data import TokenData, embedded_corpus, prepare

    ddp = int(os.environ.get("RANK", -1)) != -1
    validate(cfg, int(os.environ.get("WORLD_SIZE", 1)) if ddp else 1)
    rank, world, local = 0, 1, 0
    device = resolve_device(cfg.device)
    run = Path(cfg.out)
    meta = run_state(run, cfg)
    if meta and meta.get("status") == "complete" and meta.get("iter", -1) >= cfg.max_iters:
        return {"already_complete": True, "final": meta.get("final"), "run": str(run), "iter": meta["iter"]}
    if ddp:
        import torch.distributed as dist

        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
    master = rank == 0
    accum = cfg.gradient_accumulation_steps // world
    if master:
        run.mkdir(parents=True, exist_ok=True)
    data_dir = Path(cfg.data) if cfg.data else run / "data"
    if not cfg.data and master and not (data_dir / "meta.json").exists():
        prepare(embedded_corpus(), data_dir, "bytes", source="pydoc_data.topics (CPython)")
    if ddp:
        torch.distributed.barrier()
    data = TokenData(data_dir)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device.startswith("cuda") else "float32"
    if dtype != "float32" and not device.startswith("cuda"):
        raise FocuslabError(f"--dtype {dtype}: mixed precision is for CUDA; use float32 on CPU")
    amp = contextlib.nullcontext() if dtype == "float32" else \
        torch.autocast("cuda", dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16")

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    mcfg = cfg.model_config(data.meta["vocab_size"])
    if data.meta["vocab_size"] > mcfg.vocab_size:
        raise FocuslabError(f"--vocab-size {mcfg.vocab_size} is smaller than the tokenizer's {data.meta['vocab_size']}")
    model = GPT(mcfg).to(device)
    opt = make_optimizer(cfg, model, device)
    start = 0
    ckpt_path = run / "ckpt.pt"
    if ckpt_path.exists():  # same config (run_state checked the digest): continue where it stopped
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("digest") != cfg.digest() or ckpt["model_config"] != mcfg.model_dict():
            raise FocuslabError(f"{ckpt_path} was written by a different config; use --force to start over")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start = ckpt["iter"]
    raw = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local] if device.startswith("cuda") else None)
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps

    def save(it):
        _atomic_save({"model": raw.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                      "iter": it, "config": asdict(cfg), "digest": cfg.digest(),
                      "model_config": mcfg.model_dict()}, ckpt_path)

    entry = optimizer_entry(cfg)

    def record(**fields):
        meta = {"kind": "gpt2", "config": asdict(cfg), "digest": cfg.digest(), "model_config": mcfg.model_dict(),
                "world_size": world, "data_meta": data.meta, "max_iters": cfg.max_iters,
                "optimizer_label": entry.label,
                **({"external": {entry.label: entry.record()}} if entry.kind != "builtin" else {}), **fields}
        write_json(meta, run / "gpt2.json")

    if master:
        log(f"gpt2: {raw.n_params() / 1e6:.2f}M parameters (non-embedding), optimizer {cfg.optimizer} "
            f"{cfg.optimizer_settings}, {tokens_per_iter} tokens/iter (world {world} x accum {accum} x batch "
            f"{cfg.batch_size} x block {cfg.block_size}), device {device}, {dtype}, data: "
            f"{data.meta.get('tokenizer')} tokens" + (f"; resuming at iter {start}" if start else ""))
        record(status="running", iter=start)
        metrics = Metrics(run, start)
        wandb_run = _wandb(cfg) if cfg.wandb else None
        bar = Progress(cfg.max_iters - start, "iters", f"gpt2 {run}", enabled=progress, bar=False)

    @torch.no_grad()
    def evaluate(it):
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = []
            for k in range(cfg.eval_iters):
                x, y = data.batch(split, cfg.batch_size, cfg.block_size, cfg.seed + 1, it, k, device)
                with amp:
                    losses.append(raw(x, y)[1].item())
            out[split] = sum(losses) / len(losses)
        model.train()
        return out

    peak = _peak_flops(device)
    t_start = time.time()
    last = {}
    diag = _Diagnostics(cfg, raw, data, opt, device, run, amp) if (cfg.diagnostics_every and master) else None
    with _Interrupt() as interrupt:
        for it in range(start, cfg.max_iters + 1):
            if interrupt.requested and not ddp:
                if master:
                    save(it)
                    record(status="interrupted", iter=it)
                raise KeyboardInterrupt
            lr = lr_at(cfg, it)
            for group in opt.param_groups:
                group["lr"] = lr
            if diag is not None and it == cfg.max_iters and it % cfg.diagnostics_every == 0:
                diag.measure(it, lr, time.time() - t_start)  # no step follows: its gradient is computed
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                losses = evaluate(it) if master else None
                if master:
                    row = {"iter": it, "tokens": it * tokens_per_iter, "lr": lr, "train_loss": losses["train"],
                           "val_loss": losses["val"], "step_time": None, "tokens_per_s": None, "mfu": None}
                    metrics.log(row)
                    if wandb_run:
                        wandb_run.log(row)
                    log(f"iter {it}/{cfg.max_iters}: train {losses['train']:.4f}, val {losses['val']:.4f}, "
                        f"lr {lr:.2e}" + (f", ETA {bar.eta()}" if it > start else ""))
                    last = row
                    if it > start or start == 0:
                        save(it)
                        record(status="running", iter=it, final=row)
            if it == cfg.max_iters:
                break
            t0 = time.time()
            total = torch.zeros((), device=device)  # read back only when logged: no per-step sync
            for k in range(accum):
                x, y = data.batch("train", cfg.batch_size, cfg.block_size, cfg.seed, it, rank * accum + k, device)
                sync = (not ddp) or k == accum - 1
                ctx = contextlib.nullcontext() if sync else model.no_sync()
                with ctx, amp:
                    loss = model(x, y)[1] / accum
                with ctx:
                    scaler.scale(loss).backward()
                total += loss.detach()
            if diag is not None and it % cfg.diagnostics_every == 0:  # the step's gradient joins the reference
                spent = diag.measure(it, lr, time.time() - t_start, [p.grad for p in raw.parameters()],
                                     scaler.get_scale() if scaler.is_enabled() else 1.0)
                t0 += spent  # step_time stays the training's own
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if master:
                bar.update(1)
                if (it + 1) % max(1, cfg.eval_interval // 5) == 0:
                    dt = time.time() - t0
                    row = {"iter": it + 1, "tokens": (it + 1) * tokens_per_iter, "lr": lr,
                           "train_loss": total.item(), "val_loss": None, "step_time": round(dt, 5),
                           "tokens_per_s": round(tokens_per_iter / dt, 1),
                           "mfu": (raw.flops_per_token() * tokens_per_iter / dt / peak) if peak else None}
                    metrics.log(row)
    if master:
        bar.close()
        extra = {}
        if diag is not None:
            wall = time.time() - t_start
            extra["diagnostics_cost_fraction"] = round(diag.seconds / max(1e-9, wall - diag.seconds), 4)
            log(f"diagnostics: {len(diag.rows)} measurements, {diag.seconds:.1f} s = "
                f"{100 * extra['diagnostics_cost_fraction']:.1f}% of the training time")
        record(status="complete", iter=cfg.max_iters, final=last, wall_seconds=round(time.time() - t_start, 2),
               **extra)
    if ddp:
        torch.distributed.destroy_process_group()
    return {"final": last, "params": raw.n_params(), "run": str(run), "iter": cfg.max_iters}


class _Diagnostics:
    """focuslab.diagnostics at iteration 0 and every N, on the unwrapped model and fixed batches.

    The noise sample is J = K + M + 1 gradients: K micro-batches of batch_size/K sequences (together
    one iteration's compute), M = ``diagnostics_reference`` further batches of batch_size sequences,
    and the training step's own gradient (read after its backward, before clipping and the optimizer
    step: free; computed from the same batches at the last iteration, where no step follows, or
    when a float16 step overflowed).  All J feed the mean and the per-example variance (GPT-2's
    sequences are independent examples, so gradients of different sizes combine, and the noise is
    reported at the run's batch of batch_size x gradient_accumulation_steps sequences).
    lambda_max on one micro-batch by double-backward Hessian-vector products (math attention
    backend) warm-started from the last measurement, Lanczos stopped once the top Ritz pair's
    residual is below 1 % of it (focuslab.diagnostics.top_eigenvalue), and for AdamW also the
    preconditioned lambda_max (warm-started the same way).  The first batch's gradient is read from
    the Hessian's graph (computed with the math attention backend: the same gradient to rounding).
    The torch RNG is saved and restored, so the training is bit-identical with and without
    diagnostics."""

    def __init__(self, cfg, model, data, opt, device, run, amp):
        self.cfg, self.model, self.opt, self.run, self.amp = cfg, model, opt, Path(run), amp
        self.data, self.device = data, device
        k = cfg.diagnostics_batches
        micro = max(1, cfg.batch_size // k)
        self.micro = micro
        self.batches = [data.batch("train", micro, cfg.block_size, cfg.seed + 7, 0, j, device) for j in range(k)]
        self.reference = [data.batch("train", cfg.batch_size, cfg.block_size, cfg.seed + 8, 0, j, device)
                          for j in range(cfg.diagnostics_reference)]
        names = [n for n, p in model.named_parameters()]
        self.groups = {}
        for i, n in enumerate(names):
            key = "embeddings" if n.startswith(("wte", "wpe")) else (
                "block" + n.split(".")[1] if n.startswith("blocks.") else "final_ln")
            self.groups.setdefault(key, []).append(i)
        self.rows, self.seconds, self.eigvec, self.eigvec_p = [], 0.0, None, None
        path = self.run / "diagnostics.parquet"
        if path.exists():  # a resumed run keeps the rows measured before
            import pandas as pd

            self.rows = pd.read_parquet(path).to_dict("records")

    def loss(self, batch):
        x, y = batch
        with self.amp:
            return self.model(x, y)[1].float()

    def hessian_loss(self, batch):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return self.loss(batch)

    def step_gradient(self, it: int):
        """The mean gradient over iteration ``it``'s training batches (all ranks' together), as the
        training step would compute it."""
        from ..diagnostics import mean_gradient

        cfg = self.cfg
        batches = [self.data.batch("train", cfg.batch_size, cfg.block_size, cfg.seed, it, k, self.device)
                   for k in range(cfg.gradient_accumulation_steps)]
        return mean_gradient([p for p in self.model.parameters()], self.loss, batches)

    def measure(self, it: int, lr: float, elapsed: float, step_gradient=None, grad_scale: float = 1.0) -> float:
        """One row at iteration ``it``; ``step_gradient``: the training step's gradient at these
        parameters (p.grad after backward, scaled by ``grad_scale``).  Returns the seconds spent."""
        import pandas as pd

        from ..diagnostics import measure, optimizer_preconditioner
        from ..results import write_parquet

        if any(r["step"] == it for r in self.rows):
            return 0.0
        t0 = time.perf_counter()
        cpu_rng = torch.get_rng_state()
        if step_gradient is not None:
            step_gradient = [g.detach().double() / grad_scale for g in step_gradient]
            if not all(bool(torch.isfinite(g).all()) for g in step_gradient):
                step_gradient = None  # an overflowed float16 step
        if step_gradient is None:
            step_gradient = self.step_gradient(it)
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        pre = optimizer_preconditioner(self.opt, list(self.model.parameters())) if it > 0 else None
        # J = K micro-batches + the reference batches + the step's gradient, all in the mean and the
        # variance; the Hessian by double backward through the math attention backend (the fused
        # kernels have none)
        out = measure(self.model, self.loss, self.batches, reference=self.reference, batch_size=self.micro,
                      reference_sizes=[self.cfg.batch_size] * len(self.reference),
                      scale_to=self.cfg.batch_size * self.cfg.gradient_accumulation_steps, groups=self.groups,
                      eigvec=self.eigvec, eigvec_preconditioned=self.eigvec_p if pre is not None else None,
                      hessian_iters=20 if self.eigvec is None else 10, hessian_tol=1e-2, preconditioner=pre,
                      hessian_loss_fn=self.hessian_loss, reference_gradient=step_gradient,
                      reference_gradient_size=self.cfg.batch_size * self.cfg.gradient_accumulation_steps)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        self.eigvec, self.eigvec_p = out["eigvec"], out.get("eigvec_preconditioned")
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.rows.append({"step": it, "tokens": it * self.cfg.batch_size * self.cfg.block_size *
                          self.cfg.gradient_accumulation_steps, "lr": lr, "optimizer": self.cfg.optimizer,
                          **out["per_model"][0], "seconds": seconds, "elapsed": elapsed})
        write_parquet(pd.DataFrame(self.rows), self.run / "diagnostics.parquet")
        return seconds


def _peak_flops(device: str) -> float | None:
    """bf16 dense peak of the GPU for MFU (None on CPU or an unknown GPU)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("V100", 125e12), ("L40", 181e12)):
        if key in name:
            return flops
    return None


def _wandb(cfg):
    try:
        import wandb
    except ImportError:
        raise FocuslabError("--wandb: the wandb package is not installed") from None
    return wandb.init(project="focuslab-gpt2", config=asdict(cfg))
