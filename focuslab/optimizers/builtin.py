"""focuslab's built-in optimizers: ONE definition each, the only place one is described.

A ``Builtin`` carries everything every command needs:

* name, aliases (each with its own title: ``adamw`` is titled AdamW, ``adam`` Adam), legend title
  and colour (the paper's Fig. 2 colours for Adam, Signum and FOCUS);
* settings: numeric hyperparameters and options, each with default, valid range, meaning and the
  source of the default;
* the toy simulator's update rule: ``prep(t, hp) -> tuple`` (per-step scalars shared by every
  lane, computed once per step) and ``update(ctx, theta, g, s0, s1, lr, wd, hp) -> (theta, s0, s1)`` (one
  coordinate's step: parameter, noisy gradient, two state slots, learning rate, weight decay).
  These are plain Python over ``np.sign``, ``np.sqrt`` and arithmetic: focuslab.toy.kernel
  compiles them with numba into a kernel built for that one rule (a compile-time constant, never a
  run-time switch), and focuslab.toy.torch_kernel evaluates the very same functions on tensors.
  An option (FOCUS's ``decay``) selects code at compile time: ``update`` is then a factory called
  with the options;
* ``torch(param_groups, lr, settings, device)``: the torch optimizer that trains real models
  (MNIST, GPT-2) with the same rule and settings.

Weight decay is decoupled everywhere: theta <- theta - lr * (direction + wd * theta) (FOCUS's
``decay="average"`` decays toward the parameter average instead, as Algorithm 1).

Defaults, one per setting.  Where the paper's sources disagree, the default follows the paper's
own experiments and Algorithm 1, and the presets that reproduce a figure set that figure's values
(configs/*.toml): FOCUS's gamma is 0.2 (the paper's toy scripts and GPT-2 runs; the official torch
class uses 0.1), beta2 0.99 (the GPT-2 runs; the toy scripts use 0.9, which the toy presets set;
the official class 0.999), and the decay ``average`` (Algorithm 1; the toy scripts decay theta,
which the toy presets set).

Adding an optimizer = one new ``Builtin`` below; the CLI, scans, plots, MNIST, GPT-2 and the
registry-parameterised tests pick it up.  This module imports neither numba nor torch at import.

Reference: Liu, Liu & Gore, "FOCUS: First Order Concentrated Updating Scheme", arXiv 2501.12243.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import FocuslabError
from .settings import Hyper, Option, Settings


def _hyper_class(optimizer: str, names: tuple[str, ...]):
    """A named tuple for one optimizer's hyperparameters, importable from this module by name
    (numba's on-disk cache pickles argument types by reference)."""
    cls_name = f"{optimizer.capitalize()}Hyper"
    cls = collections.namedtuple(cls_name, names)
    cls.__module__ = __name__
    globals()[cls_name] = cls
    return cls


@dataclass(frozen=True)
class Builtin(Settings):
    """A built-in optimizer: settings (Settings) plus look, toy rule and torch optimizer."""

    colour: tuple = (128, 128, 128)  # RGB 0..255
    aliases: dict = field(default_factory=dict)  # alias -> its title
    state: tuple[str, str] = ("", "")  # what the toy rule's two state slots hold
    prep: Callable = None
    update: Callable = None  # update function, or (with options) a factory: update(**options) -> function
    torch: Callable = None  # torch(param_groups, lr, settings, device) -> torch.optim.Optimizer
    preconditioner: str = ""  # "adam": Adam's diagonal second moments scale its steps (diagnostics read them)
    Hyper: type = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "Hyper", _hyper_class(self.name, tuple(h.name for h in self.hyper)))

    def title_for(self, spelling: str) -> str:
        return self.aliases.get(spelling, self.title)

    # the toy's compiled code
    def hyper_values(self, settings: dict):
        """The named tuple of numeric hyperparameters the compiled code reads."""
        return self.Hyper(*(float(settings[h.name]) for h in self.hyper))

    def option_values(self, settings: dict) -> tuple[tuple[str, str], ...]:
        return tuple((o.name, settings[o.name]) for o in self.options)

    def update_function(self, options: tuple[tuple[str, str], ...] = ()) -> Callable:
        """The plain update function for these compile-time options."""
        return self.update(**dict(options)) if self.options else self.update

    # torch
    def build_torch(self, param_groups, lr: float, settings: dict, device: str = "cpu"):
        return self.torch(param_groups, lr, settings, device)


