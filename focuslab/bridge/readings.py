"""The bridge's readings: the toy map read at a measured sigma (its losses, Adam's improvement over
Signum, the Adam/Signum boundary), and the three readings set against the real runs -- MNIST per
batch size, GPT-2 per run, and Adam's stability number S along toy and real trajectories."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .inputs import TOY_NAME


# ---------------------------------------------------------------------------------------------
# reading the toy map

def toy_rows(best: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """The map's best rows of Adam, Signum and FOCUS at positive noise, named by the toy's names."""
    back = {label: name for name, label in labels.items()}
    rows = best[best["optimizer"].isin(back) & (best["noise"] > 0)].copy()
    rows["optimizer"] = rows["optimizer"].map(back)
    cols = ["optimizer", "sharpness", "noise", "best_lr", "final_loss_mean", "final_loss_sem", "weight_decay",
            "phi", "c"]
    return rows[cols].sort_values(["optimizer", "sharpness", "noise"]).reset_index(drop=True)


def toy_losses(toy: pd.DataFrame, a: float, sigma: float) -> dict:
    """optimizer -> (best mean final loss, its SE) at sharpness ``a`` (a grid value) and noise
    ``sigma``, linear in log sigma between grid values; (nan, nan) off the map's noise range."""
    out = {}
    s = math.log(sigma) if sigma > 0 and np.isfinite(sigma) else math.nan
    for opt, g in toy[np.isclose(toy["sharpness"], a)].groupby("optimizer"):
        g = g.sort_values("noise")
        x = np.log(g["noise"].to_numpy())
        if not x[0] <= s <= x[-1]:
            out[opt] = (math.nan, math.nan)
            continue
        out[opt] = (float(np.interp(s, x, g["final_loss_mean"])), float(np.interp(s, x, g["final_loss_sem"])))
    return out


def toy_improvement(toy: pd.DataFrame, a: float, sigma: float) -> tuple[float, float]:
    """(L_Adam - L_Signum) / |L_Adam| on the toy (positive: Signum better) and its SE."""
    loss = toy_losses(toy, a, sigma)
    (la, sa), (ls, ss) = loss["adam"], loss["signum"]
    return (la - ls) / abs(la), math.hypot(sa, ss) / abs(la)


def toy_boundary(toy: pd.DataFrame, a: float) -> float:
    """sigma*(a): where L_Adam - L_Signum first turns positive going up in noise (log-interpolated
    between grid values); nan without such a turn."""
    rows = {o: toy[(toy["optimizer"] == o) & np.isclose(toy["sharpness"], a)].sort_values("noise")
            for o in ("adam", "signum")}
    s = rows["adam"]["noise"].to_numpy()
    d = rows["adam"]["final_loss_mean"].to_numpy() - rows["signum"]["final_loss_mean"].to_numpy()
    for k in range(len(s) - 1):
        if d[k] <= 0 < d[k + 1]:
            x0, x1 = math.log(s[k]), math.log(s[k + 1])
            return math.exp(x0 + (x1 - x0) * -d[k] / (d[k + 1] - d[k]))
    return math.nan


def sign_change(sizes, values) -> float:
    """The batch size where ``values`` turn from positive to non-positive (log2-interpolated), nan
    without such a turn."""
    b, v = np.asarray(sizes, float), np.asarray(values, float)
    for k in range(len(b) - 1):
        if v[k] > 0 >= v[k + 1]:
            lo, hi = math.log2(b[k]), math.log2(b[k + 1])
            return 2 ** (lo + (hi - lo) * v[k] / (v[k] - v[k + 1]))
    return math.nan


def _sign_change_word(values) -> str:
    """What a prediction over the batch sizes on the map says when it does not turn (nan: it does)."""
    v = np.asarray(values, float)
    if not len(v):
        return "every B off the map"
    return "Signum at every B" if (v > 0).all() else ("Adam at every B" if (v <= 0).all() else "no + to - turn")


# ---------------------------------------------------------------------------------------------
# the three readings

