"""The lockstep simulator on torch tensors: the GPU path of ``focuslab scan --device cuda``.

Why torch rather than numba-cuda kernels: torch is already focuslab's extra for the MNIST and GPT-2
commands, it drives NVIDIA (CUDA) and AMD (ROCm) GPUs with one code path, it runs the very same
code on the CPU -- so the test suite exercises the GPU path on any machine, with no simulator --
and ``torch.compile`` can fuse a whole step (several, unrolled) into one kernel.  numba-cuda would
keep a lane's state in registers for all steps (faster still), but needs a second toolchain and
gives no CPU path for tests but its slow simulator.  (Apple's MPS has no float64, so it is not
offered.)

What is shared with the numba kernel (focuslab.toy.kernel), not rewritten:
  * the update rules and their compile-time options (focuslab/optimizers/builtin.py; ``np.sign``/``np.sqrt`` are
    bound to a torch namespace whose ``sign`` is numba's exactly: x itself for +-0 and NaN);
  * the landscape (toy/landscape.py) and the metric and divergence rules;
  * the random streams: rng.py's generator bound to int64-tensor helpers (wrapping arithmetic and
    masked shifts give the bits of uint64), the same keys and draw numbering;
  * the per-step scalars (bias corrections), tabulated by the rule's prep compiled by numba.

Exactness.  In eager mode every tensor operation is one IEEE-754 operation, so on the CPU the
results are the numba kernel's bit for bit (tested for every rule), and eager CUDA kernels are IEEE
too (division and square root correctly rounded).  A compiled step is fused into generated code
that may contract ``a * b + c`` into one fused multiply-add, rounding once instead of twice: a
difference of an ulp.  Rules that take a sign (Signum, FOCUS, Lion) then step +lr or -lr
differently wherever the argument of the sign lies within that ulp of zero, and the two
trajectories part there; statistics over replicates agree (tested: every (cell, optimizer, lr)
mean within 4 standard errors), while Adam and SGD stay within rounding of each other.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..axes import COLUMN
from ..errors import FocuslabError
from . import landscape, rng

INIT_SCALE = landscape.INIT_SCALE
STATE = ("theta1", "theta2", "s10", "s11", "s20", "s21", "u", "v", "lmin", "umax", "ok")
#: Device memory per lane in eager mode: 11 state tensors, the noise, and the temporaries one step
#: creates (measured peak ~40 float64 per lane); used to size launches from free memory.
BYTES_PER_LANE = 64 * 8


def _torch():
    try:
        import torch
    except ImportError:
        raise FocuslabError("--device cuda runs the simulator on PyTorch, which is not installed: "
                            "pip install torch (a CUDA build for NVIDIA GPUs, ROCm for AMD)") from None
    return torch


def _i64(c: int) -> int:
    """A uint64 value as the int64 with the same bits."""
    c %= 1 << 64
    return c - (1 << 64) if c >= 1 << 63 else c


def _sqrt(exact: bool):
    """torch's square root; with ``exact``, a correctly rounded one on CPU tensors.  PyTorch's
    vectorised CPU sqrt for float64 is off by one ulp in ~1.3 % of cases (torch 2.13, AVX2: seen
    at every magnitude), which is enough to make Adam's trajectories differ; CUDA's is IEEE."""
    import torch

    if not exact:
        return torch.sqrt
    return lambda x: torch.from_numpy(np.sqrt(x.numpy())) if x.device.type == "cpu" else torch.sqrt(x)


@lru_cache(maxsize=2)
def generator(exact_sqrt: bool = True):
    """rng.py's generator bound to int64-tensor helpers."""
    torch = _torch()
    golden = _i64(int(rng.GOLDEN))
    return rng.bind({
        "shr": lambda x, k: (x >> k) & ((1 << (64 - k)) - 1),  # logical shift of an int64
        "u64": _i64,
        "counter": lambda n: n * golden,  # n: an int64 tensor (wrapping multiply)
        "as_f64": lambda x: x.view(torch.float64),
        "as_u64": lambda x: x.view(torch.int64),
        "select": lambda c, a, b: torch.where(c, a, b),
        "sqrt": _sqrt(exact_sqrt),
    }, tag=f"torch_{'exact' if exact_sqrt else 'fast'}")


