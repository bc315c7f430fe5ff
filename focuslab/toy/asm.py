"""What the compiler made of the kernel: its assembly and how much of it is packed SIMD.

numba compiles for the host CPU unless told otherwise.  To see (or time) the code another machine
would get, set the target before numba is imported:

    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" python ...       # AVX2 + FMA (most laptops)
    NUMBA_CPU_NAME=x86-64  NUMBA_CPU_FEATURES="" python ...       # SSE2 only
    NUMBA_CPU_NAME=skylake-avx512 NUMBA_CPU_FEATURES="" ...       # AVX-512

``NUMBA_CPU_FEATURES=""`` matters: with a CPU name alone numba still enables every feature of the
*host*, so "haswell" on an AVX-512 machine would quietly compile AVX-512 code.  ``target_env``
returns that environment.  Code for a target the host cannot run can still be compiled and
inspected (``kernel_asm`` never runs it).
"""
from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np

_ARITH = re.compile(r"^v?(add|sub|mul|div|sqrt|max|min|and|andn|or|xor|blendv|cmp[a-z]*)(pd|sd)$")
_INSTR = re.compile(r"^\s+([a-z][a-z0-9]*)\s+([^\n#]*)", re.M)


def target_env(cpu_name: str | None, cache_dir: str | None = None) -> dict:
    """Environment for a process that compiles the kernel for ``cpu_name`` (None: the host)."""
    env = dict(os.environ)
    for key in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"):
        env.pop(key, None)
    if cpu_name:
        env.update(NUMBA_CPU_NAME=cpu_name, NUMBA_CPU_FEATURES="")
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    return env


def current_target() -> str:
    from numba.core import config

    import llvmlite.binding as ll

    return config.CPU_NAME or f"host ({ll.get_host_cpu_name()})"


def host_can_run(cpu_name: str | None) -> tuple[bool, str]:
    """Whether this machine can execute code compiled for ``cpu_name`` (by its key features)."""
    if not cpu_name:
        return True, ""
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features()
    needs = {"skylake-avx512": "avx512f", "icelake-server": "avx512f", "cascadelake": "avx512f",
             "znver4": "avx512f", "sapphirerapids": "avx512f", "haswell": "avx2", "znver2": "avx2",
             "znver3": "avx2", "skylake": "avx2", "x86-64-v3": "avx2", "x86-64-v4": "avx512f"}
    feature = needs.get(cpu_name)
    if feature and not host.get(feature, False):
        return False, f"this host lacks {feature}"
    return True, ""


def kernel_asm(rule, settings: dict | None = None) -> str:
    """Assembly of the kernel of ``rule`` (a built-in's update rule, focuslab.optimizers.builtin)
    as compiled for the current target, compiled fresh if needed and never executed (numba cannot
    show the assembly of a kernel loaded from its disk cache: use an empty NUMBA_CACHE_DIR)."""
    from numba import typeof

    from . import kernel

    settings = rule.resolve(settings or {})
    dispatcher = kernel.kernel_for(rule, rule.option_values(settings))
    shape = (1, 1, 1)
    args = (rule.hyper_values(settings), np.zeros((1, 5)), np.ones(1), np.zeros((1, 1), np.uint64), 1,
            np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape, np.uint8))
    sig = tuple(typeof(a) for a in args)
    dispatcher.compile(sig)
    return dispatcher.inspect_asm(sig)


def packed_stats(asm: str) -> dict:
    """Counts of double-precision arithmetic instructions by kind: scalar (…sd), packed on xmm
    (128-bit), ymm (256) or zmm (512), and uses of the registers only AVX-512 has (xmm16-31 etc.).
    ``width`` is the widest packed double vector in use, in bits (64 = scalar only)."""
    counts: Counter = Counter()
    for op, args in _INSTR.findall(asm):
        if not _ARITH.match(op):
            continue
        if op.endswith("sd") and "blend" not in op:
            counts["scalar"] += 1
        else:
            counts["zmm" if "zmm" in args else "ymm" if "ymm" in args else "xmm"] += 1
    counts["avx512_regs"] = len(re.findall(r"%[xyz]mm(?:1[6-9]|2[0-9]|3[01])\b", asm))
    width = 512 if counts["zmm"] else 256 if counts["ymm"] else 128 if counts["xmm"] else 64
    return {"width": width, **{k: counts[k] for k in ("scalar", "xmm", "ymm", "zmm", "avx512_regs")}}
