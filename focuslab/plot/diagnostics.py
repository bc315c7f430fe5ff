"""Figures of focuslab.diagnostics: sigma_equiv (the toy's sigma) and sharpness along a run, the
noise scale and sigma_equiv against batch size with the Adam/Signum crossover, and real runs placed
on a toy phase map ("you are here")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FocuslabError
from ..results import read_parquet
from .style import colour, save

#: Title of the "you are here" figure (focuslab.plot.phase draws the map under it).
OVERLAY_TITLE = ("You are here: σ_equiv = √(B_simple / B) on the toy map\n"
                 "(line: median after step 0; band: range; sharpness not mapped)")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def read_diagnostics(directory: Path) -> pd.DataFrame:
    path = Path(directory) / "diagnostics.parquet"
    if not path.exists():
        raise FocuslabError(f"{directory} has no diagnostics.parquet (run with --diagnostics-every N)")
    d = read_parquet(path)
    if "sigma_equiv" not in d:
        raise FocuslabError(f"{path} was written before sigma_equiv existed (focuslab < this version's "
                            "diagnostics): run the measurement again")
    return d


def _band(d: pd.DataFrame, label: str) -> tuple[float, float, float, str]:
    """(low, centre, high, label) of sigma_equiv over a run's measurements after step 0: the median
    and the range."""
    later = d[d["step"] > 0] if (d["step"] > 0).any() else d
    s = later["sigma_equiv"]
    return float(s.min()), float(s.median()), float(s.max()), label


def run_band(directory: Path) -> tuple[float, float, float, str]:
    """sigma_equiv of a run (see ``_band``), labelled with the directory's name."""
    return _band(read_diagnostics(directory), Path(directory).name)


def _cap(values) -> float:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return 3 * float(finite.max()) if len(finite) else 1e6


def _finite(x: pd.Series) -> pd.Series:
    """+inf (unresolved) as NaN: not drawn."""
    return x.where(np.isfinite(x))


def _along_steps(axes, d: pd.DataFrame, label: str, c):
    d = d.sort_values("step")
    axes[0].plot(d["step"], _finite(d["sigma_equiv"]), color=c, label=label, marker="o", ms=3)
    # the 95 % interval, where it is bounded (an unbounded upper end is left blank)
    bounded = np.isfinite(d["sigma_equiv_hi"]).to_numpy()
    axes[0].fill_between(d["step"], d["sigma_equiv_lo"].where(bounded), d["sigma_equiv_hi"].where(bounded),
                         color=c, alpha=0.15, lw=0)
    axes[0].plot(d["step"], _finite(d["noise_ratio_weighted_median"]), color=c, ls="--", lw=1)
    axes[1].plot(d["step"], d["lambda_max"], color=c, label=label, marker="o", ms=3)
    if "lambda_max_preconditioned" in d and d["lambda_max_preconditioned"].notna().any():
        axes[1].plot(d["step"], d["lambda_max_preconditioned"], color=c, ls="--", marker="x", ms=3)


def _finish(fig, axes, title):
    axes[0].set_yscale("log")
    axes[0].set_ylabel("σ_equiv = √(B_simple / B), 95 % interval shaded\n"
                       "(dashed: |G|-weighted median ratio)")
    axes[1].set_yscale("symlog")
    axes[1].set_ylabel("λ_max of the Hessian\n(dashed: of the Adam-preconditioned Hessian)")
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


def per_batch_size(d: pd.DataFrame, best: pd.DataFrame, optimizer: str) -> pd.DataFrame:
    """(table, rows): ``optimizer``'s diagnostics rows at its best lr per batch size, and a table with
    one row per batch size of medians over the measurements after step 0 (sigma_equiv and its
    interval ends, the |G|-weighted median ratio, B_simple, lambda_max and the preconditioned one,
    the resolution limit of the per-coordinate ratios) and sigma_equiv's range over them."""
    d = d[d["optimizer"] == optimizer]
    chosen = best[best["optimizer"] == optimizer].set_index("batch_size")["best_lr"]
    picked = pd.concat([g[np.isclose(g["lr"], chosen.get(b, g["lr"].iloc[0]))] for b, g in d.groupby("batch_size")])
    later = picked[picked["step"] > 0]
    cols = dict(sigma_equiv=("sigma_equiv", "median"), sigma_lo=("sigma_equiv_lo", "median"),
                sigma_hi=("sigma_equiv_hi", "median"), sigma_min=("sigma_equiv", "min"),
                sigma_max=("sigma_equiv", "max"), weighted_median=("noise_ratio_weighted_median", "median"),
                b_simple=("noise_scale_simple", "median"), lambda_max=("lambda_max", "median"),
                limit=("noise_ratio_limit", "median"), lr=("lr", "first"))
    if "lambda_max_preconditioned" in later:
        cols["lambda_max_preconditioned"] = ("lambda_max_preconditioned", "median")
    return later.groupby("batch_size").agg(**cols).reset_index(), picked


