"""Figures of focuslab.diagnostics: noise ratio and sharpness along a run, the noise scale against
batch size with the Adam/Signum crossover, and real runs placed on a toy phase map ("you are here")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FocuslabError
from ..results import read_parquet
from .style import colour, save


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def read_diagnostics(directory: Path) -> pd.DataFrame:
    path = Path(directory) / "diagnostics.parquet"
    if not path.exists():
        raise FocuslabError(f"{directory} has no diagnostics.parquet (run with --diagnostics-every N)")
    return read_parquet(path)


def run_band(directory: Path) -> tuple[float, float, float, str]:
    """(q25, median, q75) of a run's per-coordinate noise ratio, medians over its measurements after
    step 0, and a label."""
    d = read_diagnostics(directory)
    later = d[d["step"] > 0] if (d["step"] > 0).any() else d
    return (float(later["noise_ratio_q25"].median()), float(later["noise_ratio_median"].median()),
            float(later["noise_ratio_q75"].median()), Path(directory).name)


def _along_steps(axes, d: pd.DataFrame, label: str, c):
    d = d.sort_values("step")
    axes[0].plot(d["step"], d["noise_ratio_median"], color=c, label=label, marker="o", ms=3)
    # an unresolved quartile (+inf: the reference cannot resolve the mean there) runs the band to
    # 3x the largest resolved value, and the unresolved fraction is drawn dotted on the right axis
    finite = pd.concat([d["noise_ratio_q25"], d["noise_ratio_median"], d["noise_ratio_q75"]])
    finite = finite[np.isfinite(finite)]
    cap = 3 * float(finite.max()) if len(finite) else 1e6
    axes[0].fill_between(d["step"], d["noise_ratio_q25"].clip(upper=cap), d["noise_ratio_q75"].clip(upper=cap),
                         color=c, alpha=0.15)
    if "noise_ratio_unresolved" in d:
        twin = getattr(axes[0], "_unresolved_axis", None) or axes[0].twinx()
        axes[0]._unresolved_axis = twin
        twin.plot(d["step"], d["noise_ratio_unresolved"], color=c, ls=":", lw=1)
        twin.set_ylim(0, 1)
        twin.set_ylabel("unresolved fraction of coordinates (dotted)", fontsize=8)
    axes[1].plot(d["step"], d["lambda_max"], color=c, label=label, marker="o", ms=3)
    if "lambda_max_preconditioned" in d and d["lambda_max_preconditioned"].notna().any():
        axes[1].plot(d["step"], d["lambda_max_preconditioned"], color=c, ls="--", marker="x", ms=3,
                     label=f"{label} (Adam-preconditioned)")


def _finish(fig, axes, title):
    axes[0].set_yscale("log")
    axes[0].set_ylabel("noise ratio std/|mean| per coordinate\n(median; band: quartiles)")
    axes[1].set_yscale("symlog")
    axes[1].set_ylabel("λ_max of the Hessian")
    for ax in axes:
        ax.set_xlabel("Step")
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)


def plot_gpt2_diagnostics(directories, out: Path, formats) -> list[Path]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, layout="constrained")
    names = [Path(d).name for d in directories]
    for d in directories:
        rows = read_diagnostics(d)
        _along_steps(axes, rows, Path(d).name, colour(Path(d).name, names))
    _finish(fig, axes, "GPT-2: gradient noise and sharpness along training")
    files = save(fig, out, "diagnostics", formats)
    plt.close(fig)
    return files


def crossover(best: pd.DataFrame, base: str = "adamw", other: str = "signum") -> float | None:
    """The batch size where Signum's improvement over Adam changes sign (log2-interpolated), from a
    study's best.parquet; None without a sign change."""
    from .mnist import improvement

    imp = improvement(best, base, other).sort_values("batch_size")
    b, i = imp["batch_size"].to_numpy(float), imp["improvement"].to_numpy(float)
    for k in range(len(b) - 1):
        if i[k] > 0 >= i[k + 1]:
            lo, hi = np.log2(b[k]), np.log2(b[k + 1])
            return float(2 ** (lo + (hi - lo) * i[k] / (i[k] - i[k + 1])))
    return None


