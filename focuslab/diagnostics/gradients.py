"""The gradients diagnostics are made of: per-batch gradients (stacked, or their weighted mean) of a
loss over a model's parameters, with an optional leading model axis, and an adaptive optimizer's
preconditioner read from its state."""
from __future__ import annotations

from typing import Callable, Sequence


def _params(model) -> list:
    if hasattr(model, "parameters"):
        return [p for p in model.parameters() if p.requires_grad]
    return [p for p in model if p.requires_grad]


def _per_model(x, models: int):
    """(models, -1) view of a tensor whose leading axis is the model axis (or (1, -1))."""
    return x.reshape(models, -1) if models > 1 else x.reshape(1, -1)


def _flat_grad(params, loss):
    """The gradient as one flat float64 vector (parameters in order, each flattened)."""
    import torch

    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss.sum(), params)]).double()


def _unflat(x, params) -> list:
    """Views of a flat vector shaped like ``params``."""
    import torch

    return [c.view(p.shape) for c, p in zip(torch.split(x, [p.numel() for p in params]), params)]


def mean_gradient(params, loss_fn: Callable, batches: Sequence, weights: Sequence[float] | None = None):
    """Weighted mean gradient over ``batches`` (weights: their sizes; default equal)."""
    weights = list(weights) if weights is not None else [1.0] * len(batches)
    total = None
    for batch, w in zip(batches, weights):
        g = _flat_grad(params, loss_fn(batch))
        total = g.mul_(w) if total is None else total.add_(g, alpha=w)
    return _unflat(total / sum(weights), params)


def gradient_stack(params, loss_fn: Callable, batches: Sequence, *, models: int = 1, first: Sequence | None = None,
                   extra: int = 0) -> list:
    """Each batch's gradient, one tensor per parameter of shape (len(batches) + ``extra``, models,
    numel / models) in the parameters' dtype (rows beyond the batches left for the caller);
    ``first``: the gradient of ``batches[0]`` where it is already at hand."""
    import torch

    n = len(batches) + extra
    stack = [torch.empty((n, models, p.numel() // models), dtype=p.dtype, device=p.device) for p in params]
    for j, batch in enumerate(batches):
        grads = first if (j == 0 and first is not None) else torch.autograd.grad(loss_fn(batch).sum(), params)
        for s, g in zip(stack, grads):
            s[j] = _per_model(g.detach(), models)
    return stack


def adam_preconditioner(exp_avg_sq, step: float, beta2: float, eps: float):
    """Adam's diagonal preconditioner sqrt(v_hat) + eps (v_hat = v / (1 - beta2^t)) of one tensor of
    second moments ``exp_avg_sq`` after ``step`` steps: what P^-1/2 H P^-1/2 is taken with."""
    return (exp_avg_sq.detach() / (1 - beta2 ** float(step))).sqrt() + eps


def optimizer_preconditioner(optimizer, params) -> list | None:
    """Adam's preconditioner (``adam_preconditioner``) for each of ``params`` from a torch Adam or
    AdamW's state; None for other optimizers or before every parameter has taken a step.  The one
    place that knows where an optimizer keeps its second moments."""
    import torch

    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p in params:
        st = optimizer.state.get(p, {})
        if "exp_avg_sq" not in st or id(p) not in group_of:
            return None
        g = group_of[id(p)]
        out.append(adam_preconditioner(st["exp_avg_sq"], float(st["step"]), g["betas"][1], g["eps"]))
    return out


