"""The narrowing valley of the FOCUS paper (arXiv 2501.12243, Sec. 2).

    L(theta) = 1/2 * a * u^2 * v^2 - c * u,    (u, v) = theta . R(phi),
    R(phi)   = [[cos phi, -sin phi], [sin phi, cos phi]]   (theta a row vector)

so u = theta1 cos phi + theta2 sin phi runs along the valley floor and v across it; the valley
narrows as u grows (curvature a u^2 across it).  a is the sharpness.

The noise law (``noise_factor``, the one place it is written): the stochastic gradient
is the true gradient in theta coordinates multiplied element-wise by independent N(1, noise^2)
factors, 1 + noise * z with z a standard normal draw of the trajectory's stream.

Plain Python over arithmetic only: ``kernel.py`` compiles these functions into the numba kernel,
the plug-in engine (``plugin.py``) compiles them into its numba helpers, the torch path
(``torch_kernel.py``) evaluates them on tensors and the reference stepper (``reference.py``) on
floats, so every engine runs the same formulas in the same order, bit for bit (tested).
"""
from __future__ import annotations

import math

#: Initial parameters: theta_0 = INIT_SCALE * (z1, z2), with (z1, z2) pair 0 of the trajectory's stream.
INIT_SCALE = 1e-4


def rotate(theta1, theta2, cos_phi, sin_phi):
    """(u, v) = (theta1, theta2) . R(phi)."""
    return theta1 * cos_phi + theta2 * sin_phi, theta2 * cos_phi - theta1 * sin_phi


def loss_uv(u, v, sharpness, c):
    return 0.5 * sharpness * u * u * v * v - c * u


def grad_theta(u, v, sharpness, c, cos_phi, sin_phi):
    """dL/dtheta = R(phi) . (dL/du, dL/dv)."""
    gu = sharpness * u * v * v - c
    gv = sharpness * u * u * v
    return gu * cos_phi - gv * sin_phi, gu * sin_phi + gv * cos_phi


def noise_factor(noise, z):
    """The gradient's multiplicative noise for one coordinate: an N(1, noise^2) factor from the
    standard normal draw ``z``.  A coordinate of the stochastic gradient is ``g * noise_factor(noise, z)``."""
    return 1.0 + noise * z


def loss(theta1: float, theta2: float, sharpness: float, c: float, phi: float) -> float:
    """The loss at a parameter point (for tests, the reference stepper and plots)."""
    u, v = rotate(theta1, theta2, math.cos(phi), math.sin(phi))
    return loss_uv(u, v, sharpness, c)