def mnist_reading(study: dict, toy: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(per batch size, per a and batch size, per a, scalars) of the MNIST bridge."""
    from ..plot.diagnostics import crossover, per_batch_size
    from ..plot.mnist import improvement

    diag, best = study["diagnostics"], study["best"]
    per = {o: per_batch_size(diag, best, o)[0].set_index("batch_size") for o in ("adamw", "signum")}
    imp = improvement(best, "adamw", "signum").set_index("batch_size")
    edge = best.set_index(["optimizer", "batch_size"])["lr_at_edge"] if "lr_at_edge" in best else None
    sizes = sorted(set(per["adamw"].index) & set(imp.index))
    rows = []
    for b in sizes:
        r = per["adamw"].loc[b]
        row = {"batch_size": int(b), "sigma_equiv": float(r.sigma_equiv), "sigma_equiv_lo": float(r.sigma_lo),
               "sigma_equiv_hi": float(r.sigma_hi),
               "sigma_equiv_signum": float(per["signum"]["sigma_equiv"].get(b, math.nan)),
               "improvement": float(imp.loc[b, "improvement"]) / 100, "improvement_error":
               float(imp.loc[b, "error"]) / 100, "lr": float(r.lr), "lambda_max": float(r.lambda_max),
               "lambda_max_preconditioned": float(r.get("lambda_max_preconditioned", math.nan))}
        for o in ("adamw", "signum"):
            row[f"lr_at_edge_{o}"] = bool(edge.get((o, b), False)) if edge is not None else False
        rows.append(row)
    table = pd.DataFrame(rows)
    observed = crossover(best)
    observed = math.nan if observed is None else float(observed)
    sigma = table.set_index("batch_size")["sigma_equiv"]
    fit = [(math.log(b), math.log(s)) for b, s in sigma.items() if b >= 8 and np.isfinite(s) and s > 0]
    slope, icpt = (np.polyfit(*zip(*fit), 1) if len(fit) >= 2 else (math.nan, math.nan))
    measured = [b for b in sizes if np.isfinite(sigma[b])]  # an unresolved sigma (+inf) is off every map
    observed_imp = table.set_index("batch_size")["improvement"]
    per_a, per_ab = [], []
    for a in sorted(toy["sharpness"].unique()):
        pred = []
        for b in measured:
            value, se = toy_improvement(toy, a, float(sigma[b]))
            pred.append(value)
            per_ab.append({"sharpness": float(a), "batch_size": int(b), "sigma_equiv": float(sigma[b]),
                           "predicted_improvement": value, "predicted_error": se})
        star = toy_boundary(toy, a)
        beyond = math.exp((math.log(star) - icpt) / slope) if np.isfinite(star) and np.isfinite(slope) \
            and slope != 0 else math.nan
        on_map = [(b, p) for b, p in zip(measured, pred) if np.isfinite(p)]  # sigma within the map's noise axis
        judged = [(p, observed_imp[b]) for b, p in on_map]
        per_a.append({"sharpness": float(a), "sigma_star": star,
                      "predicted_crossover": sign_change(*zip(*on_map)) if on_map else math.nan,
                      "predicted": _sign_change_word([p for _, p in on_map]), "off_map": len(measured) - len(on_map),
                      "extrapolated_crossover": beyond,
                      "miss": beyond / observed if np.isfinite(observed) and observed else math.nan,
                      "signs_right": float(np.mean([np.sign(p) == np.sign(o) for p, o in judged]))
                      if judged else math.nan})
    at_observed = math.nan
    if np.isfinite(observed) and len(measured) >= 2:
        at_observed = math.exp(np.interp(math.log(observed), np.log(measured),
                                         np.log(sigma[measured].to_numpy(float))))
    scalars = {"observed_crossover": observed, "sigma_slope": float(slope), "sigma_intercept": float(icpt),
               "sigma_at_observed_crossover": at_observed}
    return table, pd.DataFrame(per_ab), pd.DataFrame(per_a), scalars


def gpt2_reading(runs: list[dict], toy: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(per run, per a and optimizer, scalars) of the GPT-2 bridge: the toy's ranking at the runs'
    median sigma_equiv."""
    rows = []
    for run in runs:
        d = run["diagnostics"]
        later = d[d["step"] > 0].sort_values("step")
        rows.append({"run": str(run["path"]), "name": run["path"].name, "optimizer": run["optimizer"],
                     "toy_optimizer": TOY_NAME.get(run["optimizer"], ""), "final_val_loss": run["final"],
                     "sigma_equiv": float(later["sigma_equiv"].median()),
                     "sigma_equiv_min": float(later["sigma_equiv"].min()),
                     "sigma_equiv_max": float(later["sigma_equiv"].max()),
                     "sigma_equiv_last": float(later["sigma_equiv"].iloc[-1]),
                     "diagnostics_cost_fraction": float(run["meta"].get("diagnostics_cost_fraction", math.nan))})
    table = pd.DataFrame(rows)
    sigma = float(np.median(table["sigma_equiv"]))
    on_map = sorted(set(toy["optimizer"]))
    per = []
    for a in sorted(toy["sharpness"].unique()):
        loss = toy_losses(toy, a, sigma)
        order = sorted(on_map, key=lambda o: (not np.isfinite(loss[o][0]), loss[o][0]))
        for rank, o in enumerate(order, 1):
            w, second = order[0], order[1] if len(order) > 1 else order[0]
            margin = (loss[second][0] - loss[w][0]) / math.hypot(loss[w][1], loss[second][1]) \
                if len(order) > 1 and loss[w][1] + loss[second][1] > 0 else math.nan
            per.append({"sharpness": float(a), "sigma_equiv": sigma, "optimizer": o, "rank": rank,
                        "final_loss_mean": loss[o][0], "final_loss_sem": loss[o][1],
                        "winner_margin_se": margin})
    observed = table.sort_values("final_val_loss")["toy_optimizer"].tolist()
    return table, pd.DataFrame(per), {"sigma_equiv": sigma, "observed_order": observed}


def _spread(values, k: int = 5) -> list:
    """At most ``k`` of ``values``, evenly spaced, both ends included."""
    values = sorted(values)
    idx = sorted(set(np.linspace(0, len(values) - 1, min(k, len(values))).round().astype(int)))
    return [values[i] for i in idx]


def toy_stability(toy: pd.DataFrame, adam_settings: dict, a: float, sigma: float, *, replicates: int,
                  steps: int) -> tuple[float, float, float]:
    """(median S, the cell's noise, its best lr): S = lr x lambda_max(P^-1/2 H P^-1/2) over the second
    half of ``replicates`` toy Adam trajectories at their best lr, in the map's cell at ``a`` whose
    noise is nearest ``sigma`` (in log), stepped by the reference stepper; P = sqrt(v_hat) + eps
    from Adam's own second moments along the path."""
    from scipy.signal import lfilter

    from ..toy import landscape, reference

    cells = toy[(toy["optimizer"] == "adam") & np.isclose(toy["sharpness"], a)]
    k = int(np.argmin(np.abs(np.log(cells["noise"].to_numpy()) - math.log(sigma))))
    cell = cells.iloc[k]
    lr, noise = float(cell["best_lr"]), float(cell["noise"])
    wd, phi, c = float(cell["weight_decay"]), float(cell["phi"]), float(cell["c"])
    co, si = math.cos(phi), math.sin(phi)
    b2, eps = float(adam_settings["beta2"]), float(adam_settings["eps"])
    rng = np.random.default_rng([int(round(1e6 * a)), k])  # keyed by the cell: the same S on every run
    values = []
    t = np.arange(1, steps + 1)
    for _ in range(replicates):
        normals = rng.normal(size=(steps + 1, 2))
        path = np.asarray(reference.trajectory("adam", adam_settings, sharpness=a, noise=noise, weight_decay=wd,
                                               phi=phi, c=c, lr=lr, normals=normals, steps=steps)["path"])
        with np.errstate(all="ignore"):
            u, w = landscape.rotate(path[:-1, 0], path[:-1, 1], co, si)
            g = np.stack(landscape.grad_theta(u, w, a, c, co, si), axis=1) * (1 + noise * normals[1:])
            v = lfilter([1 - b2], [1, -b2], g * g, axis=0)  # v_t = b2 v_{t-1} + (1 - b2) g_t^2, v_0 = 0
            u, w = landscape.rotate(path[1:, 0], path[1:, 1], co, si)
            # H in theta = R H_uv R^T, H_uv = [[a w^2, 2 a u w], [2 a u w, a u^2]], R = [[co, -si], [si, co]]
            huu, huv, hvv = a * w * w, 2 * a * u * w, a * u * u
            h11 = co * co * huu - 2 * co * si * huv + si * si * hvv
            h22 = si * si * huu + 2 * co * si * huv + co * co * hvv
            h12 = co * si * (huu - hvv) + (co * co - si * si) * huv
            p = np.sqrt(v / (1 - b2 ** t)[:, None]) + eps
            m11, m22, m12 = h11 / p[:, 0], h22 / p[:, 1], h12 / np.sqrt(p[:, 0] * p[:, 1])
            top = (m11 + m22) / 2 + np.sqrt(((m11 - m22) / 2) ** 2 + m12 ** 2)
        values.append(lr * top[steps // 2:])
    s = np.concatenate(values)
    s = s[np.isfinite(s)]
    return (float(np.median(s)) if len(s) else math.nan), noise, lr


def stability_reading(mnist_table: pd.DataFrame | None, runs: list[dict], toy: pd.DataFrame, adam_settings: dict, *,
                      replicates: int, steps: int) -> pd.DataFrame:
    """One row per (real AdamW measurement, a): S measured on the run and S on the toy at its sigma."""
    real = []
    if mnist_table is not None:
        for r in mnist_table.itertuples():
            if np.isfinite(r.sigma_equiv) and np.isfinite(r.lambda_max_preconditioned):
                real.append((f"MNIST B={r.batch_size}", r.sigma_equiv, r.lr * r.lambda_max_preconditioned,
                             r.lr * r.lambda_max))
    for run in runs:
        d = run["diagnostics"]
        if TOY_NAME.get(run["optimizer"]) != "adam" or "lambda_max_preconditioned" not in d:
            continue
        later = d[(d["step"] > 0) & d["lambda_max_preconditioned"].notna()]
        if len(later):
            real.append((f"GPT-2 {run['path'].name}", float(later["sigma_equiv"].median()),
                         float((later["lr"] * later["lambda_max_preconditioned"]).median()),
                         float((later["lr"] * later["lambda_max"]).median())))
    rows, memo = [], {}
    for label, sigma, s_real, s_plain in real:
        for a in _spread(toy["sharpness"].unique()):
            key = (a, sigma)
            if key not in memo:
                memo[key] = toy_stability(toy, adam_settings, a, sigma, replicates=replicates, steps=steps)
            s_toy, noise, lr = memo[key]
            rows.append({"measurement": label, "sigma_equiv": sigma, "stability": s_real,
                         "stability_unpreconditioned": s_plain, "sharpness": float(a), "toy_noise": noise,
                         "toy_lr": lr, "toy_stability": s_toy})
    return pd.DataFrame(rows)


