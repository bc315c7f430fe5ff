"""Does the toy, at the sigma measured on a real model, predict which optimizer wins?  (The bridge of
issue 21: focuslab.diagnostics' sigma_equiv read off real runs, the toy map read at that sigma.)

    python benchmarks/bridge.py --mnist results/mnist-5k-diag \
        --gpt2 results/gpt2-mini-adamw results/gpt2-mini-signum results/gpt2-mini-focus --out docs/bridge

1. The toy where the real models are: `focuslab scan` (as it is) over sharpness a 0.1..1000 (17 log
   values) x noise 0.25..64 (33 log values; the measured sigma_equiv lie beyond the paper's 0..3),
   Adam, Signum and FOCUS at their best of 25 lrs 1e-4..1 (at high noise the best lr falls below
   the paper's 1e-3), 100 replicates, 1000 steps; written once into --toy, then reused.
2. MNIST: sigma_equiv per batch size (the AdamW unit's best-lr model, median over the measurements
   after step 0) -> the toy's (L_Adam - L_Signum) / |L_Adam| at that sigma (interpolated in
   log sigma), per a -> the predicted crossover batch, against the observed one.
3. GPT-2: each run's sigma_equiv -> the toy's winner among Adam, Signum and FOCUS per a, against
   the runs' final validation losses.
4. Sharpness: S = lr x lambda_max of the Adam-preconditioned Hessian, the stability number of Adam
   (dimensionless, unchanged by the toy's rescaling theta -> s theta, a -> a / s^3, lr -> lr s),
   measured on the AdamW runs, against S along the toy's Adam trajectories at their best lr
   (focuslab.toy.reference.trajectory, the executable specification) for each a at the sigma
   measured: where S_toy(a) meets S_real, that a is the run's sharpness on the map.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TOY = dict(sharpness="0.1:1000:17:log", noise="0.25:64:33:log", lr="1e-4:1:25:log", optimizers="adam,signum,focus",
           replicates=100, steps=1000)
NAMES = {"adam": "Adam", "signum": "Signum", "focus": "FOCUS"}
REAL = {"adamw": "adam", "signum": "signum", "focus": "focus"}


def toy_map(out: Path, jobs: int) -> pd.DataFrame:
    """The toy scan's best.parquet (run with `focuslab scan` first when missing)."""
    if not (out / "best.parquet").exists():
        cmd = [sys.executable, "-m", "focuslab", "scan", "--out", str(out), "-j", str(jobs), "-q"]
        for key, value in TOY.items():
            cmd += [f"--{key}", str(value)]
        print("running:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    meta = json.loads((out / "scan.json").read_text())
    print(f"toy map: {out} ({meta.get('status', '?')})")
    return pd.read_parquet(out / "best.parquet")


def toy_losses(best: pd.DataFrame, a: float, sigma: float) -> dict:
    """Each optimizer's best mean final loss and its SE at sharpness ``a`` (a grid value) and noise
    ``sigma`` (interpolated linearly in log sigma between grid values)."""
    out = {}
    for opt, g in best[np.isclose(best["sharpness"], a)].groupby("optimizer"):
        g = g.sort_values("noise")
        x = np.log(g["noise"].to_numpy())
        s = math.log(sigma)
        if not x[0] <= s <= x[-1]:
            out[opt] = (math.nan, math.nan)
            continue
        out[opt] = (float(np.interp(s, x, g["final_loss_mean"])), float(np.interp(s, x, g["final_loss_sem"])))
    return out


def toy_improvement(best, a, sigma, base="adam", other="signum") -> tuple[float, float]:
    """(L_base - L_other) / |L_base| in the toy (positive: ``other`` better) and its SE."""
    loss = toy_losses(best, a, sigma)
    (lb, sb), (lo, so) = loss[base], loss[other]
    return (lb - lo) / abs(lb), math.hypot(sb, so) / abs(lb)


def toy_boundary(best, a, base="adam", other="signum") -> float:
    """sigma*(a): where the toy's base-other difference turns in ``other``'s favour going up in
    noise (log-interpolated between grid values); nan without a turn."""
    rows = {}
    for opt in (base, other):
        g = best[(best["optimizer"] == opt) & np.isclose(best["sharpness"], a)].sort_values("noise")
        rows[opt] = g
    s = rows[base]["noise"].to_numpy()
    d = rows[base]["final_loss_mean"].to_numpy() - rows[other]["final_loss_mean"].to_numpy()
    for k in range(len(s) - 1):
        if d[k] <= 0 < d[k + 1]:
            x0, x1 = math.log(s[k]), math.log(s[k + 1])
            return math.exp(x0 + (x1 - x0) * -d[k] / (d[k + 1] - d[k]))
    return math.nan


def predicted_crossover(sizes, improvement) -> float | str:
    """The batch size where the predicted improvement changes sign from + to - (log2-interpolated),
    or a word when it does not."""
    b, i = np.asarray(sizes, float), np.asarray(improvement, float)
    for k in range(len(b) - 1):
        if i[k] > 0 >= i[k + 1]:
            lo, hi = math.log2(b[k]), math.log2(b[k + 1])
            return 2 ** (lo + (hi - lo) * i[k] / (i[k] - i[k + 1]))
    return "Signum at every B" if np.all(i > 0) else ("Adam at every B" if np.all(i <= 0) else "no + to - turn")


def mnist_bridge(study: Path, best_toy: pd.DataFrame, plt, out: Path | None):
    from focuslab.plot.diagnostics import crossover, per_batch_size
    from focuslab.plot.mnist import improvement

    diag = pd.read_parquet(study / "diagnostics.parquet")
    best = pd.read_parquet(study / "best.parquet")
    per = {o: per_batch_size(diag, best, o)[0].set_index("batch_size") for o in ("adamw", "signum")}
    imp = improvement(best, "adamw", "signum").set_index("batch_size")
    sizes = sorted(per["adamw"].index)
    observed = crossover(best)
    sigma = per["adamw"]["sigma_equiv"]
    print(f"\nMNIST {study}: observed Adam/Signum crossover {observed if observed is None else f'{observed:.1f}'}")
    print(f"{'B':>5} {'sigma_equiv (AdamW)':>22} {'(Signum)':>9} {'I observed':>16} {'edge':>5}")
    edge = best.set_index(["optimizer", "batch_size"])["lr_at_edge"]
    for b in sizes:
        r = per["adamw"].loc[b]
        e = imp.loc[b]
        flags = "".join(k[0] for k in ("adamw", "signum") if bool(edge.get((k, b), False)))
        print(f"{b:>5} {r.sigma_equiv:8.2f} [{r.sigma_lo:.2f}, {r.sigma_hi:.2f}] {per['signum'].loc[b].sigma_equiv:9.2f} "
              f"{e.improvement:+7.1f} ± {e.error:4.1f} % {flags:>5}")
    sharp = sorted(best_toy["sharpness"].unique())
    # sigma_equiv(B) beyond the measured batches: a power law fitted to the resolved values from B = 8 on
    fit = [(math.log(b), math.log(sigma[b])) for b in sizes if b >= 8 and np.isfinite(sigma[b])]
    slope, icpt = np.polyfit(*zip(*fit), 1)
    print(f"sigma_equiv(B) ~ B^{slope:.2f} from B = 8 on (fitted; 1/sqrt(B) is -0.5)")
    measured = [b for b in sizes if np.isfinite(sigma[b])]  # an unresolved sigma (+inf) is off every map
    rows = []
    for a in sharp:
        pred = [toy_improvement(best_toy, a, float(sigma[b]))[0] for b in measured]
        cross = predicted_crossover(measured, pred)
        star = toy_boundary(best_toy, a)
        beyond = math.exp((math.log(star) - icpt) / slope) if np.isfinite(star) else math.nan
        obs = [imp.loc[b].improvement / 100 for b in measured]
        agree = np.mean([np.sign(p) == np.sign(o) for p, o in zip(pred, obs)])
        rows.append({"a": a, "sigma_star": star, "predicted": cross, "extrapolated": beyond,
                     "miss": (beyond / observed) if observed else math.nan, "agree": agree, "pred": pred})
    print(f"\n{'a':>8} {'toy sigma*':>11} {'predicted in 4..512':>20} {'extrapolated':>13} {'/observed':>10} "
          f"{'signs right':>12}  toy I(B) at B = {', '.join(map(str, measured))} (%)")
    for r in rows:
        p = r["predicted"]
        print(f"{r['a']:8.3g} {r['sigma_star']:11.2f} {p if isinstance(p, str) else f'{p:.0f}':>20} "
              f"{r['extrapolated']:13.3g} {r['miss']:10.3g} {r['agree']:12.2f}  "
              + " ".join(f"{100 * v:+.0f}" for v in r["pred"]))
    if observed:
        s_obs = math.exp(np.interp(math.log(observed), np.log(sizes), np.log(sigma.to_numpy())))
        print(f"sigma_equiv at the observed crossover (interpolated): {s_obs:.2f}")
    if plt is not None and out is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=100, layout="constrained")
        ax = axes[0]
        ax.errorbar(measured, [imp.loc[b].improvement for b in measured], yerr=[imp.loc[b].error for b in measured], color="k", marker="o", capsize=3,
                    label="MNIST observed")
        cmap = plt.get_cmap("plasma")
        for k, r in enumerate(rows[::4]):
            ax.plot(measured, [100 * p for p in r["pred"]], color=cmap(k / 5), marker=".",
                    label=f"toy at σ_equiv(B), a = {r['a']:.3g}")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("Batch size B")
        ax.set_ylabel("I = (L_Adam − L_Signum) / |L_Adam|, %")
        ax.set_title("Signum's gain over Adam: MNIST vs the toy at the measured σ", fontsize=10)
        ax.legend(frameon=False, fontsize=7)
        ax = axes[1]
        pair = best_toy[best_toy["optimizer"].isin(["adam", "signum"])]
        wide = pair.pivot_table(index=["sharpness", "noise"], columns="optimizer", values="final_loss_mean")
        d = (wide["adam"] - wide["signum"]) / wide["adam"].abs()
        grid = d.unstack("noise")
        x, y = np.log10(grid.columns.to_numpy(float)), np.log10(grid.index.to_numpy(float))
        lim = np.nanquantile(np.abs(grid.to_numpy()), 0.95)
        mesh = ax.pcolormesh(x, y, grid.to_numpy(), cmap="RdBu", vmin=-lim, vmax=lim, shading="nearest")
        fig.colorbar(mesh, ax=ax, label="toy (L_Adam − L_Signum)/|L_Adam| (blue: Signum better)")
        ax.plot(np.log10([r["sigma_star"] for r in rows]), np.log10(sharp), color="k", lw=1.5,
                label="toy boundary σ*(a)")
        for b in measured:
            ax.axvline(math.log10(sigma[b]), color="0.2", lw=0.6, ls=":")
            ax.text(math.log10(sigma[b]), y[-1], f"{b}", fontsize=7, ha="center", va="bottom", rotation=90)
        if observed:
            ax.axvline(math.log10(s_obs), color="tab:orange", lw=2, label=f"σ_equiv at the observed crossover B ≈ {observed:.0f}")
        ax.set_xlabel("log10 noise σ (dotted: MNIST σ_equiv at batch B, labelled)")
        ax.set_ylabel("log10 sharpness a")
        ax.set_title("Toy Adam vs Signum, and where MNIST's batches sit", fontsize=10)
        ax.legend(frameon=False, fontsize=7, loc="lower left")
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "mnist_bridge.png")
        plt.close(fig)
    return per, rows


