"""Functional core shared by FOCUS and Signum: single-tensor and multi-tensor (foreach) paths.

Both paths run the same sequence of tensor operations, so they give identical results.

``lr`` is a number, or a 1-D tensor of per-row learning rates for *stacked* copies of a model:
every parameter's slices along its first dimension (one per copy) then step with their own lr, in
one operation per tensor for all copies -- the MNIST trainer's K models of one step, fused.  Each
lr term is then theta + (lr_k * c) * x as one ``addcmul_`` with the per-row factor lr_k * c
rounded to the parameter's dtype, which is exactly what ``theta.add_(x, alpha=lr_k * c)`` computes
for each row on its own (tests/test_optim.py checks it bit for bit).  For
bf16/fp16 parameters the state is normally fp32: the update is computed on an fp32 copy of the
parameter, which is written back at the end (a bf16 EMA at beta2 = 0.99 stalls, because
(1 - beta2) * theta is below bf16 resolution next to theta).
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor


def sign_momentum_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                         param_avgs: list[Tensor] | None, steps: list[int], *, lr: float | Tensor,
                         beta1: float, beta2: float, gamma: float, weight_decay: float,
                         decay: str, maximize: bool, foreach: bool, fused: bool = False) -> None:
    """One FOCUS step (``param_avgs`` given) or Signum step (``param_avgs=None``, gamma unused).

    m   <- beta1 m + (1 - beta1) g                      (as a lerp)
    avg <- beta2 avg + (1 - beta2) theta;  hat = avg / (1 - beta2^t)
    decay == "average" (Algorithm 1): theta <- theta - lr wd hat; theta <- theta - lr (sign m + gamma sign(theta - hat))
    decay == "theta"   (toy experiments): theta <- theta - lr (sign m + gamma sign(theta - hat) + wd theta)
    Signum: theta <- theta - lr (sign m + wd theta)

    The three terms are applied to theta one after the other (the same maths; rounding within float
    tolerance of the one-expression form), which needs a single temporary per tensor.  ``fused``:
    all of it in one pass per tensor on the CPU (focuslab.optim._fused), the same bits.
    """
    if fused:  # one pass over each tensor, the same bits (focuslab.optim._fused)
        from ._fused import step as fn
    else:
        fn = _multi_tensor if foreach else _single_tensor
    fn(params, grads, exp_avgs, param_avgs, steps, lr=lr, beta1=beta1, beta2=beta2, gamma=gamma,
       weight_decay=weight_decay, decay=decay, maximize=maximize)


def _axpy_(theta: Tensor, x: Tensor, lr, scale: float) -> None:
    """theta += (lr * scale) x; per row when ``lr`` is a tensor of per-row learning rates."""
    if isinstance(lr, Tensor):
        theta.addcmul_(_row_factor(lr, scale, theta), x)
    else:
        theta.add_(x, alpha=lr * scale)


def _row_factor(lr: Tensor, scale: float, like: Tensor) -> Tensor:
    """(lr_k * scale) in float64, rounded to ``like``'s dtype, shaped to broadcast over its rows."""
    return (lr * scale).to(device=like.device, dtype=like.dtype).view(-1, *[1] * (like.dim() - 1))


def _foreach_axpy_(thetas: list[Tensor], xs: list[Tensor], lr, scale: float) -> None:
    if isinstance(lr, Tensor):
        torch._foreach_addcmul_(thetas, [_row_factor(lr, scale, t) for t in thetas], xs)
    else:
        torch._foreach_add_(thetas, xs, alpha=lr * scale)


def _single_tensor(params, grads, exp_avgs, param_avgs, steps, *, lr, **hyper):
    for i, p in enumerate(params):
        _update_one(p, grads[i], exp_avgs[i], None if param_avgs is None else param_avgs[i], steps[i], lr, **hyper)


def _update_one(p, g, m, avg, t, lr, *, beta1, beta2, gamma, weight_decay, decay, maximize):
    """The per-tensor update."""
    theta = p if p.dtype == m.dtype else p.to(m.dtype)  # the parameter, in fp32 for low-precision params
    if g.dtype != m.dtype:
        g = g.to(m.dtype)
    if maximize:
        g = torch.neg(g)
    m.lerp_(g, 1 - beta1)
    if avg is not None:
        avg.lerp_(theta, 1 - beta2)
        tmp = torch.div(avg, 1 - beta2 ** t)  # theta-hat (the only temporary)
        if decay == "average" and weight_decay != 0:
            _axpy_(theta, tmp, lr, -weight_decay)  # Algorithm 1: decay toward theta-hat first
        tmp.sub_(theta).sign_()  # sign(theta-hat - theta)
        if decay == "theta" and weight_decay != 0:
            _axpy_(theta, theta, lr, -weight_decay)
        _axpy_(theta, tmp, lr, gamma)  # the attraction
        torch.sign(m, out=tmp)
    else:
        tmp = torch.sign(m)
        if weight_decay != 0:
            _axpy_(theta, theta, lr, -weight_decay)
    _axpy_(theta, tmp, lr, -1.0)
    if theta is not p:
        p.copy_(theta)


def _multi_tensor(params, grads, exp_avgs, param_avgs, steps, *, lr, beta1, beta2, gamma,
                  weight_decay, decay, maximize):
    buckets: dict = defaultdict(list)  # foreach ops want one device/dtype; bias corrections one t
    for i, p in enumerate(params):
        buckets[(p.device, p.dtype, exp_avgs[i].dtype, steps[i])].append(i)
    for (_, pdtype, sdtype, t), idx in buckets.items():
        P = [params[i] for i in idx]
        M = [exp_avgs[i] for i in idx]
        THETA = P if pdtype == sdtype else [p.to(sdtype) for p in P]
        G = [grads[i] for i in idx]
        if G[0].dtype != sdtype:
            G = [g.to(sdtype) for g in G]
        if maximize:
            G = torch._foreach_neg(G)
        torch._foreach_lerp_(M, G, 1 - beta1)
        if param_avgs is not None:
            A = [param_avgs[i] for i in idx]
            torch._foreach_lerp_(A, THETA, 1 - beta2)
            T = torch._foreach_div(A, 1 - beta2 ** t)
            if decay == "average" and weight_decay != 0:
                _foreach_axpy_(THETA, T, lr, -weight_decay)
            torch._foreach_sub_(T, THETA)
            torch._foreach_sign_(T)
            if decay == "theta" and weight_decay != 0:
                _foreach_axpy_(THETA, THETA, lr, -weight_decay)
            _foreach_axpy_(THETA, T, lr, gamma)
            torch._foreach_copy_(T, M)
            torch._foreach_sign_(T)
        else:
            T = torch._foreach_sign(M)
            if weight_decay != 0:
                _foreach_axpy_(THETA, THETA, lr, -weight_decay)
        _foreach_axpy_(THETA, T, lr, -1.0)
        if THETA is not P:
            torch._foreach_copy_(P, THETA)
