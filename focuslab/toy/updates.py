"""Update rules of the toy simulator: one definition per optimizer, the only place one is described.

A ``ToyOptimizer`` carries the optimizer's name, its hyperparameters (default, valid interval,
meaning; focuslab.hyper), its compile-time options, the names of its two state slots and two plain functions:

    prep(t, hp) -> tuple                             per-step scalars shared by every lane (bias
                                                     corrections), computed once per step
    update(ctx, x, g, s0, s1, lr, wd, hp) -> (x, s0, s1)
                                                     one coordinate's step: parameter x, noisy
                                                     gradient g, state slots, learning rate,
                                                     weight decay; ctx = prep(t, hp)

``hp`` is a named tuple (``hp.beta1``).  The functions are plain Python over ``np.sign``,
``np.sqrt`` and arithmetic: ``kernel.py`` compiles them with numba into a kernel built for that
one rule (the rule is a compile-time constant, never a run-time switch), and ``focuslab.toy.torch``
evaluates the very same functions on whole tensors.  Weight decay is decoupled:
theta <- theta - lr * (direction + wd * theta).  An option (FOCUS's ``decay``) selects code at
compile time: ``update`` is then a factory called with the options.

Adding an optimizer = one new ``ToyOptimizer`` below; the CLI, scans, plots and the
registry-parameterised tests pick it up.  This module imports neither numba nor torch.

Reference: Liu, Liu & Gore, "FOCUS: First Order Concentrated Updating Scheme", arXiv 2501.12243.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..hyper import Hyper, OptimizerSpec, Option, Registry


def _hyper_class(optimizer: str, names: tuple[str, ...]):
    """A named tuple for one optimizer's hyperparameters, importable from this module by name
    (numba's on-disk cache pickles argument types by reference)."""
    cls_name = f"{optimizer.capitalize()}Hyper"
    cls = collections.namedtuple(cls_name, names)
    cls.__module__ = __name__
    globals()[cls_name] = cls
    return cls


@dataclass(frozen=True)
class ToyOptimizer(OptimizerSpec):
    """A simulator optimizer: its settings (OptimizerSpec) plus state names and rule functions."""

    state: tuple[str, str] = ("", "")  # what the two state slots hold
    prep: Callable = None
    update: Callable = None  # update function, or (with options) a factory: update(**options) -> function
    Hyper: type = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "Hyper", _hyper_class(self.name, tuple(h.name for h in self.hyper)))

    def hyper_values(self, settings: dict):
        """The named tuple of numeric hyperparameters the compiled code reads."""
        return self.Hyper(*(float(settings[h.name]) for h in self.hyper))

    def option_values(self, settings: dict) -> tuple[tuple[str, str], ...]:
        return tuple((o.name, settings[o.name]) for o in self.options)

    def update_function(self, options: tuple[tuple[str, str], ...] = ()) -> Callable:
        """The plain update function for these compile-time options."""
        return self.update(**dict(options)) if self.options else self.update


# --- adam -------------------------------------------------------------------------------------
def adam_prep(t, hp):
    return 1.0 - hp.beta1 ** t, 1.0 - hp.beta2 ** t