def gpt2_bridge(runs, best_toy):
    print("\nGPT-2:")
    sigmas, finals = {}, {}
    for run in runs:
        run = Path(run)
        meta = json.loads((run / "gpt2.json").read_text())
        d = pd.read_parquet(run / "diagnostics.parquet")
        later = d[d["step"] > 0]
        opt = meta["config"]["optimizer"].split(":")[0]
        sigmas[opt] = float(later["sigma_equiv"].median())
        finals[opt] = meta["final"]["val_loss"]
        print(f"  {run.name}: {opt}, final val loss {finals[opt]:.4f}, sigma_equiv median {sigmas[opt]:.2f} "
              f"(range {later['sigma_equiv'].min():.2f}-{later['sigma_equiv'].max():.2f}, "
              f"last {later.sort_values('step')['sigma_equiv'].iloc[-1]:.2f}), cost "
              f"{100 * meta.get('diagnostics_cost_fraction', math.nan):.1f} %")
    order = sorted(finals, key=finals.get)
    print("  observed ranking: " + " < ".join(f"{o} ({finals[o]:.4f})" for o in order))
    s = float(np.median(list(sigmas.values())))
    print(f"  toy at sigma = {s:.2f} (the runs' median): winner per a (Adam / Signum / FOCUS best mean final loss)")
    winners = {}
    for a in sorted(best_toy["sharpness"].unique()):
        loss = toy_losses(best_toy, a, s)
        w = min(loss, key=lambda o: loss[o][0])
        second = sorted(loss, key=lambda o: loss[o][0])[1]
        margin = (loss[second][0] - loss[w][0]) / math.hypot(loss[w][1], loss[second][1])
        winners[a] = w
        print(f"    a {a:8.3g}: {NAMES[w]:<7} (over {NAMES[second]} by {margin:.1f} SE); "
              + ", ".join(f"{NAMES[o]} {loss[o][0]:.4f}" for o in ("adam", "signum", "focus")))
    return sigmas, finals, winners


