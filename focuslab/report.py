"""Markdown tables for the documentation site, written from results directories (never by hand).

``python -m focuslab.report [--results DIR] [--out docs/tables]`` writes one file per table whose
results are there (``results/fig2a``, ``results/mnist-5k-diag``, ``results/bridge``, ...) and says
which it skipped for want of their results; the docs pages include the files (pymdownx.snippets).
Each file starts with a comment naming the directories it was made from, focuslab's version and
the commit.  Every function here reads tables and metadata only; nothing is re-run.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .results import read_json, read_parquet

NAMES = {"adam": "Adam", "adamw": "AdamW", "signum": "Signum", "focus": "FOCUS", "lion": "Lion"}


def _pct(x: float, digits: int = 1) -> str:
    return "—" if not np.isfinite(x) else f"{100 * x:.{digits}f} %"


def _num(x: float, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    return "∞" if np.isinf(x) else format(x, fmt)


def _interval(lo: float, hi: float, fmt: str = ".3g") -> str:
    return f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def markdown(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one letter per column, l or r (default: l then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _steps(n: float) -> str:
    """2.6·10¹¹"""
    if n <= 0:
        return "0"
    exp = int(math.floor(math.log10(n)))
    return f"{n / 10 ** exp:.1f}·10{str(exp).translate(_SUPERSCRIPT)}"


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# ---------------------------------------------------------------------------------------------

def main_job(directory: Path) -> str:
    """What `focuslab plot DIR` prints for a scan (its summary lines), as a text block; the figures it
    draws on the way go to a temporary directory."""
    import tempfile

    from .plot import plot_results

    with tempfile.TemporaryDirectory(prefix="focuslab-report-") as tmp:
        result = plot_results([Path(directory)], out=tmp)
    return "```text\n" + "\n".join(result["summary"]) + "\n```\n"


def decided_maps(dirs: dict) -> str:
    """Refined scans (label -> directory): each optimizer's share of winner cells, ties (and which),
    undecided, diverged, the fresh steps refine spent and its wall time (all attempts)."""
    rows, opts = [], []
    for path in dirs.values():
        meta = read_json(Path(path) / "scan.json")
        opts += [o for o in meta["config"]["optimizers"] if o not in opts]
    for label, path in dirs.items():
        path = Path(path)
        d = read_parquet(path / "decisions.parquet")
        record = read_json(path / "scan.json")["refine"]
        n = len(d)
        wins = d[d["outcome"] == "winner"]["winner"].value_counts()
        tied = d[d["outcome"] == "tied"]["tied"].value_counts()
        ties = ", ".join(f"{' = '.join(NAMES.get(o, o) for o in t.split(','))} {_pct(k / n)}"
                         for t, k in tied.items() if k / n >= 0.01)
        wall = _refine_wall(record)
        rows.append([label] + [_pct(wins.get(o, 0) / n) for o in opts]
                    + [_pct((d["outcome"] == "tied").mean()) + (f" ({ties})" if ties else ""),
                       _pct((d["outcome"] == "undecided").mean()), _pct((d["outcome"] == "diverged").mean()),
                       _steps(record.get("steps_spent", 0)), _minutes(wall)])
    header = ["map"] + [f"{NAMES.get(o, o)} wins" for o in opts] + ["tied within the margin", "undecided",
                                                                     "diverged", "fresh steps", "refine wall"]
    return markdown(header, rows)


def mnist_diagnostics(directory: Path) -> str:
    """Per batch size of an MNIST study with diagnostics: Signum's improvement over AdamW, σ_equiv of
    AdamW's best-lr unit (median after step 0, with the median interval ends), at step 0, Signum's,
    the |G|-weighted median ratio, B_simple, λ_max, S = lr·λ_max(P^-1/2 H P^-1/2), the zero share at
    step 0."""
    from .plot.diagnostics import per_batch_size
    from .plot.mnist import improvement

    directory = Path(directory)
    diag = read_parquet(directory / "diagnostics.parquet")
    best = read_parquet(directory / "best.parquet")
    per, picked = per_batch_size(diag, best, "adamw")
    sig, _ = per_batch_size(diag, best, "signum")
    imp = improvement(best).set_index("batch_size")
    first = picked[picked["step"] == 0].set_index("batch_size")
    sig = sig.set_index("batch_size")
    rows = []
    for r in per.itertuples():
        b = r.batch_size
        s = r.lr * getattr(r, "lambda_max_preconditioned", math.nan)
        rows.append([b, f"{imp.loc[b, 'improvement']:+.0f} % ± {imp.loc[b, 'error']:.0f} %",
                     f"{_num(r.sigma_equiv)} {_interval(r.sigma_lo, r.sigma_hi)}",
                     _num(first.loc[b, "sigma_equiv"]) if b in first.index else "—",
                     _num(sig.loc[b, "sigma_equiv"]) if b in sig.index else "—", _num(r.weighted_median),
                     _num(r.b_simple, ".4g"), _num(r.lambda_max), _num(s),
                     _pct(first.loc[b, "zero_fraction"], 0) if b in first.index else "—"])
    return markdown(["B", "I(B)", "σ_equiv [95 %]", "step 0", "Signum's", "\\|G\\|-wt. median", "B_simple",
                     "λ_max", "S", "zero share, step 0"], rows, "r" * 10)


def gpt2_runs(dirs: list) -> str:
    """One row per GPT-2 run: optimizer, iterations, final validation loss, wall time, and with
    diagnostics σ_equiv at step 0, its median after step 0 (range), at the middle and last
    measurement with intervals, the |G|-weighted median, B_simple and λ_max first -> last."""
    rows, diagnosed = [], False
    for path in dirs:
        path = Path(path)
        meta = read_json(path / "gpt2.json")
        row = [f"`{path.name}`", meta["config"]["optimizer"], meta.get("iter", "—"),
               f"{meta['final']['val_loss']:.4f}", _minutes(meta.get("wall_seconds", math.nan))
               if "wall_seconds" in meta else "—"]
        if (path / "diagnostics.parquet").exists():
            diagnosed = True
            d = read_parquet(path / "diagnostics.parquet").sort_values("step")
            later = d[d["step"] > 0]
            mid = later.iloc[(len(later) - 1) // 2]
            last = d.iloc[-1]
            zero = d.iloc[0]
            row += [f"{_num(zero.sigma_equiv, '.2f')} {_interval(zero.sigma_equiv_lo, zero.sigma_equiv_hi, '.2f')}",
                    f"{later.sigma_equiv.median():.2f} ({later.sigma_equiv.min():.2f}–{later.sigma_equiv.max():.2f})",
                    f"{int(mid.step)}: {mid.sigma_equiv:.2f} {_interval(mid.sigma_equiv_lo, mid.sigma_equiv_hi, '.2f')}",
                    f"{int(last.step)}: {last.sigma_equiv:.2f} {_interval(last.sigma_equiv_lo, last.sigma_equiv_hi, '.2f')}",
                    f"{later.noise_ratio_weighted_median.median():.2f}", f"{later.noise_scale_simple.median():.3g}",
                    f"{zero.lambda_max:.4g} → {last.lambda_max:.4g}",
                    _pct(meta.get("diagnostics_cost_fraction", math.nan))]
        rows.append(row)
    header = ["run", "optimizer", "iterations", "final val loss", "wall"]
    if diagnosed:
        header += ["σ_equiv step 0", "median after 0 (range)", "middle [95 %]", "last [95 %]", "\\|G\\|-wt. median",
                   "B_simple (seq.)", "λ_max first → last", "diagnostics cost"]
        rows = [r + ["—"] * (len(header) - len(r)) for r in rows]
    return markdown(header, rows, "ll" + "r" * (len(header) - 2))


def _nearest(values, targets) -> list:
    values = np.asarray(sorted(values), float)
    return sorted({float(values[np.argmin(np.abs(np.log(values) - math.log(t)))]) for t in targets})


def bridge_mnist(directory: Path) -> str:
    """Per batch size: σ_equiv, the observed improvement, and the toy's at that σ for a few a."""
    directory = Path(directory)
    m = read_parquet(directory / "mnist.parquet")
    p = read_parquet(directory / "mnist_toy.parquet")
    shown = _nearest(p["sharpness"].unique(), (0.1, 1, 10, 100, 1000))
    rows = []
    for r in m.itertuples():
        row = [r.batch_size, f"{_num(r.sigma_equiv)} {_interval(r.sigma_equiv_lo, r.sigma_equiv_hi)}",
               f"{100 * r.improvement:+.0f} % ± {100 * r.improvement_error:.0f} %"]
        for a in shown:
            q = p[(p["batch_size"] == r.batch_size) & np.isclose(p["sharpness"], a)]["predicted_improvement"]
            row.append(f"{100 * q.iloc[0]:+.0f} %" if len(q) and np.isfinite(q.iloc[0]) else "—")
        rows.append(row)
    return markdown(["B", "σ_equiv [95 %]", "I observed"] + [f"toy, a = {a:g}" for a in shown], rows,
                    "r" * (3 + len(shown)))


