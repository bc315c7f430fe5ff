"""The toy for any torch optimizer: every (cell, lr, replicate) trajectory an independent
two-parameter model, stepped by the optimizer's own ``step()``.

What is shared with the numba kernel (focuslab.toy.kernel), not rewritten: the landscape
(toy/landscape.py, compiled by numba here too), the counter-based noise streams (the kernel's keys
and draw numbering: pair 0 of a trajectory's stream gives its initial point, pair t the noise of
step t, shared by every lr and optimizer of a cell: common random numbers), the four metrics and
the divergence rule.  So on the same grid a plug-in and a built-in see the very same gradients,
and ``torch.optim.AdamW`` on the toy reproduces the native ``adam`` (tests/test_plugin.py).

How an optimizer runs is settled before any work by focuslab.optimizers.toyprobe (which runs
this engine's ``trial`` in each mode and compares the results bit for bit), never assumed; the
modes, fastest first:

* **batched** -- all trajectories of one (weight decay, lr) pair are the rows of ONE (n, 2)
  parameter of one optimizer instance.  Chosen only when a probe run of the optimizer on six
  trajectories of very different scales, 100 steps, gives *bit for bit* the parameters that six
  separate instances with one (2,)-shaped parameter each give: element-wise rules (Adam,
  AdaBelief, Lion, RAdam, ...).  Each chunk also carries two *sentinel* trajectories stepped as
  separate instances beside the batch; if one ever differs from its batched row (a coupling the
  probe's 100 steps did not reach), the chunk is recomputed in the plan's ``fallback`` mode.
* **vmapped** -- one instance per (weight decay, lr) pair whose own ``step()`` runs under
  ``torch.func.vmap`` over the pair's trajectories, each a (2,)-shaped parameter
  (focuslab.toy.vmapped): per-tensor rules (AdamP, SGD-SaI, Muon, Conda, SOAP, Lamb, ...) at
  hundreds of ns per trajectory-step instead of tens of µs.  Sentinels as in batched mode.
* **tensors** -- one instance per (weight decay, lr) pair holding n (2,)-shaped parameters, one per
  trajectory: for rules with per-tensor reductions (SGD-SaI's SNR, Muon's orthogonalisation,
  Conda's projections), when the probe finds that n tensors in one instance step exactly as n
  instances (no quantity shared across tensors).  Exact, but microseconds per trajectory-step: the
  optimizer's Python runs once per tensor.
* **single** -- one optimizer instance per trajectory, whose parameter is a (2,) tensor: the
  definition itself, for rules that share quantities across all of an instance's tensors (global
  norms, step-size estimates).  Exact and slowest.
* Optimizers that need a closure (several gradient queries per step) get one: the k-th gradient
  of step t (k = 0, 1, ...) uses pair ``t + k * 2**40`` of the trajectory's stream, so the first
  query is the kernel's draw; the closure returns the noiseless loss (the toy's noise is a
  gradient noise).  Optimizers that take Hessian-vector products of ``p.grad`` (SophiaH,
  AdaHessian: ``create_graph=True``) get a gradient with its graph: the noisy gradient
  g(theta) * xi, whose Jacobian is diag(xi) H, so their Hutchinson estimates see the same noise.
* Optimizers that draw random numbers themselves (Hutchinson vectors) are *stochastic*: their
  separability is probed with torch's random functions replaced by constants (an element-wise
  draw cannot couple trajectories), and their draws come from torch's generator seeded per chunk
  from the chunk's keys, so a scan repeats exactly for its config; unlike the noise streams,
  these draws depend on the chunk layout (which the config fixes).

Any exception in a chunk (an optimizer's data-dependent branch that splits the trajectories of a
vmapped run, say) recomputes the whole chunk in the plan's ``fallback`` mode -- the next mode down
that the probe also found exact -- since a failed step may have left in-place updates half
applied.

Weight decay: the cell's omega is the optimizer's ``weight_decay`` argument; the probe reports
whether the class decays decoupled (theta <- theta - lr * omega * theta, as AdamW) or otherwise
(L2 added to the gradient, as torch.optim.Adam), and an optimizer without ``weight_decay`` refuses
a map with omega > 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import FocuslabError
from . import landscape
from .plugin_kernels import (COS, NOISE, SHARP, SIN, SLOPE, _init, _losses, _noise_factor, _noise_factor_direct,
                             _noisy_grad, _noisy_grad_direct, _pairs, _track)

SENTINELS = 2
QUERY = 1 << 40  # the k-th gradient query of step t uses pair t + k * QUERY
BLOCK = 1024  # trajectories held at once in single mode

@dataclass(frozen=True)
class Plan:
    """How an external optimizer runs on the toy (``probe``'s findings)."""

    mode: str  # "batched", "vmapped", "tensors" or "single"
    closure: bool  # step(closure) with gradient queries
    graph: bool  # p.grad carries its graph (Hessian-vector products)
    stochastic: bool  # draws random numbers itself
    decay: str  # "decoupled", "L2", "other", or "none" (no weight_decay argument)
    why: str  # why single (or "element-wise")
    ns_per_step: float  # one worker, per trajectory-step, measured by the probe
    fallback: str = "single"  # the next exact mode down: where a chunk goes after an exception
    probe_steps: int = 100  # how many steps the probe compared

    def to_dict(self) -> dict:
        return asdict(self)


def _torch():
    try:
        import torch
    except ImportError:
        raise FocuslabError("external optimizers on the toy run through torch, which is not installed: "
                            "pip install torch (see README for the CPU build)") from None
    return torch


# --- the problem: lanes, cells, streams -------------------------------------------------------
class _Problem:
    """Lanes of a chunk (cells x lrs x replicates), ordered so that every (weight decay, lr) pair
    is a contiguous run of lanes (cells in order, then replicates), with the cells' parameters and
    the streams' keys."""

    def __init__(self, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray):
        from ..axes import COLUMN

        self.cells, self.lrs, self.keys = cells, np.asarray(lrs, dtype=np.float64), keys
        n_c, n_r = keys.shape
        wd = cells[:, COLUMN["weight_decay"]]
        phi = cells[:, COLUMN["phi"]]
        self.cellp = np.column_stack([cells[:, COLUMN["sharpness"]], cells[:, COLUMN["noise"]],
                                      cells[:, COLUMN["c"]], [math.cos(p) for p in phi],
                                      [math.sin(p) for p in phi]]).astype(np.float64)
        self.pair_keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)  # pair = cell * n_r + rep
        lane_cell, lane_lr, lane_rep, groups = [], [], [], []
        for w in dict.fromkeys(wd.tolist()):
            members = np.flatnonzero(wd == w)
            for li, lr in enumerate(self.lrs):
                start = len(lane_cell)
                for c in members:
                    lane_cell += [c] * n_r
                    lane_lr += [li] * n_r
                    lane_rep += list(range(n_r))
                groups.append((start, len(lane_cell), float(lr), float(w)))
        self.lane_cell = np.asarray(lane_cell, dtype=np.int64)
        self.lane_lr = np.asarray(lane_lr, dtype=np.int64)
        self.lane_rep = np.asarray(lane_rep, dtype=np.int64)
        self.lane_pair = self.lane_cell * n_r + self.lane_rep
        self.lane_wd = wd[self.lane_cell]
        self.groups = groups
        self.n = len(lane_cell)

    def subset(self, lanes: np.ndarray) -> dict:
        return {"cell": self.lane_cell[lanes], "pair": self.lane_pair[lanes], "lr": self.lrs[self.lane_lr[lanes]],
                "wd": self.lane_wd[lanes]}


