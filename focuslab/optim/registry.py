"""The torch optimizers that ``focuslab mnist`` and ``focuslab gpt2`` train with, by name.

One naming scheme with the simulator (focuslab.toy.updates): ``adamw`` (alias ``adam``), ``signum``,
``focus``; settings inline (``focus:gamma=0.4``) or by ``--opt-param focus.gamma=0.4``.  Defaults
are the paper's: AdamW betas (0.9, 0.999); Signum beta 0.9; FOCUS betas (0.9, 0.99), gamma 0.2 and
Algorithm 1's decay toward the parameter average.  A model preset may set its own per-optimizer
values (the paper's GPT-2 AdamW uses beta2 = 0.95) in ``[gpt2.optimizer.adamw]``.

This module is torch-free until ``build`` is called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..hyper import Hyper, OptimizerSpec, Option, Registry

_UNIT = "[0, 1)"


@dataclass(frozen=True)
class TorchOptimizer(OptimizerSpec):
    make: Callable = None  # make(param_groups, lr, settings, device) -> torch.optim.Optimizer

    def build(self, param_groups, lr: float, settings: dict, device: str = "cpu"):
        return self.make(param_groups, lr, settings, device)


def _adamw(groups, lr, s, device):
    import torch

    fused = {"fused": True} if str(device).startswith("cuda") else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(s["beta1"], s["beta2"]), eps=s["eps"], **fused)


def _signum(groups, lr, s, device):
    from .focus import Signum

    return Signum(groups, lr=lr, beta=s["beta1"])


def _focus(groups, lr, s, device):
    from .focus import FOCUS

    return FOCUS(groups, lr=lr, betas=(s["beta1"], s["beta2"]), gamma=s["gamma"], decay=s["decay"])


TORCH_OPTIMIZERS = Registry([
    TorchOptimizer("adamw", "AdamW", "torch.optim.AdamW",
                   (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient"),
                    Hyper("beta2", 0.999, _UNIT, "EMA rate of the squared gradient"),
                    Hyper("eps", 1e-8, "(0, inf)", "added to the root of the second moment")),
                   (), ("adam",), _adamw),
    TorchOptimizer("signum", "Signum", "focuslab.optim.Signum: sign of the gradient EMA",
                   (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient"),), (), (), _signum),
    TorchOptimizer("focus", "FOCUS", "focuslab.optim.FOCUS (Algorithm 1 of arXiv 2501.12243)",
                   (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient"),
                    Hyper("beta2", 0.99, _UNIT, "EMA rate of the parameter average"),
                    Hyper("gamma", 0.2, "[0, inf)", "strength of the attraction to the average")),
                   (Option("decay", ("average", "theta"),
                           "weight decay toward the average (Algorithm 1) or on theta"),), (), _focus),
])
get = TORCH_OPTIMIZERS.get