def bridge_boundary(directory: Path) -> str:
    """Per a: the toy's Adam/Signum boundary σ*(a), what it predicts over the measured batches, the
    crossover extrapolated along σ_equiv(B), its ratio to the observed one, and the share of signs
    right."""
    per_a = read_parquet(Path(directory) / "boundary.parquet")
    rows = [[_num(r.sharpness), _num(r.sigma_star), (f"B ≈ {r.predicted_crossover:.0f}"
                                                     if np.isfinite(r.predicted_crossover) else r.predicted)
             + (f" ({r.off_map} B off the map)" if getattr(r, "off_map", 0) else ""),
             _num(r.extrapolated_crossover), _num(r.miss), _pct(r.signs_right, 0)] for r in per_a.itertuples()]
    return markdown(["a", "σ*(a)", "predicted over the measured B", "extrapolated crossover B", "÷ observed",
                     "signs right"], rows, "rrlrrr")


def bridge_gpt2(directory: Path) -> str:
    """Per a: the toy's ranking of the runs' optimizers at their median σ_equiv, the leader's margin."""
    t = read_parquet(Path(directory) / "gpt2_toy.parquet")
    rows = []
    for a, g in t.groupby("sharpness"):
        g = g.sort_values("rank")
        rows.append([_num(a), " < ".join(NAMES.get(o, o) for o in g["optimizer"]),
                     _num(g["winner_margin_se"].iloc[0], ".1f")] +
                    [f"{r.final_loss_mean:.4g} ± {r.final_loss_sem:.2g}" for r in g.sort_values("optimizer").itertuples()])
    opts = sorted(t["optimizer"].unique())
    return markdown(["a", "toy ranking (best first)", "lead (SE)"] + [f"toy {NAMES.get(o, o)}" for o in opts], rows,
                    "rlr" + "r" * len(opts))


