"""Counter-based random streams for the lockstep simulator, written once for numba and torch.

Every trajectory owns a 64-bit *key*, a hash of (seed, its physical grid coordinates, replicate).
Draw number ``n`` of that stream is ``mix64(key + n * GOLDEN)``: the SplitMix64 output function
applied to a counter.  Nothing is shared between trajectories, so a result depends only on its own
key -- never on --jobs, chunking, sharding or the machine.

Normal deviates come from Box-Muller.  ``log``, ``sin`` and ``cos`` are written here as plain
polynomials (a few ulp accurate) rather than libm calls, for two reasons: the loop over lanes then
vectorises (libm calls block SIMD), and the bits are the same on every CPU (no dispatch to
vendor-specific vector math libraries).  Tests compare them with NumPy's functions.  This is
generator version 1 (focuslab.config.ENGINE records it in every scan.json).

One definition, two backends.  ``mix64``, ``draw``, ``log_pos``, ``sincos_quarter`` and
``normal_pair`` below are plain functions over arithmetic and seven helpers: ``shr`` (logical right
shift of a uint64), ``u64`` (a uint64 constant), ``counter`` (n * GOLDEN mod 2**64), the bit casts
``as_f64``/``as_u64``, ``select`` (c ? a : b) and ``sqrt``.  ``bind`` makes a set of the functions
whose helpers are those of a backend: this module binds numba's (uint64 scalars, compiled inline
into the kernel); focuslab.toy.torch_kernel binds torch's (int64 tensors, whose wrapping arithmetic
and masked shifts give the same bits as uint64).
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit
from numba import types as nbtypes
from numba.extending import intrinsic

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951
_HALF_PI = 1.5707963267948966
_EXP_ONE = 0x3FF0000000000000  # exponent bits of 1.0
_MAGIC = 0x4330000000000000  # exponent bits of 2**52
_TWO52 = 4503599627370496.0


# --- the generator, written once (see the module docstring for the helpers) ---------------------
def mix64(z):
    """SplitMix64 finaliser: a bijection of uint64 with full avalanche."""
    z = (z ^ shr(z, 30)) * u64(_M1)  # noqa: F821
    z = (z ^ shr(z, 27)) * u64(_M2)  # noqa: F821
    return z ^ shr(z, 31)  # noqa: F821


def draw(key, n):
    """Draw number ``n`` (an integer) of the stream ``key``."""
    return mix64(key + counter(n))  # noqa: F821


def log_pos(x):
    """Natural log of a finite positive normal float64 (max error ~2 ulp)."""
    bits = as_u64(x)  # noqa: F821
    e_bits = shr(bits, 52) & u64(0x7FF)  # noqa: F821
    m = as_f64((bits & u64(0x000FFFFFFFFFFFFF)) | u64(_EXP_ONE))  # noqa: F821
    # exponent as float without a 64-bit int->float conversion (not in AVX2): magic-number trick
    e = as_f64(e_bits | u64(_MAGIC)) - (_TWO52 + 1023.0)  # noqa: F821
    big = m > _SQRT2
    m = select(big, m * 0.5, m)  # noqa: F821
    e = select(big, e + 1.0, e)  # noqa: F821
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


def normal_pair(key, n):
    """Two independent N(0, 1) deviates, the n-th pair of stream ``key`` (Box-Muller).

    Uses draws 2n and 2n+1.  The radius comes from u1 in (0, 1]; the angle is uniform on the circle,
    built as a uniform x in [-pi/4, pi/4) turned by a uniform quarter turn q (two random bits).
    """
    r1 = draw(key, 2 * n)
    r2 = draw(key, 2 * n + 1)
    u1 = as_f64((shr(r1, 12) + u64(1)) | u64(_MAGIC))  # noqa: F821
    u1 = (u1 - _TWO52) * 2.0 ** -52  # (0, 1], 52 random bits
    radius = sqrt(-2.0 * log_pos(u1))  # noqa: F821
    f = as_f64(shr(r2, 12) | u64(_EXP_ONE)) - 1.5  # [-0.5, 0.5)  # noqa: F821
    s, c = sincos_quarter(f * _HALF_PI)
    q = r2 & u64(3)  # noqa: F821
    swap = (q & u64(1)) != u64(0)  # noqa: F821
    flip = (q & u64(2)) != u64(0)  # noqa: F821
    a = select(swap, -s, c)  # noqa: F821
    b = select(swap, c, s)  # noqa: F821
    a = select(flip, -a, a)  # noqa: F821
    b = select(flip, -b, b)  # noqa: F821
    return radius * a, radius * b


CORE = ("mix64", "draw", "log_pos", "sincos_quarter", "normal_pair")
_PLAIN = {name: globals()[name] for name in CORE}  # before the compiled versions take these names


def rebind(functions: dict, scope: dict, module: str, wrap=lambda f: f) -> dict:
    """Copies of ``functions`` whose globals are ``scope``, held by a module registered as
    ``module`` (torch.compile resolves a function's globals through its module), each passed
    through ``wrap``; copies that call each other by name get each other."""
    import sys

    mod = types.ModuleType(module)
    mod.__dict__.update(scope)
    mod.__dict__["__name__"] = module
    sys.modules[module] = mod
    out = {}
    for name, fn in functions.items():
        clone = types.FunctionType(fn.__code__, mod.__dict__, fn.__name__, fn.__defaults__, fn.__closure__)
        clone.__doc__, clone.__module__ = fn.__doc__, module
        mod.__dict__[name] = out[name] = wrap(clone)
    return out


def bind(helpers: dict, wrap=lambda f: f, tag: str = "numba") -> types.SimpleNamespace:
    """The generator's functions with ``helpers`` as their globals (each passed through ``wrap``,
    e.g. numba's njit); they call each other within the returned namespace."""
    return types.SimpleNamespace(**rebind(_PLAIN, {**globals(), **helpers}, f"{__name__}._{tag}", wrap))


# --- numba's helpers and the compiled functions -----------------------------------------------
@intrinsic
def _f64_as_u64(typingctx, x):
    sig = nbtypes.uint64(nbtypes.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(nbtypes.uint64))

    return sig, codegen


@intrinsic
def _u64_as_f64(typingctx, x):
    sig = nbtypes.float64(nbtypes.uint64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(nbtypes.float64))

    return sig, codegen


@njit(inline="always")
def _shr(x, k):
    return x >> np.uint64(k)


@njit(inline="always")
def _u64(c):
    return np.uint64(c)


@njit(inline="always")
def _counter(n):
    return np.uint64(n) * GOLDEN


@njit(inline="always")
def _select(c, a, b):
    return a if c else b


@njit(inline="always")
def _sqrt(x):
    return np.sqrt(x)


NUMBA = bind({"shr": _shr, "u64": _u64, "counter": _counter, "as_f64": _u64_as_f64, "as_u64": _f64_as_u64,
              "select": _select, "sqrt": _sqrt}, njit(inline="always"))
normal_pair = NUMBA.normal_pair  # compiled versions under the usual names (kernel.py, tests)
log_pos = NUMBA.log_pos
sincos_quarter = NUMBA.sincos_quarter
draw = NUMBA.draw
mix64 = NUMBA.mix64


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
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        return z ^ (z >> np.uint64(31))
