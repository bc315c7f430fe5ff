"""Figures of a `focuslab bridge` directory, drawn from its tables only: MNIST's observed Adam/Signum
gain against the toy's prediction at the measured sigma_equiv (with the toy map and where the batches
sit on it), the toy's ranking at GPT-2's sigma_equiv against the runs', and Adam's stability number
on the real runs against the toy's."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..bridge import TITLE, summary_lines
from ..results import read_json, read_parquet
from .style import colour, save


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _mnist(plt, directory: Path, out: Path, formats) -> list[Path]:
    meta = read_json(directory / "bridge.json")
    m = read_parquet(directory / "mnist.parquet")
    per_ab = read_parquet(directory / "mnist_toy.parquet")
    per_a = read_parquet(directory / "boundary.parquet").sort_values("sharpness")
    toy = read_parquet(directory / "toy.parquet")
    r = meta["readings"]["mnist"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=100, layout="constrained")
    ax = axes[0]
    measured = m[np.isfinite(m["sigma_equiv"])]
    ax.errorbar(measured["batch_size"], 100 * measured["improvement"], yerr=100 * measured["improvement_error"],
                color="k", marker="o", capsize=3, label="MNIST observed")
    cmap = plt.get_cmap("plasma")
    shown = per_a["sharpness"].to_numpy()[:: max(1, len(per_a) // 4)]
    for k, a in enumerate(shown):
        p = per_ab[np.isclose(per_ab["sharpness"], a)].sort_values("batch_size")
        ax.plot(p["batch_size"], 100 * p["predicted_improvement"], color=cmap(k / max(1, len(shown))), marker=".",
                label=f"toy at σ_equiv(B), a = {a:.3g}")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Batch size B")
    ax.set_ylabel("I = (L_Adam − L_Signum) / |L_Adam|, %")
    ax.set_title("Signum's gain over Adam: MNIST vs the toy at the measured σ", fontsize=10)
    ax.legend(frameon=False, fontsize=7)
    ax = axes[1]
    wide = toy[toy["optimizer"].isin(["adam", "signum"])].pivot_table(
        index=["sharpness", "noise"], columns="optimizer", values="final_loss_mean")
    grid = ((wide["adam"] - wide["signum"]) / wide["adam"].abs()).unstack("noise")
    x, y = np.log10(grid.columns.to_numpy(float)), np.log10(grid.index.to_numpy(float))
    lim = float(np.nanquantile(np.abs(grid.to_numpy()), 0.95)) or 1.0
    mesh = ax.pcolormesh(x, y, grid.to_numpy(), cmap="RdBu", vmin=-lim, vmax=lim, shading="nearest")
    fig.colorbar(mesh, ax=ax, label="toy (L_Adam − L_Signum)/|L_Adam| (blue: Signum better)")
    star = per_a["sigma_star"].to_numpy(float)
    ax.plot(np.log10(star), np.log10(per_a["sharpness"]), color="k", lw=1.5, label="toy boundary σ*(a)")
    off = []
    for b, s in zip(measured["batch_size"], measured["sigma_equiv"]):
        if not x[0] <= math.log10(s) <= x[-1]:  # beyond the map's noise axis: said, not drawn
            off.append(f"B = {b} at σ {s:.3g}")
            continue
        ax.axvline(math.log10(s), color="0.2", lw=0.6, ls=":")
        ax.text(math.log10(s), y[-1], f"{b}", fontsize=7, ha="center", va="bottom", rotation=90)
    obs, s_obs = r["observed_crossover"], r["sigma_at_observed_crossover"]
    if np.isfinite(obs) and np.isfinite(s_obs):
        ax.axvline(math.log10(s_obs), color="tab:orange", lw=2,
                   label=f"σ_equiv at the observed crossover B ≈ {obs:.0f}")
    ax.set_xlim(x[0] - 0.05, x[-1] + 0.05)
    ax.set_xlabel("log10 noise σ (dotted: MNIST σ_equiv at batch B, labelled)"
                  + (f"\noff the map: {', '.join(off)}" if off else ""))
    ax.set_ylabel("log10 sharpness a")
    ax.set_title("Toy Adam vs Signum, and where MNIST's batches sit", fontsize=10)
    ax.legend(frameon=False, fontsize=7, loc="lower left")
    files = save(fig, out, "mnist_bridge", formats)
    plt.close(fig)
    return files


def _gpt2(plt, directory: Path, out: Path, formats) -> list[Path]:
    g = read_parquet(directory / "gpt2.parquet").sort_values("final_val_loss")
    t = read_parquet(directory / "gpt2_toy.parquet")
    sigma = float(t["sigma_equiv"].iloc[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, layout="constrained",
                             gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    best = t.groupby("sharpness")["final_loss_mean"].min()
    for opt, rows in t.groupby("optimizer"):
        rows = rows.sort_values("sharpness")
        ref = best.loc[rows["sharpness"]].to_numpy()
        rel = 100 * (rows["final_loss_mean"].to_numpy() - ref) / np.abs(ref)
        err = 100 * rows["final_loss_sem"].to_numpy() / np.abs(ref)
        ax.plot(rows["sharpness"], rel, marker="o", ms=3, color=colour(opt), label=TITLE.get(opt, opt))
        ax.fill_between(rows["sharpness"], rel - 2 * err, rel + 2 * err, color=colour(opt), alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("toy sharpness a")
    ax.set_ylabel("toy loss above the best of the three, % (band: ±2 SE)")
    ax.set_title(f"The toy at GPT-2's σ_equiv = {sigma:.3g} (the runs' median)", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax = axes[1]
    ax.barh(range(len(g)), g["final_val_loss"], color=[colour(o) for o in g["toy_optimizer"]])
    ax.set_yticks(range(len(g)), [f"{n}\nσ_equiv {s:.2g}" for n, s in zip(g["name"], g["sigma_equiv"])], fontsize=8)
    ax.invert_yaxis()
    lo, hi = g["final_val_loss"].min(), g["final_val_loss"].max()
    ax.set_xlim(lo - 0.3 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_xlabel("final validation loss (observed)")
    ax.set_title("GPT-2 runs, best first", fontsize=10)
    files = save(fig, out, "gpt2_bridge", formats)
    plt.close(fig)
    return files


def _stability(plt, directory: Path, out: Path, formats) -> list[Path]:
    s = read_parquet(directory / "stability.parquet")
    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=100, layout="constrained")
    cmap = plt.get_cmap("viridis")
    labels = list(dict.fromkeys(s["measurement"]))
    for k, label in enumerate(labels):
        rows = s[s["measurement"] == label].sort_values("sharpness")
        c = cmap(k / max(1, len(labels) - 1))
        ax.plot(rows["sharpness"], rows["toy_stability"], color=c, marker="o", ms=3,
                label=f"{label}: toy at σ {rows['sigma_equiv'].iloc[0]:.2g}")
        ax.axhline(rows["stability"].iloc[0], color=c, ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("toy sharpness a")
    ax.set_ylabel("S = lr · λ_max(P^-1/2 H P^-1/2)")
    ax.set_title("Adam's stability number: the real runs (dashed) vs the toy at their σ_equiv (lines)",
                 fontsize=9)
    ax.legend(frameon=False, fontsize=6, ncols=2)
    files = save(fig, out, "stability_bridge", formats)
    plt.close(fig)
    return files


def plot_bridge(directory: Path, out: Path, formats) -> dict:
    """Every figure a bridge directory's tables allow; the bridge's reading as the summary."""
    plt = _plt()
    directory, out = Path(directory), Path(out)
    files = []
    if (directory / "mnist.parquet").exists():
        files += _mnist(plt, directory, out, formats)
    if (directory / "gpt2.parquet").exists():
        files += _gpt2(plt, directory, out, formats)
    if (directory / "stability.parquet").exists():
        files += _stability(plt, directory, out, formats)
    return {"files": files, "summary": summary_lines(directory)}
