"""What a torch optimizer needs, found by running it, never assumed (torch only).

* ``calling_convention``: does ``step()`` need a closure, or a gradient that carries its graph
  (``create_graph=True``: Hessian-vector products, as SophiaH and AdaHessian take)?  Tried in that
  order on a small quadratic problem; an optimizer that fails every way is refused with its own
  error message.
* ``draws``: does it draw random numbers itself (torch's generator moves during its steps)?
* ``constant_randomness``: torch's random draws replaced by constants, so that the separability
  of a stochastic optimizer can be compared bit for bit (an element-wise random draw cannot couple
  two trajectories or two models; what it could couple is everything else).
* ``stacks``: does one instance over tensors stacked along a new first dimension step exactly as
  one instance per slice would?  The batched MNIST trainer stacks the models of one learning rate
  that way when it does.
* ``vmaps``: does the optimizer's own step under vmap over stacked copies
  (focuslab.optim.vmapped.Stacked) step exactly as one instance per copy?  The MNIST trainer then
  steps per-tensor rules that way.
* ``settings_steps``: how many steps a probe needs to reach what an optimizer does every k steps.
"""
from __future__ import annotations

import contextlib

from ..errors import FocuslabError

PROBE_STEPS = 30
MAX_PROBE_STEPS = 1200
#: Words in setting names that count steps (a period, a warm-up, a start).
PERIODIC = ("step", "freq", "gap", "interval", "period", "every", "warmup", "epoch", "t_max", "delay",
            "start", "update", "accu")


def settings_steps(entry, base: int) -> int:
    """``base``, or twice the longest step count among the optimizer's settings (defaults included)
    plus two, up to MAX_PROBE_STEPS: what an optimizer does every k steps, or from step k on (SPAM's
    clipping from ``grad_accu_steps``, its resets every ``update_proj_gap``, SOAP's QR every
    ``precondition_frequency``), then happens inside a probe's reach."""
    values = {**entry.defaults, **entry.settings, **getattr(entry, "group", {})}
    periods = [v for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
               and any(word in k.lower() for word in PERIODIC)]
    return int(min(MAX_PROBE_STEPS, max([base] + [2 * v + 2 for v in periods])))


def first_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


@contextlib.contextmanager
def constant_randomness():
    import torch
    from unittest import mock

    def kw(k):
        return {n: v for n, v in k.items() if n != "generator"}

    def size_of(size):
        return size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size

    fakes = {
        (torch, "randn_like"): lambda x, *a, **k: torch.ones_like(x, **kw(k)),
        (torch, "rand_like"): lambda x, *a, **k: torch.full_like(x, 0.5, **kw(k)),
        (torch, "randint_like"): lambda x, *a, **k: torch.full_like(x, a[0] if len(a) > 1 else 0, **kw(k)),
        (torch, "randn"): lambda *size, **k: torch.ones(size_of(size), **kw(k)),
        (torch, "rand"): lambda *size, **k: torch.full(size_of(size), 0.5, **kw(k)),
        (torch.Tensor, "normal_"): lambda self, *a, **k: self.fill_(1.0),
        (torch.Tensor, "uniform_"): lambda self, *a, **k: self.fill_(0.5),
        (torch.Tensor, "bernoulli_"): lambda self, *a, **k: self.fill_(1.0),
        (torch.Tensor, "random_"): lambda self, *a, **k: self.fill_(0.0),
    }
    with contextlib.ExitStack() as stack:
        for (owner, name), fake in fakes.items():
            stack.enter_context(mock.patch.object(owner, name, fake))
        yield