def plot_mnist_diagnostics(directory: Path, out: Path, formats) -> tuple[list[Path], list[str]]:
    """sigma_equiv and lambda_max along training per batch size, and B_simple / sigma_equiv against
    batch size with the Adam/Signum crossover marked."""
    plt = _plt()
    d = read_diagnostics(directory)
    best = read_parquet(Path(directory) / "best.parquet")
    files, summary = [], []
    opt = "adamw" if "adamw" in set(d["optimizer"]) else d["optimizer"].iloc[0]
    per, picked = per_batch_size(d, best, opt)
    sizes = sorted(picked["batch_size"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for k, b in enumerate(sizes):
        c = cmap(k / max(1, len(sizes) - 1))
        _along_steps(axes, picked[picked["batch_size"] == b], f"batch {b}", c)
    _finish(fig, axes, f"MNIST ({opt} at its best lr per batch size): gradient noise and sharpness")
    files += save(fig, out, "diagnostics", formats)
    plt.close(fig)
    cross = crossover(best) if {"adamw", "signum"} <= set(best["optimizer"]) else None
    fig, ax = plt.subplots(figsize=(7.2, 5.6), dpi=100, layout="constrained")
    ax.plot(per["batch_size"], _finite(per["b_simple"]), marker="o", color="k", label="B_simple = tr Σ / |G|² (median over steps)")
    ax.plot(per["batch_size"], per["batch_size"], color="0.6", ls=":", label="B = B_simple")
    ax2 = ax.twinx()
    cap = _cap(pd.concat([per["sigma_equiv"], per["sigma_hi"]]))
    shown = per[np.isfinite(per["sigma_equiv"])]  # an unresolved median (+inf) is not drawn
    err = np.array([shown["sigma_equiv"] - shown["sigma_lo"],
                    shown["sigma_hi"].clip(upper=cap) - shown["sigma_equiv"]]).clip(min=0)
    others = [o for o in sorted(set(d["optimizer"])) if o != opt]
    ax2.errorbar(shown["batch_size"], shown["sigma_equiv"], yerr=err, marker="s", color=colour(opt), capsize=3,
                 label=f"σ_equiv, {opt} (median over steps after 0; bars: median 95 % interval)")
    for o in others:
        po, _ = per_batch_size(d, best, o)
        ax2.plot(po["batch_size"], _finite(po["sigma_equiv"]), marker="D", ms=4, ls="-.", color=colour(o),
                 label=f"σ_equiv, {o}'s own runs")
    ax2.plot(per["batch_size"], _finite(per["weighted_median"]), marker="v", ls="--", color=colour(opt), alpha=0.6,
             label=f"|G|-weighted median of the per-coordinate ratio, {opt}")
    ax2.set_ylabel("σ_equiv: the toy's noise σ at batch B (unresolved: not drawn)")
    ax2.set_yscale("log")
    if cross:
        ax.axvline(cross, color=colour("adamw"), lw=1.5, label=f"Adam/Signum crossover ≈ {cross:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("Batch size B")
    ax.set_ylabel("simple noise scale B_simple")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, frameon=False, fontsize=7, loc="outside lower center", ncols=2)
    ax.set_title("MNIST: noise scale and σ_equiv vs batch size", fontsize=10)
    files += save(fig, out, "noise_scale", formats)
    plt.close(fig)
    for _, r in per.iterrows():
        summary.append(f"batch {int(r.batch_size):>5}: sigma_equiv {r.sigma_equiv:.2f} (95 % interval "
                       f"{r.sigma_lo:.2f}-{r.sigma_hi:.2f}), |G|-weighted median ratio {r.weighted_median:.2f}, "
                       f"B_simple {r.b_simple:9.1f}")
    if cross:
        summary.append(f"Adam/Signum crossover at batch ≈ {cross:.0f}")
    return files, summary


def overlay_bands(ax, bands, geo_x_log: bool):
    """Vertical bands at measured sigma_equiv on a toy map whose x axis is the noise sigma; a run
    beyond the map's right edge gets an arrow there with its value."""
    trans = (lambda v: np.log10(v)) if geo_x_log else (lambda v: v)
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    beyond = 0
    for k, (lo, centre, hi, label) in enumerate(bands):
        c = ("k", "tab:red", "tab:purple", "tab:green", "tab:brown", "tab:olive", "tab:cyan", "tab:pink",
             "tab:gray")[k % 9]
        if trans(lo) < x1:
            ax.axvspan(trans(lo), min(trans(hi), x1), color=c, alpha=0.12, lw=0)
        if trans(centre) <= x1:
            ax.axvline(trans(centre), color=c, lw=1.5, ls="--", label=f"here: {label} (σ_equiv ≈ {centre:.2g})")
        else:  # off the map: an arrow at the edge
            y = y1 - (0.06 + 0.07 * beyond) * (y1 - y0)
            beyond += 1
            ax.annotate(f"{label}: σ_equiv ≈ {centre:.2g} →", xy=(x1, y), xytext=(x1 - 0.02 * (x1 - x0), y),
                        ha="right", va="center", fontsize=7, color=c,
                        arrowprops=dict(arrowstyle="->", color=c))
            ax.plot([], [], color=c, ls="--", label=f"here (off the map): {label} (σ_equiv ≈ {centre:.2g})")
    ax.set_xlim(x0, x1)


def load_overlays(paths) -> list:
    """Bands of GPT-2 runs (their diagnostics) and of MNIST studies (one band per optimizer and batch
    size, at the lr the study's best.parquet picks)."""
    bands = []
    for p in paths:
        p = Path(p)
        if (p / "mnist.json").exists():
            d = read_diagnostics(p)
            best = read_parquet(p / "best.parquet")
            for opt in sorted(set(d["optimizer"])):
                _, picked = per_batch_size(d, best, opt)
                for b, g in picked.groupby("batch_size"):
                    bands.append(_band(g, f"{p.name} {opt} B={b}"))
        elif (p / "gpt2.json").exists():
            bands.append(run_band(p))
        else:
            raise FocuslabError(f"--overlay {p}: not a focuslab mnist or gpt2 run with diagnostics")
    return bands
