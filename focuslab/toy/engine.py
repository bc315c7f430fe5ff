"""One way in to the simulator for scans and refine: ``simulate`` runs a built-in on its numba
kernel (focuslab.toy.kernel) and any other torch optimizer on the torch engine
(focuslab.toy.plugin), with the same streams, metrics and output shape; ``plans`` probes the
external optimizers of a study once, before any work, so that a refusal comes first and workers
get the plan instead of probing again.
"""
from __future__ import annotations

import numpy as np

from ..errors import FocuslabError


def plans(entries, weight_decays=(0.0,)) -> dict:
    """label -> focuslab.toy.plugin.Plan for every external entry (built-ins need none).  An
    optimizer without a ``weight_decay`` argument is refused when any weight decay is > 0."""
    out = {}
    wd = max([float(w) for w in weight_decays] + [0.0])
    for e in entries:
        if e.kind == "builtin":
            continue
        from ..optimizers import external_class
        from ..optimizers.external import takes_weight_decay
        from . import plugin

        if wd > 0 and not takes_weight_decay(external_class(e)):
            raise FocuslabError(f"{e.label}: takes no weight_decay, and this map has weight decay up to {wd:g}: "
                                "scan --weight-decay 0 for it")
        out[e.label] = plugin.probe(e, weight_decay=wd if wd > 0 else 0.1)
    return out


#: ns per trajectory-step of the numba kernel on one core, for ETAs that mix it with plug-ins
#: (benchmarks/bench_toy.py: 4-7 ns on AVX2, 12-22 ns on SSE2).
NATIVE_NS = 6.0


def ns_per_step(entry, plan=None) -> float:
    """Expected ns per trajectory-step on one core: the probe's measurement for a plug-in."""
    if entry.kind == "builtin" or plan is None:
        return NATIVE_NS
    ns = plan["ns_per_step"] if isinstance(plan, dict) else plan.ns_per_step
    return float(ns) if ns == ns else NATIVE_NS


def simulate(entry, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray, steps: int, plan=None,
             report=None) -> dict:
    """Per-lane metrics (final_loss, min_loss, progress, diverged), shape (cells, lrs, replicates).
    ``report(fraction)`` hears how far a plug-in's chunk has come (the native kernel is quick)."""
    if entry.kind == "builtin":
        from .kernel import run

        return run(entry.name, entry.settings, cells, lrs, keys, steps)
    from . import plugin

    if plan is None:
        plan = plugin.probe(entry, time_it=False)
    elif isinstance(plan, dict):
        plan = plugin.Plan(**plan)
    return plugin.run(entry, plan, cells, lrs, keys, steps, report=report)


def warm(entry) -> None:
    """Compile (or load) what ``entry`` runs on before worker processes start."""
    if entry.kind == "builtin":
        from .kernel import warm as warm_kernel

        warm_kernel(entry.name, entry.settings)


def describe(entries, weight_decay: float = 0.1) -> list[str]:
    """How each entry runs on the toy (the probe's findings), one line each (``focuslab optimizers``)."""
    out = []
    found = plans(entries, [weight_decay])
    for e in entries:
        if e.kind == "builtin":
            out.append(f"{e.label}: built-in, numba kernel (settings {e.settings})")
            continue
        p = found[e.label]
        how = [p.mode] + (["closure"] * p.closure) + (["Hessian-vector products"] * p.graph) + \
            (["draws random numbers"] * p.stochastic)
        out.append(f"{e.label} [{e.origin}]: {', '.join(how)}; weight decay {p.decay}; "
                   f"~{p.ns_per_step:.0f} ns per trajectory-step on one core ({p.why})")
    return out
