"""Plain-Python, one-trajectory reference stepper: the executable specification of the simulator.

Written directly from the paper's equations (arXiv 2501.12243, Sec. 2 and Algorithm 1), sharing no
code with the rules in ``focuslab/optimizers/builtin.py`` (only the noise law, defined once in
``landscape.py``, so that a new noise law is one edit); the tests compare the two trajectory by trajectory,
and ``benchmarks/bench_toy.py`` times this as the "reference code" baseline.  It consumes noise
given to it (``normals[t]`` is the N(0, 1) pair of step t, ``normals[0]`` the initial point), so it
can be fed exactly the draws the kernel uses.  Keywords follow focuslab.axes (sharpness, noise,
weight_decay, phi, c, lr); ``theta`` is the parameter vector.
"""
from __future__ import annotations

import math

from .landscape import INIT_SCALE, noise_factor


def _sign(x: float) -> float:
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return x  # 0.0 or NaN, as numpy.sign


def trajectory(optimizer: str, params: dict, *, sharpness: float, noise: float, weight_decay: float,
               phi: float, c: float, lr: float, normals, steps: int) -> dict:
    """Run one trajectory; return the path of theta and the paper's metrics."""
    normals = [(float(z1), float(z2)) for z1, z2 in normals]
    co, si = math.cos(phi), math.sin(phi)
    R = [[co, -si], [si, co]]
    theta = [INIT_SCALE * normals[0][0], INIT_SCALE * normals[0][1]]
    state = [[0.0, 0.0], [0.0, 0.0]]  # per coordinate: two slots
    path = [tuple(theta)]
    losses = []
    us = []
    for t in range(1, steps + 1):
        u = theta[0] * R[0][0] + theta[1] * R[1][0]
        v = theta[0] * R[0][1] + theta[1] * R[1][1]
        du = sharpness * u * v * v - c
        dv = sharpness * u * u * v
        g = [(du * R[0][0] + dv * R[0][1]) * noise_factor(noise, normals[t][0]),  # the noise law, written once
             (du * R[1][0] + dv * R[1][1]) * noise_factor(noise, normals[t][1])]
        for k in range(2):
            theta[k], state[k] = _step(optimizer, params, t, theta[k], g[k], state[k], lr, weight_decay)
        u = theta[0] * R[0][0] + theta[1] * R[1][0]
        v = theta[0] * R[0][1] + theta[1] * R[1][1]
        losses.append(0.5 * sharpness * u * u * v * v - c * u)
        us.append(u)
        path.append(tuple(theta))
    finite = all(math.isfinite(x) for x in losses)
    return {"path": path, "losses": losses, "final_loss": losses[-1],
            "min_loss": min((x for x in losses if x == x), default=math.inf),
            "progress": max((x for x in us if x == x), default=-math.inf),
            "diverged": not finite}


def _step(name, hp, t, x, g, s, lr, wd):
    if name == "adam":
        b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
        m = b1 * s[0] + (1 - b1) * g
        v = b2 * s[1] + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        return x - lr * (m_hat / (math.sqrt(v_hat) + eps) + wd * x), [m, v]
    if name in ("signum", "focus"):
        b1 = hp["beta1"]
        m = b1 * s[0] + (1 - b1) * g
        if name == "signum":
            return x - lr * (_sign(m) + wd * x), [m, 0.0]
        b2, gamma = hp["beta2"], hp["gamma"]
        xbar = b2 * s[1] + (1 - b2) * x
        xhat = xbar / (1 - b2 ** t)
        if hp.get("decay", "theta") == "average":  # Algorithm 1: decay toward the average first
            x = x - lr * wd * xhat
            return x - lr * (_sign(m) + gamma * _sign(x - xhat)), [m, xbar]
        return x - lr * (_sign(m) + gamma * _sign(x - xhat) + wd * x), [m, xbar]
    if name == "sgd":
        buf = hp["momentum"] * s[0] + g
        return x - lr * (buf + wd * x), [buf, 0.0]
    if name == "lion":
        b1, b2 = hp["beta1"], hp["beta2"]
        direction = _sign(b1 * s[0] + (1 - b1) * g)
        return x - lr * (direction + wd * x), [b2 * s[0] + (1 - b2) * g, 0.0]
    raise ValueError(f"unknown optimizer {name!r}")
