"""Phase diagrams, margin maps and heatmaps from a scan directory (paper Fig. 2a/2b and beyond)."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..axes import CELL_NAMES
from ..optimizers import file_slug
from ..errors import FocuslabError
from ..phase import UNDECIDED, win_fractions, winners
from ..results import load_scan, scan_meta
from .style import (TIE_COLOUR, axis_label, colour, coords, display_name, edges, save)

REQUIRED_BEST = {"optimizer", *CELL_NAMES, "best_lr", "final_loss_mean", "final_loss_sem"}


class Geometry:
    """The scanned axes of a scan, from its metadata: values, log flags, plotting coordinates."""

    def __init__(self, meta: dict):
        cfg = meta["config"]
        try:
            self.values = {a: list(cfg["values"][a]) for a in CELL_NAMES}
            self.log = {a: cfg["scales"][a] == "log" for a in CELL_NAMES}
            self.optimizers = list(cfg["optimizers"])
            self.settings = dict(cfg.get("optimizer") or {})
            self.external = dict(cfg.get("external") or {})
        except (KeyError, TypeError):
            raise FocuslabError("scan.json lacks the grid description (config.values/scales/optimizers)") from None
        self.scanned = [a for a in CELL_NAMES if len(self.values[a]) > 1]
        # noise on x when scanned (the paper's layout), the other axis on y
        if len(self.scanned) == 2:
            x = "noise" if "noise" in self.scanned else self.scanned[1]
            self.x, self.y = x, [a for a in self.scanned if a != x][0]

    def name(self, label: str) -> str:
        """Legend text: "FOCUS γ=0.4" when the run's settings differ from those every toy scan
        gets (the optimizer's defaults and the default preset's tables)."""
        from ..config import load_toml

        base = load_toml("default", "scan").get("optimizer") or {}
        return display_name(label, self.settings, self.external, base)

    def centres(self, axis):
        return coords(self.values[axis], self.log[axis])

    def label(self, axis):
        return axis_label(axis, self.log[axis])

    def grid(self, table: pd.DataFrame, column: str) -> np.ndarray:
        """(len(y), len(x)) array of ``column`` from a one-row-per-cell table."""
        wide = table.pivot_table(index=self.y, columns=self.x, values=column, aggfunc="first",
                                 dropna=False)
        return wide.reindex(index=self.values[self.y], columns=self.values[self.x]).to_numpy()


def _new_axes(geo: Geometry, title: str):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=100, layout="constrained")
    ax.set_xlabel(geo.label(geo.x))
    ax.set_ylabel(geo.label(geo.y))
    ax.set_title(title, fontsize=10)
    xc, yc = geo.centres(geo.x), geo.centres(geo.y)
    xe, ye = edges(xc), edges(yc)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    return fig, ax, xe, ye


def phase_figure(table: pd.DataFrame, optimizers, geo: Geometry, title: str):
    """Cells coloured by their winner (``label`` column), undecided cells in grey."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    cats = [*optimizers, UNDECIDED]
    index = {name: i for i, name in enumerate(cats)}
    labels = geo.grid(table, "label")
    img = np.vectorize(lambda s: index.get(s, len(cats) - 1), otypes=[float])(labels)
    colours = [colour(o, list(optimizers)) for o in optimizers] + [tuple(c / 255 for c in TIE_COLOUR)]
    fig, ax, xe, ye = _new_axes(geo, title)
    ax.pcolormesh(xe, ye, img, cmap=ListedColormap(colours),
                  norm=BoundaryNorm(np.arange(len(cats) + 1) - 0.5, len(cats)), shading="flat")
    handles = [Patch(color=colours[i], label=geo.name(o)) for i, o in enumerate(optimizers)]
    if (labels == UNDECIDED).any():
        handles.append(Patch(color=colours[-1], label="undecided"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize=10 if len(handles) <= 6 else 7)
    return fig, ax


def margin_figure(table: pd.DataFrame, geo: Geometry, significance: float, title: str):
    import matplotlib.pyplot as plt

    margin = geo.grid(table, "margin").astype(float)
    cap = max(10.0, 2 * significance)
    fig, ax, xe, ye = _new_axes(geo, title)
    mesh = ax.pcolormesh(xe, ye, np.clip(np.nan_to_num(margin, posinf=cap), 0, cap), cmap="magma",
                         vmin=0, vmax=cap, shading="flat")
    bar = fig.colorbar(mesh, ax=ax)
    bar.set_label("(runner-up − winner) / combined SE" + (f"  [undecided below {significance:g}]"
                                                          if significance > 0 else ""))
    plt.setp(bar.ax.get_yticklabels(), fontsize=8)
    return fig, ax


def heatmap_figure(values: np.ndarray, geo: Geometry, title: str, label: str, log: bool | None = None):
    """A heatmap; log colour scale when asked, or (log=None) when all values are positive."""
    from matplotlib.colors import LogNorm

    data = np.ma.masked_invalid(np.asarray(values, dtype=float))
    if log is None:
        log = data.count() > 0 and data.min() > 0 and data.max() / data.min() > 20
    fig, ax, xe, ye = _new_axes(geo, title)
    norm = LogNorm(vmin=data.min(), vmax=data.max()) if log and data.count() else None
    mesh = ax.pcolormesh(xe, ye, data, cmap="viridis", norm=norm, shading="flat")
    ax.set_facecolor((0.85, 0.85, 0.85))  # masked (diverged) cells
    fig.colorbar(mesh, ax=ax).set_label(label)
    return fig, ax


def line_figure(best: pd.DataFrame, optimizers, axis: str, log_axis: bool, title: str, name=display_name):
    """1-D scan: best mean final loss +- standard error per optimizer."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    for opt in optimizers:
        rows = best[best["optimizer"] == opt].sort_values(axis)
        x = coords(rows[axis], log_axis)
        y = rows["final_loss_mean"].to_numpy(float)
        ok = np.isfinite(y)
        ax.errorbar(x[ok], y[ok], yerr=rows["final_loss_sem"].to_numpy(float)[ok], marker="o", ms=3,
                    capsize=2, color=colour(opt, list(optimizers)), label=name(opt))
    ax.set_xlabel(axis_label(axis, log_axis))
    ax.set_ylabel("best mean final loss (± SE)")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False)
    return fig, ax


def _blend(rgbs, weight=0.7):
    """A light tint of the mean of ``rgbs`` (0..255), for cells tied between those optimizers."""
    mean = np.mean(np.asarray(rgbs, dtype=float), axis=0) / 255
    return tuple(weight * mean + (1 - weight) * np.ones(3))


DIVERGED_COLOUR = (0.25, 0.25, 0.25)


def decisive_figure(decisions: pd.DataFrame, optimizers, geo: Geometry, title: str, margin: float, fdr: float,
                    max_replicates: int):
    """The refined map: winners in their colours, ties in a light tint of theirs, hatched and named,
    undecided grey, all-diverged dark grey; the legend says what each colour claims."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    labels = []
    for _, r in decisions.iterrows():
        labels.append(r.winner if r.outcome == "winner" else f"tie:{r.tied}" if r.outcome == "tied" else r.outcome)
    table = decisions.assign(label=labels)
    present = list(dict.fromkeys(table["label"]))
    ties = sorted(x for x in present if x.startswith("tie:"))
    cats = [o for o in optimizers if o in present] + ties + [x for x in ("undecided", "diverged") if x in present]
    colour_of = {}
    for o in optimizers:
        colour_of[o] = colour(o, list(optimizers))
    for t in ties:
        members = t[4:].split(",")
        colour_of[t] = _blend([tuple(255 * c for c in colour(m, list(optimizers))) for m in members])
    colour_of["undecided"] = tuple(c / 255 for c in TIE_COLOUR)
    colour_of["diverged"] = DIVERGED_COLOUR
    index = {c: i for i, c in enumerate(cats)}
    grid = geo.grid(table, "label")
    img = np.vectorize(lambda s: index.get(s, np.nan), otypes=[float])(grid)
    fig, ax, xe, ye = _new_axes(geo, title)
    ax.pcolormesh(xe, ye, img, cmap=ListedColormap([colour_of[c] for c in cats]), vmin=-0.5,
                  vmax=len(cats) - 0.5, shading="flat")
    tie_mask = np.vectorize(lambda s: isinstance(s, str) and s.startswith("tie:"), otypes=[bool])(grid)
    if tie_mask.any():
        ax.pcolor(xe, ye, np.ma.masked_where(~tie_mask, np.ones_like(img)), hatch="////", facecolor="none",
                  shading="flat", edgecolor=(0.2, 0.2, 0.2), linewidth=0)
    pct = f"{100 * margin:g} %"
    handles = []
    for c in cats:
        if c.startswith("tie:"):
            name = " = ".join(geo.name(m) for m in c[4:].split(","))
            handles.append(Patch(facecolor=colour_of[c], hatch="///", edgecolor=(0.3, 0.3, 0.3),
                                 label=f"tied: {name}\n(within {pct} of each other,\nany other > {pct} worse)"))
        elif c in optimizers:
            handles.append(Patch(color=colour_of[c], label=f"{geo.name(c)} wins\n(better than every other\nby more than {pct})"))
        elif c == "undecided":
            handles.append(Patch(color=colour_of[c], label=f"undecided (no claim at FDR\n{100 * fdr:g} % within "
                                                           f"{max_replicates}\nreplicates per lr)"))
        else:
            handles.append(Patch(color=colour_of[c], label="diverged (every optimizer,\nevery lr raced)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8,
              labelspacing=0.9)
    return fig, ax


def lead_figure(decisions: pd.DataFrame, geo: Geometry, margin: float, title: str):
    """The leader's lead over the runner-up at the selected lrs (% of |L|), in every cell; the
    contour marks the margin, so "better, but within it" stays visible."""
    lead = 100 * geo.grid(decisions, "lead").astype(float)
    cap = max(5.0, 4 * 100 * margin)
    fig, ax = heatmap_figure(np.clip(np.nan_to_num(lead, posinf=cap), 0, cap), geo, title,
                             "lead over the runner-up (% of |L|)", log=False)
    xc, yc = geo.centres(geo.x), geo.centres(geo.y)
    if np.isfinite(lead).sum() > 3 and np.nanmin(lead) < 100 * margin < np.nanmax(lead):
        ax.contour(xc, yc, np.nan_to_num(lead, nan=0.0), levels=[100 * margin], colors="white", linewidths=0.8)
    return fig, ax


def relative_loss_figure(best: pd.DataFrame, optimizers, geo: Geometry, title: str):
    """Small multiples: each optimizer's best mean final loss relative to the cell's best one,
    (L - L_best) / |L_best|, on one shared log colour scale (cells it wins in white, cells where it
    diverged at every lr in dark grey)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    grids = {o: geo.grid(best[best["optimizer"] == o], "final_loss_mean").astype(float) for o in optimizers}
    stack = np.stack([np.where(np.isfinite(g), g, np.inf) for g in grids.values()])
    low = stack.min(axis=0)
    scale = np.where(np.abs(low) > 0, np.abs(low), 1.0)
    floor, cap = 1e-4, 10.0
    n = len(optimizers)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.2, 2.6 * rows + 0.6), dpi=100,
                             layout="constrained", squeeze=False, sharex=True, sharey=True)
    xe, ye = edges(geo.centres(geo.x)), edges(geo.centres(geo.y))
    norm = LogNorm(vmin=floor, vmax=cap)
    mesh = None
    for k, (ax, o) in enumerate(zip(axes.flat, optimizers)):
        with np.errstate(invalid="ignore", over="ignore"):
            rel = (np.where(np.isfinite(grids[o]), grids[o], np.inf) - low) / scale
        shown = np.ma.masked_where(~np.isfinite(rel) | (rel <= 0), np.clip(rel, floor, cap))
        ax.set_facecolor("white")
        diverged = np.ma.masked_where(np.isfinite(rel), np.ones_like(rel))
        ax.pcolormesh(xe, ye, diverged, cmap=matplotlib.colors.ListedColormap([DIVERGED_COLOUR]), shading="flat")
        mesh = ax.pcolormesh(xe, ye, shown, cmap="magma_r", norm=norm, shading="flat")
        wins = float(np.mean(rel <= 0))
        ax.set_title(f"{geo.name(o)}  (best in {100 * wins:.0f}%)", fontsize=8, color=colour(o, list(optimizers)))
        if k % cols == 0:
            ax.set_ylabel(geo.label(geo.y), fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel(geo.label(geo.x), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    bar = fig.colorbar(mesh, ax=axes, shrink=0.8)
    bar.set_label("(L − L_best) / |L_best| at each one's best lr  (white: the best)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig, axes


#: Above this many optimizers a scan's figures skip the pairwise maps (n(n-1)/2 of them) and the
#: per-optimizer heatmaps; the relative-loss small multiples show every optimizer at once.
PAIRWISE_MAX = 4


def check_scan_plot(directory, significance: float = 2.0, overlay=()) -> list | None:
    """What the figures of the scan in ``directory`` refuse, checked on its metadata before anything
    is written: winners beyond ``significance`` standard errors of a scan with one replicate (it has
    no standard errors), and runs to ``overlay`` on a map without a noise axis.  Returns the
    overlay's bands (None without an overlay)."""
    directory = Path(directory)
    meta = scan_meta(directory)
    replicates = (meta.get("config") or {}).get("replicates")
    if significance > 0 and isinstance(replicates, int) and replicates < 2:
        raise FocuslabError(f"--significance {significance:g}: the scan in {directory} has {replicates} replicate per "
                            "lr, so no standard errors to judge winners by; plot its raw argmin with --significance 0, "
                            "or rescan with --replicates 2 or more")
    if not overlay:
        return None
    geo = Geometry(meta)
    if len(geo.scanned) != 2 or geo.x != "noise":
        raise FocuslabError(f"--overlay places runs along the noise axis of a 2-D map; the scan in {directory} scans "
                            f"{', '.join(geo.scanned) or 'no axis'}: scan --noise with one other axis to overlay runs")
    from .diagnostics import load_overlays

    return load_overlays(overlay)


def plot_scan(directory, out=None, formats=("png",), significance: float = 2.0, overlay=(), bands=None) -> dict:
    """Draw every figure for a scan directory; returns {'files': [...], 'summary': [lines]}.
    ``bands``: the overlay's, when the caller checked the plot already (``check_scan_plot``)."""
    import matplotlib.pyplot as plt

    directory = Path(directory)
    if bands is None:
        bands = check_scan_plot(directory, significance, overlay)
    meta, runs, best = load_scan(directory)
    missing = REQUIRED_BEST - set(best.columns)
    if missing:
        raise FocuslabError(f"{directory / 'best.parquet'} lacks column(s) {', '.join(sorted(missing))}")
    geo = Geometry(meta)
    opts = [o for o in geo.optimizers if o in set(best["optimizer"])]
    out = Path(out) if out is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    files, summary = [], []
    table = winners(best, opts, CELL_NAMES, significance)
    raw = winners(best, opts, CELL_NAMES, 0.0)

    def frac_line(t, what):
        f = win_fractions(t, opts)
        return f"{what}: " + "  ".join(f"{geo.name(o)} {100 * f[o]:.1f}%" for o in opts) + \
            f"  undecided {100 * f[UNDECIDED]:.1f}%"

    n = len(table)
    tuning = (meta.get("config") or {}).get("tuning")
    at_best = "best lr" if not tuning else "best trial"
    detail = "" if not tuning else " (a tuned one's best design trial of its budget)"
    summary.append(f"{n} cells, optimizers at their {at_best}{detail}; scanned: {', '.join(geo.scanned) or 'none'}")
    if significance > 0:
        summary.append(frac_line(table, f"winners beyond {significance:g} combined SE (Welch)"))
    summary.append(frac_line(raw, "raw argmin (paper's picture)"))

    def emit(fig, stem):
        files.extend(save(fig, out, stem, formats))
        plt.close(fig)

    sig_note = f"undecided: margin ≤ {significance:g} SE" if significance > 0 else "raw argmin"
    if len(geo.scanned) == 2:
        emit(phase_figure(table, opts, geo, f"Best optimizer at its {at_best} ({sig_note})")[0], "phase")
        if significance > 0:  # the paper's picture beside the significance-aware one
            emit(phase_figure(raw, opts, geo, f"Best optimizer at its {at_best} (raw argmin, as in the paper)")[0],
                 "phase_argmin")
        if len(opts) > 1:
            emit(margin_figure(table, geo, significance, "Winner's margin over the runner-up")[0],
                 "margin")
            emit(relative_loss_figure(best, opts, geo, "Each optimizer's loss relative to the cell's best "
                                      "(all at their best lr)")[0], "relative_loss")
        for a, b in (combinations(opts, 2) if len(opts) <= PAIRWISE_MAX else ()):
            pair = winners(best, [a, b], CELL_NAMES, significance)
            emit(phase_figure(pair, [a, b], geo,
                              f"{geo.name(a)} vs {geo.name(b)} ({sig_note})")[0],
                 f"phase_{file_slug(a)}_vs_{file_slug(b)}")
        for opt in (opts if len(opts) <= PAIRWISE_MAX else ()):
            rows = best[best["optimizer"] == opt]
            emit(heatmap_figure(geo.grid(rows, "final_loss_mean"), geo,
                                f"{geo.name(opt)}: best mean final loss", "final loss")[0],
                 f"loss_{file_slug(opt)}")
            emit(heatmap_figure(geo.grid(rows, "best_lr"), geo, f"{geo.name(opt)}: best lr",
                                "learning rate", log=True)[0], f"best_lr_{file_slug(opt)}")
        if overlay:
            from .diagnostics import OVERLAY_TITLE, overlay_bands

            fig, ax = phase_figure(raw if significance == 0 else table, opts, geo, OVERLAY_TITLE)
            overlay_bands(ax, bands, geo.log["noise"])
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles=ax.get_legend().legend_handles + handles, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
            emit(fig, "phase_here")
        refine = meta.get("refine") or {}
        if refine.get("status") == "complete":  # a missing or cut table: one line with the command that rebuilds it
            from ..refine import read_decisions

            decisions = read_decisions(directory, refine)
            prm = refine["params"]
            margin, fdr, top = prm["equivalence"], prm["fdr"], prm["max_replicates"]
            how = f"BH FDR {fdr:g}, margin {100 * margin:g}%, up to {top} estimation replicates per lr"
            emit(decisive_figure(decisions, opts, geo, f"Best optimizer, each at its best {'lr' if not tuning else 'trial'}"
                                 " (raced on selection\n"
                                 f"replicates, judged on disjoint ones; BH FDR {fdr:g} over the map,\n"
                                 f"margin {100 * margin:g} %, up to {top} estimation replicates per lr)", margin, fdr,
                                 top)[0], "phase_decisive")
            emit(lead_figure(decisions, geo, margin, "Leader's lead over the runner-up at the selected lrs\n"
                             f"(white line: the {100 * margin:g} % margin)")[0], "lead")
            if (decisions["replicates"] > 0).any():  # none where every optimizer diverged everywhere
                emit(heatmap_figure(geo.grid(decisions, "replicates").astype(float), geo,
                                    "Fresh replicates per raced lr (selection + estimation)", "replicates",
                                    log=True)[0], "replicates_used")
            counts = decisions["outcome"].value_counts(normalize=True)
            wins = decisions[decisions["outcome"] == "winner"]["winner"].value_counts(normalize=False)
            n = len(decisions)
            summary.append(f"refined ({how}): " + "  ".join(
                f"{geo.name(o)} {100 * wins.get(o, 0) / n:.1f}%" for o in opts) +
                f"  tied {100 * counts.get('tied', 0):.1f}%  undecided {100 * counts.get('undecided', 0):.1f}%"
                f"  diverged {100 * counts.get('diverged', 0):.1f}%")
    if tuning:
        from .tuning import plot_tuned

        summary.extend(plot_tuned(directory, meta, best, geo, opts, significance, emit, phase_figure))
    if len(geo.scanned) == 1:
        axis = geo.scanned[0]
        emit(line_figure(best, opts, axis, geo.log[axis],
                         "Best mean final loss at best lr", geo.name)[0], "best_loss")
    elif len(geo.scanned) > 2:
        raise FocuslabError(f"plot draws 1-D or 2-D scans; this one varies {len(geo.scanned)} axes "
                            f"({', '.join(geo.scanned)}): scan slices separately")
    return {"files": files, "summary": summary, "winners": table}
