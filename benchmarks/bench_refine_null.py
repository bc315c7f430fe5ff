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
false, the false discovery rate is the chance that a map has any discovery.

  python benchmarks/bench_refine_null.py                      # both geometries, both nulls
  python benchmarks/bench_refine_null.py --geometry heavy --null equal --maps 40 --cells 200 --jobs 2

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


def one_map(pool: dict, params, cells: int, seed: int) -> dict:
    """A map of ``cells`` resampled null cells through refine's procedure (refine_map: stopping,
    BH, continuing cells that stopped early but fail BH)."""
    from focuslab.refine import Lattice, PoolSampler, refine_map

    samplers = [PoolSampler(pool, seed * 100003 + c, 50, 2 * params.max_replicates) for c in range(cells)]
    results, passed = refine_map([(s, {o: s.screen(o, GRID) for o in pool}) for s in samplers], params,
                                 Lattice(GRID, params), list(pool))
    p = np.array([r.p for r in results])
    return {"discoveries": int(passed.sum()), "kinds": [r.kind for r, ok in zip(results, passed) if ok],
            "p_le_fdr": int((p <= params.fdr).sum()), "looks": float(np.mean([r.look + 1 for r in results])),
            "min_p": float(p.min())}


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
    args = ap.parse_args(argv)
    geometries = list(GEOMETRIES) if args.geometry == "all" else [args.geometry]
    nulls = ["equal", "margin"] if args.null == "all" else [args.null]
    for geometry in geometries:
        for null in nulls:
            margin = 0.01 if null == "margin" else 0.0
            params = RefineParams(equivalence=margin)
            t0 = time.time()
            pool = shifted(make_pool(geometry, args.pool, params), margin)
            maps = Parallel(n_jobs=args.jobs)(delayed(one_map)(pool, params, args.cells, 1000 + k)
                                              for k in range(args.maps))
            hit = sum(m["discoveries"] > 0 for m in maps)
            ci = binomtest(hit, args.maps).proportion_ci(0.95)
            kinds = [k for m in maps for k in m["kinds"]]
            print(f"{geometry:8s} {null:7s} margin {100 * margin:g}%: {args.maps} maps x {args.cells} cells: "
                  f"FDR = maps with a discovery {hit}/{args.maps} = {hit / args.maps:.3f} "
                  f"(95% CI {ci.low:.3f}-{ci.high:.3f}); false discoveries {len(kinds)} "
                  f"({', '.join(sorted(set(kinds))) or 'none'}); cells with p <= {params.fdr:g}: "
                  f"{sum(m['p_le_fdr'] for m in maps)}/{args.maps * args.cells}; smallest p "
                  f"{min(m['min_p'] for m in maps):.2g}; mean looks {np.mean([m['looks'] for m in maps]):.2f}; "
                  f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