class _Lanes:
    """Parameters, gradients and running metrics of a set of lanes in one storage, with the
    optimizer instances that step them: "batched", one instance per (wd, lr) run of lanes holding
    one (n, 2) parameter; "vmapped", one instance per run stepping its lanes under vmap
    (focuslab.toy.vmapped); "tensors", one instance per run holding n (2,) parameters; "single",
    one instance per lane.  Every parameter is a view of the storage ``X``, every gradient a view
    of ``G``, so numba reads and writes all lanes at once."""

    def __init__(self, entry, plan: Plan, prob: _Problem, lanes: np.ndarray, mode: str, z0: np.ndarray,
                 spread: np.ndarray | None = None):
        torch = _torch()
        self.torch, self.entry, self.plan, self.prob, self.mode = torch, entry, plan, prob, mode
        n = len(lanes)
        sub = prob.subset(lanes)
        self.cell, self.pair = sub["cell"], sub["pair"]
        self.X = torch.empty((n, 2), dtype=torch.float64)
        self.G = torch.zeros((n, 2), dtype=torch.float64)
        self.x, self.g = self.X.numpy(), self.G.numpy()
        _init(self.x, self.pair, z0)
        if spread is not None:  # the probe: some lanes start far from the origin
            self.x *= spread[:, None]
        self.lmin = np.full(n, np.inf)
        self.umax = np.full(n, -np.inf)
        self.ok = np.ones(n)
        lr, wd = sub["lr"], sub["wd"]
        if mode == "single":
            runs = [(i, i + 1) for i in range(n)]
        else:  # runs of equal (wd, lr): contiguous by construction of the lane order
            cuts = [0] + [i for i in range(1, n) if lr[i] != lr[i - 1] or wd[i] != wd[i - 1]] + [n]
            runs = list(zip(cuts[:-1], cuts[1:]))
        self.slices, self.params, self.opts, self.vm = [], [], [], None
        if mode == "vmapped":
            from .vmapped import VmappedRuns

            self.slices, runs = runs, []
            self.vm = VmappedRuns(entry, self, self.slices, lr, wd)
        for a, b in runs:
            if mode == "batched":
                ps = [torch.nn.Parameter(self.X[a:b], requires_grad=True)]
            else:
                ps = [torch.nn.Parameter(self.X[i], requires_grad=True) for i in range(a, b)]
            self.slices.append((a, b))
            self.params.append(ps)
            self.opts.append(_build(entry, ps, float(lr[a]), float(wd[a])))
        self.ptrs = [[p.data_ptr() for p in ps] for ps in self.params]
        if plan.graph:
            cp = torch.from_numpy(prob.cellp[self.cell])
            self.tsharp, self.tnoise, self.tslope = cp[:, SHARP], cp[:, NOISE], cp[:, SLOPE]
            self.tcos, self.tsin = cp[:, COS], cp[:, SIN]
            self.xi = np.empty((n, 2))

    def _views(self, k: int, storage):
        a, b = self.slices[k]
        return [storage[a:b]] if self.mode == "batched" else [storage[i] for i in range(a, b)]

    # gradients ---------------------------------------------------------------------------------
    def _graph_grads(self, k: int):
        """Instance k's noisy gradients with their graph (one graph per instance, so that one
        instance's Hessian-vector products never free another's graph)."""
        torch = self.torch
        a, b = self.slices[k]
        ps = self.params[k]
        with torch.enable_grad():
            theta = ps[0].view(-1, 2) if len(ps) == 1 else torch.stack(ps)
            u, v = landscape.rotate(theta[:, 0], theta[:, 1], self.tcos[a:b], self.tsin[a:b])
            loss = landscape.loss_uv(u, v, self.tsharp[a:b], self.tslope[a:b]).sum()
            grads = torch.autograd.grad(loss, ps, create_graph=True)
        for p, g, f in zip(ps, grads, self._views(k, torch.from_numpy(self.xi))):
            p.grad = g * f.view_as(g)

    def _attach(self, k: int):
        if self.vm is not None:  # vmapped runs read the storage G itself
            return
        for p, want in zip(self.params[k], self._views(k, self.G)):
            if p.grad is None or p.grad.data_ptr() != want.data_ptr() or p.grad.shape != want.shape:
                p.grad = want

    def set_grads(self, z):
        """Every lane's noisy gradient for the pairs ``z`` (rows: pair index, shared by all lanes)."""
        if self.plan.graph:
            _noise_factor(self.xi, self.cell, self.pair, self.prob.cellp, z)
            for k in range(len(self.opts)):
                self._graph_grads(k)
            return
        _noisy_grad(self.x, self.g, self.cell, self.pair, self.prob.cellp, z)
        for k in range(len(self.opts)):
            self._attach(k)

    def set_grads_of(self, k: int, n: int):
        """Instance k's lanes only, draw number n straight from their streams (closure queries)."""
        a, b = self.slices[k]
        keys = self.prob.pair_keys
        if self.plan.graph:
            _noise_factor_direct(self.xi[a:b], self.cell[a:b], self.pair[a:b], self.prob.cellp, keys, n)
            self._graph_grads(k)
            return
        _noisy_grad_direct(self.x[a:b], self.g[a:b], self.cell[a:b], self.pair[a:b], self.prob.cellp, keys, n)
        self._attach(k)

    # stepping ----------------------------------------------------------------------------------
    def step(self, t: int, z_for):
        """Step t of every lane; ``z_for(n)`` gives the pairs of draw number n for all streams."""
        if self.vm is not None:
            self.vm.step(self, t, z_for)
        elif self.plan.closure:
            for k, opt in enumerate(self.opts):
                opt.step(self._closure(k, t))
        else:
            self.set_grads(z_for(t))
            for opt in self.opts:
                opt.step()
        self._relink()
        _track(self.x, self.cell, self.prob.cellp, self.lmin, self.umax, self.ok)

    def _closure(self, k: int, t: int):
        torch = self.torch
        a, b = self.slices[k]
        count = [0]

        def closure():
            self.set_grads_of(k, t + count[0] * QUERY)
            count[0] += 1
            out = np.empty(b - a)
            _losses(self.x[a:b], self.cell[a:b], self.prob.cellp, out)
            return torch.tensor(float(out.sum()), dtype=torch.float64)

        return closure

    def _relink(self):
        """An optimizer that rebinds ``p.data`` would detach it from the storage: copy back."""
        for k, ps in enumerate(self.params):
            for i, (p, view) in enumerate(zip(ps, self._views(k, self.X))):
                if p.data_ptr() != self.ptrs[k][i]:
                    view.copy_(p.detach().view_as(view))
                    p.data = view
                    self.ptrs[k][i] = p.data_ptr()

    def finish(self) -> dict:
        torch = self.torch
        n = len(self.cell)
        final = np.empty(n)
        _losses(self.x, self.cell, self.prob.cellp, final)
        finite = np.isfinite(self.x).all(axis=1)
        if self.vm is not None:
            self.vm.finite(finite)
        for k, (ps, opt) in enumerate(zip(self.params, self.opts)):
            a, b = self.slices[k]
            rows = [slice(a, b)] if self.mode == "batched" else [slice(i, i + 1) for i in range(a, b)]
            for p, row in zip(ps, rows):
                for value in opt.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape and value.is_floating_point():
                        v = value.detach().reshape(row.stop - row.start, -1).double().numpy()
                        finite[row] &= np.isfinite(v).all(axis=1)
        diverged = ~((self.ok == 1.0) & finite)
        return {"final_loss": final, "min_loss": self.lmin, "progress": self.umax, "diverged": diverged}


