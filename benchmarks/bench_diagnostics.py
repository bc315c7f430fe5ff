"""sigma_equiv from a diagnostics sample (8 + M gradients) against many-batch measurements, on real
gradients: how far one measurement is from a 400-batch one, and how often its 95 % interval covers.

    python benchmarks/bench_diagnostics.py [--batch-sizes 8,32,128,512] [--steps 0,200] [--pool 1200]
    python benchmarks/bench_diagnostics.py --gpt2-run results/gpt2-mini-adamw [--pool 400]

MNIST: the paper's MLP on mnist-5k trained with torch.optim.AdamW (lr 1e-3, weight decay 1e-2) for
each of --steps at each batch size B; there, --pool minibatch gradients at batch B (BatchNorm: the
run's batch size), each batch drawn without replacement, independently.  The pool's first
pool - 400 gradients are cut into disjoint samples of J = 8 + M (M = 8 and 24, as
--diagnostics-reference); its last 400 give the 400-batch value (disjoint from the samples); all of
it gives the reference value the intervals are judged against.  A study summarises a batch size by
the median over its 8 measurements: "median of 8" takes that median over 8 samples (here of the same
parameters, which isolates the sampling error).

GPT-2: a finished run's checkpoint; samples as the training loop draws them (8 micro-batches of
batch/8 sequences, one reference batch and one more batch standing in for the step's gradient),
the noise at the run's batch; the reference value from --pool samples together.

Prints one line per (model, B, step, M); "stats ms" is noise_statistics alone on the sample.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch


class Stream:
    """sigma_equiv of every gradient added so far, streamed (memory: two vectors): sum n g and
    sum n g^2 per coordinate, the per-example variance by the same formula as
    focuslab.diagnostics (sum_j n_j (g_j - mean)^2 / (J - 1))."""

    def __init__(self):
        self.s = self.s2 = None
        self.n = self.nn = 0.0
        self.j = 0

    def add(self, g, n):
        g = g.double()
        if self.s is None:
            self.s, self.s2 = torch.zeros_like(g), torch.zeros_like(g)
        self.s += n * g
        self.s2 += n * g * g
        self.n += n
        self.j += 1

    def sigma(self, at):
        mean = self.s / self.n
        trace = float((self.s2 - self.n * mean * mean).sum()) / (self.j - 1)  # sum of per-example variances
        g2 = float((mean * mean).sum()) - trace / self.n
        return math.sqrt(trace / at / g2) if g2 > 0 else math.inf


def summarise(label, samples, truth, t400, seconds):
    est = np.array([s[0] for s in samples])
    ci = np.array([(s[1], s[2]) for s in samples])
    rel = est / t400 - 1
    cover = np.mean((ci[:, 0] <= truth) & (truth <= ci[:, 1]))
    k = len(est) // 8
    med8 = np.median(est[:8 * k].reshape(k, 8), axis=1) / t400 - 1 if k else np.array([])
    print(f"{label}: {len(est):3d} samples | vs 400: median {np.median(rel):+.3f}, |err| median {np.median(abs(rel)):.3f}, "
          f"within 10 % {np.mean(abs(rel) <= 0.1):.2f} | median of 8 vs 400: "
          f"{' '.join(f'{v:+.3f}' for v in med8) or '-'} | coverage of the reference {cover:.2f} "
          f"(upper end unbounded {np.mean(~np.isfinite(ci[:, 1])):.2f}) | stats {1e3 * np.median(seconds):.0f} ms",
          flush=True)


def mnist(args):
    import torch.nn.functional as F

    from focuslab.diagnostics import noise_statistics
    from focuslab.mnist.data import load_dataset
    from focuslab.mnist.model import BatchedMLP
    from focuslab.mnist.train import batch_gradients, batch_indices, initial_params, to_tensors

    data = to_tensors(load_dataset("mnist-5k", progress=False))
    x, y = data["x_train"], data["y_train"]
    P = args.pool
    for b in [int(v) for v in args.batch_sizes.split(",")]:
        for steps in [int(v) for v in args.steps.split(",")]:
            model = BatchedMLP([initial_params(0, 0, torch.float32)], 1)
            names = list(model.params)
            opt = torch.optim.AdamW([model.params[n] for n in names], lr=1e-3, weight_decay=1e-2)
            order = batch_indices(len(x), b, max(steps, 1), 0, 0)
            for t in range(steps):
                idx = order[t]
                loss = F.cross_entropy(model(x[idx].unsqueeze(0), train=True).reshape(-1, 10), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            gen = torch.Generator().manual_seed(7)
            t0 = time.perf_counter()
            rows = []
            for _ in range(0, P, 32):
                idx = [torch.randperm(len(x), generator=gen)[:b] for _ in range(32)]
                rows.append([r.reshape(32, -1).clone() for r in batch_gradients(model, x, y, idx)])
            flat = torch.cat([torch.cat(r, dim=1) for r in rows])[:P]  # (P, n)
            sizes = [p.numel() for p in model.params.values()]
            truth, last = Stream(), Stream()
            for j in range(P):
                truth.add(flat[j], b)
                if j >= P - 400:
                    last.add(flat[j], b)
            t_all, t400 = truth.sigma(b), last.sigma(b)
            print(f"mnist-5k batch {b}, step {steps}: {P} gradients ({time.perf_counter() - t0:.0f} s); "
                  f"sigma_equiv from all {t_all:.3f}, from the last 400 {t400:.3f}", flush=True)
            for M in (8, 24):
                J = 8 + M
                samples, seconds = [], []
                for s in range(0, P - 400 - J + 1, J):
                    stack = [c.reshape(J, 1, -1) for c in torch.split(flat[s:s + J], sizes, dim=1)]
                    t1 = time.perf_counter()
                    row = noise_statistics(stack, [b] * J, at_batch=b)[0]
                    seconds.append(time.perf_counter() - t1)
                    samples.append((row["sigma_equiv"], row["sigma_equiv_lo"], row["sigma_equiv_hi"]))
                summarise(f"  8+{M:<2d}", samples, t_all, t400, seconds)
            del flat, rows


def gpt2(args):
    from focuslab.diagnostics import noise_statistics
    from focuslab.gpt2.config import TrainConfig
    from focuslab.gpt2.data import TokenData
    from focuslab.gpt2.model import GPT

    run = Path(args.gpt2_run)
    meta = json.loads((run / "gpt2.json").read_text())
    cfg = TrainConfig(**{k: v for k, v in meta["config"].items() if k in TrainConfig.keys()})
    ckpt = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(cfg.model_config(meta["data_meta"]["vocab_size"]))
    model.load_state_dict(ckpt["model"])
    data = TokenData(Path(cfg.data) if cfg.data else run / "data")
    params = [p for p in model.parameters()]
    K, B = cfg.diagnostics_batches or 8, cfg.batch_size * cfg.gradient_accumulation_steps
    micro = max(1, cfg.batch_size // K)

    def grad(x, y):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(x, y)[1], params)])

    sizes = [micro] * K + [cfg.batch_size, B]
    truth, samples, seconds = Stream(), [], []
    t0 = time.perf_counter()
    for s in range(args.pool):
        rows = [grad(*data.batch("train", micro, cfg.block_size, 99, s, j, "cpu")) for j in range(K)]
        rows += [grad(*data.batch("train", n, cfg.block_size, 98, s, j, "cpu")) for j, n in enumerate(sizes[K:])]
        for g, n in zip(rows, sizes):
            truth.add(g, n)
        stack = [c.reshape(len(rows), 1, -1) for c in torch.split(torch.stack(rows), [p.numel() for p in params], dim=1)]
        t1 = time.perf_counter()
        row = noise_statistics(stack, sizes, at_batch=B)[0]
        seconds.append(time.perf_counter() - t1)
        samples.append((row["sigma_equiv"], row["sigma_equiv_lo"], row["sigma_equiv_hi"]))
    t_all = truth.sigma(B)
    # the 400-batch value: the last 40 samples' 400 gradients (disjoint from the first ones judged)
    last = Stream()
    for s in range(args.pool, args.pool + 40):
        for j in range(K):
            last.add(grad(*data.batch("train", micro, cfg.block_size, 99, s, j, "cpu")), micro)
        for j, n in enumerate(sizes[K:]):
            last.add(grad(*data.batch("train", n, cfg.block_size, 98, s, j, "cpu")), n)
    t400 = last.sigma(B)
    print(f"gpt2 {run.name} at iter {ckpt['iter']}: {args.pool} samples of {len(sizes)} gradients "
          f"({time.perf_counter() - t0:.0f} s); sigma_equiv from all {t_all:.3f}, from 400 more gradients {t400:.3f}")
    summarise(f"  {K}+1+1", samples, t_all, t400, seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8,32,128,512")
    ap.add_argument("--steps", default="0,200", help="AdamW steps before measuring (MNIST)")
    ap.add_argument("--pool", type=int, default=1200, help="MNIST: gradients per point; GPT-2: samples")
    ap.add_argument("--gpt2-run", default=None, help="a finished focuslab gpt2 run directory (its ckpt.pt)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if args.gpt2_run:
        gpt2(args)
    else:
        mnist(args)


if __name__ == "__main__":
    main()
