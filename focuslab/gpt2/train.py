"""The GPT-2 training loop (single process, or one rank of a torchrun/DDP job).

Global batch per iteration = batch_size x block_size x gradient_accumulation_steps tokens, the same
whatever the world size: each of W ranks runs gradient_accumulation_steps / W micro-steps (or, when
W does not divide them, a share of the iteration's sequences in smaller micro-batches:
config.layout), and sequence s of iteration it is always the same one (TokenData.sequences), so 1
process and W processes train on exactly the same data.  Checkpoints (model, optimizer, iteration, config) are
written atomically at each evaluation, the one before kept as ckpt.prev.pt (focuslab.gpt2.checkpoint);
a rerun continues exactly (data order is a function of the iteration, the LR schedule of the
iteration).  Diagnostics along the run: focuslab.gpt2.measure.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..devices import resolve
from ..errors import FocuslabError
from ..results import write_json
from .config import TrainConfig, lr_at, make_run_dir, optimizer_entry, validate, write_run_config
from .checkpoint import CKPT, _save_checkpoint, is_complete, read_checkpoint, run_state
from .measure import _Diagnostics
from .model import GPT

def make_optimizer(cfg: TrainConfig, model: GPT, device: str = "cpu"):
    """The run's optimizer (its own torch class) with its resolved settings.  One that needs a
    closure or a gradient with its graph (Hessian-vector products) is refused: the training loop
    computes one gradient per micro-step, under autocast, DDP and torch.compile."""
    entry = check_optimizer(cfg)
    return entry.build_torch(model.param_groups(cfg.weight_decay), cfg.learning_rate, device)


def check_optimizer(cfg: TrainConfig):
    """The run's optimizer entry, refused in one line if it needs more than one plain gradient."""
    entry = optimizer_entry(cfg)
    entry.check_one_gradient("--optimizer")
    return entry


def _data_name(cfg: TrainConfig) -> str:
    return f"--data {cfg.data}" if cfg.data else "the embedded corpus"


def check_data(cfg: TrainConfig, lengths: dict, vocab: int) -> None:
    """The data against the model: each split longer than a block, the vocabulary within the model's."""
    from .data import check_block_size

    check_block_size(lengths, cfg.block_size, _data_name(cfg))
    if cfg.vocab_size and vocab > cfg.vocab_size:
        raise FocuslabError(f"--vocab-size {cfg.vocab_size} is smaller than the tokenizer's {vocab}")


def token_data(cfg: TrainConfig, prepare_embedded: bool = True):
    """The run's TokenData, checked against the model before anything is built: the embedded corpus
    is prepared into RUN/data first when no --data is given (``prepare_embedded``)."""
    from .data import TokenData, embedded_corpus, prepare

    run = Path(cfg.out)
    data_dir = Path(cfg.data) if cfg.data else run / "data"
    if not cfg.data and prepare_embedded and not (data_dir / "meta.json").exists():
        make_run_dir(run)
        prepare(embedded_corpus(), data_dir, "bytes", source="pydoc_data.topics (CPython)")
    data = TokenData(data_dir)
    check_data(cfg, data.lengths, data.meta["vocab_size"])
    return data


def preflight(cfg: TrainConfig, world: int = 1, device: str | None = None, force: bool = False) -> None:
    """Everything a run refuses before it trains, checked without writing anything: the settings
    (``validate``), another run's config in its directory (``run_state``; not with ``force``), the
    dtype on ``device`` (None: the run's machine is not this one, as for --sbatch: checked only for
    --device cpu), the optimizer's calling convention, and the data against the model (block size,
    vocabulary; the embedded corpus as it would be prepared).  ``focuslab.gpt2.launch.plan_launch``
    calls it, so --dry-run and --sbatch refuse what the run refuses."""
    from .data import TokenData, embedded_lengths

    validate(cfg, world)
    if not force:
        run_state(Path(cfg.out), cfg)
    if device is not None or cfg.device == "cpu":
        amp_dtype(cfg, device or "cpu")
    check_optimizer(cfg)
    prepared = Path(cfg.data) if cfg.data else Path(cfg.out) / "data"
    if cfg.data or (prepared / "meta.json").exists():
        data = TokenData(prepared)
        check_data(cfg, data.lengths, data.meta["vocab_size"])
    else:
        check_data(cfg, embedded_lengths(), 256)  # the byte tokenizer prepare() uses for it