def _build(entry, params, lr: float, wd: float):
    return entry.build_torch([{"params": list(params), "weight_decay": wd}], lr)


# --- running a chunk --------------------------------------------------------------------------
def _rng_seed(keys: np.ndarray, lrs: np.ndarray) -> int:
    h = int(np.bitwise_xor.reduce(np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)))
    h ^= int(np.ascontiguousarray(lrs, dtype=np.float64).view(np.uint64).sum(dtype=np.uint64))
    return h % (2 ** 63)


def _streams(prob: _Problem):
    z = np.empty((len(prob.pair_keys), 2))

    def z_for(n):
        _pairs(prob.pair_keys, n, z)
        return z

    return z_for


def run(entry, plan: Plan, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray, steps: int,
        check_sentinels: bool = True, report=None) -> dict[str, np.ndarray]:
    """Same contract as focuslab.toy.kernel.run: per-lane metrics of shape (cells, lrs, replicates).
    ``report(fraction)``, when given, is called as the work advances (progress of long chunks)."""
    torch = _torch()
    torch.set_num_threads(1)
    cells = np.ascontiguousarray(cells, dtype=np.float64)
    prob = _Problem(cells, lrs, keys)
    torch.manual_seed(_rng_seed(keys, prob.lrs))
    z_for = _streams(prob)
    z0 = z_for(0).copy()
    lanes = np.arange(prob.n)
    whole = plan.mode in ("batched", "vmapped")  # one storage for the chunk; else blocks of BLOCK lanes
    blocks = [lanes] if whole else [lanes[i:i + BLOCK] for i in range(0, prob.n, BLOCK)]
    results = []
    for b, block in enumerate(blocks):
        try:
            main = _Lanes(entry, plan, prob, block, plan.mode, z0)
            sentinel = None
            if plan.mode != "single" and check_sentinels and not plan.stochastic:
                picks = _sentinels(main, block, plan.mode)
                sentinel = (picks, _Lanes(entry, plan, prob, picks, "single", z0))
            for t in range(1, steps + 1):
                main.step(t, z_for)
                if sentinel is not None:
                    sentinel[1].step(t, z_for)
                if report is not None:
                    report((b + t / steps) / len(blocks))
        except FocuslabError:
            raise
        except Exception as err:
            if plan.mode == "single":
                raise
            # a failed step may have left in-place updates half applied: the whole chunk again, one mode down
            return _again(entry, plan, cells, lrs, keys, steps, report,
                          f"an exception in {plan.mode} mode ({_first_line(err)})")
        if sentinel is not None:
            picks, lanes_s = sentinel
            rows = np.searchsorted(block, picks)
            if not np.array_equal(main.x[rows], lanes_s.x, equal_nan=True):
                # a coupling the probe did not reach: recompute this chunk one mode down
                return _again(entry, plan, cells, lrs, keys, steps, report,
                              f"a sentinel trajectory differed from its {plan.mode} row")
        results.append((block, main.finish()))
    shape = (cells.shape[0], len(prob.lrs), keys.shape[1])
    out = {name: np.empty(shape) for name in ("final_loss", "min_loss", "progress")}
    out["diverged"] = np.empty(shape, dtype=np.uint8)
    for block, res in results:
        c, l, r = prob.lane_cell[block], prob.lane_lr[block], prob.lane_rep[block]
        for name in ("final_loss", "min_loss", "progress"):
            out[name][c, l, r] = res[name]
        out["diverged"][c, l, r] = res["diverged"].astype(np.uint8)
    return out


