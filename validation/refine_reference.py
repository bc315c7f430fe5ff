"""Check a refined map against an independent, high-replicate reference, cell by cell.

For a fixed set of cells of a refined scan (default: results/fig2a), this script works out the
answer from scratch, sharing no code with focuslab.refine: each optimizer is simulated at the grid
lrs within 3 grid steps of its scan-best lr and at the geometric midpoints between them, on 20,000
fresh replicates (replicate numbers from 10^6 on, which neither the scan nor refine uses) with
common random numbers.  The first 10,000 pick each optimizer's best lr, the other 10,000 estimate
the optimizers at the picked lrs, paired.  With D_o = (m_o - m_leader) / |m_leader| and its
standard error, the reference answer is

- ``winner`` when every other optimizer has D_o > margin + 3 SE,
- ``tied`` T when the members of T (two or more) have |D_o| < margin - 3 SE and every other
  optimizer has D_o > margin + 3 SE,
- ``unclear`` otherwise (some D_o within 3 SE of the margin): such cells are not scored.

A clear cell *agrees* when refine reached the same answer (the same winner, or a tie of the same
optimizers), is *wrong* when refine named a different answer, and is *undecided* when refine
left it undecided.

  python validation/refine_reference.py results/fig2a --jobs 2
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARPNESS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
NOISE = (0.5, 1.5, 2.25, 3.0)
EXTRA = ((1.0, 2.5),)  # a cell the issue discusses
REPLICATES = 20000
FIRST = 10 ** 6  # replicate numbers used here: FIRST .. FIRST + REPLICATES - 1


def _nearest(values, x):
    values = np.asarray(values, dtype=float)
    return int(np.argmin(np.abs(np.log(values) - math.log(x)) if x > 0 else np.abs(values - x)))


def reference_cell(config, coords: np.ndarray, best_lr: dict, margin: float, reps: int) -> dict:
    """The reference answer for one cell (see the module docstring)."""
    from focuslab.toy.rng import trajectory_keys

    grid = np.sort(np.asarray(config.axes["lr"].values, dtype=float))
    keys = trajectory_keys(config.seed, coords[None], FIRST + np.arange(reps))
    half = reps // 2
    picked = {}
    for label in config.optimizers:
        j = _nearest(grid, best_lr[label])
        near = grid[max(0, j - 3): j + 4]
        lrs = np.sort(np.concatenate([near, np.sqrt(near[:-1] * near[1:])]))
        entry = config.entry(label)
        out = entry.simulate(coords[None], lrs, keys, config.steps)
        y = np.where(out["diverged"][0] == 1, np.inf, out["final_loss"][0])
        k = int(np.argmin(y[:, :half].mean(axis=1)))
        picked[label] = (float(lrs[k]), y[k, half:])
    means = {o: float(v[1].mean()) for o, v in picked.items()}
    leader = min(means, key=means.get)
    scale = abs(means[leader])
    rel = {}
    for o, (_, y) in picked.items():
        if o == leader:
            continue
        d = y - picked[leader][1]
        rel[o] = (float(d.mean()) / scale, float(d.std(ddof=1)) / math.sqrt(len(d)) / scale if np.isfinite(d).all()
                  else 0.0)
    above = {o: m - 3 * s > margin for o, (m, s) in rel.items()}
    inside = {o: abs(m) + 3 * s < margin for o, (m, s) in rel.items()}
    if all(above.values()):
        answer = f"winner {leader}"
    elif any(inside.values()) and all(above[o] or inside[o] for o in rel):
        answer = "tied " + ",".join(sorted([leader, *[o for o in rel if inside[o]]],
                                           key=list(config.optimizers).index))
    else:
        answer = "unclear"
    return {"answer": answer, "leader": leader,
            **{f"lead_{o}": 100 * m for o, (m, _) in rel.items()}, **{f"se_{o}": 100 * s for o, (_, s) in rel.items()},
            **{f"lr_{o}": v[0] for o, v in picked.items()}}


def main(argv=None) -> None:
    from joblib import Parallel, delayed

    from focuslab.axes import CELL_NAMES
    from focuslab.results import load_scan, read_parquet
    from focuslab.scan import cell_values, config_from_meta

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", type=Path, nargs="?", default=Path("results/fig2a"))
    ap.add_argument("--replicates", type=int, default=REPLICATES)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args(argv)
    meta, _, best = load_scan(args.results_dir)
    config = config_from_meta(meta)
    margin = float(meta["refine"]["params"]["equivalence"])
    decisions = read_parquet(args.results_dir / "decisions.parquet")
    cells = cell_values(config)
    sh, no = config.axes["sharpness"].values, config.axes["noise"].values
    wanted = [(a, s) for a in SHARPNESS for s in NOISE] + list(EXTRA)
    index = sorted({_nearest(sh, a) * len(no) + int(np.argmin(np.abs(np.asarray(no) - s))) for a, s in wanted})
    t0 = time.time()
    jobs = []
    for c in index:
        x = dict(zip(CELL_NAMES, cells[c]))
        rows = best[np.all([np.isclose(best[k], v) for k, v in x.items()], axis=0)]
        jobs.append(delayed(reference_cell)(config, cells[c], dict(zip(rows["optimizer"], rows["best_lr"])), margin,
                                            args.replicates))
    refs = Parallel(n_jobs=args.jobs)(jobs)
    table = []
    for c, ref in zip(index, refs):
        d = decisions[decisions["cell"] == c].iloc[0]
        refined = (f"winner {d.winner}" if d.outcome == "winner" else f"tied {d.tied}" if d.outcome == "tied"
                   else d.outcome)
        if ref["answer"] == "unclear":
            verdict = "not scored"
        elif refined == ref["answer"]:
            verdict = "agrees"
        elif d.outcome in ("undecided",):
            verdict = "undecided"
        else:
            verdict = "WRONG"
        table.append({"a": cells[c, 0], "sigma": cells[c, 1], "reference": ref["answer"],
                      "reference leads (%)": ", ".join(f"{o} +{ref[f'lead_{o}']:.2f}±{ref[f'se_{o}']:.2f}"
                                                       for o in config.optimizers if f"lead_{o}" in ref),
                      "refine": refined, "refine lead (%)": f"{100 * d.lead:.2f} [{100 * d.lead_low:.2f}, "
                                                            f"{100 * d.lead_high:.2f}]",
                      "verdict": verdict})
    out = pd.DataFrame(table)
    with pd.option_context("display.width", 250, "display.max_colwidth", 60, "display.max_rows", 100):
        print(out.to_string(index=False))
    clear = out[out["verdict"] != "not scored"]
    print(f"\n{len(clear)} clear cells of {len(out)}: {int((clear.verdict == 'agrees').sum())} agree, "
          f"{int((clear.verdict == 'undecided').sum())} undecided, {int((clear.verdict == 'WRONG').sum())} wrong "
          f"(margin {100 * margin:g} %, {args.replicates} replicates per lr, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
