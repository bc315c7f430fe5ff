"""One optimizer interface: what every command asks of an optimizer, whatever it is.

An ``OptimizerEntry`` is one optimizer of a study (a built-in with its settings, or an external
torch class with its settings).  Two implementations of one small protocol, so that no caller asks
which kind it holds:

==========================  ====================================  ==========================================
the protocol                ``BuiltinEntry`` (focuslab's rules)   ``ExternalEntry`` (any torch class)
==========================  ====================================  ==========================================
``simulate``                the numba kernel (or the torch         the plug-in engine (focuslab.toy.plugin),
                            simulator on a GPU)                    in the mode its probe chose
``toy_plan``                None: nothing to find out              the probe's findings (toyprobe.probe)
``toy_speed``               the kernel's ns per trajectory-step    the probe's measurement
``warm``                    compile (or load) the kernel           nothing
``record``                  {}: the code is focuslab's own          target, origin (which code), group keys
``build_torch``             the built-in's torch optimizer          the class with the settings
``stacking``                element-wise by construction            the MNIST probe (stacked, vmapped copies)
``check_one_gradient``      always fine                             refuses closures and Hessian-vector products
``check_origin``            always fine                             refuses a changed package or file
==========================  ====================================  ==========================================

Entries import neither numba nor torch; the engines are imported when an entry runs on them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import FocuslabError
from ..values import jsonable
from .settings import legend as _legend
from .spec import file_slug

#: ns per trajectory-step of the numba kernel on one core, for ETAs that mix it with plug-ins
#: (benchmarks/bench_toy.py: 4-7 ns on AVX2, 12-22 ns on SSE2).
NATIVE_NS = 6.0


@dataclass(frozen=True)
class OptimizerEntry:
    """What every optimizer of a study has (see the module docstring for the protocol).

    ``label`` is the tables' ``optimizer`` column; ``name`` a built-in's canonical name or an
    external class's canonical target; ``settings`` its settings (a built-in's all resolved, an
    external's those given); ``spec`` the text that rebuilds it; ``title`` the legend's title;
    ``defaults`` what unset settings are; ``origin`` which code it is ("" for focuslab's own)."""

    label: str
    name: str
    settings: dict
    spec: str = ""
    title: str = ""
    defaults: dict = field(default_factory=dict)
    origin: str = ""

    #: Engines of the toy it runs on: "numba" (the kernel), "torch" (the torch simulator, GPUs),
    #: "plugin" (the engine for any torch class).
    toy_engines: ClassVar[tuple] = ()

    @property
    def preconditioner(self) -> str:
        """"adam" when Adam's diagonal second moments precondition its steps (diagnostics use them)."""
        return ""

    @property
    def slug(self) -> str:
        return file_slug(self.label)

    def changed(self) -> dict:
        """Settings that differ from the defaults (what a legend shows, and what a config table
        must carry besides the label)."""
        return {k: v for k, v in self.settings.items()
                if k not in self.defaults or jsonable(self.defaults[k]) != jsonable(v)}

    def legend(self) -> str:
        return _legend(self.title, self.settings, self.defaults)

    def bare(self) -> str:
        """The spec without settings (``focus``, ``torch.optim.NAdam``)."""
        return self.name

    def identity(self) -> str:
        """What makes two entries the same optimizer with the same settings."""
        return json.dumps([self.name, jsonable(self.settings)], sort_keys=True)

    # --- the protocol ------------------------------------------------------------------------
    def with_settings(self, settings: dict, where: str = "") -> "OptimizerEntry":
        """The same optimizer (same label: one row group of the tables) with ``settings`` over its
        own, validated as a spec's would be: one trial of a tuned scan."""
        raise NotImplementedError

    def tunable(self, setting: str, where: str) -> None:
        """Refuse, in one line, a setting it does not take (what ``--tune`` may vary)."""
        raise NotImplementedError

    def limits(self, setting: str) -> tuple:
        """The values a setting's valid range includes at its ends (a best value there is not a
        search space that ends too soon: gamma = 0 is no attraction at all); None where open or
        unknown."""
        return None, None

    def validate(self, where: str) -> None:
        """Refuse, in one line, settings the optimizer rejects (a built-in's are checked when
        resolved; a class is built once on a dummy parameter)."""

    def record(self) -> dict:
        """What a results directory keeps about the optimizer's code beyond its settings."""
        return {}

    def build_torch(self, param_groups, lr: float, device: str = "cpu"):
        """The torch optimizer over ``param_groups`` (dicts with "params" and "weight_decay")."""
        raise NotImplementedError

    def toy_plan(self, weight_decay: float = 0.1, time_it: bool = True):
        """How it runs on the toy at weight decays up to ``weight_decay`` (None: nothing to find out)."""
        return None

    def toy_speed(self, plan=None) -> float:
        """Expected ns per trajectory-step on one core."""
        return NATIVE_NS

    def warm(self) -> None:
        """Compile (or load) what it runs on, before worker processes start."""

    def simulate(self, cells, lrs, keys, steps: int, plan=None, report=None, simulator=None) -> dict:
        """Per-lane metrics (final_loss, min_loss, progress, diverged) of shape (cells, lrs,
        replicates) for cell coordinates ``cells`` (n, 5), learning rates ``lrs`` and replicate
        keys ``keys`` (n, replicates): the toy's one entry point.  ``plan``: ``toy_plan``'s
        findings (a dict or a Plan); ``report(fraction)`` hears how far a long chunk has come;
        ``simulator``: a focuslab.toy.torch_kernel.TorchSimulator to run on instead of the CPU."""
        raise NotImplementedError

    def stacking(self, weight_decay: float = 0.0) -> tuple[bool, bool, str, str]:
        """(graph, stochastic, mode, why) for the MNIST trainer: whether ``step()`` needs gradients
        with their graph, draws random numbers, and how it steps K models exactly as K separate
        instances would: "stacked" (one instance over stacked copies), "vmapped" (its step under
        vmap over stacked copies) or "per model" (focuslab.mnist.steppers)."""
        return False, False, "stacked", "built-in element-wise rule"

    def check_one_gradient(self, where: str) -> None:
        """Refuse, in one line, an optimizer that needs more than one plain gradient per step."""

    def check_origin(self, recorded: str, where: str) -> None:
        """Refuse to resume a study whose optimizer code has changed since it began."""
        if recorded and self.origin != recorded:
            raise FocuslabError(f"{where} {self.label}: the code has changed since this study began ({recorded} "
                                f"then, {self.origin} now); use another --out or --force")

    def describe(self, plan=None) -> str:
        """How it runs on the toy, in one line (``focuslab optimizers``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class BuiltinEntry(OptimizerEntry):
    """A built-in (focuslab.optimizers.builtin): its update rule runs on the numba kernel, or on
    the torch simulator, and its torch optimizer trains real models."""

    toy_engines: ClassVar[tuple] = ("numba", "torch")

    @property
    def rule(self):
        """The update rule and its torch optimizer (focuslab.optimizers.builtin.Builtin)."""
        from . import builtin

        return builtin.BY_NAME[self.name]

    @property
    def preconditioner(self) -> str:
        return self.rule.preconditioner

    def bare(self) -> str:
        return self.label.split(":", 1)[0]

    def with_settings(self, settings: dict, where: str = "") -> "BuiltinEntry":
        import dataclasses

        return dataclasses.replace(self, settings=self.rule.resolve({**self.settings, **settings}, where or None))

    def tunable(self, setting: str, where: str) -> None:
        if setting not in self.rule.defaults:
            raise FocuslabError(f"{where}: {self.title} has no setting {setting!r} (settings: "
                                f"{', '.join(self.rule.defaults)})")

    def limits(self, setting: str) -> tuple:
        hyper = {h.name: h for h in self.rule.hyper}.get(setting)
        if hyper is None:
            return None, None
        low, high, low_in, high_in = hyper.bounds()
        return (low if low_in else None), (high if high_in else None)

    def build_torch(self, param_groups, lr: float, device: str = "cpu"):
        return self.rule.build_torch(param_groups, lr, self.settings, device)

    def warm(self) -> None:
        from ..toy.kernel import warm

        warm(self.rule, self.settings)

    def simulate(self, cells, lrs, keys, steps: int, plan=None, report=None, simulator=None) -> dict:
        if simulator is not None:
            return simulator.run(self.rule, self.settings, cells, lrs, keys, steps)
        from ..toy.kernel import run

        return run(self.rule, self.settings, cells, lrs, keys, steps)

    def describe(self, plan=None) -> str:
        return f"{self.label}: built-in, numba kernel (settings {self.settings})"


@dataclass(frozen=True)
class ExternalEntry(OptimizerEntry):
    """A torch optimizer focuslab did not write (focuslab.optimizers.external): a class by import
    path, a class in a user's file, or a pytorch_optimizer name; ``group`` holds keys of every
    param group (``group.use_muon=True``)."""

    group: dict = field(default_factory=dict)
    toy_engines: ClassVar[tuple] = ("plugin",)

    def identity(self) -> str:
        return json.dumps([self.name, jsonable(self.settings), jsonable(self.group)], sort_keys=True)

    def torch_class(self):
        """The class, checked to be the same code as when it was resolved."""
        from . import external

        kind = "file" if ".py:" in self.name else "path"
        target, cls = self.name.rsplit(":", 1) if kind == "file" else (self.name, "")
        klass, _, origin, _ = external.resolve_class(kind, target, cls, self.label)
        if self.origin and origin != self.origin:
            raise FocuslabError(f"{self.label}: the code has changed since this study began ({self.origin} then, "
                                f"{origin} now); use another --out or --force")
        return klass

    def with_settings(self, settings: dict, where: str = "") -> "ExternalEntry":
        import dataclasses

        return dataclasses.replace(self, settings={**self.settings, **settings})

    def tunable(self, setting: str, where: str) -> None:
        from .external import check_settings

        check_settings(self.torch_class(), {setting: None}, where)

    def validate(self, where: str) -> None:
        import torch

        try:
            self.build_torch([{"params": [torch.zeros(2, requires_grad=True)], "weight_decay": 0.0}], 1e-3)
        except FocuslabError as err:
            raise FocuslabError(f"{where}: {str(err).split(': ', 1)[-1]}") from None

    def takes_weight_decay(self) -> bool:
        from .external import takes_weight_decay

        return takes_weight_decay(self.torch_class())

    def record(self) -> dict:
        """Beyond its settings: which code (``origin``), and torch's version, since how the class runs
        on the toy (its probed plan, recorded with the study) and its very numbers depend on torch:
        a study resumed under another torch is refused, and a new one probes again."""
        return {"target": self.name, "origin": self.origin, "group": jsonable(self.group), "title": self.title,
                "defaults": jsonable(self.defaults), "spec": self.spec, "torch": torch_version()}

    def build_torch(self, param_groups, lr: float, device: str = "cpu"):
        from . import external

        return external.build(self.torch_class(), param_groups, lr, self.settings, self.group, self.label)

    def toy_plan(self, weight_decay: float = 0.1, time_it: bool = True):
        from .toyprobe import probe

        if weight_decay > 0 and not self.takes_weight_decay():
            raise FocuslabError(f"{self.label}: takes no weight_decay, and this map has weight decay up to "
                                f"{weight_decay:g}: scan --weight-decay 0 for it")
        return probe(self, weight_decay=weight_decay if weight_decay > 0 else 0.1, time_it=time_it)

    def toy_speed(self, plan=None) -> float:
        if plan is None:
            return NATIVE_NS
        ns = plan["ns_per_step"] if isinstance(plan, dict) else plan.ns_per_step
        return float(ns) if ns == ns else NATIVE_NS

    def simulate(self, cells, lrs, keys, steps: int, plan=None, report=None, simulator=None) -> dict:
        from ..toy import plugin

        if simulator is not None:
            raise FocuslabError(f"{self.label} is an external torch optimizer, which runs on the CPU engine; scan it "
                                "without --device (or scan the built-ins alone on the GPU)")
        if plan is None:
            plan = self.toy_plan(time_it=False)
        elif isinstance(plan, dict):
            plan = plugin.Plan(**plan)
        return plugin.run(self, plan, cells, lrs, keys, steps, report=report)

    def stacking(self, weight_decay: float = 0.0) -> tuple[bool, bool, str, str]:
        key = json.dumps([self.name, self.origin, jsonable(self.settings), jsonable(self.group), weight_decay],
                         sort_keys=True)
        if key not in _STACKING:
            _STACKING[key] = self._stacking(weight_decay)
        return _STACKING[key]

    def _stacking(self, weight_decay: float) -> tuple[bool, bool, str, str]:
        from .probe import PROBE_STEPS, calling_convention, draws, settings_steps, stacks, vmaps

        def make(groups):
            return self.build_torch(groups, 1e-2)

        closure, graph = calling_convention(make, self.label)
        if closure:
            raise FocuslabError(f"{self.label}: needs a closure (several gradient evaluations per step); the MNIST "
                                "trainer computes one gradient per step, so it cannot train with it")
        stochastic = draws(make, graph, False)
        steps = settings_steps(self, PROBE_STEPS)
        ok, why = stacks(make, graph, False, stochastic, weight_decay, steps)
        if ok:
            return graph, stochastic, "stacked", why
        if graph:
            return graph, stochastic, "per model", f"{why}; gradients with their graph are not vmapped"
        ok, also = vmaps(make, stochastic, weight_decay, steps)
        return graph, stochastic, "vmapped" if ok else "per model", f"{why}; {also}"

    def check_one_gradient(self, where: str) -> None:
        from .probe import calling_convention

        closure, graph = calling_convention(lambda groups: self.build_torch(groups, 1e-3), self.label)
        if closure or graph:
            raise FocuslabError(f"{where} {self.label}: needs {'a closure' if closure else 'Hessian-vector products'}"
                                "; GPT-2 training takes one plain gradient per micro-step (MNIST and the toy support it)")

    def describe(self, plan=None) -> str:
        p = plan if plan is not None else self.toy_plan()
        how = [p.mode + (f" (after an exception: {p.fallback})" if p.mode != "single" else "")] + \
            (["closure"] * p.closure) + (["Hessian-vector products"] * p.graph) + \
            (["draws random numbers"] * p.stochastic)
        return (f"{self.label} [{self.origin}]: {', '.join(how)}; weight decay {p.decay}; "
                f"~{p.ns_per_step:.0f} ns per trajectory-step on one core ({p.why}; probed over "
                f"{p.probe_steps} steps)")


def torch_version() -> str:
    """The installed torch's version ('2.13.0+cpu'), read without importing torch ('' if absent)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


_STACKING: dict = {}  # per process: the MNIST probe of each (optimizer, settings, weight decay)


def study_record(entries) -> dict:
    """What a study's config records about its optimizers: labels in order, each one's settings,
    and (only where the study names external code, so that other studies keep their digests)
    what each external optimizer is."""
    external = {e.label: rec for e in entries if (rec := e.record())}
    return {"optimizers": [e.label for e in entries], "optimizer": {e.label: jsonable(e.settings) for e in entries},
            **({"external": external} if external else {})}


def digest_view(record: dict) -> dict:
    """A config dict as its digest sees it: of an external optimizer, which code and settings, not
    how it is shown (title, defaults and spec go)."""
    out = dict(record)
    if "external" in out:
        out["external"] = {label: {k: v for k, v in rec.items() if k not in ("title", "defaults", "spec")}
                           for label, rec in out["external"].items()}
    return out


def plans(entries, weight_decays=(0.0,)) -> dict:
    """label -> how each entry that has something to find out runs on the toy (``toy_plan``), probed
    once before any work so that a refusal comes first and workers get the plan."""
    wd = max([float(w) for w in weight_decays] + [0.0])
    return {e.label: plan for e in entries if (plan := e.toy_plan(wd)) is not None}


def describe(entries, weight_decay: float = 0.1) -> list[str]:
    """How each entry runs on the toy (the probe's findings), one line each (``focuslab optimizers``)."""
    found = plans(entries, [weight_decay])
    return [e.describe(found.get(e.label)) for e in entries]