def bridge_stability(directory: Path) -> str:
    """Per real AdamW measurement: σ_equiv, S measured, and S along the toy's Adam at that σ per a."""
    s = read_parquet(Path(directory) / "stability.parquet")
    sharp = sorted(s["sharpness"].unique())
    rows = []
    for label, g in s.groupby("measurement", sort=False):
        g = g.set_index("sharpness")
        rows.append([label, _num(g["sigma_equiv"].iloc[0]), _num(g["stability"].iloc[0])]
                    + [_num(g.loc[a, "toy_stability"]) for a in sharp])
    return markdown(["measurement", "σ_equiv", "S measured"] + [f"toy S, a = {a:g}" for a in sharp], rows,
                    "l" + "r" * (2 + len(sharp)))


def zoo(directory: Path) -> str:
    """Per optimizer of a scan: the share of cells it is best in (raw argmin), beyond 2 combined SE,
    its median loss above the cell's best, and how it ran on the toy."""
    directory = Path(directory)
    meta = read_json(directory / "scan.json")
    best = read_parquet(directory / "best.parquet")
    axes = _cell_axes(best)
    rows = []
    pivot = best.pivot_table(index=axes, columns="optimizer", values="final_loss_mean")
    sem = best.pivot_table(index=axes, columns="optimizer", values="final_loss_sem")
    argmin = pivot.idxmin(axis=1)
    low = pivot.min(axis=1)
    second = pivot.apply(lambda r: r.nsmallest(2).iloc[-1], axis=1)
    winner_sem = np.array([sem.loc[i, w] for i, w in argmin.items()])
    second_opt = pivot.apply(lambda r: r.nsmallest(2).index[-1], axis=1)
    second_sem = np.array([sem.loc[i, o] for i, o in second_opt.items()])
    decided = (second - low).to_numpy() > 2 * np.hypot(winner_sem, second_sem)
    plugins = meta.get("plugins") or {}  # how each external optimizer ran, as its probe recorded
    for o in pivot.columns:
        rel = ((pivot[o] - low) / low.abs()).median()
        rows.append([f"`{o}`", _pct((argmin == o).mean()), _pct(((argmin == o).to_numpy() & decided).mean()),
                     _pct(rel, 0), (plugins.get(o) or {}).get("mode", "native")])
    rows.sort(key=lambda r: -float(r[1].split()[0]) if r[1] != "—" else 0)
    return markdown(["optimizer", "best in (raw argmin)", "beyond 2 SE", "median loss above the cell's best",
                     "how it ran"], rows, "lrrrl")


