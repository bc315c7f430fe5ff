"""FOCUS and Signum as torch optimizers (Liu, Liu & Gore, "FOCUS: First Order Concentrated
Updating Scheme", arXiv 2501.12243, Algorithm 1)."""
from __future__ import annotations

import torch
from torch.optim import Optimizer

from ._sign import sign_momentum_update


def closure_loss(closure):
    """The loss a ``step(closure)`` returns: the closure's, evaluated with gradients on (or None)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def with_grads(opt: Optimizer, group: dict):
    """The group's parameters that have a gradient; sparse gradients are refused."""
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(opt).__name__} does not support sparse gradients")
        yield p

DECAYS = ("average", "theta")


def _check(name, value, low, high=None, high_open=True):
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:
        rng = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"Invalid {name}: {value!r} (must be {rng})")


class _SignMomentum(Optimizer):
    """Shared machinery: lazy state, validation, foreach/single-tensor dispatch, and stacked copies.

    Stacked copies: a param group may hold ``lr_rows``, a 1-D tensor of K learning rates, in place
    of one ``lr``: every parameter of the group is then K stacked copies along its first dimension
    (the MNIST trainer's K models), and copy k steps with lr_rows[k] -- exactly as K instances
    with one lr each would step them, in one operation per tensor for all K."""

    _uses_average = True
    #: The group key ``lr_rows`` is understood (callers check this before relying on it).
    ROW_LRS = True

    def __init__(self, params, defaults, *, foreach, maximize, fp32_state, fused=None):
        _check("learning rate", defaults["lr"], 0.0)
        _check("weight_decay", defaults["weight_decay"], 0.0)
        if fused and foreach:
            raise ValueError("fused and foreach are exclusive: choose one")
        defaults.update(foreach=foreach, maximize=maximize, fp32_state=fp32_state, fused=fused)
        super().__init__(params, defaults)

    def _init_state(self, p, group):
        state = self.state[p]
        low = p.dtype in (torch.float16, torch.bfloat16)
        dtype = torch.float32 if (low and group["fp32_state"]) else p.dtype
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if self._uses_average:
            # theta-bar starts at zero; the bias correction 1 - beta2^t makes theta-hat_1 = theta_1
            state["param_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, exp_avgs, avgs, steps = [], [], [], [], []
            for p in with_grads(self, group):
                state = self.state[p] or self._init_state(p, group)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                if self._uses_average:
                    avgs.append(state["param_avg"])
                steps.append(int(state["step"].item()))  # each param its own bias correction
            if not params:
                continue
            foreach, fused = group["foreach"], group.get("fused")
            tensors = params + grads + exp_avgs + avgs
            if fused is None:  # on the CPU: one pass per tensor where it gives the per-op path's bits
                from ._fused import usable

                fused = foreach is None and usable(tensors)
            elif fused:
                from ._fused import usable

                if not usable(tensors):
                    raise RuntimeError(f"{type(self).__name__}(fused=True) needs contiguous CPU float32/float64 "
                                       "parameters and state of one dtype, and torch's AVX2 or AVX-512 kernels")
            if foreach is None:  # as torch.optim: multi-tensor on CUDA; on CPU the per-tensor loop
                foreach = all(p.is_cuda for p in params)  # is faster (cache-sized temporaries)
            beta1, beta2 = self._betas(group)
            sign_momentum_update(params, grads, exp_avgs, avgs if self._uses_average else None, steps,
                                 lr=_rows(group, params), beta1=beta1, beta2=beta2,
                                 gamma=group.get("gamma", 0.0), weight_decay=group["weight_decay"],
                                 decay=group.get("decay", "theta"), maximize=group["maximize"],
                                 foreach=foreach, fused=fused)
        return loss


def _rows(group: dict, params) -> float | torch.Tensor:
    """The group's lr, or its per-row lrs (float64, one per stacked copy) checked against its params."""
    rows = group.get("lr_rows")
    if rows is None:
        return float(group["lr"])
    rows = torch.as_tensor(rows, dtype=torch.float64)
    if rows.dim() != 1 or any(p.dim() == 0 or p.shape[0] != rows.numel() for p in params):
        raise ValueError(f"lr_rows: {rows.numel()} learning rates, but the group's parameters have first "
                         f"dimensions {sorted({p.shape[0] if p.dim() else 0 for p in params})}")
    if bool((rows < 0).any()):
        raise ValueError("lr_rows: learning rates must be >= 0")
    return rows


class FOCUS(_SignMomentum):
    r"""FOCUS: Signum plus an attraction toward the running average of the parameters.

    Algorithm 1 of the paper, per parameter tensor (t counts this tensor's own steps):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        \bar\theta_t = \beta_2 \bar\theta_{t-1} + (1-\beta_2)\theta_t, \quad
        \hat\theta_t = \bar\theta_t / (1-\beta_2^t)

        \theta \leftarrow \theta - \eta\,\omega\,\hat\theta_t \quad (\text{decay toward the average}),
        \qquad \theta \leftarrow \theta - \eta\,(\mathrm{sign}(m_t) + \gamma\,\mathrm{sign}(\theta - \hat\theta_t))

    The paper's official code takes sign(theta - theta-hat) *before* applying the decay; this class
    follows Algorithm 1 (decay first).  ``decay="theta"`` instead decays the parameter itself,
    theta <- theta - lr (sign m + gamma sign(theta - theta-hat) + wd theta), the form of the paper's toy
    experiments and of ``focuslab scan``'s focus rule.

    Args:
        params: parameters or param groups (per-group values override the defaults).
        lr: learning rate eta.  Default 1e-2, the reference class's; the paper's GPT-2 small runs
            used 6e-4.
        betas: (beta1, beta2): gradient-momentum and parameter-average decay rates.  Default
            (0.9, 0.99), the paper's GPT-2 runs (the reference class defaults to (0.9, 0.999); the toy
            experiments use (0.9, 0.9)).
        gamma: strength of the attraction.  Default 0.2, the paper's toy and GPT-2 experiments (the
            official reference class defaults to 0.1).  These are the defaults of focuslab's ``focus``
            everywhere (focuslab.optimizers.builtin), one per setting.
        weight_decay: omega.  Default 0.
        decay: "average" (Algorithm 1, default) or "theta" (toy experiments).
        foreach: multi-tensor path (default: on when all params are on CUDA, as torch.optim does;
            on CPU the per-tensor loop is ~3x faster) or a per-tensor loop; identical results.
        fused: the whole update in one pass per tensor on the CPU (focuslab.optim._fused; default:
            wherever it gives the per-tensor loop's bits -- contiguous float32/float64 CPU tensors,
            torch's AVX2/AVX-512 kernels -- unless foreach is set); identical results.
        maximize: ascend instead of descend.
        fp32_state: keep m and the parameter average in fp32 for bf16/fp16 parameters (default);
            False keeps them in the parameter dtype.

    State per parameter: ``step``, ``exp_avg`` (m) and ``param_avg`` (theta-bar): two buffers.
    """

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.0, *,
                 decay="average", foreach=None, maximize=False, fp32_state=True, fused=None):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Invalid betas: {betas!r} (must be a pair)") from None
        _check("beta1", beta1, 0.0, 1.0)
        _check("beta2", beta2, 0.0, 1.0)
        _check("gamma", gamma, 0.0)
        if decay not in DECAYS:
            raise ValueError(f"Invalid decay: {decay!r} (must be one of {', '.join(DECAYS)})")
        super().__init__(params, dict(lr=lr, betas=(beta1, beta2), gamma=gamma,
                                      weight_decay=weight_decay, decay=decay),
                         foreach=foreach, maximize=maximize, fp32_state=fp32_state, fused=fused)

    @staticmethod
    def _betas(group):
        return group["betas"]


class Signum(_SignMomentum):
    r"""Signum (Bernstein et al. 2018): sign of the gradient momentum, with decoupled weight decay.

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad
        \theta \leftarrow \theta - \eta\,(\mathrm{sign}(m_t) + \omega\,\theta)

    FOCUS with gamma = 0, without the parameter average: one state buffer (``exp_avg``) per
    parameter.  Defaults: lr 1e-2, beta 0.9 (the paper's runs), weight_decay 0.
    """

    _uses_average = False

    def __init__(self, params, lr=1e-2, beta=0.9, weight_decay=0.0, *, foreach=None,
                 maximize=False, fp32_state=True, fused=None):
        _check("beta", beta, 0.0, 1.0)
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay),
                         foreach=foreach, maximize=maximize, fp32_state=fp32_state, fused=fused)

    @staticmethod
    def _betas(group):
        return group["beta"], 0.0
