"""The kernel as compiled for other CPUs (haswell, x86-64, skylake-avx512): vectorised (packed
instructions in its assembly) and giving the very same bits as on this machine, hence as each other.  Each target compiles in a subprocess with
NUMBA_CPU_NAME/NUMBA_CPU_FEATURES set and an empty numba cache in a temporary directory."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from focuslab.axes import cell_array
from focuslab.toy import kernel
from focuslab.toy.asm import host_can_run, packed_stats, target_env
from focuslab.toy.rng import trajectory_keys
from focuslab.optimizers.builtin import BY_NAME as OPTIMIZERS

VARIANTS = [(name, {}) for name in OPTIMIZERS] + [("focus", {"decay": "theta", "beta2": 0.9, "gamma": 0.4})]

PROBE = r"""
import json, math, sys
import numpy as np
from focuslab.optimizers import builtin as updates
from focuslab.toy import kernel
from focuslab.toy.asm import current_target, kernel_asm, packed_stats
from focuslab.toy.rng import trajectory_keys
variants = json.loads(sys.argv[2])
from focuslab.axes import cell_array
cells = cell_array(sharpness=[0.5, 30.0, 300.0], noise=[0.0, 2.5, 1.0], weight_decay=[0.1, 0.0, 0.2],
                   phi=[math.pi / 6, 1.1, -0.4], c=[0.1, 0.3, 0.1])
keys = trajectory_keys(5, cells, np.arange(13))
lrs = np.logspace(-3, 0, 6)
stats, arrays = {}, {}
for k, (name, params) in enumerate(variants):
    settings = updates.get(name).resolve(params)
    stats[f"{k}"] = packed_stats(kernel_asm(updates.get(name), settings))
    out = kernel.run(updates.get(name), settings, cells, lrs, keys, 150)
    arrays.update({f"{k}/{m}": v for m, v in out.items()})
np.savez(sys.argv[1], **arrays)
print(json.dumps({"target": current_target(), "stats": stats}))
"""


def _probe(cpu_name, tmp_path):
    out = tmp_path / f"{cpu_name}.npz"
    env = target_env(cpu_name, str(tmp_path / f"cache-{cpu_name}"))
    res = subprocess.run([sys.executable, "-c", PROBE, str(out), json.dumps(VARIANTS)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def _host_results():
    cells = cell_array(sharpness=[0.5, 30.0, 300.0], noise=[0.0, 2.5, 1.0], weight_decay=[0.1, 0.0, 0.2],
                       phi=[math.pi / 6, 1.1, -0.4], c=[0.1, 0.3, 0.1])
    keys = trajectory_keys(5, cells, np.arange(13))
    out = {}
    for k, (name, params) in enumerate(VARIANTS):
        res = kernel.run(OPTIMIZERS[name], OPTIMIZERS[name].resolve(params), cells, np.logspace(-3, 0, 6), keys, 150)
        out.update({f"{k}/{m}": v for m, v in res.items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("cpu_name,widths", [("haswell", (256,)), ("x86-64", (128,)),
                                             ("skylake-avx512", (256, 512))])
def test_kernel_for_target_is_vectorised_and_bit_identical(cpu_name, widths, tmp_path):
    """haswell (AVX2, most laptops and many cluster nodes) must get packed 256-bit double arithmetic
    for every rule -- with the rule as a run-time switch it got none -- SSE2-only x86-64 packed
    128-bit, and skylake-avx512 packed 256- or 512-bit (LLVM prefers 256-bit vectors there); each
    must reproduce this machine's results exactly (no FMA contraction, no libm in the generator),
    so that the three targets give the same bits as each other: the tables of a scan do not depend
    on the CPU that computed them (a figure quoted from an AVX-512 machine is the AVX2 laptop's)."""
    can, why = host_can_run(cpu_name)
    if not can:
        pytest.skip(why)
    info, arrays = _probe(cpu_name, tmp_path)
    assert info["target"] == cpu_name
    for k, (name, params) in enumerate(VARIANTS):
        stats = info["stats"][str(k)]
        assert stats["width"] in widths, (name, params, stats)
        packed = stats[{128: "xmm", 256: "ymm", 512: "zmm"}[stats["width"]]]
        assert packed >= 150, (name, params, stats)  # the lane loops: hundreds of packed ops
    host = _host_results()
    for key, value in host.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=f"{cpu_name}: {key}")


def test_packed_stats_reads_widths():
    asm = """
        vmulpd  %ymm1, %ymm2, %ymm3
        vaddsd  %xmm0, %xmm1, %xmm1
        vdivpd  %zmm17, %zmm2, %zmm3
        mulpd   %xmm4, %xmm5
    """
    s = packed_stats(asm)
    assert (s["width"], s["ymm"], s["zmm"], s["xmm"], s["scalar"], s["avx512_regs"]) == (512, 1, 1, 1, 1, 1)
    assert packed_stats("vaddsd %xmm0, %xmm1, %xmm1")["width"] == 64