@lru_cache(maxsize=2)
def _numpy_like(exact_sqrt: bool = True):
    torch = _torch()

    def sign(x):  # numba's np.sign: +-1, else x itself (+-0 keeps its sign, NaN stays NaN)
        return torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, x))

    return types.SimpleNamespace(sign=sign, sqrt=_sqrt(exact_sqrt), abs=torch.abs)


def _on_tensors(fn, exact_sqrt: bool = True):
    """``fn`` (a rule from focuslab.optimizers.builtin) with its ``np`` bound to the torch namespace."""
    module = f"{fn.__module__}._torch_{'exact' if exact_sqrt else 'fast'}_{fn.__name__}_{id(fn):x}"
    return rng.rebind({"update": fn}, {**fn.__globals__, "np": _numpy_like(exact_sqrt)}, module)["update"]


def step_table(rule, settings: dict, steps: int) -> np.ndarray:
    """(steps + 1, k) per-step scalars of ``rule``, from its prep compiled by numba (the kernel's bits)."""
    from .kernel import prep_table

    return prep_table(rule)(rule.hyper_values(settings), int(steps))


def _advance(n_steps, update, hp, keys, t0, ctx, cell, lr, state, gen):
    """``n_steps`` steps of every lane; ``t0`` (an int64 tensor) is the first step's number and
    ``ctx`` its rows of per-step scalars.  Arithmetic in the kernel's order, op by op."""
    sharpness, noise, wd, c, cos_phi, sin_phi = cell
    theta1, theta2, s10, s11, s20, s21, u, v, lmin, umax, ok = state
    for k in range(n_steps):
        z1, z2 = gen.normal_pair(keys, t0 + k)
        cx = ctx[k]
        g1, g2 = landscape.grad_theta(u, v, sharpness, c, cos_phi, sin_phi)
        g1 = g1 * landscape.noise_factor(noise, z1)
        g2 = g2 * landscape.noise_factor(noise, z2)
        theta1, s10, s11 = update(cx, theta1, g1, s10, s11, lr, wd, hp)
        theta2, s20, s21 = update(cx, theta2, g2, s20, s21, lr, wd, hp)
        u, v = landscape.rotate(theta1, theta2, cos_phi, sin_phi)
        loss = landscape.loss_uv(u, v, sharpness, c)
        lmin = _where(lmin < loss, lmin, loss)  # the kernel's min(L, lmin)
        umax = _where(umax > u, umax, u)  # max(u, umax)
        ok = _where(loss - loss == 0.0, ok, 0.0)  # NaN/inf loss marks divergence
    return theta1, theta2, s10, s11, s20, s21, u, v, lmin, umax, ok


def _where(c, a, b):
    import torch

    return torch.where(c, a, b)


