"""Counter-based random streams for the lockstep simulator.

Every trajectory owns a 64-bit *key*, a hash of (seed, its physical grid coordinates, replicate).
Draw number ``n`` of that stream is ``mix64(key + n * GOLDEN)``: the SplitMix64 output function
applied to a counter.  Nothing is shared between trajectories, so a result depends only on its own
key -- never on --jobs, chunking, sharding or the machine.

Normal deviates come from Box-Muller.  ``log``, ``sin`` and ``cos`` are written here as plain
polynomials (a few ulp accurate) rather than libm calls, for two reasons: the loop over lanes then
vectorises (libm calls block SIMD), and the bits are the same on every CPU (no dispatch to
vendor-specific vector math libraries).  Tests compare them with NumPy's functions.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951
_TWO_POW_M53 = 2.0 ** -53
_HALF_PI = 1.5707963267948966


@intrinsic
def _f64_as_u64(typingctx, x):
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint64))

    return sig, codegen


@intrinsic
def _u64_as_f64(typingctx, x):
    sig = types.float64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@njit(cache=True, inline="always")
def mix64(z):
    """SplitMix64 finaliser: a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def draw(key, n):
    """Draw number ``n`` (uint64) of the stream ``key``."""
    return mix64(key + np.uint64(n) * GOLDEN)


@njit(cache=True, inline="always")
def log_pos(x):
    """Natural log of a finite positive normal float64 (max error ~2 ulp)."""
    bits = _f64_as_u64(x)
    e_bits = (bits >> np.uint64(52)) & np.uint64(0x7FF)
    m = _u64_as_f64((bits & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000))
    # exponent as float without a 64-bit int->float conversion (not in AVX2): magic-number trick
    e = _u64_as_f64(e_bits | np.uint64(0x4330000000000000)) - (4503599627370496.0 + 1023.0)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)  # |s| <= 0.1716
    s2 = s * s
    p = 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    return e * _LN2 + 2.0 * s * p


@njit(cache=True, inline="always")
def sincos_quarter(x):
    """(sin x, cos x) for |x| <= pi/4 by Taylor polynomials (error < 1e-16)."""
    x2 = x * x
    s = -1.0 / 1307674368000.0
    s = s * x2 + 1.0 / 6227020800.0
    s = s * x2 - 1.0 / 39916800.0
    s = s * x2 + 1.0 / 362880.0
    s = s * x2 - 1.0 / 5040.0
    s = s * x2 + 1.0 / 120.0
    s = s * x2 - 1.0 / 6.0
    s = x + x * x2 * s
    c = 1.0 / 20922789888000.0
    c = c * x2 - 1.0 / 87178291200.0
    c = c * x2 + 1.0 / 479001600.0
    c = c * x2 - 1.0 / 3628800.0
    c = c * x2 + 1.0 / 40320.0
    c = c * x2 - 1.0 / 720.0
    c = c * x2 + 1.0 / 24.0
    c = c * x2 - 0.5
    c = 1.0 + x2 * c
    return s, c


@njit(cache=True, inline="always")
def normal_pair(key, n):
    """Two independent N(0, 1) deviates, the n-th pair of stream ``key`` (Box-Muller).

    Uses draws 2n and 2n+1.  The radius comes from u1 in (0, 1]; the angle is uniform on the circle,
    built as a uniform x in [-pi/4, pi/4) turned by a uniform quarter turn q (two random bits).
    """
    r1 = draw(key, np.uint64(2) * np.uint64(n))
    r2 = draw(key, np.uint64(2) * np.uint64(n) + np.uint64(1))
    u1 = _u64_as_f64(((r1 >> np.uint64(12)) + np.uint64(1)) | np.uint64(0x4330000000000000))
    u1 = (u1 - 4503599627370496.0) * 2.0 ** -52  # (0, 1], 52 random bits
    radius = np.sqrt(-2.0 * log_pos(u1))
    f = _u64_as_f64((r2 >> np.uint64(12)) | np.uint64(0x3FF0000000000000)) - 1.5  # [-0.5, 0.5)
    s, c = sincos_quarter(f * _HALF_PI)
    q = r2 & np.uint64(3)
    swap = (q & np.uint64(1)) != np.uint64(0)
    flip = (q & np.uint64(2)) != np.uint64(0)
    a = -s if swap else c
    b = c if swap else s
    a = -a if flip else a
    b = -b if flip else b
    return radius * a, radius * b


@njit(cache=True)
def normal_pairs(key, n0, count):
    """``count`` consecutive pairs starting at pair ``n0`` (for tests and the reference stepper)."""
    out = np.empty((count, 2))
    for k in range(count):
        out[k, 0], out[k, 1] = normal_pair(key, n0 + k)
    return out


def trajectory_key(seed: int, coords: tuple[float, ...], replicate: int) -> np.uint64:
    """Hash (seed, physical coordinates as float64 bits, replicate) into a stream key.

    Coordinates are hashed by value, so a cell gets the same noise in any grid that contains it.
    """
    return trajectory_keys(seed, np.asarray(coords, dtype=np.float64)[None, :],
                           np.asarray([replicate]))[0, 0]


def trajectory_keys(seed: int, coords: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Vectorised keys: ``coords`` is (cells, k) float64, result is (cells, replicates) uint64."""
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    with np.errstate(over="ignore"):
        h = np.full(coords.shape[0], _np_mix(np.uint64(seed) ^ np.uint64(0x243F6A8885A308D3)),
                    dtype=np.uint64)
        for j in range(coords.shape[1]):
            h = _np_mix(h ^ coords[:, j].view(np.uint64)) + GOLDEN
        reps = np.asarray(replicates, dtype=np.uint64)
        return _np_mix(h[:, None] ^ _np_mix(reps[None, :] + np.uint64(0x13198A2E03707344)))


def _np_mix(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))