def toy_stability(best_toy, a, sigma, reps=20, seed=0):
    """Median of S = lr x lambda_max(P^-1/2 H P^-1/2) over the second half of the toy's Adam
    trajectories at their best lr (the scan's, at the grid noise nearest ``sigma``)."""
    from focuslab.toy import landscape, reference, updates

    cells = best_toy[(best_toy["optimizer"] == "adam") & np.isclose(best_toy["sharpness"], a)]
    cell = cells.iloc[int(np.argmin(np.abs(np.log(cells["noise"].to_numpy()) - math.log(sigma))))]
    lr = float(cell["best_lr"])
    hp = updates.get("adam").resolve({})
    wd, phi, c = float(cell["weight_decay"]), float(cell["phi"]), float(cell["c"])
    co, si = math.cos(phi), math.sin(phi)
    rng = np.random.default_rng(seed)
    T = 1000
    values = []
    for _ in range(reps):
        normals = rng.normal(size=(T + 1, 2))
        path = reference.trajectory("adam", hp, sharpness=a, noise=float(cell["noise"]), weight_decay=wd, phi=phi,
                                    c=c, lr=lr, normals=normals, steps=T)["path"]
        v = np.zeros(2)
        for t in range(1, T + 1):
            th = path[t - 1]
            u, w = landscape.rotate(th[0], th[1], co, si)
            g = np.array(landscape.grad_theta(u, w, a, c, co, si)) * (1 + cell["noise"] * normals[t])
            v = hp["beta2"] * v + (1 - hp["beta2"]) * g * g
            if t <= T // 2:
                continue
            u, w = landscape.rotate(path[t][0], path[t][1], co, si)
            h_uv = np.array([[a * w * w, 2 * a * u * w], [2 * a * u * w, a * u * u]])
            R = np.array([[co, -si], [si, co]])  # dL/dtheta = R (dL/du, dL/dv)
            h = R @ h_uv @ R.T
            p = np.sqrt(v / (1 - hp["beta2"] ** t)) + hp["eps"]
            values.append(lr * np.linalg.eigvalsh(h / np.sqrt(np.outer(p, p)))[-1])
    return float(np.median(values)), lr