class Metrics:
    """metrics.csv + metrics.jsonl, appended by the master process; truncated to the resume point."""

    COLS = ("iter", "tokens", "lr", "train_loss", "val_loss", "step_time", "tokens_per_s", "mfu")

    def __init__(self, run: Path, start_iter: int):
        self.csv, self.jsonl = run / "metrics.csv", run / "metrics.jsonl"
        rows = []
        if start_iter and self.jsonl.exists():
            for line in self.jsonl.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a hard stop: its iteration is recomputed
                    continue
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


class _Stop(Exception):
    """Raised at a safe point after Ctrl-C: the parameters are those at the start of the iteration."""


class _Interrupt:
    """SIGINT during training.

    One process: stop at the next safe point (between micro-steps or evaluation batches, where the
    parameters are still those at the start of the iteration) and checkpoint there.  If no safe
    point comes within ``GRACE`` seconds (a torch.compile, a slow first batch of a big model), stop
    at once, keeping the last checkpoint.  A second Ctrl-C stops at once.  Under torchrun every rank
    stops at once: the ranks could agree on a safe point only through a collective."""

    GRACE = 1.0

    def __init__(self, immediate: bool = False):
        self.immediate = immediate
        self.requested = False
        self.previous = None
        self.timer = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        import _thread
        import threading

        if self.requested or self.immediate:
            raise KeyboardInterrupt
        self.requested = True
        self.timer = threading.Timer(self.GRACE, _thread.interrupt_main)
        self.timer.daemon = True
        self.timer.start()

    def check(self):
        if self.requested:
            self.acknowledge()
            raise _Stop

    def acknowledge(self):
        if self.timer is not None:
            self.timer.cancel()

    def __exit__(self, *exc):
        import signal

        self.acknowledge()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def bf16_native() -> bool:
    """Whether the CUDA device computes in bfloat16 natively (Ampere and newer).  torch's
    is_bf16_supported() also answers True where bf16 is only emulated (e.g. a V100), unless
    including_emulation=False (torch >= 2.4); older torch: judged by the compute capability."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return torch.cuda.get_device_capability() >= (8, 0)


def amp_dtype(cfg: TrainConfig, device: str) -> str:
    """The dtype the run computes in on ``device``: bf16 on CUDA where supported, fp16 otherwise,
    fp32 on the CPU; mixed precision asked of a CPU is refused."""
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = ("bfloat16" if bf16_native() else "float16") if device.startswith("cuda") else "float32"
    if dtype != "float32" and not device.startswith("cuda"):
        raise FocuslabError(f"--dtype {dtype}: mixed precision is for CUDA; use float32 on CPU")
    return dtype


def _amp(cfg: TrainConfig, device: str):
    """(dtype name, autocast context, GradScaler) for the device (``amp_dtype``)."""
    dtype = amp_dtype(cfg, device)
    amp = contextlib.nullcontext() if dtype == "float32" else torch.autocast("cuda", dtype=getattr(torch, dtype))
    return dtype, amp, torch.amp.GradScaler("cuda", enabled=dtype == "float16")


def train(cfg: TrainConfig, log=print, progress: bool = True, force: bool = False, stream=None) -> dict:
    """Train (this rank of) a run in ``cfg.out``, resuming from its checkpoint when there is one for
    the same config; a run that already reached ``max_iters`` returns at once
    (``already_complete``), or, asked for diagnostics it was trained without, measures them on its
    final checkpoint.  Under torchrun, RANK/WORLD_SIZE are set.  Ctrl-C (one process) checkpoints at
    the next safe point before stopping.  ``force``: start over past an unreadable checkpoint."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..runner import Progress
    from .config import layout

    ddp = int(os.environ.get("RANK", -1)) != -1
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if ddp else 1
    validate(cfg, world_size)
    share = layout(cfg, world_size)
    rank, world, local = 0, 1, 0
    device = resolve(cfg.device)
    run = Path(cfg.out)
    meta = run_state(run, cfg)
    if is_complete(meta, cfg):
        if cfg.diagnostics_every and not ddp:
            return diagnose_finished(cfg, meta, device, log)
        return {"already_complete": True, "final": meta.get("final"), "run": str(run), "iter": meta["iter"]}
    if ddp:
        import torch.distributed as dist

        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    master = rank == 0
    accum, micro = share.accum, share.micro_batch
    if master:
        make_run_dir(run)
        data = token_data(cfg)  # the master prepares the embedded corpus; the others wait for it
    if ddp:
        torch.distributed.barrier()
    if not master:
        data = token_data(cfg, prepare_embedded=False)
    dtype, amp, scaler = _amp(cfg, device)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    mcfg = cfg.model_config(data.meta["vocab_size"])
    model = GPT(mcfg).to(device)
    opt = make_optimizer(cfg, model, device)
    start, saved = 0, -1  # saved: the iteration of the checkpoint on disk (-1: none)
    ckpt_path = run / CKPT
    ckpt = read_checkpoint(run, device, force=force, repair=not ddp, log=log if master else (lambda *_: None))
    if ckpt is not None:  # same config (run_state checked the digest): continue where it stopped
        if ckpt.get("digest") != cfg.digest() or ckpt.get("model_config") != mcfg.model_dict():
            raise FocuslabError(f"{ckpt_path} was written by a different config; use --force to start over")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start = saved = ckpt["iter"]
        del ckpt
    raw = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local] if device.startswith("cuda") else None)
    tokens_per_iter = share.tokens

    def save(it):
        nonlocal saved
        _save_checkpoint({"model": raw.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                          "iter": it, "config": asdict(cfg), "digest": cfg.digest(),
                          "model_config": mcfg.model_dict()}, run)
        saved = it

    entry = optimizer_entry(cfg)

    def record(**fields):
        meta = {"kind": "gpt2", "config": asdict(cfg), "digest": cfg.digest(), "model_config": mcfg.model_dict(),
                "world_size": world, "data_meta": data.meta, "max_iters": cfg.max_iters,
                "optimizer_label": entry.label,
                **({"external": {entry.label: entry.record()}} if entry.record() else {}), **fields}
        write_json(meta, run / "gpt2.json")

    if master:
        if not ddp:  # the config as a file, so that `python -m focuslab.gpt2.worker RUN_CONFIG` (what
            write_run_config(cfg)  # --dry-run shows) is this very run
        log(f"gpt2: {raw.n_params() / 1e6:.2f}M parameters (non-embedding), optimizer {cfg.optimizer} "
            f"{cfg.optimizer_settings}, {tokens_per_iter} tokens/iter (world {world} x accum {accum} x batch "
            f"{micro} x block {cfg.block_size}), device {device}, {dtype}, data: "
            f"{data.meta.get('tokenizer')} tokens" + (f"; resuming at iter {start}" if start else ""))
        record(status="running", iter=start)
        metrics = Metrics(run, start)
        wandb_run = _wandb(cfg) if cfg.wandb else None
        bar = Progress(cfg.max_iters - start, "iters", f"gpt2 {run}", enabled=progress, bar=False, stream=stream)

    @torch.no_grad()
    def evaluate(it):
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = []
            for k in range(cfg.eval_iters):
                interrupt.check()
                x, y = data.batch(split, cfg.batch_size, cfg.block_size, cfg.seed + 1, it, k, device)
                with amp:
                    losses.append(raw(x, y)[1].item())
            out[split] = sum(losses) / len(losses)
        model.train()
        return out

    peak = _peak_flops(device)
    cuda = device.startswith("cuda")
    window = [0.0, 0]  # training seconds and iterations since the last logged row (evaluations excluded)
    t_start = time.time()
    last = {}
    diag = _Diagnostics(cfg, raw, data, opt, device=device, run=run, amp=amp) if (cfg.diagnostics_every and master) else None
    it = start
    with _Interrupt(immediate=ddp) as interrupt:
        try:
            for it in range(start, cfg.max_iters + 1):
                interrupt.check()
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
                    interrupt.check()
                    x, y = data.sequences("train", cfg.batch_size, cfg.block_size, cfg.seed, it,
                                          rank * share.per_process + k * micro, micro, device)
                    sync = (not ddp) or k == accum - 1
                    ctx = contextlib.nullcontext() if sync else model.no_sync()
                    with ctx, amp:
                        loss = model(x, y)[1] / accum
                    with ctx:
                        scaler.scale(loss).backward()
                    total += loss.detach()
                interrupt.check()
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
                    logged = (it + 1) % max(1, cfg.eval_interval // 5) == 0
                    if logged and cuda:
                        torch.cuda.synchronize(device)  # the GPU's queued work counts in this window
                    window[0] += time.time() - t0
                    window[1] += 1
                    if logged:  # step time: the mean over the window, measured on the host after a sync
                        dt = window[0] / window[1]
                        row = {"iter": it + 1, "tokens": (it + 1) * tokens_per_iter, "lr": lr,
                               "train_loss": total.item(), "val_loss": None, "step_time": round(dt, 5),
                               "tokens_per_s": round(tokens_per_iter / dt, 1),
                               "mfu": (raw.flops_per_token() * tokens_per_iter / dt / (peak * world)) if peak else None}
                        metrics.log(row)
                        window[:] = [0.0, 0]
        except _Stop:  # Ctrl-C at a safe point: the parameters are those at the start of ``it``
            if master:
                if it > saved and it > 0:
                    save(it)
                if saved >= 0:
                    record(status="interrupted", iter=saved)
            raise KeyboardInterrupt from None
        except KeyboardInterrupt:  # stopped at once: the last checkpoint stands
            if master and saved >= 0:
                record(status="interrupted", iter=saved)
            raise
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
    if ddp:  # every rank here before any tears down: rank 1 no longer leaves while rank 0 evaluates and saves
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"final": last, "params": raw.n_params(), "run": str(run), "iter": cfg.max_iters}


