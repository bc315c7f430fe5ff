"""Lion and heavy-ball SGD with decoupled weight decay: the torch side of focuslab's built-in
``lion`` and ``sgd`` rules, so that every built-in trains a real model with the update the toy
simulates (torch.optim.SGD adds weight decay to the gradient instead, before the momentum).

Both are per-element rules with one state buffer; a per-tensor loop (these run on small models in
focuslab's studies; FOCUS and Signum have the foreach path for GPT-2).
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

from .focus import closure_loss, with_grads


def _check(name, value, low, high=None):
    if not (value >= low and (high is None or value < high)):
        raise ValueError(f"Invalid {name}: {value!r} (must be {f'in [{low}, {high})' if high is not None else f'>= {low}'})")


class _OneBuffer(Optimizer):
    def __init__(self, params, defaults, maximize):
        _check("learning rate", defaults["lr"], 0.0)
        _check("weight_decay", defaults["weight_decay"], 0.0)
        defaults["maximize"] = maximize
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in with_grads(self, group):
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state[self.BUFFER] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self._update(p, g, state[self.BUFFER], group)
        return loss


class Lion(_OneBuffer):
    r"""Lion (Chen et al. 2023, arXiv 2302.06675), decoupled weight decay.

    .. math::
        \theta \leftarrow \theta - \eta\,(\mathrm{sign}(\beta_1 m + (1-\beta_1) g) + \omega\,\theta),
        \qquad m \leftarrow \beta_2 m + (1-\beta_2) g

    Defaults: betas (0.9, 0.99) (the paper's), weight_decay 0.  State: ``exp_avg`` (m).
    """

    BUFFER = "exp_avg"

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False):
        beta1, beta2 = betas
        _check("beta1", beta1, 0.0, 1.0)
        _check("beta2", beta2, 0.0, 1.0)
        super().__init__(params, dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay), maximize)

    @staticmethod
    def _update(p, g, m, group):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        direction = torch.lerp(m, g, 1 - beta1).sign_()
        if wd:
            p.mul_(1 - lr * wd)
        p.add_(direction, alpha=-lr)
        m.lerp_(g, 1 - beta2)


class SGDW(_OneBuffer):
    r"""Heavy-ball SGD with decoupled weight decay (the toy's ``sgd`` rule).

    .. math::
        b \leftarrow \mu b + g, \qquad \theta \leftarrow \theta - \eta\,(b + \omega\,\theta)

    Defaults: momentum 0.9, weight_decay 0.  State: ``momentum_buffer`` (b).
    """

    BUFFER = "momentum_buffer"

    def __init__(self, params, lr=1e-2, momentum=0.9, weight_decay=0.0, *, maximize=False):
        _check("momentum", momentum, 0.0, 1.0)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay), maximize)

    @staticmethod
    def _update(p, g, b, group):
        lr, wd = group["lr"], group["weight_decay"]
        b.mul_(group["momentum"]).add_(g)
        if wd:
            p.mul_(1 - lr * wd)
        p.add_(b, alpha=-lr)
