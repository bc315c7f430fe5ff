"""How an external torch optimizer runs on the toy, found by running it (never assumed): the
plug-in engine's mode (focuslab.toy.plugin: batched, vmapped, tensors or single), whether
``step()`` needs a closure or a gradient with its graph, whether the optimizer draws random numbers
itself, how it applies weight decay, and its speed.  ``ExternalEntry.toy_plan`` calls ``probe``.

The mode is chosen only where a run on twelve trajectories of very different scales (below)
gives *bit for bit* the parameters that one optimizer instance per trajectory gives (the
definition itself); the plug-in engine's sentinel trajectories keep checking that in every chunk
of a real run, and any exception in a chunk recomputes it in the plan's ``fallback``: the next
mode of the ladder that the probe also found exact.

The probe runs ``PROBE_STEPS`` steps, or more where the optimizer's settings name a period of its
own (``update_proj_gap``, ``precondition_frequency``, ``grad_accu_steps``, ``warmup_epoch``, ...):
twice the longest such period, up to 1200 (focuslab.optimizers.probe.settings_steps), so that what happens every k steps
(SPAM's clipping from ``grad_accu_steps`` on, its moment resets every ``update_proj_gap`` steps,
SOAP's QR every ``precondition_frequency`` steps) happens inside the probe's reach.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..errors import FocuslabError
from .probe import calling_convention, constant_randomness, first_error, settings_steps

PROBE_STEPS = 100
#: Trajectories whose gradients differ by orders of magnitude (slope 1e-3 .. 1e3, noise 0 .. 2,
#: sharpness 0.1 .. 1000), half of them started at |theta| ~ 1 instead of 1e-4, so that gradients
#: point every way: any coupling through norms, maxima, cosines or shared statistics shows.
_PROBE_CELLS = [(1.0, 0.0, 1e-3), (100.0, 2.0, 1.0), (10.0, 1.0, 1e3), (1.0, 2.0, 1.0), (1000.0, 0.5, 0.1),
                (0.1, 0.0, 10.0)]
_PROBE_SPREAD = np.array([1.0] * 6 + [1e4] * 6)
#: The modes tried after the definition ("single"), fastest first.
LADDER = ("batched", "vmapped", "tensors")
_DIFFERS = {"batched": "one (n, 2) tensor differs from n instances",
            "vmapped": "the step under vmap differs from n instances",
            "tensors": "n (2,) tensors in one instance differ from n instances"}
_EQUALS = {"batched": "element-wise: one (n, 2) tensor equals n one-trajectory instances bit for bit",
           "vmapped": "per-tensor: its step under vmap equals n instances bit for bit",
           "tensors": "per-tensor: n (2,) tensors in one instance equal n instances bit for bit"}


def probe_steps(entry) -> int:
    """PROBE_STEPS, or more where the optimizer's settings name a period (focuslab.optimizers.probe)."""
    return settings_steps(entry, PROBE_STEPS)


def _probe_problem(wd: float):
    from ..axes import cell_array
    from ..toy.rng import trajectory_keys

    cols = np.asarray(_PROBE_CELLS * 2)
    cells = cell_array(sharpness=cols[:, 0], noise=cols[:, 1], weight_decay=wd, phi=math.pi / 6, c=cols[:, 2])
    return cells, trajectory_keys(12345, cells, np.arange(1))


def _trial(entry, plan, cells, keys, lr: float, mode: str, seed: int = 0, constant_rng: bool = False,
           steps: int = PROBE_STEPS) -> np.ndarray:
    import contextlib

    from ..toy.plugin import trial

    with constant_randomness() if constant_rng else contextlib.nullcontext():
        return trial(entry, plan, cells, keys, lr, steps, mode, spread=_PROBE_SPREAD, seed=seed)