def adam_update(ctx, x, g, m, v, lr, wd, hp):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  x <- x - lr (m^ / (sqrt(v^) + eps) + wd x)."""
    m = hp.beta1 * m + (1.0 - hp.beta1) * g
    v = hp.beta2 * v + (1.0 - hp.beta2) * g * g
    step = (m / ctx[0]) / (np.sqrt(v / ctx[1]) + hp.eps)
    return x - lr * (step + wd * x), m, v


# --- signum -----------------------------------------------------------------------------------
def no_prep(t, hp):
    return (0.0,)


def signum_update(ctx, x, g, m, unused, lr, wd, hp):
    """m <- b1 m + (1-b1) g;  x <- x - lr (sign(m) + wd x)  (bias correction cannot change a sign)."""
    m = hp.beta1 * m + (1.0 - hp.beta1) * g
    return x - lr * (np.sign(m) + wd * x), m, unused


# --- focus ------------------------------------------------------------------------------------
def focus_prep(t, hp):
    return (1.0 - hp.beta2 ** t,)


def focus_update(decay):
    """Signum plus one attraction term gamma * sign(x - x^) toward the bias-corrected EMA x^ of the
    parameter:  xbar <- b2 xbar + (1-b2) x (the current x, before the step);  x^ = xbar / (1 - b2^t).
    decay "theta" (the paper's toy scripts): x <- x - lr (sign(m) + attraction + wd x)
    decay "average" (Algorithm 1):          x <- x - lr wd x^;  x <- x - lr (sign(m) + attraction)"""
    average = decay == "average"  # a compile-time constant: the other branch is not compiled

    def update(ctx, x, g, m, xbar, lr, wd, hp):
        m = hp.beta1 * m + (1.0 - hp.beta1) * g  # Signum's momentum
        xbar = hp.beta2 * xbar + (1.0 - hp.beta2) * x
        xhat = xbar / ctx[0]
        if average:
            x = x - lr * wd * xhat
            return x - lr * (np.sign(m) + hp.gamma * np.sign(x - xhat)), m, xbar
        attraction = hp.gamma * np.sign(x - xhat)  # FOCUS's one new term
        return x - lr * (np.sign(m) + attraction + wd * x), m, xbar

    return update


# --- sgd (heavy-ball momentum) ----------------------------------------------------------------
def sgd_update(ctx, x, g, buf, unused, lr, wd, hp):
    """b <- mu b + g;  x <- x - lr (b + wd x)."""
    buf = hp.momentum * buf + g
    return x - lr * (buf + wd * x), buf, unused


# --- lion (Chen et al. 2023, arXiv 2302.06675) ------------------------------------------------
def lion_update(ctx, x, g, m, unused, lr, wd, hp):
    """x <- x - lr (sign(b1 m + (1-b1) g) + wd x);  m <- b2 m + (1-b2) g."""
    direction = np.sign(hp.beta1 * m + (1.0 - hp.beta1) * g)
    m = hp.beta2 * m + (1.0 - hp.beta2) * g
    return x - lr * (direction + wd * x), m, unused


_UNIT = "[0, 1)"
OPTIMIZERS = Registry([
    ToyOptimizer("adam", "Adam", "Adam with decoupled weight decay (AdamW)",
                 (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient"),
                  Hyper("beta2", 0.999, _UNIT, "EMA rate of the squared gradient"),
                  Hyper("eps", 1e-8, "(0, inf)", "added to the root of the second moment")),
                 (), ("adamw",), ("exp_avg", "exp_avg_sq"), adam_prep, adam_update),
    ToyOptimizer("signum", "Signum", "sign of the gradient EMA (Bernstein et al. 2018)",
                 (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient"),),
                 (), (), ("exp_avg", "unused"), no_prep, signum_update),
    ToyOptimizer("focus", "FOCUS", "Signum + gamma * sign(theta - EMA(theta)) (arXiv 2501.12243)",
                 (Hyper("beta1", 0.9, _UNIT, "EMA rate of the gradient"),
                  Hyper("beta2", 0.9, _UNIT, "EMA rate of the parameter average"),
                  Hyper("gamma", 0.2, "[0, inf)", "strength of the attraction to the average")),
                 (Option("decay", ("theta", "average"),
                         "weight decay on theta (toy scripts) or toward the average (Algorithm 1)"),),
                 (), ("exp_avg", "param_avg"), focus_prep, focus_update),
    ToyOptimizer("sgd", "SGD", "heavy-ball momentum SGD",
                 (Hyper("momentum", 0.9, _UNIT, "momentum coefficient"),),
                 (), (), ("momentum_buffer", "unused"), no_prep, sgd_update),
    ToyOptimizer("lion", "Lion", "Lion (Chen et al. 2023)",
                 (Hyper("beta1", 0.9, _UNIT, "interpolation for the update direction"),
                  Hyper("beta2", 0.99, _UNIT, "EMA rate of the momentum")),
                 (), (), ("exp_avg", "unused"), no_prep, lion_update),
])
get = OPTIMIZERS.get
