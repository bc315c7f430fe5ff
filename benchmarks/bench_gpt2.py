"""GPT-2 training throughput with AdamW vs FOCUS vs Signum, measured in one run.

    python benchmarks/bench_gpt2.py [--preset gpt2-nano] [--iters 30]

CPU: the nano preset (override with --preset gpt2-mini).  Where a GPU is present it also times
gpt2-small (bf16, batch 12 x 1024) and reports tokens/s and MFU against the GPU's bf16 peak.
Each optimizer (with the preset's settings for it) trains the same model on the same batches; iterations are interleaved
(adamw, focus, signum, adamw, ...) so machine noise falls on all three alike; medians reported.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def bench(preset: str, iters: int, device: str, dtype):
    from focuslab.gpt2.config import build_train_config
    from focuslab.gpt2.data import TokenData, embedded_corpus, prepare
    from focuslab.gpt2.model import GPT
    from focuslab.gpt2.train import make_optimizer
    import tempfile

    tmp = tempfile.mkdtemp()
    prepare(embedded_corpus(), tmp, "bytes")
    data = TokenData(tmp)
    runs = {}
    for opt in ("adamw", "focus", "signum"):
        cfg = build_train_config(preset, flags={"optimizer": opt, "device": device, "compile": False})
        torch.manual_seed(0)
        model = GPT(cfg.model_config(50304 if cfg.n_embd >= 768 else 256)).to(device)
        runs[opt] = (cfg, model, make_optimizer(cfg, model, device))
    amp = torch.autocast("cuda", dtype=dtype) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = {k: [] for k in runs}
    opt_times = {k: [] for k in runs}
    for it in range(iters + 3):
        for name, (cfg, model, opt) in runs.items():
            x, y = data.batch("train", cfg.batch_size, cfg.block_size, 0, it, 0, device)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with amp:
                loss = model(x, y)[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if device == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if it >= 3:  # warm-up excluded
                times[name].append(t2 - t0)
                opt_times[name].append(t2 - t1)
    cfg0, model0, _ = runs["adamw"]
    tokens = cfg0.batch_size * cfg0.block_size
    base = statistics.median(times["adamw"])
    print(f"{model0.n_params() / 1e6:.2f}M non-embedding params, {tokens} tokens/iter, {device}, "
          f"{torch.get_num_threads()} threads, median of {iters} iterations")
    print(f"{'optimizer':<10}{'tokens/s':>12}{'iter ms':>10}{'opt step ms':>13}{'vs AdamW':>10}" +
          ("{:>8}".format("MFU") if device == "cuda" else ""))
    from focuslab.gpt2.train import _peak_flops
    peak = _peak_flops(device)
    for name in runs:
        med = statistics.median(times[name])
        line = (f"{name:<10}{tokens / med:>12.0f}{med * 1e3:>10.1f}{statistics.median(opt_times[name]) * 1e3:>13.2f}"
                f"{med / base:>9.2f}x")
        if device == "cuda" and peak:
            line += f"{runs[name][1].flops_per_token() * tokens / med / peak:>8.1%}"
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-nano")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    bench(args.preset, args.iters, "cpu", None)
    if torch.cuda.is_available():
        bench("gpt2-small", args.iters, "cuda", torch.bfloat16)


if __name__ == "__main__":
    main()