def plot_mnist_diagnostics(directory: Path, out: Path, formats) -> tuple[list[Path], list[str]]:
    """Noise ratio and lambda_max along training per batch size, and B_simple / the noise ratio at
    the run's batch against batch size with the Adam/Signum crossover marked."""
    plt = _plt()
    d = read_diagnostics(directory)
    best = read_parquet(Path(directory) / "best.parquet")
    files, summary = [], []
    opt = "adamw" if "adamw" in set(d["optimizer"]) else d["optimizer"].iloc[0]
    d = d[d["optimizer"] == opt]
    # each batch size at the lr that did best for this optimizer
    chosen = best[best["optimizer"] == opt].set_index("batch_size")["best_lr"]
    picked = pd.concat([g[np.isclose(g["lr"], chosen.get(b, g["lr"].iloc[0]))] for b, g in d.groupby("batch_size")])
    sizes = sorted(picked["batch_size"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for k, b in enumerate(sizes):
        c = cmap(k / max(1, len(sizes) - 1))
        _along_steps(axes, picked[picked["batch_size"] == b], f"batch {b}", c)
    _finish(fig, axes, f"MNIST ({opt} at its best lr per batch size): gradient noise and sharpness")
    files += save(fig, out, "diagnostics", formats)
    plt.close(fig)
    later = picked[picked["step"] > 0]
    per = later.groupby("batch_size").agg(b_simple=("noise_scale_simple", "median"),
                                          ratio=("noise_ratio_median", "median"),
                                          q25=("noise_ratio_q25", "median")).reset_index()
    cross = crossover(best) if {"adamw", "signum"} <= set(best["optimizer"]) else None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    ax.plot(per["batch_size"], per["b_simple"], marker="o", color="k", label="B_simple = tr Σ / |G|² (median over steps)")
    ax.plot(per["batch_size"], per["batch_size"], color="0.6", ls=":", label="B = B_simple")
    ax2 = ax.twinx()
    ax2.plot(per["batch_size"], per["ratio"], marker="s", color=colour("signum"), label="noise ratio at batch B (median)")
    # the lower quartile stays resolved where the median coordinate is beyond the reference
    ax2.plot(per["batch_size"], per["q25"], marker="v", ls="--", color=colour("signum"),
             label="noise ratio at batch B (25 % quantile)")
    ax2.set_ylabel("noise ratio std/|mean| at batch B (unresolved: not drawn)")
    ax2.set_yscale("log")
    if cross:
        ax.axvline(cross, color=colour("adamw"), lw=1.5, label=f"Adam/Signum crossover ≈ {cross:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("Batch size B")
    ax.set_ylabel("simple noise scale B_simple")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=8, loc="upper left")
    ax.set_title("MNIST: noise scale and noise ratio vs batch size", fontsize=10)
    files += save(fig, out, "noise_scale", formats)
    plt.close(fig)
    for _, r in per.iterrows():
        summary.append(f"batch {int(r.batch_size):>5}: B_simple {r.b_simple:9.1f}, noise ratio {r.ratio:.2f} "
                       f"(25 % quantile {r.q25:.2f})")
    if cross:
        summary.append(f"Adam/Signum crossover at batch ≈ {cross:.0f}")
    return files, summary


def overlay_bands(ax, bands, geo_x_log: bool):
    """Vertical bands at the measured noise ratios on a toy map whose x axis is the noise sigma."""
    trans = (lambda v: np.log10(v)) if geo_x_log else (lambda v: v)
    for k, (q25, med, q75, label) in enumerate(bands):
        c = ("k", "tab:red", "tab:purple", "tab:green", "tab:brown")[k % 5]
        lo, hi = trans(q25), trans(min(q75, 1e6))
        ax.axvspan(lo, hi, color=c, alpha=0.12, lw=0)
        ax.axvline(trans(med), color=c, lw=1.5, ls="--", label=f"here: {label} (σ ≈ {med:.2g})")


def load_overlays(paths) -> list:
    """Bands of GPT-2 runs (their diagnostics) and of MNIST studies (one band per batch size)."""
    bands = []
    for p in paths:
        p = Path(p)
        if (p / "mnist.json").exists():
            d = read_diagnostics(p)
            for b, g in d[d["step"] > 0].groupby("batch_size"):
                bands.append((float(g["noise_ratio_q25"].median()), float(g["noise_ratio_median"].median()),
                              float(g["noise_ratio_q75"].median()), f"{p.name} B={b}"))
        elif (p / "gpt2.json").exists():
            bands.append(run_band(p))
        else:
            raise FocuslabError(f"--overlay {p}: not a focuslab mnist or gpt2 run with diagnostics")
    return bands
