"""The figures of a tuned scan (focuslab.tuning): the winner map at defaults beside the tuned one
(plot_scan draws the tuned map as phase.png), each optimizer's best value of each tuned setting,
the gain from tuning, and the winner map after k trials (the tuning curves)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..axes import CELL_NAMES
from ..optimizers import file_slug
from ..phase import UNDECIDED, win_fractions, winners
from .style import colour, edges


def _grid_axes(geo, n: int, title: str):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.4, 2.6 * rows + 0.7), dpi=100,
                             layout="constrained", squeeze=False, sharex=True, sharey=True)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        if k % cols == 0:
            ax.set_ylabel(geo.label(geo.y), fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel(geo.label(geo.x), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return fig, axes


def gain_figure(best: pd.DataFrame, defaults: pd.DataFrame, tuned, geo, budget):
    """Per tuned optimizer: (L at defaults - L tuned) / |L tuned|, each at its best lr, in %."""
    fig, axes = _grid_axes(geo, len(tuned), f"Gain from tuning: loss at its own settings over its tuned loss "
                                            f"({'budget ' + str(budget) if budget else 'every point'})")
    xe, ye = edges(geo.centres(geo.x)), edges(geo.centres(geo.y))
    mesh = None
    for ax, o in zip(axes.flat, tuned):
        t = geo.grid(best[best["optimizer"] == o], "final_loss_mean").astype(float)
        d = geo.grid(defaults[defaults["optimizer"] == o], "final_loss_mean").astype(float)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            gain = 100 * (d - t) / np.abs(t)
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(np.clip(gain, -10, 100)), cmap="viridis", vmin=-10,
                             vmax=100, shading="flat")
        ax.set_facecolor((0.25, 0.25, 0.25))
        ax.set_title(f"{geo.name(o)}: median {np.nanmedian(np.where(np.isfinite(gain), gain, np.nan)):.1f} %",
                     fontsize=8)
    fig.colorbar(mesh, ax=axes, shrink=0.8).set_label("gain from tuning (% of |L tuned|)", fontsize=8)
    return fig


def setting_figure(best: pd.DataFrame, label: str, dim, geo):
    """Where each value of a tuned setting wins for one optimizer (its best trial's value)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    rows = best[best["optimizer"] == label]
    values = list(dim.values)
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    key = rows[dim.name].map(lambda v: next((i for i, w in enumerate(values) if _same(v, w)), np.nan))
    img = geo.grid(rows.assign(_k=key), "_k").astype(float)
    cmap = plt.get_cmap("viridis", len(values))
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=100, layout="constrained")
    xe, ye = edges(geo.centres(geo.x)), edges(geo.centres(geo.y))
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(img), cmap=ListedColormap(cmap(np.arange(len(values)))),
                         norm=BoundaryNorm(np.arange(len(values) + 1) - 0.5, len(values)), shading="flat")
    ax.set_facecolor((0.25, 0.25, 0.25))
    ax.set_xlabel(geo.label(geo.x))
    ax.set_ylabel(geo.label(geo.y))
    ax.set_title(f"{geo.name(label)}: the {dim.name} of its best trial", fontsize=10)
    bar = fig.colorbar(mesh, ax=ax, ticks=np.arange(len(values)))
    bar.ax.set_yticklabels(shown, fontsize=8)
    bar.set_label(dim.name)
    return fig


def _same(a, b) -> bool:
    if isinstance(b, float):
        try:
            return float(a) == b
        except (TypeError, ValueError):
            return False
    from ..values import format_value

    return str(a) == format_value(b) or a == b


