"""One optimizer step over a GPT-2-small-sized parameter set on CPU: FOCUS, Signum vs AdamW.

    python benchmarks/bench_optim.py [--repeats 7] [--threads N] [--all]

Parameters have GPT-2 small's real shapes (124M: token/position embeddings, 12 blocks of
LayerNorm / attention / MLP weights and biases).  Each optimizer (and each alternative code path) gets its own copy of the parameters
and gradients; steps are timed round-robin (adamw, focus, signum, adamw, ...) so machine noise
falls on all three alike, and the median is reported with the ratio to AdamW(foreach=True).
State memory is counted from the optimizer state tensors, in parameter-sized buffers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from focuslab.optim import FOCUS, Signum


def gpt2_small_shapes(n_layer=12, n_embd=768, vocab=50304, block=1024):
    shapes = [(vocab, n_embd), (block, n_embd)]
    for _ in range(n_layer):
        shapes += [(n_embd,), (n_embd,), (3 * n_embd, n_embd), (3 * n_embd,), (n_embd, n_embd), (n_embd,),
                   (n_embd,), (n_embd,), (4 * n_embd, n_embd), (4 * n_embd,), (n_embd, 4 * n_embd), (n_embd,)]
    return shapes + [(n_embd,), (n_embd,)]


def make_params(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g) * 1e-3
        params.append(p)
    return params


def state_buffers(opt, params):
    numel = sum(p.numel() for p in params)
    state = sum(v.numel() for st in opt.state.values() for v in st.values()
                if torch.is_tensor(v) and v.dim() > 0)
    return state / numel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--all", action="store_true", help="also AdamW's loop and our foreach paths")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = gpt2_small_shapes()
    factories = {
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True),
        "focus": lambda ps: FOCUS(ps, lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1),
        "signum": lambda ps: Signum(ps, lr=6e-4, beta=0.9, weight_decay=0.1),
    }
    if args.all:  # the other code paths, for reference
        factories.update({
        "adamw-loop": lambda ps: torch.optim.AdamW(ps, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                                   foreach=False),
        "focus-foreach": lambda ps: FOCUS(ps, lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1,
                                          foreach=True),
        "signum-foreach": lambda ps: Signum(ps, lr=6e-4, beta=0.9, weight_decay=0.1, foreach=True),
        })
    params = {name: make_params(shapes, 0) for name in factories}
    opts = {name: f(params[name]) for name, f in factories.items()}
    n = sum(p.numel() for p in params["adamw"])
    for opt in opts.values():  # first step allocates state: not timed
        opt.step()
    times = {name: [] for name in opts}
    for _ in range(args.repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["adamw"])
    print(f"{n / 1e6:.1f}M parameters in {len(shapes)} tensors, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} steps")
    print(f"{'optimizer':<16}{'step ms':>10}{'vs AdamW':>10}{'state buffers/param':>22}")
    for name, opt in opts.items():
        med = statistics.median(times[name])
        print(f"{name:<16}{med * 1e3:>10.1f}{med / base:>9.2f}x{state_buffers(opt, params[name]):>22.2f}")
    print("adamw = AdamW(foreach=True); focus/signum = their defaults (per-tensor loop on CPU)")


if __name__ == "__main__":
    main()