# --- adam -------------------------------------------------------------------------------------
def adam_prep(t, hp):
    return 1.0 - hp.beta1 ** t, 1.0 - hp.beta2 ** t


def adam_update(ctx, theta, g, m, v, lr, wd, hp):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  theta <- theta - lr (m^ / (sqrt(v^) + eps) + wd theta)."""
    m = hp.beta1 * m + (1.0 - hp.beta1) * g
    v = hp.beta2 * v + (1.0 - hp.beta2) * g * g
    step = (m / ctx[0]) / (np.sqrt(v / ctx[1]) + hp.eps)
    return theta - lr * (step + wd * theta), m, v


def adam_torch(groups, lr, s, device):
    """torch.optim.AdamW, fused (one kernel per tensor; on the CPU too: for MNIST's 12 x 24 small
    tensors a step takes 7.5 ms fused, 35 ms in the per-tensor loop, 18 ms with foreach)."""
    import torch

    return torch.optim.AdamW(groups, lr=lr, betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=0.0,
                             fused=True)


# --- signum -----------------------------------------------------------------------------------
def no_prep(t, hp):
    return (0.0,)


def signum_update(ctx, theta, g, m, unused, lr, wd, hp):
    """m <- b1 m + (1-b1) g;  theta <- theta - lr (sign(m) + wd theta)  (bias correction cannot change a sign)."""
    m = hp.beta1 * m + (1.0 - hp.beta1) * g
    return theta - lr * (np.sign(m) + wd * theta), m, unused


def signum_torch(groups, lr, s, device):
    from ..optim.focus import Signum

    return Signum(groups, lr=lr, beta=s["beta1"])


# --- focus ------------------------------------------------------------------------------------
def focus_prep(t, hp):
    return (1.0 - hp.beta2 ** t,)


def focus_update(decay):
    """Signum plus one attraction term gamma * sign(theta - theta^) toward the bias-corrected EMA theta^ of the
    parameter:  theta_bar <- b2 theta_bar + (1-b2) theta (the current theta, before the step);  theta^ = theta_bar / (1 - b2^t).
    decay "theta" (the paper's toy scripts): theta <- theta - lr (sign(m) + attraction + wd theta)
    decay "average" (Algorithm 1):          theta <- theta - lr wd theta^;  theta <- theta - lr (sign(m) + attraction)"""
    average = decay == "average"  # a compile-time constant: the other branch is not compiled

    def update(ctx, theta, g, m, theta_bar, lr, wd, hp):
        m = hp.beta1 * m + (1.0 - hp.beta1) * g  # Signum's momentum
        theta_bar = hp.beta2 * theta_bar + (1.0 - hp.beta2) * theta
        theta_hat = theta_bar / ctx[0]
        if average:
            theta = theta - lr * wd * theta_hat
            return theta - lr * (np.sign(m) + hp.gamma * np.sign(theta - theta_hat)), m, theta_bar
        attraction = hp.gamma * np.sign(theta - theta_hat)  # FOCUS's one new term
        return theta - lr * (np.sign(m) + attraction + wd * theta), m, theta_bar

    return update


def focus_torch(groups, lr, s, device):
    from ..optim.focus import FOCUS

    return FOCUS(groups, lr=lr, betas=(s["beta1"], s["beta2"]), gamma=s["gamma"], decay=s["decay"])


# --- sgd (heavy-ball momentum) ----------------------------------------------------------------
def sgd_update(ctx, theta, g, buf, unused, lr, wd, hp):
    """b <- mu b + g;  theta <- theta - lr (b + wd theta)."""
    buf = hp.momentum * buf + g
    return theta - lr * (buf + wd * theta), buf, unused


def sgd_torch(groups, lr, s, device):
    from ..optim.elementwise import SGDW

    return SGDW(groups, lr=lr, momentum=s["momentum"])


# --- lion (Chen et al. 2023, arXiv 2302.06675) ------------------------------------------------
def lion_update(ctx, theta, g, m, unused, lr, wd, hp):
    """theta <- theta - lr (sign(b1 m + (1-b1) g) + wd theta);  m <- b2 m + (1-b2) g."""
    direction = np.sign(hp.beta1 * m + (1.0 - hp.beta1) * g)
    m = hp.beta2 * m + (1.0 - hp.beta2) * g
    return theta - lr * (direction + wd * theta), m, unused


def lion_torch(groups, lr, s, device):
    from ..optim.elementwise import Lion

    return Lion(groups, lr=lr, betas=(s["beta1"], s["beta2"]))


_UNIT = "[0, 1)"
#: Default search spaces (``--tune OPT`` without values): EMA rates evenly spread on the scale of
#: their time constant 1 / (1 - beta), from 2 steps to 10^4 (beyond a run of 1000 steps: an EMA
#: that never forgets); Adam's second moment from 10 to 10^5 steps; FOCUS's attraction from none
#: to four times the paper's 0.2.
_BETA = "0.5,0.8,0.9,0.95,0.98,0.99,0.995,0.999,0.9999"
_BETA_SQ = "0.9,0.95,0.99,0.995,0.999,0.9999,0.99999"
_GAMMA = "0,0.05,0.1,0.2,0.4,0.8"
_KINGMA = "Kingma & Ba 2015; torch.optim.AdamW"
_PAPER = "FOCUS paper (arXiv 2501.12243)"
BUILTINS = (
    Builtin("adam", "Adam", "Adam with decoupled weight decay (AdamW; Loshchilov & Hutter 2019)",
            (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient", _KINGMA, _BETA),
             Hyper("beta2", 0.999, _UNIT, "EMA rate of the squared gradient", _KINGMA, _BETA_SQ),
             Hyper("eps", 1e-8, "(0, inf)", "added to the root of the second moment", _KINGMA)),
            (), colour=(244, 111, 67), aliases={"adamw": "AdamW"}, state=("exp_avg", "exp_avg_sq"),
            prep=adam_prep, update=adam_update, torch=adam_torch, preconditioner="adam"),
    Builtin("signum", "Signum", "sign of the gradient EMA (Bernstein et al. 2018, arXiv 1802.04434)",
            (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient", f"{_PAPER}, all experiments", _BETA),),
            (), colour=(251, 221, 133), state=("exp_avg", "unused"), prep=no_prep, update=signum_update,
            torch=signum_torch),
    Builtin("focus", "FOCUS", "Signum + gamma * sign(theta - EMA(theta)) (arXiv 2501.12243, Algorithm 1)",
            (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient", f"{_PAPER}, all experiments", _BETA),
             Hyper("beta2", 0.99, _UNIT, "EMA rate of the parameter average",
                   f"{_PAPER}, GPT-2 runs (toy scripts: 0.9, set by the toy presets; official class: 0.999)", _BETA),
             Hyper("gamma", 0.2, "[0, inf)", "strength of the attraction to the average",
                   f"{_PAPER}, toy scripts and GPT-2 runs (official class: 0.1)", _GAMMA)),
            (Option("decay", ("average", "theta"),
                    "weight decay toward the average (Algorithm 1) or on theta (the paper's toy scripts)",
                    f"{_PAPER}, Algorithm 1 (toy scripts: theta, set by the toy presets)"),),
            colour=(128, 166, 226), state=("exp_avg", "param_avg"), prep=focus_prep, update=focus_update,
            torch=focus_torch),
    Builtin("sgd", "SGD", "heavy-ball momentum SGD, decoupled weight decay",
            (Hyper("momentum", 0.9, _UNIT, "momentum coefficient", "common practice (Sutskever et al. 2013)",
                   "0,0.5,0.8,0.9,0.95,0.98,0.99"),),
            (), colour=(102, 187, 106), state=("momentum_buffer", "unused"), prep=no_prep, update=sgd_update,
            torch=sgd_torch),
    Builtin("lion", "Lion", "Lion (Chen et al. 2023, arXiv 2302.06675)",
            (Hyper("beta1", 0.9, _UNIT, "interpolation for the update direction", "Chen et al. 2023", _BETA),
             Hyper("beta2", 0.99, _UNIT, "EMA rate of the momentum", "Chen et al. 2023", _BETA)),
            (), colour=(171, 71, 188), state=("exp_avg", "unused"), prep=no_prep, update=lion_update,
            torch=lion_torch),
)
BY_NAME = {b.name: b for b in BUILTINS}
SPELLINGS = {**{b.name: b.name for b in BUILTINS}, **{a: b.name for b in BUILTINS for a in b.aliases}}


def names() -> list[str]:
    """Every spelling of a built-in: names, then aliases."""
    return [*BY_NAME, *(s for s in SPELLINGS if s not in BY_NAME)]


def get(name: str) -> Builtin:
    """The built-in called ``name`` (or an alias of it); a one-line error for anything else."""
    canonical = SPELLINGS.get(name)
    if canonical is None:
        raise FocuslabError(f"unknown built-in optimizer {name!r} (known: {', '.join(names())})")
    return BY_NAME[canonical]