def _sentinels(main, block: np.ndarray, mode: str) -> np.ndarray:
    """The lanes stepped again as separate instances: the block's first and last, and in vmapped
    mode the first lane of (weight decay, lr) runs too (a branch taken at some lrs only), one per
    1000 lanes of the block at most (a sentinel costs what one trajectory costs in single mode)."""
    ends = block[[0, -1]]
    if mode == "vmapped":
        firsts = [a for a, _ in main.slices]
        keep = max(0, len(block) // 1000 - 2)
        firsts = [firsts[i] for i in np.linspace(0, len(firsts) - 1, min(keep, len(firsts))).astype(int)]
        ends = np.concatenate([ends, block[firsts]]) if firsts else ends
    return np.unique(ends)


def _again(entry, plan: Plan, cells, lrs, keys, steps, report, why: str) -> dict:
    """The chunk recomputed in the plan's fallback mode (and, failing that, the one below it)."""
    down = plan.fallback if plan.fallback != plan.mode else "single"
    return run(entry, Plan(**{**plan.to_dict(), "mode": down, "fallback": "single",
                              "why": f"{plan.why}; but {why} in a run: recomputed in {down} mode"}),
               cells, lrs, keys, steps, report=report)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


# --- one mode on given lanes (what the probe compares) -----------------------------------------
def trial(entry, plan: Plan, cells: np.ndarray, keys: np.ndarray, lr: float, steps: int, mode: str,
          spread: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The parameters after ``steps`` steps of every trajectory of ``cells`` x ``keys`` at one
    ``lr``, run in ``mode`` ("batched", "vmapped", "tensors" or "single"), torch's generator seeded with
    ``seed``; ``spread`` scales the initial points (trajectories of very different sizes)."""
    torch = _torch()
    prob = _Problem(cells, np.array([lr]), keys)
    z_for = _streams(prob)
    z0 = z_for(0).copy()
    torch.manual_seed(seed)
    lanes = _Lanes(entry, plan, prob, np.arange(prob.n), mode, z0, None if spread is None else spread[:prob.n])
    for t in range(1, steps + 1):
        lanes.step(t, z_for)
    return lanes.x.copy()