def zoo_refined(directory: Path) -> str:
    """A refined scan of many optimizers, one row each: the share of cells it wins (refined), the
    share in which it is among those tied within the margin, and the share it is the raw argmin of
    in the scan (the same cells); then the undecided and diverged shares, the fresh steps and the
    refine's wall time (all attempts)."""
    directory = Path(directory)
    d = read_parquet(directory / "decisions.parquet")
    meta = read_json(directory / "scan.json")
    best = read_parquet(directory / "best.parquet")
    argmin = best.loc[best.groupby(_cell_axes(best))["final_loss_mean"].idxmin(), "optimizer"]
    n = len(d)
    tied = [set(t.split(",")) for t in d.loc[d["outcome"] == "tied", "tied"]]
    shares = [(o, ((d["outcome"] == "winner") & (d["winner"] == o)).mean(), sum(o in t for t in tied) / n,
               (argmin == o).mean()) for o in meta["config"]["optimizers"]]
    shares.sort(key=lambda r: (-r[1], -r[3]))
    rows = [[f"`{o}`", _pct(wins), _pct(in_tie), _pct(raw)] for o, wins, in_tie, raw in shares]
    record = meta["refine"]
    return (markdown(["optimizer", "wins (refined)", "in a tie within the margin", "raw argmin of the scan"], rows)
            + f"\n{n} cells: undecided {_pct((d['outcome'] == 'undecided').mean())}, diverged "
              f"{_pct((d['outcome'] == 'diverged').mean())}; {_steps(record.get('steps_spent', 0))} fresh optimizer "
              f"steps, refine wall {_minutes(_refine_wall(record))} (all attempts).\n")


def _cell_axes(best) -> list:
    """The cell coordinates a scan's best table carries."""
    return [a for a in ("sharpness", "noise", "weight_decay", "phi", "c") if a in best]


def _refine_wall(record: dict) -> float:
    """A refinement's wall time over all its attempts."""
    return sum(a.get("wall_seconds", 0.0) for a in record.get("attempts", []))


def _selected(directory: Path) -> "pd.DataFrame":
    """Each refined cell's selected candidate per optimizer (refine/lrs.parquet's selected rows) with
    the cell's coordinates and outcome."""
    d = read_parquet(Path(directory) / "decisions.parquet")
    lrs = read_parquet(Path(directory) / "refine" / "lrs.parquet")
    sel = lrs[lrs["selected"]]
    return sel.merge(d[["cell", "sharpness", "noise", "outcome", "winner", "tied", "leader", "lead"]], on="cell")