def diagnose_finished(cfg: TrainConfig, meta: dict, device: str, log=print) -> dict:
    """--diagnostics-every asked of a finished run: measured on its final checkpoint (one row, at its
    last iteration), since the parameters along the way are gone; a run that already has that row
    is left as it is."""
    import pandas as pd

    run = Path(cfg.out)
    it = int(meta["iter"])
    path = run / "diagnostics.parquet"
    info = {"already_complete": True, "final": meta.get("final"), "run": str(run), "iter": it}
    if path.exists():
        try:
            steps = set(pd.read_parquet(path)["step"])
        except Exception:
            steps = set()
        if it in steps:
            return {**info, "diagnostics": "present", "diagnostics_rows": len(steps)}
    data = token_data(cfg)
    dtype, amp, scaler = _amp(cfg, device)
    mcfg = cfg.model_config(data.meta["vocab_size"])
    ckpt = read_checkpoint(run, device, log=log)
    if ckpt is None or ckpt.get("iter") != it:
        raise FocuslabError(f"--diagnostics-every: {run} is a finished run but holds no checkpoint of its last "
                            f"iteration ({it}) to measure; --force retrains it with diagnostics")
    torch.manual_seed(cfg.seed)
    model = GPT(mcfg).to(device)
    model.load_state_dict(ckpt["model"])
    opt = make_optimizer(cfg, model, device)
    opt.load_state_dict(ckpt["optimizer"])
    del ckpt
    diag = _Diagnostics(cfg, model, data, opt, device=device, run=run, amp=amp)
    diag.measure(it, lr_at(cfg, it), float(meta.get("wall_seconds") or 0.0))
    meta = {**meta, "diagnostics_on_checkpoint": {"step": it, "seconds": round(diag.seconds, 3)}}
    write_json(meta, run / "gpt2.json")
    log(f"gpt2: {run} finished ({it} iterations) without diagnostics along training: measured on its final "
        f"checkpoint (step {it}, {diag.seconds:.1f} s) into {path}; for every {cfg.diagnostics_every} steps from 0, "
        "retrain with --force")
    return {**info, "diagnostics": "measured on checkpoint", "diagnostics_rows": len(diag.rows)}


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
