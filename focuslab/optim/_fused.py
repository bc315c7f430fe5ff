"""Fused CPU steps of Signum and FOCUS: the whole update of a tensor in ONE pass over its memory
(numba, one thread), where the per-op path (focuslab.optim._sign) makes four to eight passes --
the step is bound by memory traffic, as torch's fused AdamW shows.

Bit for bit the per-op path's results.  Each element goes through the very operations torch's
vectorised CPU kernels perform, in their order and rounding: ``lerp_`` with a weight below 0.5 is
fma(w, end - self, self) (at or above 0.5, fma(w - 1, end - self, end)), ``add_(x, alpha=a)`` is
fma(a, x, self) with ``a`` rounded to the tensor's dtype first, a division by a Python number
divides by that number rounded to the dtype, ``sign`` maps NaN and -0 to +0.  That holds where
torch's kernels are built with FMA (the AVX2 and AVX-512 kernels: ``usable()`` checks torch's CPU
capability); elsewhere the per-op path runs.  tests/test_stacked_steps.py compares the two paths
bit for bit over many steps, in float32 and float64, with and without per-row learning rates.

Per-row learning rates (stacked copies, ``lr_rows``): the tensor is K rows of L elements and row k
uses the factors of lr_k, each (lr_k * c) computed in float64 and rounded to the dtype, as
``add_(alpha=lr_k * c)`` would round it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

DTYPES = (torch.float32, torch.float64)


def usable(tensors) -> bool:
    """Whether the fused step reproduces the per-op path here: CPU tensors of one float32/float64
    dtype, contiguous, and torch's vectorised kernels built with FMA."""
    t0 = tensors[0]
    if t0.dtype not in DTYPES or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return False
    return all(t.device.type == "cpu" and t.dtype == t0.dtype and t.is_contiguous() for t in tensors)


@lru_cache(maxsize=None)
def _kernels():
    """The numba kernels, compiled on first use (numba is imported only when a fused step runs)."""
    from llvmlite import ir
    from numba import njit
    from numba.extending import intrinsic

    @intrinsic
    def fma(typingctx, a, b, c):
        """llvm.fma: a * b + c rounded once (what torch's Vectorized fmadd computes)."""
        def codegen(context, builder, signature, args):
            ty = context.get_value_type(signature.return_type)
            fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
            return builder.call(fn, list(args))
        return a(a, a, a), codegen

    @njit(inline="always")
    def lerp(start, end, coef, small):
        """torch's lerp: with weight w < 0.5 fma(w, end - start, start), else fma(w - 1, end - start,
        end); ``coef`` is w or w - 1, ``small`` which (decided once: a select, so the loop vectorises)."""
        return fma(coef, end - start, start if small else end)

    @njit(inline="always")
    def sign(x, one, zero):
        """torch.sign: +-1, and 0 for +-0 and NaN."""
        return (one if x > zero else zero) - (one if x < zero else zero)

    @njit(cache=True, nogil=True)
    def signum(theta, g, m, L, a_wd, a_one, c1, small1, has_wd, g_sign, one):
        zero = one - one
        for k in range(a_one.shape[0]):  # rows: stacked copies, each with its own lr
            awd, a1 = a_wd[k], a_one[k]
            t, gk, mk = theta[k * L:(k + 1) * L], g[k * L:(k + 1) * L], m[k * L:(k + 1) * L]
            for j in range(L):
                mj = lerp(mk[j], gk[j] * g_sign, c1, small1)  # g_sign -1: maximize (an exact negation)
                mk[j] = mj
                th = t[j]
                decayed = fma(awd, th, th)
                th = decayed if has_wd else th
                t[j] = fma(a1, sign(mj, one, zero), th)

    @njit(cache=True, nogil=True)
    def focus(theta, g, m, avg, L, a_wd, a_gamma, a_one, c1, small1, c2, small2, c, has_wd, average, g_sign, one):
        zero = one - one
        for k in range(a_one.shape[0]):
            awd, ag, a1 = a_wd[k], a_gamma[k], a_one[k]
            t, gk = theta[k * L:(k + 1) * L], g[k * L:(k + 1) * L]
            mk, vk = m[k * L:(k + 1) * L], avg[k * L:(k + 1) * L]
            for j in range(L):
                mj = lerp(mk[j], gk[j] * g_sign, c1, small1)
                mk[j] = mj
                th = t[j]
                aj = lerp(vk[j], th, c2, small2)
                vk[j] = aj
                hat = aj / c  # theta-hat
                toward = fma(awd, hat, th)
                th = toward if (has_wd and average) else th  # Algorithm 1: decay toward theta-hat first
                attraction = sign(hat - th, one, zero)
                decayed = fma(awd, th, th)
                th = decayed if (has_wd and not average) else th
                th = fma(ag, attraction, th)
                t[j] = fma(a1, sign(mj, one, zero), th)

    return signum, focus


def _factors(lr, scale: float, rows: int, dtype) -> np.ndarray:
    """(lr * scale) per row, computed in float64 and rounded to ``dtype``."""
    if isinstance(lr, torch.Tensor):
        return (lr.to(torch.float64) * scale).to(dtype).numpy()
    return torch.full((rows,), lr * scale, dtype=torch.float64).to(dtype).numpy()


def step(params, grads, exp_avgs, param_avgs, steps, *, lr, beta1, beta2, gamma, weight_decay, decay,
         maximize) -> None:
    """One fused step of every tensor (``usable`` must hold for each tensor's group of tensors)."""
    signum, focus = _kernels()
    for i, p in enumerate(params):
        dtype = p.dtype
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        rows = lr.numel() if isinstance(lr, torch.Tensor) else 1
        L = p.numel() // rows
        c1, small1 = _coef(1 - beta1, np_dtype)
        flat = [t.detach().view(-1).numpy() for t in (p, grads[i], exp_avgs[i])]
        a_wd = _factors(lr, -weight_decay, rows, dtype)
        a_one = _factors(lr, -1.0, rows, dtype)
        g_sign, one = np_dtype(-1.0 if maximize else 1.0), np_dtype(1.0)
        if param_avgs is None:
            signum(*flat, L, a_wd, a_one, c1, small1, weight_decay != 0, g_sign, one)
            continue
        c2, small2 = _coef(1 - beta2, np_dtype)
        c = np_dtype(1 - beta2 ** steps[i])
        focus(*flat, param_avgs[i].detach().view(-1).numpy(), L, a_wd, _factors(lr, gamma, rows, dtype), a_one,
              c1, small1, c2, small2, c, weight_decay != 0, decay == "average", g_sign, one)


def _coef(weight: float, np_dtype) -> tuple:
    """torch's lerp coefficient for ``weight`` (rounded to the dtype): w, or w - 1 from 0.5 on."""
    w = np_dtype(weight)
    small = bool(abs(w) < 0.5)
    return (w if small else np_dtype(w - np_dtype(1.0))), small
