"""Update rules of the simulator: one small pure function per optimizer.

All rules here are element-wise, so each is written for one coordinate: it takes the parameter x,
its (noisy) gradient g and two state slots (s0, s1), and returns the new (x, s0, s1).  ``prep``
functions compute per-step scalars shared by all lanes (bias corrections) once per step instead of
once per lane.  Weight decay is decoupled: theta <- theta - lr * (direction + wd * theta).

Adding an optimizer: write ``prep_x``/``update_x``, add a line to ``prepare`` and ``update``, and a
``Rule`` entry in ``RULES``.  Reference: Liu, Liu & Gore, "FOCUS: First Order Concentrated Updating
Scheme", arXiv 2501.12243.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

_NONE = (0.0, 0.0)


# --- adam -------------------------------------------------------------------------------------
# m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  x <- x - lr * (m^ / (sqrt(v^) + eps) + wd x)
@njit(cache=True, inline="always")
def prep_adam(t, hp):
    return 1.0 - hp[0] ** t, 1.0 - hp[1] ** t


@njit(cache=True, inline="always")
def update_adam(ctx, x, g, m, v, lr, wd, hp):
    m = hp[0] * m + (1.0 - hp[0]) * g
    v = hp[1] * v + (1.0 - hp[1]) * g * g
    step = (m / ctx[0]) / (np.sqrt(v / ctx[1]) + hp[2])
    return x - lr * (step + wd * x), m, v


# --- signum -----------------------------------------------------------------------------------
# m <- b1 m + (1-b1) g;  x <- x - lr * (sign(m) + wd x)   (bias correction cannot change a sign)
@njit(cache=True, inline="always")
def prep_none(t, hp):
    return _NONE


@njit(cache=True, inline="always")
def update_signum(ctx, x, g, m, unused, lr, wd, hp):
    m = hp[0] * m + (1.0 - hp[0]) * g
    return x - lr * (np.sign(m) + wd * x), m, unused


# --- focus ------------------------------------------------------------------------------------
# Signum plus an attraction gamma * sign(x - x^) toward the bias-corrected EMA x^ of the parameter.
#   xbar <- b2 xbar + (1-b2) x   (with the current x, before the step);  x^ = xbar / (1 - b2^t)
#   decay on theta (toy experiments, default): x <- x - lr * (sign(m) + gamma sign(x - x^) + wd x)
#   decay on average (Algorithm 1):           x <- x - lr wd x^;  x <- x - lr (sign(m) + gamma sign(x - x^))
@njit(cache=True, inline="always")
def prep_focus(t, hp):
    return 1.0 - hp[1] ** t, 0.0


@njit(cache=True, inline="always")
def update_focus(ctx, x, g, m, xbar, lr, wd, hp):
    m = hp[0] * m + (1.0 - hp[0]) * g
    xbar = hp[1] * xbar + (1.0 - hp[1]) * x
    xhat = xbar / ctx[0]
    if hp[3] != 0.0:  # Algorithm 1: decay toward the average first
        x = x - lr * wd * xhat
        return x - lr * (np.sign(m) + hp[2] * np.sign(x - xhat)), m, xbar
    return x - lr * (np.sign(m) + hp[2] * np.sign(x - xhat) + wd * x), m, xbar


# --- sgd (heavy-ball momentum) ----------------------------------------------------------------
# b <- mu b + g;  x <- x - lr * (b + wd x)
@njit(cache=True, inline="always")
def update_sgd(ctx, x, g, buf, unused, lr, wd, hp):
    buf = hp[0] * buf + g
    return x - lr * (buf + wd * x), buf, unused


# --- lion (Chen et al. 2023) ------------------------------------------------------------------
# x <- x - lr * (sign(b1 m + (1-b1) g) + wd x);  m <- b2 m + (1-b2) g
@njit(cache=True, inline="always")
def update_lion(ctx, x, g, m, unused, lr, wd, hp):
    direction = np.sign(hp[0] * m + (1.0 - hp[0]) * g)
    m = hp[1] * m + (1.0 - hp[1]) * g
    return x - lr * (direction + wd * x), m, unused


# --- dispatch on a compile-time rule code (the kernel is specialised per code) -----------------
ADAM, SIGNUM, FOCUS, SGD, LION = 0, 1, 2, 3, 4


@njit(cache=True, inline="always")
def prepare(code, t, hp):
    if code == ADAM:
        return prep_adam(t, hp)
    if code == FOCUS:
        return prep_focus(t, hp)
    return prep_none(t, hp)


@njit(cache=True, inline="always")
def update(code, ctx, x, g, s0, s1, lr, wd, hp):
    if code == ADAM:
        return update_adam(ctx, x, g, s0, s1, lr, wd, hp)
    if code == SIGNUM:
        return update_signum(ctx, x, g, s0, s1, lr, wd, hp)
    if code == FOCUS:
        return update_focus(ctx, x, g, s0, s1, lr, wd, hp)
    if code == SGD:
        return update_sgd(ctx, x, g, s0, s1, lr, wd, hp)
    return update_lion(ctx, x, g, s0, s1, lr, wd, hp)


@dataclass(frozen=True)
class Rule:
    """Registry entry: the rule code and its hyperparameters (name -> default), in kernel order."""

    name: str
    code: int
    defaults: dict = field(default_factory=dict)
    doc: str = ""
    choices: dict = field(default_factory=dict)  # string-valued options -> numeric encoding

    def vector(self, params: dict) -> np.ndarray:
        """Hyperparameters as the float64 vector the kernel reads (validated elsewhere)."""
        values = []
        for key, default in self.defaults.items():
            value = params.get(key, default)
            if key in self.choices:
                value = self.choices[key][value]
            values.append(float(value))
        return np.asarray(values, dtype=np.float64)


RULES: dict[str, Rule] = {
    "adam": Rule("adam", ADAM, {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                 "Adam with decoupled weight decay"),
    "signum": Rule("signum", SIGNUM, {"beta1": 0.9}, "sign of the gradient EMA"),
    "focus": Rule("focus", FOCUS,
                  {"beta1": 0.9, "beta2": 0.9, "gamma": 0.2, "decay": "theta"},
                  "Signum + gamma * sign(theta - EMA(theta))",
                  {"decay": {"theta": 0.0, "average": 1.0}}),
    "sgd": Rule("sgd", SGD, {"momentum": 0.9}, "heavy-ball momentum SGD"),
    "lion": Rule("lion", LION, {"beta1": 0.9, "beta2": 0.99}, "Lion"),
}