def tuning_gamma(directory: Path) -> str:
    """FOCUS tuned: per noise band, the cells FOCUS wins or leads (refined), and the attraction gamma
    of its selected candidate there; gamma = 0 is FOCUS stepping as Signum does."""
    sel = _selected(directory)
    focus = sel[sel["optimizer"] == "focus"].copy()
    bands = [(0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 3.01)]
    gammas = sorted(focus["gamma"].dropna().unique())
    rows = []
    for lo, hi in bands:
        g = focus[(focus["noise"] >= lo) & (focus["noise"] < hi)]
        n = len(g)
        wins = g[g["winner"] == "focus"]
        leads = g[g["leader"] == "focus"]
        share = {v: (leads["gamma"] == v).mean() if len(leads) else math.nan for v in gammas}
        rows.append([f"{lo:g} ≤ σ < {min(hi, 3):g}" if hi < 3 else f"{lo:g} ≤ σ ≤ 3", n, _pct(len(wins) / max(n, 1)),
                     _pct(len(leads) / max(n, 1))] + [_pct(share[v], 0) for v in gammas])
    return markdown(["noise band", "cells", "FOCUS wins", "FOCUS leads"] + [f"γ = {v:g} where it leads" for v in gammas],
                    rows, "lrrr" + "r" * len(gammas))


def tuning_settings(directory: Path) -> str:
    """Each tuned optimizer's selected candidate (refined): the most frequent value of each tuned
    setting among the cells it wins, and among every cell."""
    meta = read_json(Path(directory) / "scan.json")
    spaces = meta["config"]["tuning"]["spaces"]
    sel = _selected(directory)
    rows = []
    for o, space in spaces.items():
        g = sel[sel["optimizer"] == o]
        won = g[g["winner"] == o]
        for name in [k for k in space if k not in ("lr", "base")]:
            def top(frame):
                if not len(frame):
                    return "—"
                counts = frame[name].value_counts(normalize=True)
                return ", ".join(f"{_num(v, '.6g') if isinstance(v, float) else v} ({_pct(c, 0)})"
                                 for v, c in counts.head(3).items())
            rows.append([NAMES.get(o, o), name, f"{_num(space['base'][name], '.6g')}", top(won), top(g)])
    return markdown(["optimizer", "setting", "its own value", "selected where it wins (top 3)",
                     "selected in every cell (top 3)"], rows, "lllll")


def tuning_curve(directory: Path) -> str:
    """Winner shares (raw argmin of the expected best loss) after k random trials of each one's design."""
    from .phase import win_fractions, winners

    curves = read_parquet(Path(directory) / "tuning.parquet")
    opts = list(read_json(Path(directory) / "scan.json")["config"]["optimizers"])
    rows = []
    for k, g in curves.groupby("k"):
        t = winners(g.rename(columns={"expected_best": "final_loss_mean", "expected_best_se": "final_loss_sem"}),
                    opts, ["sharpness", "noise", "weight_decay", "phi", "c"], 0.0)
        f = win_fractions(t, opts)
        rows.append([k] + [_pct(f[o], 0) for o in opts])
    return markdown(["trials k"] + [NAMES.get(o, o) for o in opts], rows)


def gamma_slice(directory: Path) -> str:
    """FOCUS variants that differ in gamma alone (configs/gamma-slice.toml), refined: per noise level,
    the cells each gamma wins, and how much worse gamma = 0 (Signum at the same beta1) is than the
    cell's best variant (selected candidates' estimation means, relative to |best|)."""
    from .optimizers import parse_one

    d = read_parquet(Path(directory) / "decisions.parquet").set_index("cell")
    lrs = read_parquet(Path(directory) / "refine" / "lrs.parquet")
    means = lrs[lrs["selected"]].pivot(index="cell", columns="optimizer", values="estimation_mean")
    gamma = {o: float(parse_one(o).settings["gamma"]) for o in means.columns}
    order = sorted(means.columns, key=gamma.get)
    zero = [o for o in order if gamma[o] == 0.0]
    best = means.min(axis=1)
    gap = (means[zero[0]] - best) / best.abs() if zero else pd.Series(np.nan, index=means.index)
    rows = []
    for sigma, g in d.groupby("noise"):
        wins = g["winner"].value_counts()
        rows.append([f"{sigma:g}", len(g)] + [str(int(wins.get(o, 0))) for o in order]
                    + [str(int((g["outcome"] != "winner").sum())), _pct(float(gap[g.index].median()))])
    return markdown(["σ", "cells"] + [f"γ = {gamma[o]:g} wins" for o in order]
                    + ["not a single winner", "γ = 0's loss above the cell's best (median)"], rows,
                    "rr" + "r" * len(order) + "rr")


