"""Training for the batch-size study: all lrs x replicates of one (optimizer, batch size) at once.

Model k = (lr index i, replicate r), k = i * R + r.  A replicate fixes the initial weights and the
order of minibatches (both from seeds derived from (seed, r)), so every lr of a replicate starts
from the same point and sees the same data; the one-at-a-time trainer uses the very same draws,
which is what makes the two comparable (tests check they agree to float tolerance).

One limit of that agreement: sign-based optimizers (Signum, FOCUS) are discontinuous at 0, and a
gradient coordinate that is mathematically zero can come out as exactly 0 in one summation order
and as a ~1e-22 residue in another (BatchNorm over very small batches makes such cancellations
common).  There the two trainers may take different +-lr steps; neither is more correct.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model import FOLD_MIN_BATCH, BatchedMLP, MLP, init_params
from .steppers import StateView, Steppers, StepFailed

#: Diagnostics compute their minibatch gradients in one pass over stacked model copies when the
#: batch is below FOLD_MIN_BATCH and there are at most this many copies: one model, 32 batches of
#: 2 / 8 / 64 took 28 / 31 / 97 ms stacked against 61 / 101 / 168 ms one by one (512: 645 vs 423);
#: 12 models x 32 batches were slower stacked (memory traffic of 384 copies).
STACK_MAX = 64

#: An MNIST unit checkpoints its training state this often (seconds), so Ctrl-C loses at most this.
CHECKPOINT_SECONDS = 20.0

def resolve_optimizer(spec):
    """An optimizer spec ('adamw', 'focus:gamma=0.4', 'pytorch_optimizer.AdaBelief', ...) or an
    OptimizerEntry -> the entry (focuslab.optimizers)."""
    if hasattr(spec, "build_torch"):
        return spec
    from ..optimizers import parse_one

    return parse_one(spec)


def _kind(entry) -> str:
    """The diagnostics' name for the rule: "adamw" when Adam's second moments precondition it."""
    return "adamw" if entry.preconditioner == "adam" else entry.label


def _seed(seed: int, replicate: int, stream: int) -> int:
    return (seed * 1_000_003 + replicate * 7919 + stream) % (2 ** 63)


def batch_indices(n_train: int, batch_size: int, steps: int, seed: int, replicate: int) -> torch.Tensor:
    """(steps, b) indices: shuffled epochs cut into full batches (a partial last batch is dropped);
    a batch size >= the training set uses the whole (shuffled) set each step."""
    g = torch.Generator().manual_seed(_seed(seed, replicate, 1))
    b = min(batch_size, n_train)
    per_epoch = n_train // b
    out, have = [], 0
    while have < steps:
        perm = torch.randperm(n_train, generator=g)[: per_epoch * b].view(per_epoch, b)
        out.append(perm)
        have += per_epoch
    return torch.cat(out)[:steps]


def initial_params(seed: int, replicate: int, dtype) -> dict:
    return init_params(torch.Generator().manual_seed(_seed(seed, replicate, 0)), dtype=dtype)


def evaluate(forward, x_test: torch.Tensor, y_test: torch.Tensor, K: int, chunk: int = 2048):
    """Per-model mean test loss and accuracy; ``forward(x (b, 784)) -> logits (K, b, 10)``."""
    loss = torch.zeros(K, dtype=torch.float64, device=x_test.device)
    correct = torch.zeros(K, dtype=torch.float64, device=x_test.device)
    with torch.no_grad():
        for s in range(0, len(x_test), chunk):
            xb, yb = x_test[s:s + chunk], y_test[s:s + chunk]
            logits = forward(xb)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(K), reduction="none")
            loss += ce.view(K, -1).double().sum(1)
            correct += (logits.argmax(-1) == yb).double().sum(1)
    return (loss / len(x_test)).cpu().numpy(), (correct / len(x_test)).cpu().numpy()


def train_batched(data: dict, optimizer: str, batch_size: int, lrs, replicates: int, steps: int, *,
                  seed: int = 0, weight_decay: float = 1e-2, device="cpu", dtype=torch.float32,
                  eval_every: int = 0, on_step=None, diagnostics_every: int = 0, diagnostics_batches: int = 8,
                  diagnostics_reference: int = 24, diagnostics_lrs: str = "best", checkpoint=None,
                  checkpoint_key: str = "", checkpoint_seconds: float | None = None) -> dict:
    """Train len(lrs) * replicates models together; returns per-model arrays of shape (n_lr, R)
    (test_loss, test_accuracy, train_loss, diverged) and, with eval_every, test curves.
    ``on_step(t)`` is called after every step (progress reporting).  With ``diagnostics_every`` N,
    replicate 0's model is measured at step 0 and every N steps (focuslab.diagnostics): at every lr
    (``diagnostics_lrs="all"``), or at the lr that ends with the lowest mean test loss over the
    replicates (``"best"``, the lr the study's best.parquet picks): then replicate 0's parameters at
    every lr are kept at each of those steps and the winner's are measured once training is over.
    Rows in out["diagnostics"], their cost (copies included) in out["diagnostics_seconds"];
    training is unchanged.

    With ``checkpoint`` (a path), the whole training state (parameters, optimizer states, BatchNorm
    statistics, torch's random state, curves and diagnostics so far) is written there atomically
    every ``checkpoint_seconds`` (default ``checkpoint_interval()``); a call that finds a checkpoint
    with the same ``checkpoint_key`` continues from it and ends with exactly the numbers of an
    uninterrupted run (tested), so an interrupted unit loses at most ``checkpoint_seconds`` of work.
    A checkpoint that cannot be written (a full disk) is said once on stderr and training goes on.
    The caller removes the file once the unit's results are stored.

    An optimizer stepped under vmap (focuslab.mnist.steppers, "vmapped") whose step raises (its copies
    disagree on a branch, say) may have left in-place updates half applied: the unit then trains
    again from the start, one model per instance, from the same random state (``out["stepping"]``
    says how the models were stepped, and why)."""
    if checkpoint_seconds is None:
        checkpoint_seconds = checkpoint_interval()
    args = dict(locals())
    rng = _get_rng(device)
    try:
        return _train_batched(**args)
    except StepFailed as err:
        _set_rng(rng, device)
        out = _train_batched(**{**args, "checkpoint_key": f"{checkpoint_key}/per model"}, avoid_vmapped=True)
        out["stepping"] = f"{out['stepping']} ({err})"
        return out


def _train_batched(*, data, optimizer, batch_size, lrs, replicates, steps, seed, weight_decay, device, dtype, eval_every,
                   on_step, diagnostics_every, diagnostics_batches, diagnostics_reference, diagnostics_lrs, checkpoint,
                   checkpoint_key, checkpoint_seconds, avoid_vmapped: bool = False) -> dict:
    entry = resolve_optimizer(optimizer)
    kind, opt = _kind(entry), dict(entry.settings)
    x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    lrs = [float(v) for v in lrs]
    n_lr, R = len(lrs), replicates
    K = n_lr * R
    inits = [initial_params(seed, r, dtype) for r in range(R)]
    model = BatchedMLP([inits[k % R] for k in range(K)], R, device=device)
    order = torch.stack([batch_indices(len(x_train), batch_size, steps, seed, r) for r in range(R)], 1)
    steppers = Steppers(entry, model, lrs, R, weight_decay, device=device, avoid_vmapped=avoid_vmapped)
    state = StateView(steppers)
    curves = []
    train_loss = torch.zeros(K, dtype=torch.float64, device=device)

    def eval_forward(x):
        return model(x.unsqueeze(0).expand(R, -1, -1), train=False)

    diag = _Diagnostics(model, data, batch_size=batch_size, lrs=lrs, R=R, seed=seed, kind=kind, opt=opt, state=state,
                        k=diagnostics_batches, reference=diagnostics_reference, device=device,
                        which=diagnostics_lrs) if diagnostics_every else None
    start, began, before = 0, time.perf_counter(), 0.0
    saved = _load_checkpoint(checkpoint, checkpoint_key, device)
    if saved is not None:
        start, before = saved["t"], saved["seconds"]
        steppers.load_state_dict(saved["steppers"])
        with torch.no_grad():
            for name, value in saved["running"].items():
                model.running[name].copy_(value)
        train_loss, curves = saved["train_loss"].to(device), saved["curves"]
        _set_rng(saved["rng"], device)
        if diag:
            diag.__dict__.update(saved["diagnostics"])
        if on_step is not None:
            on_step(start)
    elif diag:
        diag.at(0)
    last, unsaved = began, None
    for t in range(start + 1, steps + 1):
        idx = order[t - 1].to(device)  # (R, b)
        xb = x_train[idx]  # (R, b, 784): the models of a replicate share its minibatch
        yb = y_train[idx].repeat(n_lr, 1)  # (K, b), model k = i * R + r
        logits = model(xb, train=True)
        per_model = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                    reduction="none").view(K, -1).mean(1)
        grads = torch.autograd.grad(per_model.sum(), steppers.leaves(), create_graph=steppers.graph)
        train_loss = per_model.detach()  # stays on the device: no per-step sync
        steppers.step(grads)
        if eval_every and (t % eval_every == 0 or t == steps):
            curves.append((t, *evaluate(eval_forward, x_test, y_test, K)))
        if diag and t % diagnostics_every == 0:
            diag.at(t)
        if on_step is not None:
            on_step(t)
        if checkpoint is not None and t < steps and time.perf_counter() - last >= checkpoint_seconds:
            failed = _save_checkpoint(checkpoint, {
                "key": checkpoint_key, "t": t, "seconds": before + time.perf_counter() - began,
                "steppers": steppers.state_dict(),
                "running": {n: r.detach().clone() for n, r in model.running.items()},
                "train_loss": train_loss.detach().cpu(), "curves": curves, "rng": _get_rng(device),
                "diagnostics": {k: getattr(diag, k) for k in _Diagnostics.STATE} if diag else None})
            if failed is not None and unsaved is None:
                print(f"focuslab: warning: cannot write the in-flight checkpoint {checkpoint} ({failed.strerror}); "
                      "the unit trains on without it, so an interrupt would lose its work since the last one",
                      file=sys.stderr, flush=True)
            unsaved = failed
            last = time.perf_counter()
    test_loss, test_acc = evaluate(eval_forward, x_test, y_test, K)
    train_loss = train_loss.double().cpu()
    diverged = ~np.isfinite(test_loss) | ~np.isfinite(train_loss.numpy())
    shape = (n_lr, R)
    if diag:
        diag.finish(np.where(diverged, np.inf, test_loss).reshape(shape))
    return {"test_loss": np.where(diverged, np.inf, test_loss).reshape(shape),
            "test_accuracy": test_acc.reshape(shape), "train_loss": train_loss.numpy().reshape(shape),
            "diverged": diverged.reshape(shape), "curves": curves,
            "diagnostics": diag.rows if diag else [], "diagnostics_seconds": diag.seconds if diag else 0.0,
            "seconds": before + time.perf_counter() - began, "resumed_at": start,
            "stepping": f"{steppers.mode}: {steppers.why}"}


def batch_gradients(model: BatchedMLP, x: torch.Tensor, y: torch.Tensor, indices) -> list:
    """Each of ``model``'s K models' minibatch gradients on every batch of ``indices`` (one index
    tensor per batch, all of one size) in one pass over stacked copies: one tensor per parameter,
    shape (len(indices), K, *per-model shape), in the order of model.params."""
    n = len(indices)
    rep = model.repeated(n)
    logits = rep(torch.stack([x[i] for i in indices]), train=True, track=False)  # (K n, b, 10)
    labels = torch.stack([y[i] for i in indices]).repeat(model.K, 1)  # row k n + j: batch j
    per = F.cross_entropy(logits.reshape(-1, 10), labels.reshape(-1), reduction="none").view(rep.K, -1)
    grads = torch.autograd.grad(per.mean(1).sum(), list(rep.params.values()))
    return [g.view(model.K, n, *g.shape[1:]).transpose(0, 1) for g in grads]


class _Diagnostics:
    """Noise and sharpness of replicate 0's model, at every lr or at the best one, on copies
    (training is untouched).  Every gradient is a minibatch gradient at the run's batch size b,
    because BatchNorm couples a batch's examples: the mean of b-sample minibatch gradients is not
    the full-set gradient (at b=2 BatchNorm maps each feature to +-1), so neither smaller
    micro-batches nor the whole training set can stand in.  K fixed batches and ``reference``
    further fixed batches, all of b examples, give the mean and the variance together (J = K +
    reference gradients; per-coordinate ratios resolved up to ~sqrt(J)).  Batches are drawn from
    their own stream, each without replacement, independently of each other.  lambda_max on the first batch, warm-started from the previous
    measurement (for AdamW also the preconditioned one).

    ``which="best"``: the best lr is known only at the end, so each measurement step keeps a copy
    of replicate 0's parameters at every lr (and AdamW's second moments), n_lr x 2 x 167k floats;
    ``finish`` measures the winner's copies in step order.  ``"all"`` measures every lr at once."""

    #: What a unit's checkpoint keeps of the diagnostics (the rest is rebuilt from the arguments).
    STATE = ("rows", "seconds", "eigvec", "eigvec_p", "snapshots")

    def __init__(self, model, data, *, batch_size, lrs, R, seed, kind, opt, state, k, reference, device, which):
        if which not in ("best", "all"):
            raise ValueError(f"diagnostics_lrs must be 'best' or 'all', not {which!r}")
        self.model, self.lrs, self.R, self.kind, self.opt, self.state = model, list(lrs), R, kind, opt, state
        self.which = which
        self.x, self.y = data["x_train"], data["y_train"]
        n = len(self.x)
        g = torch.Generator().manual_seed(_seed(seed, 0, 2))  # its own stream: training's draws are untouched
        b = min(batch_size, n)
        drawn = [torch.randperm(n, generator=g)[:b].to(device) for _ in range(k + reference)]
        self.batches, self.reference = drawn[:k], drawn[k:]
        self.b = b
        self.models = [i * R for i in range(len(self.lrs))]  # replicate 0 at every lr
        self.rows, self.seconds, self.eigvec, self.eigvec_p = [], 0.0, None, None
        self.snapshots = []
        self.names = list(model.params)

    def at(self, step: int):
        """Step ``step`` is to be measured: now (every lr) or later (a copy for ``finish``)."""
        import time

        t0 = time.perf_counter()
        sub = self.model.subset(self.models)
        pre = None
        if self.kind == "adamw" and step > 0:  # Adam's diagonal preconditioner sqrt(v_hat) + eps
            from ..diagnostics import adam_preconditioner

            index = torch.as_tensor(self.models)
            pre = [adam_preconditioner(self.state[n][1][index], step, self.opt["beta2"], self.opt["eps"])
                   for n in self.names]
        self.seconds += time.perf_counter() - t0
        if self.which == "all":
            self._measure(step, sub, pre, list(range(len(self.lrs))))
        else:
            self.snapshots.append((step, sub, pre))

    def finish(self, test_loss: np.ndarray):
        """Measure the kept copies at the lr with the lowest mean test loss (n_lr, R; +inf diverged)."""
        if self.which != "best":
            return
        with np.errstate(invalid="ignore"):
            best = int(np.argmin(np.nan_to_num(test_loss.mean(1), nan=np.inf)))
        for step, sub, pre in self.snapshots:
            one = sub.subset([best])
            self._measure(step, one, None if pre is None else [p[best:best + 1] for p in pre], [best])
        self.snapshots = []

    def _measure(self, step: int, sub, pre, lr_index: list[int]):
        import time

        from ..diagnostics import measure

        t0 = time.perf_counter()
        params = [sub.params[n] for n in self.names]

        def loss(index):
            xb = self.x[index].unsqueeze(0)  # (1, b, 784): one replicate's batch for every model
            logits = sub(xb, train=True, track=False)
            return F.cross_entropy(logits.reshape(-1, 10), self.y[index].repeat(sub.K),
                                   reduction="none").view(sub.K, -1).mean(1)

        stack = self.b < FOLD_MIN_BATCH and sub.K * (len(self.batches) + len(self.reference)) <= STACK_MAX
        out = measure(params, loss, self.batches, reference=self.reference, batch_size=self.b,
                      batch_gradients=(lambda idx: batch_gradients(sub, self.x, self.y, idx)) if stack else None,
                      models=sub.K, eigvec=self.eigvec,
                      eigvec_preconditioned=self.eigvec_p if pre is not None else None,
                      hessian_iters=30 if self.eigvec is None else 10, hessian_tol=1e-2, preconditioner=pre,
                      groups={f"layer{i}": [j for j, n in enumerate(self.names) if n.split(".")[0][2:] == str(i)]
                              for i in range(sub.depth)})
        self.eigvec, self.eigvec_p = out["eigvec"], out.get("eigvec_preconditioned")
        for i, row in zip(lr_index, out["per_model"]):
            self.rows.append({"step": step, "lr": self.lrs[i], "replicate": 0, **row})
        self.seconds += time.perf_counter() - t0


def _get_rng(device) -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if str(device).startswith("cuda"):
        rng["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return rng


def _set_rng(rng: dict, device) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(rng["cuda"], torch.device(device))


def _save_checkpoint(path, state: dict):
    """Atomically (a failed write leaves the previous checkpoint); best effort: a unit that cannot
    checkpoint (a full disk) still trains, it only loses the protection.  Returns the WriteError of
    a failed write (a full disk: torch's RuntimeError is read as its OSError), else None."""
    from ..results import WriteError, atomic_write_with

    try:
        atomic_write_with(Path(path), lambda fh: torch.save(state, fh))
    except WriteError as err:
        return err
    return None


def checkpoint_interval() -> float:
    """Seconds between a unit's in-flight checkpoints: $FOCUSLAB_CHECKPOINT_EVERY, else
    CHECKPOINT_SECONDS (what Ctrl-C or kill -9 may lose of a unit)."""
    import os

    try:
        return max(0.0, float(os.environ.get("FOCUSLAB_CHECKPOINT_EVERY", CHECKPOINT_SECONDS)))
    except ValueError:
        return CHECKPOINT_SECONDS


def _load_checkpoint(path, key: str, device):
    """The checkpoint at ``path`` if it is this very unit's and reads, else None (a damaged or
    foreign one is ignored: the unit starts over)."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)  # our own file, our own classes
    except Exception:  # noqa: BLE001 -- any unreadable file means: start the unit over
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def train_one(data: dict, optimizer: str, batch_size: int, lr: float, replicate: int, steps: int, *,
              seed: int = 0, weight_decay: float = 1e-2, device="cpu", dtype=torch.float32) -> dict:
    """One model with nn.Module + the real torch optimizer, on the same draws as train_batched."""
    entry = resolve_optimizer(optimizer)
    model = MLP(initial_params(seed, replicate, dtype)).to(device)
    opt = entry.build_torch(model.param_groups(weight_decay), lr, "cpu")
    order = batch_indices(len(data["x_train"]), batch_size, steps, seed, replicate)
    for t in range(steps):
        idx = order[t].to(device)
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx])
        loss.backward(create_graph=_probe_graph(entry, weight_decay))
        opt.step()
    model.eval()
    test_loss, test_acc = evaluate(lambda x: model(x).unsqueeze(0), data["x_test"], data["y_test"], 1)
    return {"test_loss": float(test_loss[0]), "test_accuracy": float(test_acc[0]),
            "train_loss": loss.item(), "model": model}


def _probe_graph(entry, weight_decay: float) -> bool:
    return entry.stacking(weight_decay)[0]


def to_tensors(arrays: dict, device="cpu", dtype=torch.float32) -> dict:
    """uint8 images -> one (N, 784) tensor in [0, 1] per split (the whole set lives in memory)."""
    def images(a):
        return torch.from_numpy(np.array(a, dtype=np.uint8)).reshape(len(a), -1).to(device=device, dtype=dtype) / 255

    return {"x_train": images(arrays["train_images"]),
            "y_train": torch.from_numpy(np.asarray(arrays["train_labels"], dtype=np.int64)).to(device),
            "x_test": images(arrays["test_images"]),
            "y_test": torch.from_numpy(np.asarray(arrays["test_labels"], dtype=np.int64)).to(device)}
