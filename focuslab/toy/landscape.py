"""The narrowing valley of the FOCUS paper (arXiv 2501.12243, Sec. 2).

    L(theta) = 1/2 * a * u^2 * v^2 - c * u,    (u, v) = theta . R(phi),
    R(phi)   = [[cos phi, -sin phi], [sin phi, cos phi]]   (theta a row vector)

so u = theta1 cos phi + theta2 sin phi runs along the valley floor and v across it; the valley
narrows as u grows (curvature a u^2 across it).  The stochastic gradient is the true gradient in
theta coordinates multiplied element-wise by independent N(1, sigma^2) factors.
"""
from __future__ import annotations

import math

from numba import njit


@njit(cache=True, inline="always")
def rotate(x1, x2, cphi, sphi):
    """(u, v) = (x1, x2) . R(phi)."""
    return x1 * cphi + x2 * sphi, x2 * cphi - x1 * sphi


@njit(cache=True, inline="always")
def loss_uv(u, v, a, c):
    return 0.5 * a * u * u * v * v - c * u


@njit(cache=True, inline="always")
def grad_theta(u, v, a, c, cphi, sphi):
    """dL/dtheta = R(phi) . (dL/du, dL/dv)."""
    gu = a * u * v * v - c
    gv = a * u * u * v
    return gu * cphi - gv * sphi, gu * sphi + gv * cphi


def loss(theta1: float, theta2: float, a: float, c: float, phi: float) -> float:
    """Plain-Python loss (for tests, the reference stepper and plots)."""
    u, v = rotate(theta1, theta2, math.cos(phi), math.sin(phi))
    return loss_uv(u, v, a, c)
