"""The plug-in engine's numba helpers (focuslab.toy.plugin): the landscape, the noise law and the
counter-based streams compiled once for every lane of a chunk at a time -- initial points, noisy
gradients (also drawn straight from a lane's stream, for closure queries), noise factors (for
gradients that carry their graph), and the kernel's running metrics."""
from __future__ import annotations

import types
from pathlib import Path

from numba import njit

from . import landscape
from .landscape import INIT_SCALE
from .rng import normal_pair


def _sources_fingerprint() -> str:
    import hashlib

    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("landscape.py", "rng.py", "plugin_kernels.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:10]


_FINGERPRINT = _sources_fingerprint()


def _jit(fn):
    """``njit(cache=True, nogil=True)`` under a name that carries the hash of the sources it
    compiles in (the landscape, the noise law, the generator, this file): numba's disk cache checks
    only the function's own file, so an edit to the landscape would otherwise load stale code."""
    clone = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_{_FINGERPRINT}")
    clone.__qualname__ = clone.__name__
    clone.__doc__ = fn.__doc__
    return njit(cache=True, nogil=True)(clone)


_rotate = njit(inline="always")(landscape.rotate)
_loss_uv = njit(inline="always")(landscape.loss_uv)
_grad_theta = njit(inline="always")(landscape.grad_theta)
_noise_factor_of = njit(inline="always")(landscape.noise_factor)
# cell parameter columns of ``cellp``
SHARP, NOISE, SLOPE, COS, SIN = range(5)


@_jit
def _pairs(keys, n, z):
    """z[i] = pair n of stream keys[i]."""
    for i in range(keys.shape[0]):
        z[i, 0], z[i, 1] = normal_pair(keys[i], n)


@_jit
def _init(theta, lane_pair, z):
    for j in range(theta.shape[0]):
        p = lane_pair[j]
        theta[j, 0] = INIT_SCALE * z[p, 0]
        theta[j, 1] = INIT_SCALE * z[p, 1]


@_jit
def _noisy_grad(theta, grad, lane_cell, lane_pair, cellp, z):
    """The kernel's stochastic gradient, in its order of operations."""
    for j in range(theta.shape[0]):
        c = lane_cell[j]
        co, si = cellp[c, COS], cellp[c, SIN]
        u, v = _rotate(theta[j, 0], theta[j, 1], co, si)
        g1, g2 = _grad_theta(u, v, cellp[c, SHARP], cellp[c, SLOPE], co, si)
        p = lane_pair[j]
        grad[j, 0] = g1 * _noise_factor_of(cellp[c, NOISE], z[p, 0])
        grad[j, 1] = g2 * _noise_factor_of(cellp[c, NOISE], z[p, 1])


@_jit
def _noisy_grad_direct(theta, grad, lane_cell, lane_pair, cellp, pair_keys, n):
    """As _noisy_grad, drawing pair n of each lane's stream itself (closure queries)."""
    for j in range(theta.shape[0]):
        c = lane_cell[j]
        co, si = cellp[c, COS], cellp[c, SIN]
        u, v = _rotate(theta[j, 0], theta[j, 1], co, si)
        g1, g2 = _grad_theta(u, v, cellp[c, SHARP], cellp[c, SLOPE], co, si)
        z1, z2 = normal_pair(pair_keys[lane_pair[j]], n)
        grad[j, 0] = g1 * _noise_factor_of(cellp[c, NOISE], z1)
        grad[j, 1] = g2 * _noise_factor_of(cellp[c, NOISE], z2)


@_jit
def _noise_factor_direct(xi, lane_cell, lane_pair, cellp, pair_keys, n):
    for j in range(xi.shape[0]):
        c = lane_cell[j]
        z1, z2 = normal_pair(pair_keys[lane_pair[j]], n)
        xi[j, 0] = _noise_factor_of(cellp[c, NOISE], z1)
        xi[j, 1] = _noise_factor_of(cellp[c, NOISE], z2)


@_jit
def _noise_factor(xi, lane_cell, lane_pair, cellp, z):
    for j in range(xi.shape[0]):
        c, p = lane_cell[j], lane_pair[j]
        xi[j, 0] = _noise_factor_of(cellp[c, NOISE], z[p, 0])
        xi[j, 1] = _noise_factor_of(cellp[c, NOISE], z[p, 1])


@_jit
def _track(theta, lane_cell, cellp, lmin, umax, ok):
    """The kernel's running metrics after a step: min loss, max u, and NaN/inf loss = divergence."""
    for j in range(theta.shape[0]):
        c = lane_cell[j]
        u, v = _rotate(theta[j, 0], theta[j, 1], cellp[c, COS], cellp[c, SIN])
        L = _loss_uv(u, v, cellp[c, SHARP], cellp[c, SLOPE])
        lmin[j] = min(L, lmin[j])
        umax[j] = max(u, umax[j])
        ok[j] = ok[j] if L - L == 0.0 else 0.0


@_jit
def _losses(theta, lane_cell, cellp, out):
    for j in range(theta.shape[0]):
        c = lane_cell[j]
        u, v = _rotate(theta[j, 0], theta[j, 1], cellp[c, COS], cellp[c, SIN])
        out[j] = _loss_uv(u, v, cellp[c, SHARP], cellp[c, SLOPE])