def probe(entry, weight_decay: float = 0.1, time_it: bool = True):
    """Find how ``entry`` (an external torch optimizer, focuslab.optimizers.entries.ExternalEntry)
    runs on the toy, or refuse in one line; returns focuslab.toy.plugin.Plan."""
    import torch

    from ..toy.plugin import Plan

    torch.set_num_threads(1)
    wd_ok = entry.takes_weight_decay()
    wd = weight_decay if wd_ok else 0.0
    cells, keys = _probe_problem(wd)
    lr = 1e-2
    with np.errstate(all="ignore"):
        closure, graph = calling_convention(lambda groups: entry.build_torch(groups, lr),
                                            f"{entry.label}: cannot run on the toy")
    steps = probe_steps(entry)
    plan = Plan("single", closure, graph, False, "", "", math.nan, "single", steps)
    with np.errstate(all="ignore"):
        before = torch.get_rng_state()
        torch.manual_seed(0)
        state0 = torch.get_rng_state()
        alone = _trial(entry, plan, cells, keys, lr, "single", steps=steps)
        torch.manual_seed(0)
        _trial(entry, plan, cells, keys, lr, "single", steps=min(steps, PROBE_STEPS))
        stochastic = not torch.equal(torch.get_rng_state(), state0)  # the generator moved: it draws
        torch.set_rng_state(before)
        if stochastic:
            alone = _trial(entry, plan, cells, keys, lr, "single", constant_rng=True, steps=steps)
        exact, notes = [], []
        for candidate in LADDER:
            ok, note = _compare(entry, plan, cells, keys, lr, candidate, stochastic, steps, alone)
            if ok:
                exact.append(candidate)
                if len(exact) == 2:  # the mode and its fallback
                    break
            else:
                notes.append(note)
        mode = exact[0] if exact else "single"
        fallback = exact[1] if len(exact) > 1 else "single"
        failed = notes[:LADDER.index(mode)] if mode != "single" else notes
        if mode in _EQUALS:  # what failed above it, then what it passed
            failed.append(_EQUALS[mode] if not failed else _EQUALS[mode].split(": ", 1)[1])
        why = "; ".join(failed)
    plan = Plan(**{**plan.to_dict(), "mode": mode, "fallback": fallback, "stochastic": stochastic, "why": why,
                   "decay": decay_kind(entry, plan) if wd_ok else "none"})
    if time_it:
        plan = Plan(**{**plan.to_dict(), "ns_per_step": speed(entry, plan, wd)})
    return plan


def _compare(entry, plan, cells, keys, lr, mode: str, stochastic: bool, steps: int, alone) -> tuple[bool, str]:
    """(True, "") where ``mode`` gives ``alone`` (one instance per trajectory) bit for bit, else
    (False, why not)."""
    try:
        got = _trial(entry, plan, cells, keys, lr, mode, constant_rng=stochastic, steps=steps)
    except FocuslabError:
        raise
    except Exception as err:
        return False, f"{mode} fails ({first_error(err)})"
    if np.array_equal(got, alone, equal_nan=True):
        return True, ""
    with np.errstate(all="ignore"):
        gap = np.nanmax(np.abs(got - alone)) if np.isfinite(got).any() else math.nan
    return False, f"{_DIFFERS[mode]} (by up to {gap:.3g})"


def decay_kind(entry, plan) -> str:
    """How the class applies ``weight_decay`` omega, from one step after a few warm-up steps, taken
    three ways from the same state: with omega, without it, and without it but with omega * theta
    added to the gradient.  "decoupled": the first moved theta by exactly -lr * omega * theta more
    than the second (AdamW's form); "L2": the first equals the third (torch.optim.Adam's form);
    "other" otherwise (e.g. FOCUS's Algorithm 1 decays toward the parameter average)."""
    import torch

    lr, wd = 1e-2, 0.1
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(2, generator=gen, dtype=torch.float64) for _ in range(6)]

    def step(opt, p, g):
        if plan.graph:
            with torch.enable_grad():
                q = p.view(-1)
                p.grad = torch.autograd.grad((q * g).sum() + 0.5 * (q * q).sum(), p, create_graph=True)[0]
        else:
            p.grad = g.clone()
        torch.manual_seed(0)
        with constant_randomness():
            if plan.closure:
                opt.step(lambda: torch.tensor(0.0, dtype=torch.float64))
            else:
                opt.step()

    out = []
    for w, extra in ((wd, 0.0), (0.0, 0.0), (0.0, wd)):  # the same warm-up each time (deep copies
        q = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))  # lose some classes' state)
        o = entry.build_torch([{"params": [q], "weight_decay": 0.0}], lr)
        for g in grads[:-1]:
            step(o, q, g)
        x = q.detach().clone()
        for group in o.param_groups:
            group["weight_decay"] = w
        step(o, q, grads[-1] + extra * x)
        out.append(q.detach().numpy().copy())
    decayed, plain, l2 = out
    if np.allclose(decayed - plain, -lr * wd * x.numpy(), rtol=1e-9, atol=1e-15):
        return "decoupled"
    if np.allclose(decayed, l2, rtol=1e-12, atol=1e-15):
        return "L2"
    return "other"


def speed(entry, plan, wd: float) -> float:
    """ns per trajectory-step on one core, from a short run of the mode the plan chose."""
    from ..axes import cell_array
    from ..toy.plugin import run
    from ..toy.rng import trajectory_keys

    n, steps = {"batched": (16384, 10), "vmapped": (8192, 5), "tensors": (512, 5), "single": (128, 5)}[plan.mode]
    cells = cell_array(sharpness=np.geomspace(0.1, 1000, n // 16), noise=1.0, weight_decay=wd, phi=math.pi / 6, c=0.1)
    keys = trajectory_keys(0, cells, np.arange(16))
    with np.errstate(all="ignore"):
        run(entry, plan, cells[:1], np.array([1e-2]), keys[:1], 1, check_sentinels=False)  # warm-up
        t0 = time.perf_counter()
        run(entry, plan, cells, np.array([1e-2]), keys, steps, check_sentinels=False)
    return (time.perf_counter() - t0) / (n * steps) * 1e9
