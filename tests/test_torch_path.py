"""The GPU code path (focuslab.toy.torch_kernel) run on the CPU: the same streams, rules and metrics as
the numba kernel, bit for bit in eager mode; within rounding when compiled; scans through the same
chunk machinery.  Only the GPU's own timing needs a GPU (benchmarks/bench_toy.py --device cuda)."""
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from focuslab.axes import cell_array  # noqa: E402
from focuslab.config import build_scan_config  # noqa: E402
from focuslab.scan import run_scan  # noqa: E402
from focuslab.toy import kernel  # noqa: E402
from focuslab.toy.rng import normal_pairs, trajectory_keys  # noqa: E402
from focuslab.toy.torch_kernel import TorchSimulator, generator  # noqa: E402
from focuslab.optimizers.builtin import BY_NAME as OPTIMIZERS  # noqa: E402

VARIANTS = [(name, {}) for name in OPTIMIZERS] + [("focus", {"decay": "theta", "beta2": 0.9, "gamma": 0.4}),
                                                  ("adam", {"beta2": 0.99, "eps": 1e-6})]
CELLS = cell_array(sharpness=[0.5, 30.0, 300.0, 5.0], noise=[0.0, 2.5, 1.0, 3.0], weight_decay=[0.1, 0.0, 0.2, 0.05],
                   phi=[math.pi / 6, 1.1, -0.4, 0.3], c=[0.1, 0.3, 0.1, 2.0])
LRS = np.logspace(-3, 0, 5)


def test_generator_on_tensors_gives_the_same_bits():
    keys = trajectory_keys(3, CELLS, np.arange(50)).ravel()
    t = torch.from_numpy(keys.view(np.int64))
    for n in (0, 1, 7, 999, 123456789):
        z1, z2 = generator().normal_pair(t, torch.tensor(n, dtype=torch.int64))
        want = np.array([normal_pairs(k, n, 1)[0] for k in keys])
        np.testing.assert_array_equal(z1.numpy(), want[:, 0])
        np.testing.assert_array_equal(z2.numpy(), want[:, 1])


@pytest.mark.parametrize("name,params", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_eager_torch_path_equals_the_numba_kernel_bit_for_bit(name, params):
    settings = OPTIMIZERS[name].resolve(params)
    keys = trajectory_keys(9, CELLS, np.arange(11))
    sim = TorchSimulator("cpu")
    for steps in (1, 3, 120):
        a = kernel.run(OPTIMIZERS[name], settings, CELLS, LRS, keys, steps)
        b = sim.run(OPTIMIZERS[name], settings, CELLS, LRS, keys, steps)
        for metric in a:
            np.testing.assert_array_equal(a[metric], b[metric], err_msg=f"{name} {params} {metric} T={steps}")
    assert a["diverged"].any() or name != "sgd"  # sgd at lr 1 diverges: the flag path is covered


def test_a_torch_scan_is_the_cpu_scan_whatever_the_launch_packing(tmp_path, monkeypatch):
    cfg = build_scan_config(None, {"sharpness": "0.5:50:3:log", "noise": "0:3:3", "lr": "1e-3:1:4:log",
                                   "replicates": 5, "steps": 60, "optimizers": "adam,signum,focus", "chunk_steps": 2500})
    run_scan(cfg, tmp_path / "cpu", jobs=1, progress=False)
    run_scan(cfg, tmp_path / "torch", progress=False, device="torch-cpu")
    # tiny launches with a fixed shape: chunks split across launches, the last one padded
    monkeypatch.setattr(TorchSimulator, "lanes_per_call", lambda self: 2 * 4 * 5)
    monkeypatch.setattr(TorchSimulator, "__post_init__",
                        lambda self, orig=TorchSimulator.__post_init__: (orig(self), setattr(self, "fixed_shape", True)))
    run_scan(cfg, tmp_path / "packed", progress=False, device="torch-cpu")
    for other in ("torch", "packed"):
        for name in ("runs.parquet", "best.parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cpu" / name),
                                          pd.read_parquet(tmp_path / other / name), check_exact=True)
    import json

    attempt = json.loads((tmp_path / "torch" / "scan.json").read_text())["timings"]["attempts"][-1]
    assert attempt["device"].startswith("torch") and "eager" in attempt["device"]


@pytest.mark.slow
def test_compiled_path_agrees_within_rounding_and_statistics():
    """What a GPU runs: torch.compile fuses the step (here with inductor's C++ backend).  Fused code
    may contract a*b+c into one rounding; trajectories then agree to ~1e-9 over a short run, and
    the means over replicates within 4 standard errors."""
    settings = OPTIMIZERS["adam"].resolve({})
    keys = trajectory_keys(2, CELLS, np.arange(40))
    a = kernel.run(OPTIMIZERS["adam"], settings, CELLS, LRS, keys, 30)
    b = TorchSimulator("cpu", compile=True, steps_per_call=1).run(OPTIMIZERS["adam"], settings, CELLS, LRS, keys, 30)
    np.testing.assert_array_equal(a["diverged"], b["diverged"])
    ok = a["diverged"] == 0
    np.testing.assert_allclose(b["final_loss"][ok], a["final_loss"][ok], rtol=1e-9, atol=1e-15)
    sem = a["final_loss"].std(axis=-1, ddof=1) / math.sqrt(a["final_loss"].shape[-1])
    gap = np.abs(a["final_loss"].mean(-1) - b["final_loss"].mean(-1))
    assert np.all(gap <= 4 * sem + 1e-15)


def test_cuda_without_a_gpu_or_without_torch_is_one_line():
    from click.testing import CliRunner

    from focuslab.cli.main import main

    if not torch.cuda.is_available():
        res = CliRunner().invoke(main, ["scan", "--sharpness", "1", "--noise", "0", "--device", "cuda", "--out", "x"])
        assert res.exit_code == 2 and "no CUDA device is visible to torch" in res.stderr
        assert len(res.stderr.splitlines()) == 1
    code = ("import sys; sys.modules['torch'] = None\n"
            "from focuslab.cli.main import main\n"
            "main(['scan', '--sharpness', '1', '--noise', '0', '--device', 'cuda', '--out', 'x'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and "pip install torch" in res.stderr and "Traceback" not in res.stderr
    code = code.replace("'cuda'", "'auto'").replace("'--out', 'x'", "'--out', 'y', '--steps', '3', '-q'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # auto without torch: the CPU kernel