def sharpness_bridge(mnist_per, gpt2_runs, best_toy, sigmas_gpt2):
    print("\nSharpness: S = lr x lambda_max(Adam-preconditioned), real AdamW runs vs the toy's Adam at its best lr")
    real = []
    if mnist_per is not None:
        for b, r in mnist_per["adamw"].iterrows():
            if np.isfinite(r.sigma_equiv) and np.isfinite(r.get("lambda_max_preconditioned", math.nan)):
                real.append((f"MNIST B={b}", float(r.sigma_equiv), r.lr * r.lambda_max_preconditioned,
                             r.lr * r.lambda_max))
    for run in gpt2_runs or []:
        d = pd.read_parquet(Path(run) / "diagnostics.parquet")
        later = d[(d["step"] > 0) & d["lambda_max_preconditioned"].notna()] if "lambda_max_preconditioned" in d else d[:0]
        if len(later):
            real.append((f"GPT-2 {Path(run).name}", float(later["sigma_equiv"].median()),
                         float((later["lr"] * later["lambda_max_preconditioned"]).median()),
                         float((later["lr"] * later["lambda_max"]).median())))
    sharp = sorted(best_toy["sharpness"].unique())[::4]
    for label, sigma, s_real, s_plain in real:
        toy = [toy_stability(best_toy, a, sigma) for a in sharp]
        print(f"  {label}: sigma_equiv {sigma:.2f}, S = lr·λ_P {s_real:.3g} (lr·λ {s_plain:.3g}); toy S at that sigma: "
              + ", ".join(f"a={a:g}: {s:.3g}" for a, (s, _) in zip(sharp, toy)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", type=Path, default=Path("results/bridge-toy"))
    ap.add_argument("--mnist", type=Path, default=None)
    ap.add_argument("--gpt2", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figure there")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    best_toy = toy_map(args.toy, args.jobs)
    plt = None
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    per = mnist_bridge(args.mnist, best_toy, plt, args.out)[0] if args.mnist else None
    sig = gpt2_bridge(args.gpt2, best_toy)[0] if args.gpt2 else {}
    adam_runs = [r for r in (args.gpt2 or []) if "adam" in Path(r).name]
    sharpness_bridge(per, adam_runs, best_toy, sig)


if __name__ == "__main__":
    main()