def curve_figure(curves: pd.DataFrame, opts, geo, budget):
    """The winner (lowest expected best loss) after k random trials, for k = 1, 2, 4, ..., N."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    ks = sorted(curves["k"].unique())
    fig, axes = _grid_axes(geo, len(ks), "Winner after k trials drawn at random from each one's design "
                                         f"(expected best loss; {'budget ' + str(budget) if budget else 'all points'})")
    xe, ye = edges(geo.centres(geo.x)), edges(geo.centres(geo.y))
    cmap = ListedColormap([colour(o, list(opts)) for o in opts])
    lines = []
    for ax, k in zip(axes.flat, ks):
        table = winners(curves[curves["k"] == k].rename(columns={"expected_best": "final_loss_mean",
                                                                 "expected_best_se": "final_loss_sem"}),
                        opts, CELL_NAMES, 0.0)
        index = {o: i for i, o in enumerate(opts)}
        img = np.vectorize(lambda s: index.get(s, np.nan), otypes=[float])(geo.grid(table, "label"))
        ax.pcolormesh(xe, ye, np.ma.masked_invalid(img), cmap=cmap,
                      norm=BoundaryNorm(np.arange(len(opts) + 1) - 0.5, len(opts)), shading="flat")
        ax.set_facecolor((0.75, 0.75, 0.75))
        ax.set_title(f"k = {k}", fontsize=8)
        f = win_fractions(table, opts)
        lines.append(f"k={k}: " + " ".join(f"{geo.name(o)} {100 * f[o]:.0f}%" for o in opts))
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=colour(o, list(opts)), label=geo.name(o)) for o in opts], loc="outside right upper",
               frameon=False, fontsize=8)
    return fig, lines


def plot_tuned(directory, meta, best, geo, opts, significance, emit, phase_figure) -> list[str]:
    """The figures and summary lines of a tuned scan (``emit(fig, stem)`` saves a figure;
    ``phase_figure``: plot.phase's winner map, handed in)."""
    from ..results import read_parquet

    tuning = meta["config"]["tuning"]
    budget = tuning.get("budget")
    defaults = read_parquet(directory / "best_defaults.parquet")
    curves = read_parquet(directory / "tuning.parquet")
    tuned = [o for o in opts if o in tuning["spaces"]]
    how = f"budget {budget} trials" if budget else "every point of its space"
    summary = []
    sig_note = f"undecided: margin ≤ {significance:g} SE" if significance > 0 else "raw argmin"
    at_defaults = winners(defaults, opts, CELL_NAMES, significance)
    fig, _ = phase_figure(at_defaults, opts, geo, f"Best optimizer at its own settings, best lr ({sig_note})")
    emit(fig, "phase_defaults")
    f = win_fractions(at_defaults, opts)
    summary.append("at their own settings (best lr only): " + "  ".join(f"{geo.name(o)} {100 * f[o]:.1f}%" for o in opts)
                   + f"  undecided {100 * f[UNDECIDED]:.1f}%")
    summary.insert(0, f"tuned ({', '.join(geo.name(o) for o in tuned)}): {how} each, drawn by "
                      f"{tuning['design'].split(' (')[0]} (seed {tuning['seed']}); phase.png is the tuned map")
    if len(geo.scanned) != 2:
        return summary
    emit(gain_figure(best, defaults, tuned, geo, budget), "tuning_gain")
    from ..tuning import Dim

    for o in tuned:
        for name, spec in tuning["spaces"][o].items():
            if name in ("base", "lr") or len(spec["values"]) < 2:
                continue
            values = tuple(tuple(v) if isinstance(v, list) else v for v in spec["values"])
            dim = Dim(name, values, spec["spec"], all(isinstance(v, (int, float)) for v in values))
            emit(setting_figure(best, o, dim, geo), f"best_{name}_{file_slug(o)}")
    fig, lines = curve_figure(curves, opts, geo, budget)
    emit(fig, "tuning_curve")
    summary.append("raw winner after k random trials: " + "; ".join(lines))
    edge = best[(best["optimizer"].isin(tuned)) & (best["at_edge"] != "")]
    if len(edge):
        share = edge.groupby("optimizer").size() / best[best["optimizer"].isin(tuned)].groupby("optimizer").size()
        summary.append("best trial at an edge of its space: " + ", ".join(
            f"{geo.name(o)} {100 * share.get(o, 0):.0f}%" for o in tuned))
    return summary