class _Quadratic:
    """Copies of a small model (a matrix and a vector per copy) on a quadratic loss whose scale
    differs by orders of magnitude between copies; gradients with or without their graph."""

    def __init__(self, copies: int = 3, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        scales = torch.tensor([10.0 ** (3 * (c - copies // 2)) for c in range(copies)], dtype=torch.float64)
        self.shapes = [(4, 3), (3,)]
        self.start = [torch.randn(copies, *s, generator=g, dtype=torch.float64) for s in self.shapes]
        self.h = [torch.rand(copies, *s, generator=g, dtype=torch.float64) + 0.1 for s in self.shapes]
        self.b = [torch.randn(copies, *s, generator=g, dtype=torch.float64) * scales.view(-1, *[1] * len(s))
                  for s in self.shapes]
        self.copies = copies

    def params(self, stacked: bool):
        import torch

        if stacked:
            return [[torch.nn.Parameter(x.clone()) for x in self.start]]
        return [[torch.nn.Parameter(x[c].clone()) for x in self.start] for c in range(self.copies)]

    def set_grads(self, ps, copy: int | None, graph: bool, t: int):
        """Gradients of copy ``copy``'s loss (None: the stacked copies') at step t."""
        import torch

        with torch.enable_grad():
            loss = 0.0
            for k, p in enumerate(ps):
                h = self.h[k] if copy is None else self.h[k][copy]
                b = self.b[k] if copy is None else self.b[k][copy]
                loss = loss + (0.5 * h * p * p + b * p * (1.0 + 0.1 * t)).sum()
            grads = torch.autograd.grad(loss, ps, create_graph=graph)
        for p, gr in zip(ps, grads):
            p.grad = gr if graph else gr.detach()

    def run(self, make, stacked: bool, graph: bool, closure: bool, steps: int, wd: float = 0.0):
        import torch

        groups = self.params(stacked)
        opts = [make([{"params": ps[:1], "weight_decay": wd}, {"params": ps[1:], "weight_decay": 0.0}] if wd else
                     [{"params": ps, "weight_decay": 0.0}]) for ps in groups]
        for t in range(steps):
            for c, (ps, opt) in enumerate(zip(groups, opts)):
                copy = None if stacked else c
                if closure:
                    def again(ps=ps, copy=copy, t=t):
                        self.set_grads(ps, copy, graph, t)
                        return torch.tensor(0.0, dtype=torch.float64)
                    opt.step(again)
                else:
                    self.set_grads(ps, copy, graph, t)
                    opt.step()
        if stacked:
            return [p.detach() for p in groups[0]]
        return [torch.stack([ps[k].detach() for ps in groups]) for k in range(len(self.shapes))]

    def run_vmapped(self, make, steps: int, wd: float = 0.0):
        """As ``run`` for stacked copies, stepped by the optimizer's own step under vmap."""
        from ..optim.vmapped import Stacked

        ps = [x.clone() for x in self.start]
        groups = [{"params": ps[:1], "weight_decay": wd}, {"params": ps[1:], "weight_decay": 0.0}] if wd else \
            [{"params": ps, "weight_decay": 0.0}]
        stacked = Stacked(make, groups)
        for t in range(steps):
            leaves = [p.detach().requires_grad_() for p in ps]  # the same storage, as leaves
            self.set_grads(leaves, None, False, t)
            stacked.step([leaf.grad for leaf in leaves])
        return ps


def calling_convention(make, where: str) -> tuple[bool, bool]:
    """(closure, graph): the first way ``step()`` runs, or a one-line refusal with the error."""
    errors = []
    for closure, graph in ((False, False), (False, True), (True, False), (True, True)):
        try:
            _Quadratic(1).run(make, False, graph, closure, 2)
            return closure, graph
        except FocuslabError:
            raise
        except Exception as err:  # the optimizer's own error: try the next way of calling it
            errors.append(first_error(err))
    raise FocuslabError(f"{where}: cannot step ({errors[0]})")


def draws(make, graph: bool, closure: bool) -> bool:
    """Whether the optimizer draws from torch's generator during its steps."""
    import torch

    before = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        start = torch.get_rng_state()
        _Quadratic(2).run(make, False, graph, closure, PROBE_STEPS)
        return not torch.equal(torch.get_rng_state(), start)
    finally:
        torch.set_rng_state(before)


def stacks(make, graph: bool = False, closure: bool = False, stochastic: bool = False,
           wd: float = 0.1, steps: int = PROBE_STEPS) -> tuple[bool, str]:
    """Whether one instance over stacked copies equals one instance per copy, bit for bit, over
    ``steps`` steps with weight decay ``wd`` on the matrices (and why not)."""
    prob = _Quadratic(3)
    return _against_separate(lambda: prob.run(make, True, graph, closure, steps, wd),
                             lambda: prob.run(make, False, graph, closure, steps, wd), stochastic, "the stacked form",
                             "stacked copies differ from separate ones",
                             "element-wise: stacked copies equal separate ones bit for bit")


def vmaps(make, stochastic: bool = False, wd: float = 0.1, steps: int = PROBE_STEPS) -> tuple[bool, str]:
    """Whether the optimizer's step under vmap over stacked copies (focuslab.optim.vmapped.Stacked)
    equals one instance per copy, bit for bit, over ``steps`` steps (and why not)."""
    prob = _Quadratic(3)
    return _against_separate(lambda: prob.run_vmapped(make, steps, wd),
                             lambda: prob.run(make, False, False, False, steps, wd), stochastic, "the step under vmap",
                             "the step under vmap differs from separate copies",
                             "per-tensor: its step under vmap equals separate copies bit for bit")


def _against_separate(together, apart, stochastic: bool, form: str, differs: str, equal: str) -> tuple[bool, str]:
    """Run ``together()`` and ``apart()`` (random draws made constant for a stochastic optimizer) and
    compare them bit for bit: (True, ``equal``) or (False, why not)."""
    try:
        with constant_randomness() if stochastic else contextlib.nullcontext():
            x, y = together(), apart()
    except FocuslabError:
        raise
    except Exception as err:
        return False, f"{form} fails ({first_error(err)})"
    differ = _differ(x, y, differs)
    return (False, differ) if differ else (True, equal)


def _differ(together, apart, what: str) -> str:
    """'' where the copies agree bit for bit (NaNs in the same places), else what and by how much."""
    import torch

    for x, y in zip(together, apart):
        if not (torch.equal(torch.isnan(x), torch.isnan(y)) and torch.equal(torch.nan_to_num(x), torch.nan_to_num(y))):
            return f"{what} (by up to {(x - y).abs().max().item():.3g})"
    return ""