# ---------------------------------------------------------------------------------------------

def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: table file -> (the function, its results directories relative to --results)
TABLES = {
    "main-job.md": (main_job, "default"),
    "paper-maps.md": (decided_maps, {"Fig. 2a": "fig2a", "Fig. 2b": "fig2b"}),
    "zoo.md": (zoo, "zoo"),
    "zoo-refined.md": (zoo_refined, "zoo8"),
    "mnist-diagnostics.md": (mnist_diagnostics, "mnist-5k-diag"),
    "gpt2-nano.md": (gpt2_runs, ["gpt2-nano-adamw", "gpt2-nano-focus", "gpt2-nano-signum"]),
    "gpt2-mini.md": (gpt2_runs, ["gpt2-mini-adamw", "gpt2-mini-signum", "gpt2-mini-focus"]),
    "bridge-mnist.md": (bridge_mnist, "bridge"),
    "bridge-boundary.md": (bridge_boundary, "bridge"),
    "bridge-gpt2.md": (bridge_gpt2, "bridge"),
    "bridge-stability.md": (bridge_stability, "bridge"),
    "tuning-maps.md": (decided_maps, {"at their own settings (best lr)": "untuned-default",
                                      "tuned, budget 32": "tuned3-default",
                                      "tuned, budget 32, with Lion": "tuned-default"}),
    "tuning-gamma.md": (tuning_gamma, "tuned3-default"),
    "tuning-settings.md": (tuning_settings, "tuned3-default"),
    "tuning-settings-lion.md": (tuning_settings, "tuned-default"),
    "tuning-curve.md": (tuning_curve, "tuned-default"),
    "tuning-curve-3.md": (tuning_curve, "tuned3-default"),
    "gamma-slice.md": (gamma_slice, "gamma-slice"),
}


def _inputs(spec, root: Path):
    if isinstance(spec, dict):
        return {k: root / v for k, v in spec.items()}, list(spec.values())
    if isinstance(spec, list):
        return [root / v for v in spec], spec
    return root / spec, [spec]


def write_tables(results: Path, out: Path, only=None) -> tuple[list[str], list[str]]:
    """Write every table whose results directories exist; returns (written, skipped with why)."""
    written, skipped = [], []
    out.mkdir(parents=True, exist_ok=True)
    commit = _commit()
    for name, (fn, spec) in TABLES.items():
        if only and name not in only:
            continue
        arg, names = _inputs(spec, Path(results))
        missing = [n for n in names if not (Path(results) / n).is_dir()]
        if missing:
            skipped.append(f"{name}: no {', '.join(str(Path(results) / n) for n in missing)}")
            continue
        try:
            table = fn(arg)
        except (KeyError, FileNotFoundError, ValueError) as err:
            skipped.append(f"{name}: {err}")
            continue
        head = (f"<!-- written by `python -m focuslab.report` from {', '.join(str(Path(results) / n) for n in names)}"
                f" (focuslab {__version__}, commit {commit}); do not edit by hand -->\n")
        from .results import atomic_write_bytes

        atomic_write_bytes(out / name, (head + table).encode())
        written.append(name)
    return written, skipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m focuslab.report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"), help="the results root [default: results]")
    ap.add_argument("--out", type=Path, default=Path("docs/tables"), help="where the tables go [default: docs/tables]")
    ap.add_argument("tables", nargs="*", help=f"only these ({', '.join(TABLES)})")
    args = ap.parse_args(argv)
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        print(f"focuslab.report: error: unknown table {', '.join(unknown)} (choose from {', '.join(TABLES)})",
              file=sys.stderr)
        return 2
    written, skipped = write_tables(args.results, args.out, args.tables or None)
    for name in written:
        print(f"wrote {args.out / name}")
    for line in skipped:
        print(f"skipped {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
