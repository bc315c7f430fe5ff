"""False discovery rate of `focuslab refine` on all-null maps resampled from the simulator itself.

For each geometry, a pool of simulator output is made once: Signum and FOCUS at every lr refine's
race can reach (the grid 1e-3..1 with 20 log-spaced lrs, its midpoints and the steps beyond its
edges), P replicates on common random numbers.  FOCUS's losses are then shifted by a constant
so that the truth is a null:

- ``equal``  (margin 0): both optimizers have the same mean at their best lr, so every "winner"
  is false (and "tied", which needs a margin, cannot happen);
- ``margin`` (margin 1 %): FOCUS's best mean is exactly 1 % of |Signum's| worse, on the border
  of every claim (Signum wins by more than 1 %; tied within 1 %), so every discovery is counted
  false.

A map is M cells, each drawing its replicates with replacement from the pool (its own seed),
refined by focuslab.refine.refine_cell exactly as `focuslab refine` does (racing, looks, stopping
at p <= fdr, BH over the map, continuing cells that stopped early but fail BH).  With every claim
false, the false discovery rate is the chance that a map has any discovery.  With tuned
optimizers (``--trials``) a claim is judged against the truth of what was raced (each
optimizer's best raced candidate's pool mean), and the FDR is the mean over maps of false /
discoveries.

  python validation/refine_null.py                      # both geometries, both nulls
  python validation/refine_null.py --geometry heavy --null equal --maps 40 --cells 200 --jobs 2
  python validation/refine_null.py --trials 32          # tuned: 32 candidate trials per optimizer

With ``--trials N`` both optimizers are tuned (focuslab.tuning): Signum over beta1, FOCUS over
beta1, beta2 and gamma, each with its built-in default space (FOCUS's without gamma = 0, where it
is Signum exactly), N trials drawn by the scan's design (budget N, design seed 0).  The pool then holds every (trial settings, lattice lr), and every
design trial starts the race (the screen gives them equal means: a scan that cannot tell them
apart, the hardest case), so each optimizer races N candidates from the first look, plus the lr
neighbours and midpoints the race adds.  The pool's best row of each optimizer (over its trials'
settings and every lattice lr) is made its first candidate trial (the other N - 1 are the design's),
and FOCUS is shifted so that its best equals Signum's (plus the margin): whatever either race
reaches, each optimizer's best raced candidate is its best in the pool, so the truth is the null.
Each claim is still judged against the pool means of what was raced.

Geometries: ``default`` is fig2a's valley (c = 0.1, phi = pi/6, weight decay 0.1, 1000 steps) at
a = 3, sigma = 3, where Signum and FOCUS are close; ``heavy`` is c = 1, phi = 0, a = 10,
sigma = 2.5, weight decay 0.1, 300 steps, whose paired differences have skewness about 4 and
excess kurtosis 35-60.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GEOMETRIES = {
    "default": dict(sharpness=3.0, noise=3.0, weight_decay=0.1, phi=math.pi / 6, c=0.1, steps=1000),
    "heavy": dict(sharpness=10.0, noise=2.5, weight_decay=0.1, phi=0.0, c=1.0, steps=300),
}
GRID = np.exp(np.linspace(math.log(1e-3), math.log(1.0), 20))


def make_pool(geometry: str, size: int, params) -> dict:
    """Signum and FOCUS at every lattice lr, ``size`` replicates (common random numbers); cached."""
    from focuslab.axes import cell_array
    from focuslab.refine import Lattice
    from focuslab.optimizers import parse_one
    from focuslab.toy.rng import trajectory_keys

    g = GEOMETRIES[geometry]
    lattice = Lattice(GRID, params)
    lrs = np.array([lattice.lr(u) for u in range(lattice.lo, lattice.hi + 1)])
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"focuslab-null-pool-{geometry}-{size}-{params.lr_levels}.npz"
    if cache.exists():
        z = np.load(cache)
        if np.array_equal(z["lrs"], lrs):
            return {o: (lrs, z[o]) for o in ("signum", "focus")}
    cell = cell_array(**{k: v for k, v in g.items() if k != "steps"})
    keys = trajectory_keys(12345, cell, np.arange(size))
    pool = {}
    for name in ("signum", "focus"):
        out = parse_one(name).simulate(cell, lrs, keys, g["steps"])
        pool[name] = np.where(out["diverged"][0] == 1, np.inf, out["final_loss"][0])
    np.savez(cache, lrs=lrs, **pool)
    return {o: (lrs, pool[o]) for o in pool}


def shifted(pool: dict, margin: float) -> dict:
    """FOCUS moved so its best mean is Signum's best plus ``margin`` x |Signum's best|."""
    lrs, s = pool["signum"]
    _, f = pool["focus"]
    best_s = float(s.mean(axis=1).min())
    best_f = float(f.mean(axis=1).min())
    return {"signum": (lrs, s), "focus": (lrs, f + (best_s - best_f) + margin * abs(best_s))}


def tuned_pool(geometry: str, size: int, params, n_trials: int) -> tuple[dict, dict]:
    """Signum (beta1) and FOCUS (beta1, beta2, gamma) at every lattice lr of each of their ``n_trials``
    design trials' settings, ``size`` replicates (common random numbers); the trial spaces; cached."""
    from focuslab.axes import cell_array
    from focuslab.config import build_scan_config
    from focuslab.refine import Lattice, TrialSpace
    from focuslab.toy.rng import trajectory_keys
    from focuslab.optimizers.builtin import _BETA
    from focuslab.tuning import Trial

    g = GEOMETRIES[geometry]
    # FOCUS's default space without gamma = 0, where FOCUS steps exactly as Signum (the two would differ
    # by the null's constant in every replicate: an exactly known difference, not a test of the test)
    cfg = build_scan_config(None, {"optimizers": "signum,focus", "lr": "1e-3:1:20:log", "budget": n_trials,
                                   "tune": {"signum": {}, "focus": {"beta1": _BETA, "beta2": _BETA,
                                                                    "gamma": "0.05,0.1,0.2,0.4,0.8"}}})
    lattice = Lattice(GRID, params)
    lrs = np.array([lattice.lr(u) for u in range(lattice.lo, lattice.hi + 1)])
    cell = cell_array(**{k: v for k, v in g.items() if k != "steps"})
    keys = trajectory_keys(12345, cell, np.arange(size))
    pool, spaces = {}, {}
    for name in ("signum", "focus"):
        design = [t for t in cfg.trials(name) if t.design]
        kinds = list(dict.fromkeys(t.settings for t in design))
        cache = Path(os.environ.get("TMPDIR", "/tmp")) / \
            f"focuslab-null-trials-{geometry}-{name}-{size}-{n_trials}-{params.lr_levels}.npz"
        if cache.exists():
            losses = np.load(cache)["losses"]
        else:
            parts = []
            for settings in kinds:
                out = cfg.entry(name).with_settings(dict(settings)).simulate(cell, lrs, keys, g["steps"])
                parts.append(np.where(out["diverged"][0] == 1, np.inf, out["final_loss"][0]))
            losses = np.concatenate(parts)
            np.savez(cache, losses=losses)
        pool[name] = (np.tile(lrs, len(kinds)), losses, [dict(s) for s in kinds for _ in lrs])
        # the pool's best row (settings of the design, any lattice lr) is the first candidate trial, so
        # that each optimizer's best raced candidate is its best in the pool, whatever the race does
        best = int(np.argmin(losses.mean(axis=1)))
        top = Trial(float(pool[name][0][best]), kinds[best // len(lrs)])
        design = [top] + [t for t in design if (t.lr, t.settings) != (top.lr, top.settings)][:n_trials - 1]
        spaces[name] = (TrialSpace(design, GRID, params), design)
    return pool, spaces


def shifted_trials(pool: dict, margin: float) -> dict:
    """FOCUS moved so that its best mean in the pool (a starting candidate, tuned_pool) is Signum's
    best plus ``margin`` x |Signum's best|: the truth is a null whatever either race reaches."""
    best_s = float(np.min(pool["signum"][1].mean(axis=1)))
    best_f = float(np.min(pool["focus"][1].mean(axis=1)))
    lrs, f, where = pool["focus"]
    return {"signum": pool["signum"], "focus": (lrs, f + (best_s - best_f) + margin * abs(best_s), where)}


def one_map(pool: dict, params, cells: int, seed: int, spaces: dict | None = None) -> dict:
    """A map of ``cells`` resampled null cells through refine's procedure (refine_map: stopping,
    BH, continuing cells that stopped early but fail BH); ``spaces``: label -> (TrialSpace, design
    trials) for tuned optimizers, whose every design trial starts the race."""
    from focuslab.refine import Lattice, PoolSampler, refine_map

    samplers = [PoolSampler(pool, seed * 100003 + c, 50, 2 * params.max_replicates) for c in range(cells)]
    if spaces:
        # a scan that cannot tell the trials apart (every one starts), at the pool's best level (the margin's scale)
        level = min(float(np.min(pool[o][1].mean(axis=1))) for o in pool)
        equal = {o: (np.full(len(design), level), np.full(len(design), abs(level) + 1.0))
                 for o, (_, design) in spaces.items()}
        results, passed = refine_map([(s, equal) for s in samplers], params,
                                     {o: space for o, (space, _) in spaces.items()}, list(pool))
    else:
        results, passed = refine_map([(s, {o: s.screen(o, GRID) for o in pool}) for s in samplers], params,
                                     Lattice(GRID, params), list(pool))
    p = np.array([r.p for r in results])
    false = sum(not _true_claim(r, pool, spaces, params) for r, ok in zip(results, passed) if ok) if spaces \
        else int(passed.sum())
    return {"discoveries": int(passed.sum()), "false": int(false),
            "kinds": [r.kind for r, ok in zip(results, passed) if ok],
            "p_le_fdr": int((p <= params.fdr).sum()), "looks": float(np.mean([r.look + 1 for r in results])),
            "min_p": float(p.min())}


def _true_claim(r, pool: dict, spaces: dict, params) -> bool:
    """Whether a cell's claim is true of the estimand, each optimizer at its best raced candidate:
    m_o = the smallest pool mean over the candidates it raced (the pool is the truth), the margin
    delta = equivalence x the cell's scale."""
    truth = {}
    for o, arms in r.arms.items():
        space = spaces[o][0]
        rows = [int(np.flatnonzero((np.isclose(pool[o][0], a.lr, rtol=1e-9, atol=0)) &
                                   np.array([w == space.setting_values(a.u) for w in pool[o][2]]))[0])
                for a in arms if len(a.y)]
        truth[o] = float(np.min(pool[o][1][rows].mean(axis=1))) if rows else np.inf
    delta = params.equivalence * r.scale
    tol = 1e-9 * max(1.0, abs(r.scale))  # a truth on the border (the margin null) makes both claims false
    w = r.best
    if r.kind == "winner":
        return all(truth[o] - truth[w] > delta + tol for o in truth if o != w)
    members = set(r.tied)
    return all(abs(truth[t] - truth[w]) < delta - tol for t in members) and \
        all(truth[o] - truth[w] > delta + tol for o in truth if o not in members)


def main(argv=None) -> None:
    from joblib import Parallel, delayed
    from scipy.stats import binomtest

    from focuslab.refine import RefineParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--geometry", choices=[*GEOMETRIES, "all"], default="all")
    ap.add_argument("--null", choices=["equal", "margin", "all"], default="all")
    ap.add_argument("--maps", type=int, default=40)
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--pool", type=int, default=20000, help="replicates in the pool")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--trials", type=int, default=0, help="tune both optimizers: N candidate trials each")
    ap.add_argument("--markdown", type=Path, help="also write the results as a Markdown table (the docs include it)")
    args = ap.parse_args(argv)
    rows = []
    geometries = list(GEOMETRIES) if args.geometry == "all" else [args.geometry]
    nulls = ["equal", "margin"] if args.null == "all" else [args.null]
    for geometry in geometries:
        for null in nulls:
            margin = 0.01 if null == "margin" else 0.0
            params = RefineParams(equivalence=margin)
            t0 = time.time()
            spaces = None
            if args.trials:
                raw, spaces = tuned_pool(geometry, args.pool, params, args.trials)
                pool = shifted_trials(raw, margin)
            else:
                pool = shifted(make_pool(geometry, args.pool, params), margin)
            maps = Parallel(n_jobs=args.jobs)(delayed(one_map)(pool, params, args.cells, 1000 + k, spaces)
                                              for k in range(args.maps))
            hit = sum(m["false"] > 0 for m in maps)
            ci = binomtest(hit, args.maps).proportion_ci(0.95)
            fdr = float(np.mean([m["false"] / max(1, m["discoveries"]) for m in maps]))
            kinds = [k for m in maps for k in m["kinds"]]
            what = f", {args.trials} candidate trials each" if args.trials else ""
            print(f"{geometry:8s} {null:7s} margin {100 * margin:g}%{what}: {args.maps} maps x {args.cells} cells: "
                  f"FDR = {fdr:.3f} (mean over maps of false / discoveries); maps with a false discovery "
                  f"{hit}/{args.maps} (95% CI {ci.low:.3f}-{ci.high:.3f}); discoveries {len(kinds)} "
                  f"({', '.join(sorted(set(kinds))) or 'none'}), false {sum(m['false'] for m in maps)}; "
                  f"cells with p <= {params.fdr:g}: "
                  f"{sum(m['p_le_fdr'] for m in maps)}/{args.maps * args.cells}; smallest p "
                  f"{min(m['min_p'] for m in maps):.2g}; mean looks {np.mean([m['looks'] for m in maps]):.2f}; "
                  f"{time.time() - t0:.0f} s", flush=True)
            rows.append([geometry, null, str(args.trials or "lrs only"), f"{args.maps} × {args.cells}", f"{fdr:.3f}",
                         f"{hit}/{args.maps} ({ci.low:.3f}–{ci.high:.3f})",
                         f"{len(kinds)} ({sum(m['false'] for m in maps)} false)", f"{time.time() - t0:.0f} s"])
    if args.markdown:
        write_markdown(args.markdown, rows, argv if argv is not None else sys.argv[1:])


def write_markdown(path: Path, rows: list, argv) -> None:
    """The results as a Markdown table headed by what made it: the command, the CPU, the date, the commit."""
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1], timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    head = (f"<!-- written by `python validation/refine_null.py {' '.join(map(str, argv))}` on "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}, {cpu} ({os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f} at the end); do not edit by hand -->\n")
    header = ["geometry", "null", "candidates per optimizer", "maps × cells", "FDR (false / discoveries)",
              "maps with a false discovery (95 % CI)", "discoveries", "wall"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * 6) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    from focuslab.results import atomic_write_bytes

    atomic_write_bytes(path, (head + "\n".join(lines) + "\n").encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
