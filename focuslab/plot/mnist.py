"""Paper Fig. 2c/2d from an MNIST study directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FocuslabError
from ..results import read_json, read_parquet, rerun
from .style import colour, display_name, save


def improvement(best: pd.DataFrame, base: str = "adamw", other: str = "signum") -> pd.DataFrame:
    """I = (L_base - L_other) / L_base per batch size, in %, with the error propagated from the
    replicate standard deviations of both best losses (independent errors)."""
    a = best[best.optimizer == base].set_index("batch_size")
    s = best[best.optimizer == other].set_index("batch_size")
    bs = a.index.intersection(s.index)
    La, Ls = a.loc[bs, "test_loss_mean"], s.loc[bs, "test_loss_mean"]
    da, ds = a.loc[bs, "test_loss_std"], s.loc[bs, "test_loss_std"]
    ratio = Ls / La
    err = np.abs(ratio) * np.sqrt((da / La) ** 2 + (ds / Ls) ** 2)
    return pd.DataFrame({"batch_size": bs, "improvement": 100 * (1 - ratio), "error": 100 * err}).reset_index(drop=True)


def plot_mnist(directory, out=None, formats=("png",)) -> dict:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    directory = Path(directory)
    meta = read_json(directory / "mnist.json", fix="the study's config is lost with it, so its unit files cannot be "
                                                  "checked: " + rerun("mnist", directory, force=True))
    if meta.get("status") != "complete":
        raise FocuslabError(f"MNIST study in {directory} is not complete; re-run `focuslab mnist` to finish it")
    best = read_parquet(directory / "best.parquet",
                        rerun("mnist", directory, rebuilds="runs.parquet and best.parquet from its unit files"))
    need = {"optimizer", "batch_size", "test_loss_mean", "test_loss_std"}
    if need - set(best.columns):
        raise FocuslabError(f"{directory / 'best.parquet'} lacks column(s) {', '.join(sorted(need - set(best.columns)))}")
    out = Path(out) if out else directory
    out.mkdir(parents=True, exist_ok=True)
    opts = list(dict.fromkeys(best.optimizer))
    files, summary = [], []
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    settings = meta["config"].get("optimizer") or {}
    external = meta["config"].get("external") or {}
    for opt in opts:
        rows = best[best.optimizer == opt].sort_values("batch_size")
        ok = np.isfinite(rows.test_loss_mean)
        variant = ":" in opt  # a second entry of the same optimizer (focus:gamma=0.4): dashed
        ax.errorbar(rows.batch_size[ok], rows.test_loss_mean[ok], yerr=rows.test_loss_std[ok], marker="o",
                    ms=3, capsize=2, ls="--" if variant else "-", color=colour(opt, opts),
                    label=display_name(opt, settings, external))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Batch size")
    ax.set_ylabel("Best test loss (mean ± std over replicates)")
    ax.set_title(f"MNIST ({meta['config']['dataset']}): best test loss vs batch size", fontsize=10)
    ax.legend(frameon=False)
    files += save(fig, out, "fig2c", formats)
    plt.close(fig)
    if {"adamw", "signum"} <= set(opts):
        imp = improvement(best)
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100, layout="constrained")
        ax.axhspan(-5, 5, color="0.9", label="±5 %")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.errorbar(imp.batch_size, imp.improvement, yerr=imp.error, marker="o", ms=4, capsize=2, color="k")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("Batch size")
        ax.set_ylabel("Improvement I = (L_Adam − L_Signum) / L_Adam  [%]")
        ax.set_title("Signum's improvement over Adam", fontsize=10)
        ax.legend(frameon=False)
        files += save(fig, out, "fig2d", formats)
        plt.close(fig)
        for _, r in imp.iterrows():
            summary.append(f"batch {int(r.batch_size):>5}: I = {r.improvement:+6.1f} % ± {r.error:.1f} %")
    return {"files": files, "summary": summary}
