"""The lockstep trajectory kernel: many independent trajectories advanced step by step together,
compiled once per update rule (and option values) with the rule as a compile-time constant.
The kernel knows no optimizer by name: it compiles whatever rule it is handed (``prep`` and
``update`` functions, focuslab.optimizers.builtin's), so the engine sits below the optimizers.

Work layout.  A kernel call gets cells x lrs x replicates.  A *block* holds one cell, a tile of
its learning rates and a tile of its replicates, flattened into at most LANES lanes (lr-major,
replicate fastest).  Every lr and optimizer of a cell sees the same noise realisations (common
random numbers: a lane's random key depends on (cell, replicate) only), so each step draws ONE
normal pair per replicate and copies it to that replicate's lanes for every lr; with 20 lrs the
generator costs 1/20 of what a per-lane draw would.  Cell parameters are loop invariants of a
block, and per-step scalars (bias corrections) are tabulated once per call.

Why it vectorises.  The lane loop is long and flat; all per-lane data of a block lives in ONE
locally allocated (NROW, LANES) array whose shape is a compile-time constant, so LLVM knows rows
never overlap and vectorises across lanes without run-time alias checks (with a run-time row
length, or one array per quantity, it exceeds its alias-check budget and emits scalar code).  The
rule is bound at compile time (a template cloned per rule with ``prep``/``update`` as globals), so
there is no switch on a rule code inside the lane loop: on AVX2 such a switch alone made LLVM emit
scalar code (tests/test_kernel_targets.py checks the packed instructions for named CPU targets).

Exact arithmetic: no fast-math, so no FMA contraction, and the generator uses polynomials instead of
libm; results are the same bits on every CPU target (tested across NUMBA_CPU_NAME targets).

Per trajectory:
  * initial theta = 1e-4 * (z1, z2) from pair 0 of its stream; step t uses pair t;
  * final_loss = L(theta_T); min_loss = min_t L(theta_t) and progress = max_t u_t over t = 1..T
    (as in the paper's reference scripts); diverged = any non-finite loss or final state.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
from numba import njit

from ..axes import COLUMN, cell_array
from . import landscape
from .rng import normal_pair  # noqa: F401  (a global of the template)

LANES = 256
INIT_SCALE = landscape.INIT_SCALE
# Rows of the block state: the mutable state of every lane, its noise pair and its learning rate.
THETA1, THETA2, S10, S11, S20, S21, U, V, LMIN, UMAX, OK, Z1, Z2, LR = range(14)
NROW = 14
# Columns of the cell-coordinate array (focuslab.axes.CELL_AXES order).
SHARPNESS, NOISE, WEIGHT_DECAY, PHI, C = (COLUMN[n] for n in ("sharpness", "noise", "weight_decay", "phi", "c"))

# The landscape, compiled inline (globals of the template).
rotate = njit(inline="always")(landscape.rotate)
loss_uv = njit(inline="always")(landscape.loss_uv)
grad_theta = njit(inline="always")(landscape.grad_theta)
noise_factor = njit(inline="always")(landscape.noise_factor)


def _simulate(hp, cells, lrs, keys, steps, final_loss, min_loss, progress, diverged):
    """Template: run every (cell, lr, replicate) lane for ``steps`` steps, writing the four metric
    arrays (cells, lrs, replicates).  ``prep`` and ``update`` are the rule's, bound per kernel."""
    n_cells, n_lr, n_rep = cells.shape[0], lrs.shape[0], keys.shape[1]
    ctx = table(hp, steps)  # noqa: F821
    lr_tile = min(n_lr, LANES)
    rep_tile = max(1, min(n_rep, LANES // lr_tile))
    rep_tile = -(-n_rep // -(-n_rep // rep_tile))  # equal tiles: 50 replicates as 5 x 10, not 4 x 12 + 2
    S = np.empty((NROW, LANES))
    z1 = np.empty(LANES)
    z2 = np.empty(LANES)
    key = np.empty(LANES, dtype=np.uint64)
    for i in range(n_cells):
        sharpness, noise, wd, c = cells[i, SHARPNESS], cells[i, NOISE], cells[i, WEIGHT_DECAY], cells[i, C]
        cos_phi, sin_phi = math.cos(cells[i, PHI]), math.sin(cells[i, PHI])
        for r0 in range(0, n_rep, rep_tile):
            nr = min(rep_tile, n_rep - r0)
            for r in range(nr):
                key[r] = keys[i, r0 + r]
            for l0 in range(0, n_lr, lr_tile):
                nl = min(lr_tile, n_lr - l0)
                n = nl * nr
                for r in range(nr):
                    z1[r], z2[r] = normal_pair(key[r], 0)
                for l in range(nl):
                    for r in range(nr):
                        j = l * nr + r
                        S[LR, j] = lrs[l0 + l]
                        S[THETA1, j] = INIT_SCALE * z1[r]
                        S[THETA2, j] = INIT_SCALE * z2[r]
                        S[U, j], S[V, j] = rotate(S[THETA1, j], S[THETA2, j], cos_phi, sin_phi)
                        S[S10, j] = 0.0
                        S[S11, j] = 0.0
                        S[S20, j] = 0.0
                        S[S21, j] = 0.0
                        S[LMIN, j] = np.inf
                        S[UMAX, j] = -np.inf
                        S[OK, j] = 1.0
                for t in range(1, steps + 1):
                    cx = ctx[t]
                    for r in range(nr):  # one normal pair per replicate ...
                        z1[r], z2[r] = normal_pair(key[r], t)
                    for l in range(nl):  # ... shared by all of its lanes
                        for r in range(nr):
                            S[Z1, l * nr + r] = z1[r]
                            S[Z2, l * nr + r] = z2[r]
                    for j in range(n):
                        g1, g2 = grad_theta(S[U, j], S[V, j], sharpness, c, cos_phi, sin_phi)
                        g1 = g1 * noise_factor(noise, S[Z1, j])
                        g2 = g2 * noise_factor(noise, S[Z2, j])
                        lr = S[LR, j]
                        y1, S[S10, j], S[S11, j] = update(cx, S[THETA1, j], g1, S[S10, j], S[S11, j], lr, wd, hp)  # noqa: F821
                        y2, S[S20, j], S[S21, j] = update(cx, S[THETA2, j], g2, S[S20, j], S[S21, j], lr, wd, hp)  # noqa: F821
                        S[THETA1, j] = y1
                        S[THETA2, j] = y2
                        u, v = rotate(y1, y2, cos_phi, sin_phi)
                        S[U, j] = u
                        S[V, j] = v
                        L = loss_uv(u, v, sharpness, c)
                        S[LMIN, j] = min(L, S[LMIN, j])
                        S[UMAX, j] = max(u, S[UMAX, j])
                        S[OK, j] = S[OK, j] if L - L == 0.0 else 0.0  # NaN/inf loss marks divergence
                for l in range(nl):
                    for r in range(nr):
                        j = l * nr + r
                        state = S[THETA1, j] + S[THETA2, j] + S[S10, j] + S[S11, j] + S[S20, j] + S[S21, j]
                        final_loss[i, l0 + l, r0 + r] = loss_uv(S[U, j], S[V, j], sharpness, c)
                        min_loss[i, l0 + l, r0 + r] = S[LMIN, j]
                        progress[i, l0 + l, r0 + r] = S[UMAX, j]
                        diverged[i, l0 + l, r0 + r] = 0 if (S[OK, j] == 1.0 and np.isfinite(state)) else 1


def _prep_table(hp, steps):
    """Template: (steps + 1, k) per-step scalars ``prep(t, hp)`` for t = 1..steps (row 0 unused)."""
    n_ctx = len(prep(1, hp))  # noqa: F821
    ctx = np.zeros((steps + 1, n_ctx))
    for t in range(1, steps + 1):
        c_t = prep(t, hp)  # noqa: F821
        for q in range(n_ctx):
            ctx[t, q] = c_t[q]
    return ctx


def _clone(template, scope: dict, qualname: str):
    fn = types.FunctionType(template.__code__, scope, qualname)
    fn.__qualname__ = qualname
    return fn


def _fingerprint(*extra_files) -> str:
    """Hash of the sources the compiled code comes from.  numba's disk cache checks only the
    template's own file; naming each kernel after this hash makes an edit to a rule (its module's
    file, ``extra_files``), the landscape or the generator compile afresh instead of loading stale
    machine code."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in (*extra_files, here / "landscape.py", here / "rng.py", here / "kernel.py"):
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:10]


@lru_cache(maxsize=None)
def _rule_fingerprint(source_file: str) -> str:
    return _fingerprint(source_file)


def fingerprint(rule) -> str:
    """The fingerprint of the kernel of ``rule``: the engine's sources and the rule's own module."""
    return _rule_fingerprint(inspect.getsourcefile(rule.prep))


_KERNELS: dict = {}
_TABLES: dict = {}


def kernel_for(rule, options: tuple = ()):
    """The compiled kernel of ``rule`` (an update rule: ``name``, ``prep``, ``update_function``,
    ``hyper_values``, ``option_values``; focuslab.optimizers.builtin defines them) with
    compile-time ``options`` ((name, value), ...).

    The template is cloned with the rule's ``prep``/``update`` bound as globals (numba freezes
    globals at compile time) and given its own name, so each rule has its own on-disk cache entry
    and a second process loads it instead of compiling.
    """
    key = (rule.name, options)
    if key not in _KERNELS:
        scope = dict(globals())
        scope["prep"] = njit(inline="always")(rule.prep)
        scope["update"] = njit(inline="always")(rule.update_function(options))
        scope["table"] = njit(inline="always")(_clone(_prep_table, scope, "table"))
        tag = "_".join([rule.name, *(f"{k}_{v}" for k, v in options)])
        fn = _clone(_simulate, scope, f"simulate_{tag}_{fingerprint(rule)}")
        fn.__doc__ = f"{_simulate.__doc__}\n\nBuilt for: {rule.name} {dict(options)}"
        _KERNELS[key] = njit(cache=True, error_model="numpy", nogil=True)(fn)
    return _KERNELS[key]


def prep_table(rule):
    """``table(hp, steps)``: the per-step scalars of ``rule`` exactly as its kernel computes them
    (the torch path uploads this table rather than recomputing powers in another library)."""
    if rule.name not in _TABLES:
        scope = dict(globals())
        scope["prep"] = njit(inline="always")(rule.prep)
        _TABLES[rule.name] = njit(cache=True)(_clone(_prep_table, scope,
                                                     f"prep_table_{rule.name}_{fingerprint(rule)}"))
    return _TABLES[rule.name]


def run(rule, settings: dict, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray,
        steps: int) -> dict[str, np.ndarray]:
    """Run the kernel of ``rule`` with ``settings`` (its resolved hyperparameters and options,
    see Builtin.resolve).  cells: (n_cells, 5) coordinates in CELL_AXES order (phi in radians);
    lrs: (n_lr,); keys: (n_cells, n_rep) uint64.  Returns the per-lane metrics, shape
    (cells, lrs, replicates)."""
    kernel = kernel_for(rule, rule.option_values(settings))
    shape = (cells.shape[0], lrs.shape[0], keys.shape[1])
    out = {name: np.empty(shape) for name in ("final_loss", "min_loss", "progress")}
    out["diverged"] = np.empty(shape, dtype=np.uint8)
    kernel(rule.hyper_values(settings), np.ascontiguousarray(cells, dtype=np.float64),
           np.ascontiguousarray(lrs, dtype=np.float64), np.ascontiguousarray(keys, dtype=np.uint64),
           int(steps), out["final_loss"], out["min_loss"], out["progress"], out["diverged"])
    return out


def warm(rule, settings: dict) -> None:
    """Compile (or load from the disk cache) the kernel for these settings, e.g. before starting
    worker processes, which then load it instead of each compiling it."""
    cell = cell_array(sharpness=1.0, noise=0.0, weight_decay=0.0, phi=0.0, c=0.0)
    run(rule, settings, cell, np.ones(1), np.zeros((1, 1), np.uint64), 1)
