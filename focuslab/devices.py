"""One device resolver for every command: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (and the scan's
``torch-cpu`` check path) to a concrete device, or a one-line error.

``auto`` takes CUDA when a GPU is visible and torch sees it, else the CPU; it looks for GPU device
files before importing torch, so that on a machine without a GPU `focuslab scan` and `focuslab
plot` never import torch.
"""
from __future__ import annotations

import glob
import os

from .errors import FocuslabError


def usable_cpus() -> int:
    """The CPUs this process may use: its CPU affinity (taskset, SLURM's --cpus-per-task) and a
    cgroup CPU quota, as joblib (loky) counts them.  ``os.cpu_count()`` counts the machine's, so a
    job given one core of a 64-core node would start 64 workers on it."""
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def gpu_visible() -> bool:
    """Whether this machine shows a GPU device (NVIDIA or AMD) at all, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch


def resolve(device: str | None, where: str = "--device", extra=()) -> str:
    """``device`` as 'cpu', 'cuda' or 'cuda:N' (or one of ``extra``, e.g. 'torch-cpu'); a CUDA device
    that torch cannot use is one line saying why."""
    device = (device or "auto").strip()
    if device in extra:
        return device
    if device == "auto":
        if not gpu_visible():
            return "cpu"
        torch = _torch_cuda()
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        torch = _torch_cuda()
        if torch is None:
            raise FocuslabError(f"{where} {device}: torch is not installed (pip install torch, a CUDA build)")
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None and torch.version.hip is None else \
                f"built for {'CUDA ' + torch.version.cuda if torch.version.cuda else 'ROCm ' + torch.version.hip}"
            raise FocuslabError(f"{where} {device}: no CUDA device is visible to torch {torch.__version__} ({build}); "
                                "use --device cpu, or auto to take a GPU when there is one")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise FocuslabError(f"{where} {device}: this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    choices = ", ".join(["auto", "cpu", "cuda", "cuda:N", *extra])
    raise FocuslabError(f"{where}: expected {choices}, got {device!r}")