@dataclass
class TorchSimulator:
    """Runs kernel-shaped work (cells x lrs x replicates) on a torch device.

    ``compile`` fuses ``steps_per_call`` steps into one generated kernel (torch.compile); eager
    otherwise.  The CUDA default is compiled, 8 steps per call; the CPU default eager (exact).
    """

    device: str = "cuda"
    compile: bool | None = None
    steps_per_call: int | None = None

    def __post_init__(self):
        torch = _torch()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None and torch.version.hip is None else \
                f"built for {'CUDA ' + torch.version.cuda if torch.version.cuda else 'ROCm ' + torch.version.hip}"
            raise FocuslabError(f"--device cuda: no GPU is visible to torch {torch.__version__} ({build}); "
                                "install a CUDA build of torch, or use --device cpu")
        gpu = self.device.startswith("cuda")
        if self.compile is None:
            self.compile = gpu
        if self.steps_per_call is None:
            self.steps_per_call = 8 if self.compile else 1
        self.fixed_shape = self.compile  # compiled code: every launch the same shape, so it compiles once
        self.torch = torch
        self._compiled = {}

    def lanes_per_call(self) -> int:
        """Lanes that fit one launch: half the free device memory (a fixed 2**20 on the CPU)."""
        if self.device.startswith("cuda"):
            free, _ = self.torch.cuda.mem_get_info(self.torch.device(self.device))
            return max(1 << 14, int(free * 0.5 // BYTES_PER_LANE))
        return 1 << 20

    def describe(self) -> str:
        name = self.torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else "CPU"
        how = f"compiled, {self.steps_per_call} steps per call" if self.compile else "eager"
        return f"torch {self.torch.__version__} on {self.device} ({name}), {how}"

    def _advance_fn(self, update, hp, n_steps):
        key = (id(update), hp, n_steps)
        if key not in self._compiled:
            gen = generator(not self.compile)

            def fn(keys, t0, ctx, cell, lr, state):
                return _advance(n_steps, update, hp, keys, t0, ctx, cell, lr, state, gen)

            self._compiled[key] = self.torch.compile(fn, fullgraph=True, dynamic=False) if self.compile else fn
        return self._compiled[key]

    def run(self, rule, settings: dict, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray,
            steps: int) -> dict[str, np.ndarray]:
        """Same contract as focuslab.toy.kernel.run: per-lane metrics of shape (cells, lrs, replicates)."""
        torch, dev = self.torch, self.device
        update = _update_on_tensors(rule, rule.option_values(settings), not self.compile)
        hp = rule.hyper_values(settings)
        f64 = dict(dtype=torch.float64, device=dev)
        cells = np.ascontiguousarray(cells, dtype=np.float64)
        col = lambda name: torch.tensor(cells[:, COLUMN[name]], **f64).view(-1, 1, 1)  # noqa: E731
        phi = cells[:, COLUMN["phi"]]
        cell = (col("sharpness"), col("noise"), col("weight_decay"), col("c"),
                torch.tensor([math.cos(p) for p in phi], **f64).view(-1, 1, 1),  # libm, as the kernel
                torch.tensor([math.sin(p) for p in phi], **f64).view(-1, 1, 1))
        lr = torch.tensor(np.asarray(lrs, dtype=np.float64), **f64).view(1, -1, 1)
        k = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.uint64).view(np.int64)).to(dev).unsqueeze(1)
        ctx = torch.tensor(step_table(rule, settings, steps), **f64)
        shape = (cells.shape[0], lr.shape[1], k.shape[2])
        z1, z2 = generator(not self.compile).normal_pair(k, torch.zeros((), dtype=torch.int64, device=dev))
        theta1 = (INIT_SCALE * z1).expand(shape).contiguous()
        theta2 = (INIT_SCALE * z2).expand(shape).contiguous()
        u, v = landscape.rotate(theta1, theta2, cell[4], cell[5])
        zeros = torch.zeros(shape, **f64)
        state = (theta1, theta2, zeros, zeros, zeros, zeros, u, v, torch.full(shape, math.inf, **f64),
                 torch.full(shape, -math.inf, **f64), torch.ones(shape, **f64))
        per_call = max(d for d in range(1, self.steps_per_call + 1) if steps % d == 0)  # one graph only
        t = 1
        while t <= steps:
            n = per_call
            fn = self._advance_fn(update, hp, n)
            state = fn(k, torch.tensor(t, dtype=torch.int64, device=dev), ctx[t:t + n], cell, lr, state)
            t += n
        theta1, theta2, s10, s11, s20, s21, u, v, lmin, umax, ok = state
        total = theta1 + theta2 + s10 + s11 + s20 + s21
        out = {"final_loss": landscape.loss_uv(u, v, cell[0], cell[3]), "min_loss": lmin, "progress": umax}
        out = {name: value.expand(shape).cpu().numpy() for name, value in out.items()}
        out["diverged"] = (~((ok == 1.0) & torch.isfinite(total))).to(torch.uint8).cpu().numpy()
        return out


_ON_TENSORS: dict = {}


def _update_on_tensors(rule, options: tuple, exact_sqrt: bool = True):
    key = (rule.name, options, exact_sqrt)
    if key not in _ON_TENSORS:
        _ON_TENSORS[key] = _on_tensors(rule.update_function(options), exact_sqrt)
    return _ON_TENSORS[key]
