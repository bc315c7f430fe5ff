"""Any torch optimizer's own ``step()`` over B stacked copies of its parameters, under
``torch.func.vmap``: one Python pass per step for all B copies instead of one per copy.

``Stacked`` holds ONE optimizer instance built over placeholder parameters of one copy's shapes,
and, between steps, the B copies' parameters, gradients and state as physical (B, ...) tensors.
A step calls the optimizer's ``step()`` once, inside ``vmap``, with the parameters, gradients and
every tensor of its state (per-parameter state and per-group entries) as batched tensors: each copy
sees exactly what a separate instance of its own would see.  What the step leaves in the state is
read back: batched tensors become physical (B, ...) tensors again, everything else (step counts,
Python numbers, tensors the step made without touching a copy's values) is kept as it is.

Plain ``vmap`` is not enough, and where it fails it can fail silently, so the call runs under
``Batchable``, a TorchFunctionMode active only inside the vmapped step, which turns what vmap
cannot batch (or batches slowly, or batches with other roundings) into batchable equivalents:

* ``torch._foreach_*`` (no batching rules): the per-tensor op for each tensor of the list, in order
  (what the CPU's foreach kernels do);
* in-place ops that vmap runs as a slow per-copy loop (``lerp_``, ``addcmul_``, ``addcdiv_``,
  ``clamp_``, ``pow_``, ...): the out-of-place op, then ``copy_`` into the tensor;
* ``out=`` arguments: the op, then ``copy_`` into ``out``;
* factories (``torch.zeros``/``ones``/``empty``/``full``/``eye``) make batched tensors, so that
  state a step creates that way can be updated per copy (``torch.tensor(...)`` stays a constant);
* matrix products in bfloat16/float16 with an inner dimension of at most 2 are computed in float32
  and rounded once (products of such numbers are exact in float32 and a sum of two is rounded
  once, as the CPU's low-precision kernels accumulate): vmap's own rules either round twice
  (``addmm``) or fall back to slow kernels;
* ``p.data`` (not allowed under vmap) reads as ``p.detach()``: the same storage, outside autograd;
* a Python value read from a batched tensor (``bool(t)``, ``t.item()``, ``int(t)``, ...) is given
  when every copy holds the same value and refused (``LanesDisagree``) otherwise: data-dependent
  control flow is exact only where all copies take the same branch.

Nothing here decides that the result is right: focuslab's probes compare a vmapped run with
separate instances bit for bit and use this mode only where they agree, and any exception during
a step is the caller's signal to recompute without it (a step that fails may have left in-place
updates half applied).  Not supported: gradients that carry their graph (Hessian-vector products:
a batched parameter reports ``requires_grad=False``, and optimizers silently skip their Hessian),
optimizers that keep per-copy tensors outside their state and param groups (refused when found),
and Python-level attributes set on a parameter (lost between steps: the probes see that).

This rests on torch internals (``torch._C._functorch``); ``INTERNALS`` names what is used, and
``check_internals()`` refuses, in one line, a torch that lacks them.  Results are checked per torch
version by the probes (focuslab records torch's version with every external optimizer).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext as _nullcontext

import torch
from torch.overrides import TorchFunctionMode

#: The torch internals this module relies on (torch._C._functorch), checked by check_internals.
INTERNALS = ("is_batchedtensor", "_unwrap_batched", "_add_batch_dim", "_remove_batch_dim", "_vmap_increment_nesting",
             "_vmap_decrement_nesting", "_set_vmap_fallback_warning_enabled")
_F = torch._C._functorch

#: In-place methods that vmap batches natively (measured on torch 2.13: no fallback warning).
#: Every other in-place method on a batched tensor runs as out-of-place op + copy_.
NATIVE_INPLACE = frozenset((
    "add_", "sub_", "mul_", "div_", "copy_", "zero_", "fill_", "neg_", "sqrt_", "abs_", "sign_",
    "reciprocal_", "exp_", "log_", "clamp_min_", "clamp_max_", "sigmoid_", "tanh_", "rsqrt_", "sgn_",
    "masked_fill_", "copysign_", "atan2_", "floor_", "nan_to_num_", "trunc_", "frac_", "relu_", "exp2_",
    "expm1_", "log1p_", "sin_", "cos_", "true_divide_", "multiply_", "divide_",
))
#: In-place methods that change metadata or draw numbers: never rewritten.
KEEP_INPLACE = frozenset((
    "requires_grad_", "retain_grad_", "detach_", "resize_", "resize_as_", "set_", "share_memory_", "t_",
    "transpose_", "squeeze_", "unsqueeze_", "as_strided_", "swapdims_", "swapaxes_", "uniform_", "normal_",
    "random_", "bernoulli_", "exponential_", "geometric_", "cauchy_", "log_normal_", "index_put_",
    "put_", "scatter_", "scatter_add_", "index_copy_", "index_fill_", "index_add_", "masked_scatter_",
    "_coalesced_", "record_stream",
))
FACTORIES = frozenset(("zeros", "ones", "empty", "full", "eye"))
PYTHON_VALUES = frozenset(("__bool__", "item", "__int__", "__float__", "__index__", "tolist", "__complex__"))
MATMULS = frozenset(("mm", "bmm", "matmul", "addmm", "baddbmm", "__matmul__", "__rmatmul__"))
LOW_PRECISION = (torch.bfloat16, torch.float16)


_DATA = torch.Tensor.data  # the descriptor: reading p.data calls its __get__


class LanesDisagree(RuntimeError):
    """The stacked copies hold different values where the optimizer asks for a Python value."""


class Unsupported(RuntimeError):
    """The optimizer does something the vmapped step cannot carry (the probes fall back)."""


def check_internals() -> str:
    """'' when this torch has what the vmapped step relies on, else what is missing (one line)."""
    missing = [name for name in INTERNALS if not hasattr(_F, name)]
    return f"torch {torch.__version__} lacks {', '.join(missing)}" if missing else ""


def is_batched(t) -> bool:
    return isinstance(t, torch.Tensor) and _F.is_batchedtensor(t)


# --- the mode ---------------------------------------------------------------------------------
class Batchable(TorchFunctionMode):
    """Rewrites, inside one vmapped call at ``level`` over ``size`` copies, what vmap cannot batch
    (see the module docstring); which rewrite a function gets is decided once (``_rule``)."""

    def __init__(self, size: int, level: int):
        super().__init__()
        self.size, self.level = size, level

    # helpers
    def _physical(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor's (size, ...) physical form (an unbatched one expanded)."""
        if is_batched(t):
            phys, bdim = _F._unwrap_batched(t, self.level)
            if bdim is not None:
                return phys.movedim(bdim, 0)
            t = phys
        return t.unsqueeze(0).expand(self.size, *t.shape)

    def _wrap(self, phys: torch.Tensor) -> torch.Tensor:
        return _F._add_batch_dim(phys, 0, self.level)

    def _agreed(self, t: torch.Tensor) -> torch.Tensor:
        """The one value every copy holds, or LanesDisagree."""
        phys, bdim = _F._unwrap_batched(t, self.level)
        if bdim is None:
            return phys
        phys = phys.movedim(bdim, 0)
        first = phys[0]
        same = torch.equal(phys, first.expand_as(phys)) or (
            phys.is_floating_point() and bool(torch.isnan(phys).all()))
        if not same:
            raise LanesDisagree("the stacked copies disagree on a value the optimizer reads in Python "
                                "(data-dependent control flow)")
        return first

    def call(self, func, args, kwargs):
        """``func(*args, **kwargs)`` with this mode's rewrites (the mode is off inside its own handler,
        so rewrites that call other ops come back here explicitly)."""
        return self.__torch_function__(func, (), args, kwargs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("out") is not None:
            return self._out(func, args, kwargs)
        try:
            kind, extra = _RULES[func]
        except (KeyError, TypeError):  # the first call of this function (or an unhashable one)
            kind, extra = _rule(func)
            try:
                _RULES[func] = (kind, extra)
            except TypeError:
                pass
        if kind == PLAIN:
            return func(*args, **kwargs)
        if kind == FOREACH:
            return self._foreach(extra, args, kwargs)
        if not (args and is_batched(args[0])):
            if kind == FACTORY:
                return self._factory(func, extra, args, kwargs)
            if kind == MATMUL and self._low_precision_small(extra, args, kwargs):
                return self._matmul_fp32(extra, args, kwargs)
            return func(*args, **kwargs)
        if kind == INPLACE:  # vmap would loop over the copies: the op, then a copy
            target = args[0]
            target.copy_(self.call(extra, args, kwargs))
            return target
        if kind == VALUE:
            return func(self._agreed(args[0]), *args[1:], **kwargs)
        if kind == DATA:  # p.data: what it is under no_grad
            return args[0].detach()
        if kind == MATMUL and self._low_precision_small(extra, args, kwargs):
            return self._matmul_fp32(extra, args, kwargs)
        return func(*args, **kwargs)

    # rules
    def _out(self, func, args, kwargs):
        out = kwargs.pop("out")
        result = self.call(func, args, kwargs)
        if isinstance(out, (tuple, list)):
            for o, r in zip(out, result):
                o.copy_(r)
        else:
            out.copy_(result)
        return out

    def _factory(self, func, name, args, kwargs):
        """torch.zeros(2, 3) -> a batched (2, 3) tensor of zeros (physically (size, 2, 3))."""
        if name == "eye":
            one = func(*args, **kwargs)
            return self._wrap(one.unsqueeze(0).repeat(self.size, *[1] * one.dim()))
        if "size" in kwargs:
            size, rest = kwargs.pop("size"), args
        elif name == "full":
            size, rest = args[0], args[1:]
        elif len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
            size, rest = args[0], ()
        else:
            size, rest = args, ()
        size = tuple(size) if isinstance(size, (tuple, list, torch.Size)) else (size,)
        return self._wrap(func((self.size, *size), *rest, **kwargs))

    def _low_precision_small(self, name, args, kwargs) -> bool:
        tensors = [a for a in args[:3] if isinstance(a, torch.Tensor)]
        if not tensors or not any(is_batched(t) for t in tensors) or tensors[0].dtype not in LOW_PRECISION:
            return False
        a = args[1] if name in ("addmm", "baddbmm") else args[0]
        return isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[-1] <= 2 and \
            all(t.dtype == a.dtype for t in tensors)

    def _matmul_fp32(self, name, args, kwargs):
        """A low-precision product with inner dimension <= 2, in float32, rounded once."""
        dtype = args[0].dtype
        if name in ("addmm", "baddbmm"):
            c, a, b = (self._physical(t).float() for t in args[:3])
            beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
            if a.dim() == 3:
                r = torch.baddbmm(c.expand(a.shape[0], a.shape[1], b.shape[2]), a, b, beta=beta, alpha=alpha)
            else:
                r = torch.baddbmm(c, a.flatten(0, -3), b.flatten(0, -3), beta=beta, alpha=alpha)
        else:
            x, y = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
            r = torch.matmul(self._physical(x).float(), self._physical(y).float())
        return self._wrap(r.to(dtype))

    def _foreach(self, name, args, kwargs):
        """torch._foreach_op(lists, ...) as op on each tensor in turn (through these rules)."""
        inplace = name.endswith("_")
        base = name[len("_foreach_"):-1] if inplace else name[len("_foreach_"):]
        lists = [a for a in args if isinstance(a, (list, tuple)) and not isinstance(a, torch.Size)]
        n = len(lists[0]) if lists else 0
        if base in ("addcmul", "addcdiv") and len(args) > 3 and isinstance(args[3], torch.Tensor):
            args = (*args[:3], args[3].tolist())  # scalars given as a tensor
        if "scalars" in kwargs and isinstance(kwargs["scalars"], torch.Tensor):
            kwargs = {**kwargs, "scalars": kwargs["scalars"].tolist()}
        if "scalars" in kwargs:
            kwargs = {**{k: v for k, v in kwargs.items() if k != "scalars"}, "value": kwargs["scalars"]}

        def pick(a, i):
            return a[i] if isinstance(a, (list, tuple)) and not isinstance(a, torch.Size) and len(a) == n else a

        out = []
        for i in range(n):
            a_i = [pick(a, i) for a in args]
            k_i = {k: pick(v, i) for k, v in kwargs.items()}
            if base == "norm":
                ord_ = a_i[1] if len(a_i) > 1 else k_i.pop("ord", 2)
                out.append(self.call(torch.linalg.vector_norm, (a_i[0], ord_), k_i))
            elif base == "max":
                out.append(self.call(torch.max, (a_i[0],), {}))
            elif inplace:
                method = getattr(torch.Tensor, base + "_", None)
                if method is not None:
                    self.call(method, a_i, k_i)
                else:  # e.g. maximum_: no Tensor method; the op, then a copy
                    a_i[0].copy_(self.call(getattr(torch, base), a_i, k_i))
            else:
                fn = getattr(torch, base, None) or getattr(torch.Tensor, base)
                out.append(self.call(fn, a_i, k_i))
        return None if inplace else out


PLAIN, FOREACH, FACTORY, MATMUL, INPLACE, VALUE, DATA = range(7)
_RULES: dict = {}  # function -> (kind, what the rule needs), decided once per function


def _rule(func) -> tuple[int, object]:
    """Which of Batchable's rewrites applies to ``func`` (by its name; decided once)."""
    name = getattr(func, "__name__", "")
    if name.startswith("_foreach_"):
        return FOREACH, name
    if getattr(func, "__self__", None) is _DATA:
        return DATA, None
    if name in PYTHON_VALUES:
        return VALUE, None
    if name in MATMULS:
        return MATMUL, name
    if name in FACTORIES and func is getattr(torch, name):
        return FACTORY, name
    if name.endswith("_") and not name.endswith("__") and name not in NATIVE_INPLACE and name not in KEEP_INPLACE:
        outplace = getattr(torch.Tensor, name[:-1], None)
        if callable(outplace):
            return INPLACE, outplace
    return PLAIN, None


# --- state trees ------------------------------------------------------------------------------
def _flatten(tree, out: list):
    """Leaves of dicts/lists/tuples into ``out``; the structure with leaves replaced by indices."""
    if isinstance(tree, dict):
        return {k: _flatten(v, out) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(_flatten(v, out) for v in tree)
    out.append(tree)
    return _Leaf(len(out) - 1)


class _Leaf(int):
    pass


def _unflatten(shape, leaves):
    if isinstance(shape, dict):
        return {k: _unflatten(v, leaves) for k, v in shape.items()}
    if type(shape) in (list, tuple):
        return type(shape)(_unflatten(v, leaves) for v in shape)
    if isinstance(shape, _Leaf):
        return leaves[shape]
    return shape


def _has_batched(obj, depth: int = 0) -> bool:
    if is_batched(obj):
        return True
    if depth > 3:
        return False
    if isinstance(obj, dict):
        return any(_has_batched(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_batched(v, depth + 1) for v in obj)
    return False


# --- the stacked optimizer --------------------------------------------------------------------
class Stacked:
    """One instance of an optimizer stepping B stacked copies of its parameters (see the module
    docstring).  ``make(param_groups)`` builds the optimizer over param groups (dicts with
    "params" and any other keys); ``groups`` are those dicts with the *stacked* parameters, physical
    (B, ...) tensors that this class updates in place.  ``step(grads)`` takes the stacked gradients
    (one (B, ...) tensor per parameter, groups in order)."""

    def __init__(self, make, groups: list[dict]):
        why = check_internals()
        if why:
            raise Unsupported(why)
        self.phys = [p.detach() for g in groups for p in g["params"]]  # the same storage, never a graph
        sizes = {p.shape[0] for p in self.phys}
        if len(sizes) != 1:
            raise ValueError(f"stacked parameters of different batch sizes: {sorted(sizes)}")
        self.size = sizes.pop()
        self.holders = []
        placeholder_groups = []
        for g in groups:
            ps = [torch.nn.Parameter(torch.zeros(p.shape[1:], dtype=p.dtype, device=p.device)) for p in g["params"]]
            self.holders.append(ps)
            placeholder_groups.append({**g, "params": ps})
        self.opt = make(placeholder_groups)
        self.counts = [len(g["params"]) for g in self.opt.param_groups]
        if self.counts != [len(ps) for ps in self.holders]:
            raise Unsupported("the optimizer rearranged its param groups")
        self.shape = None  # the carried state: structure with leaf indices
        self.leaves: list = []  # leaves: physical (B, ...) tensors where batched, else as they were
        self.batched: list[bool] = []
        self.fallbacks: set[str] = set()  # ops vmap ran through its slow per-copy path
        self.calls = 0

    def _carried(self, params):
        """(per-parameter state, per-group entries) as the optimizer holds them now."""
        return ([self.opt.state.get(p, {}) for p in params],
                [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups])

    def step(self, grads, closure=None):
        """One step of every copy; ``grads``: (B, ...) gradients in parameter order.  ``closure``, when
        given, is passed to ``step()`` (it must refresh ``grads`` in place and return a loss).

        This is ``torch.func.vmap`` unrolled (its level, batched inputs, unbatched outputs), so that a
        step costs what the optimizer's own Python costs plus little: the parameters are updated in
        place through their batched views, the state leaves come back as physical tensors."""
        listen = self.calls < 2  # vmap's slow-path warnings: heard on the first steps, then silenced
        self.calls += 1
        warned = _F._is_vmap_fallback_warning_enabled() if hasattr(_F, "_is_vmap_fallback_warning_enabled") else None
        with warnings.catch_warnings(record=True) if listen else _nullcontext() as caught:
            if listen:
                warnings.simplefilter("always")
            else:
                _F._set_vmap_fallback_warning_enabled(False)
            level = _F._vmap_increment_nesting(self.size, "different")
            try:
                flat = self._step_at(level, grads, closure)
                leaves = [_F._remove_batch_dim(v, level, self.size, 0) if b else v for v, b in zip(*flat)]
            finally:
                _F._vmap_decrement_nesting()
                if not listen:
                    _F._set_vmap_fallback_warning_enabled(True if warned is None else warned)
        for w in caught or ():
            text = str(w.message)
            if "batching rule for aten::" in text:
                self.fallbacks.add(text.split("aten::", 1)[1].split(".")[0].split()[0])
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.leaves, self.batched = leaves, flat[1]

    def _step_at(self, level: int, grads, closure):
        """The optimizer's step at vmap ``level``; returns (state leaves, which are batched)."""
        wrap = _F._add_batch_dim
        params = [wrap(p, 0, level) for p in self.phys]
        carried = [wrap(v, 0, level) if b else v for v, b in zip(self.leaves, self.batched)]
        if self.shape is not None:
            states, entries = _unflatten(self.shape, carried)
        else:
            states, entries = [{} for _ in params], [{} for _ in self.opt.param_groups]
        k = 0
        for group, count, extra in zip(self.opt.param_groups, self.counts, entries):
            group["params"] = params[k:k + count]
            group.update(extra)
            k += count
        for p, g, st in zip(params, grads, states):
            p.grad = wrap(g, 0, level)
            if st:
                self.opt.state[p] = st
        try:
            with Batchable(self.size, level):
                self.opt.step(closure) if closure is not None else self.opt.step()
            now = self._carried(params)
            if self.calls <= 3 or self.calls % 50 == 0:
                self._check_escapes(params)
        finally:
            for p in params:
                self.opt.state.pop(p, None)
            for group, holders in zip(self.opt.param_groups, self.holders):
                group["params"] = holders
        flat: list = []
        self.shape = _flatten(now, flat)
        return flat, [is_batched(v) for v in flat]

    def _check_escapes(self, params):
        """A batched tensor kept anywhere but the state and groups would die with this call."""
        keys = set(map(id, params))
        for key, value in self.opt.state.items():
            if id(key) not in keys and _has_batched(value):
                raise Unsupported(f"{type(self.opt).__name__} keeps per-copy tensors in its state under {key!r}")
        for attr, value in vars(self.opt).items():
            if attr not in ("state", "param_groups") and _has_batched(value):
                raise Unsupported(f"{type(self.opt).__name__} keeps per-copy tensors in self.{attr}")

    def state_tensors(self, index: int) -> dict:
        """Parameter ``index``'s state: name -> physical (B, ...) tensor (batched entries only)."""
        if self.shape is None:
            return {}
        states, _ = _unflatten(self.shape, [(leaf if b else None) for leaf, b in zip(self.leaves, self.batched)])
        return {k: v for k, v in states[index].items() if isinstance(v, torch.Tensor)}

    def state_dict(self) -> dict:
        """The carried state (copies) and the instance's own (what the step keeps outside its
        parameters' entries, e.g. step counters), for checkpoints."""
        return {"shape": self.shape, "batched": list(self.batched),
                "leaves": [v.clone() if isinstance(v, torch.Tensor) else v for v in self.leaves],
                "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.shape, self.batched = state["shape"], list(state["batched"])
        self.leaves = [v.clone() if isinstance(v, torch.Tensor) else v for v in state["leaves"]]
