"""The bridge: does the toy, read at the noise a real model's training measures, predict which
optimizer wins?

``focuslab.diagnostics`` measures sigma_equiv = sqrt(B_simple / B) along a real run: the toy's sigma
(every coordinate's gradient multiplied by N(1, sigma^2)).  The bridge reads a toy phase map (a
`focuslab scan` over sharpness a x noise sigma) at those sigma and sets what it predicts beside
what the runs observed:

1. **MNIST** (a study run with ``--diagnostics-every``, AdamW and Signum): per batch size B,
   sigma_equiv of AdamW's unit at its best lr (median over the measurements after step 0) -> the
   toy's I = (L_Adam - L_Signum) / |L_Adam| at that sigma (log-interpolated between grid values),
   per a; the toy's Adam/Signum boundary sigma*(a); the batch where the prediction turns from Signum
   to Adam, and, beyond the measured batches, where a power law sigma_equiv(B) ~ B^slope (fitted
   from B = 8 on) reaches sigma*(a), against the crossover the study observed.
2. **GPT-2** (runs with ``--diagnostics-every``): the toy's ranking of Adam, Signum and FOCUS per a
   at the runs' median sigma_equiv, against the runs' final validation losses.
3. **Sharpness**: no a can be read off a measured lambda_max (the toy's a is not scale-free: theta ->
   theta / s maps (a, lr, omega) to (a s^3, lr / s, omega s)), so the bridge compares Adam's
   stability number S = lr x lambda_max(P^-1/2 H P^-1/2), which that rescaling leaves unchanged:
   measured on the real AdamW runs (with the preconditioned lambda_max) against S along the toy's
   Adam trajectories at their best lr (``focuslab.toy.reference``, the executable specification),
   for a few a at each measured sigma.

The toy map is any finished scan with a noise axis (``--toy``); when that directory holds none, the
scan of ``--toy-config`` (preset ``bridge-toy``) is run into it first, in-process, through
``focuslab.scan.run_scan`` (resumable like any scan).  Inputs are checked before anything is
written: a directory of the wrong kind, a run without diagnostics or a map without a noise axis is
one line naming the directory and what it lacks.

Outputs (``--out``, default results/bridge): ``bridge.json`` (the directory's kind, inputs,
settings, the scalar readings), ``toy.parquet`` (the toy map's best rows that were read),
``mnist.parquet`` (one row per batch size), ``mnist_toy.parquet`` (one row per a and batch size),
``boundary.parquet`` (one row per a), ``gpt2.parquet`` (one row per run), ``gpt2_toy.parquet`` (one
row per a and optimizer), ``stability.parquet`` (one row per real measurement and a).
`focuslab plot` draws them.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .errors import FocuslabError
from .options import setting

META = "bridge.json"
TABLES = ("toy.parquet", "mnist.parquet", "mnist_toy.parquet", "boundary.parquet", "gpt2.parquet",
          "gpt2_toy.parquet", "stability.parquet")
#: The real runs' optimizers as the toy names them.
TOY_NAME = {"adamw": "adam", "adam": "adam", "signum": "signum", "focus": "focus"}
TITLE = {"adam": "Adam", "signum": "Signum", "focus": "FOCUS"}


@dataclass(frozen=True)
class BridgeSettings:
    """The bridge command's settings, declared once (its flags are generated from these fields)."""

    mnist: str = setting(None, "an MNIST study run with --diagnostics-every (adamw and signum): the toy read at "
                               "each batch size's sigma_equiv", metavar="RUN_DIR")
    gpt2: tuple = setting(None, "a GPT-2 run with --diagnostics-every (repeatable): the toy read at the runs' "
                                "sigma_equiv", metavar="RUN_DIR", multiple=True)
    toy: str = setting("results/bridge-toy", "the toy map: a finished scan with a noise axis; when the directory "
                                             "holds no scan, --toy-config is scanned into it first", metavar="DIR")
    toy_config: str = setting("bridge-toy", "the scan run into --toy when it holds none: a scan preset or a TOML "
                                            "file with a [scan] table", metavar="FILE|PRESET")
    stability_replicates: int = setting(20, "toy Adam trajectories per sharpness for the stability number "
                                            "S = lr x lambda_max(P^-1/2 H P^-1/2) (0: skip)", metavar="N")
    out: str = setting("results/bridge", "where the bridge's tables go (`focuslab plot DIR` draws them)",
                       metavar="DIR")

    def validate(self) -> "BridgeSettings":
        if not self.mnist and not self.gpt2:
            raise FocuslabError("focuslab bridge: give --mnist RUN_DIR and/or --gpt2 RUN_DIR (runs made with "
                                "--diagnostics-every N)")
        if self.stability_replicates < 0:
            raise FocuslabError(f"--stability-replicates: must be >= 0, got {self.stability_replicates}")
        return self


# ---------------------------------------------------------------------------------------------
# inputs, checked before anything is written

def _kind_word(directory: Path) -> str:
    from .results import KINDS, WORDS, kind_of

    kind = kind_of(directory)
    return f"a {WORDS[kind]} ({KINDS[kind]})" if kind else "no focuslab results"


def _diagnosed(flag: str, directory, kind: str) -> tuple[Path, dict, pd.DataFrame]:
    """(path, metadata, diagnostics) of a finished run of ``kind`` measured with --diagnostics-every."""
    from .results import KINDS, WORDS, kind_of, read_json, read_parquet

    path = Path(directory)
    if not path.is_dir():
        raise FocuslabError(f"{flag} {path}: no such directory")
    if kind_of(path) != kind:
        raise FocuslabError(f"{flag} {path} holds {_kind_word(path)}, not a {WORDS[kind]}")
    meta = read_json(path / KINDS[kind])
    if meta.get("status") != "complete":
        raise FocuslabError(f"{flag} {path}: the {WORDS[kind]} is not complete (status {meta.get('status')!r}); "
                            "finish it first (re-run its command)")
    if not (path / "diagnostics.parquet").exists():
        raise FocuslabError(f"{flag} {path}: no diagnostics.parquet (the {WORDS[kind]} was run without "
                            "--diagnostics-every N)")
    diag = read_parquet(path / "diagnostics.parquet")
    if "sigma_equiv" not in diag or not (diag["step"] > 0).any():
        raise FocuslabError(f"{flag} {path}: diagnostics.parquet has no sigma_equiv measured after step 0")
    return path, meta, diag


def _mnist_input(directory) -> dict:
    from .results import read_parquet

    path, meta, diag = _diagnosed("--mnist", directory, "mnist")
    best = read_parquet(path / "best.parquet")
    for opt in ("adamw", "signum"):
        if opt not in set(best["optimizer"]) or opt not in set(diag["optimizer"]):
            raise FocuslabError(f"--mnist {path}: no {opt} units with diagnostics (the bridge compares adamw and "
                                "signum: run the study with --optimizers adamw,signum)")
    return {"path": path, "meta": meta, "diagnostics": diag, "best": best}


def _gpt2_input(directory) -> dict:
    path, meta, diag = _diagnosed("--gpt2", directory, "gpt2")
    final = (meta.get("final") or {}).get("val_loss")
    if final is None:
        raise FocuslabError(f"--gpt2 {path}: gpt2.json records no final validation loss")
    optimizer = str(meta["config"]["optimizer"]).split(":")[0]
    return {"path": path, "meta": meta, "diagnostics": diag, "final": float(final), "optimizer": optimizer}


def _toy_config(settings: BridgeSettings):
    from .config import build_scan_config, load_toml

    try:
        return build_scan_config(load_toml(settings.toy_config, "scan"))
    except FocuslabError as err:
        raise FocuslabError(f"--toy-config {settings.toy_config}: {err}") from None


def _check_map(config, where: str, need: set) -> None:
    """A toy map the bridge can read: a noise axis of positive values, sharpness the only other
    scanned axis, the optimizers it compares."""
    noise = [v for v in config.axes["noise"].values if v > 0]
    if len(noise) < 2:
        raise FocuslabError(f"{where}: a scan without a noise axis (noise {config.axes['noise'].spec}); the bridge "
                            "reads the toy along sigma: scan a --noise grid of at least two positive values")
    other = [a for a in config.scanned_axes if a not in ("sharpness", "noise", "lr")]
    if other:
        raise FocuslabError(f"{where}: the scan also varies {', '.join(other)}; the bridge reads a sharpness x noise "
                            "map (one value of every other axis)")
    names = {e.name for e in config.entries}  # a built-in's name; an external class's is a dotted path
    if need - names:
        raise FocuslabError(f"{where}: no {', '.join(sorted(need - names))} on the map (optimizers "
                            f"{', '.join(config.optimizers)}); the bridge compares {', '.join(sorted(need))}")


def _toy_input(settings: BridgeSettings, need: set) -> dict:
    """What --toy holds (a finished map, an unfinished scan of --toy-config to resume, or nothing: the
    scan of --toy-config to run), checked."""
    from .results import META as SCAN_META
    from .results import kind_of, read_json
    from .scan import config_from_meta

    path = Path(settings.toy)
    if path.exists() and not path.is_dir():
        raise FocuslabError(f"--toy {path}: exists and is not a directory")
    kind = kind_of(path) if path.is_dir() else None
    if kind not in (None, "scan"):
        raise FocuslabError(f"--toy {path} holds {_kind_word(path)}, not a toy scan")
    if kind == "scan":
        meta = read_json(path / SCAN_META)
        config = config_from_meta(meta)
        _check_map(config, f"--toy {path}", need)
        if meta.get("status") == "complete":
            return {"path": path, "config": config, "run": False}
        if config.digest() != _toy_config(settings).digest():
            raise FocuslabError(f"--toy {path}: an unfinished scan of another config than --toy-config "
                                f"{settings.toy_config}; finish it with its own `focuslab scan` command")
        return {"path": path, "config": config, "run": True}
    config = _toy_config(settings)
    _check_map(config, f"--toy-config {settings.toy_config}", need)
    return {"path": path, "config": config, "run": True}


def _entry_labels(config) -> dict:
    """toy name (adam, signum, focus) -> the map's label of that built-in (the first entry)."""
    out = {}
    for e in config.entries:
        if e.name in TITLE and e.name not in out:  # the built-ins by name (a class's name is a dotted path)
            out[e.name] = e.label
    return out


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
    from .plot.diagnostics import crossover, per_batch_size
    from .plot.mnist import improvement

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


def toy_stability(toy: pd.DataFrame, adam_settings: dict, a: float, sigma: float, replicates: int,
                  steps: int) -> tuple[float, float, float]:
    """(median S, the cell's noise, its best lr): S = lr x lambda_max(P^-1/2 H P^-1/2) over the second
    half of ``replicates`` toy Adam trajectories at their best lr, in the map's cell at ``a`` whose
    noise is nearest ``sigma`` (in log), stepped by the reference stepper; P = sqrt(v_hat) + eps
    from Adam's own second moments along the path."""
    from scipy.signal import lfilter

    from .toy import landscape, reference

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


def stability_reading(mnist_table: pd.DataFrame | None, runs: list[dict], toy: pd.DataFrame, adam_settings: dict,
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
                memo[key] = toy_stability(toy, adam_settings, a, sigma, replicates, steps)
            s_toy, noise, lr = memo[key]
            rows.append({"measurement": label, "sigma_equiv": sigma, "stability": s_real,
                         "stability_unpreconditioned": s_plain, "sharpness": float(a), "toy_noise": noise,
                         "toy_lr": lr, "toy_stability": s_toy})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the command's library function

def run_bridge(settings: BridgeSettings, *, jobs: int | None = None, force: bool = False, device: str = "auto",
               progress: bool = True, say=lambda line: None) -> dict:
    """Check every input, scan the toy map when --toy holds none, read it at the runs' sigma_equiv,
    and write the tables and bridge.json into ``settings.out``.  Returns {"out", "lines"}: the
    directory and the reading in a few lines."""
    from .results import claim_dir, read_json, write_json, write_parquet

    settings = settings.validate()
    study = _mnist_input(settings.mnist) if settings.mnist else None
    runs = [_gpt2_input(r) for r in settings.gpt2 or ()]
    need = ({"adam", "signum"} if study else set()) | {TOY_NAME[r["optimizer"]] for r in runs
                                                       if r["optimizer"] in TOY_NAME}
    toy_in = _toy_input(settings, need)
    out = Path(settings.out)
    if out.resolve() == toy_in["path"].resolve():
        raise FocuslabError(f"--out {out}: the toy map's directory; give the bridge a directory of its own")
    inputs = {"mnist": str(study["path"]) if study else None, "gpt2": [str(r["path"]) for r in runs],
              "toy": str(toy_in["path"]), "toy_digest": toy_in["config"].digest(),
              "digests": {str(x["path"]): x["meta"].get("digest") for x in ([study] if study else []) + runs}}
    created = claim_dir(out, "bridge")
    if (out / META).exists() and not force:
        old = read_json(out / META)
        if old.get("inputs") != inputs or old.get("settings", {}).get("stability_replicates") != \
                settings.stability_replicates:
            raise FocuslabError(f"--out {out} holds a bridge of other inputs ({old.get('inputs', {}).get('toy')}, "
                                f"{old.get('inputs', {}).get('mnist')}, ...); use another --out or --force to "
                                "replace it")
    start = time.time()
    if toy_in["run"]:
        from .scan import run_scan

        say(f"focuslab bridge: scanning the toy map into {toy_in['path']} ({toy_in['config'].total_steps():.3g} "
            f"optimizer steps; resumable)")
        run_scan(toy_in["config"], toy_in["path"], jobs=jobs, progress=progress, device=device)
    from .results import load_scan

    toy_meta, _, best = load_scan(toy_in["path"])
    config = toy_in["config"]
    labels = _entry_labels(config)
    toy = toy_rows(best, labels)
    tables: dict = {"toy.parquet": toy}
    readings: dict = {}
    mnist_table = None
    if study:
        mnist_table, per_ab, per_a, scalars = mnist_reading(study, toy)
        tables.update({"mnist.parquet": mnist_table, "mnist_toy.parquet": per_ab, "boundary.parquet": per_a})
        readings["mnist"] = scalars
    if runs:
        gpt2_table, gpt2_toy, scalars = gpt2_reading(runs, toy)
        tables.update({"gpt2.parquet": gpt2_table, "gpt2_toy.parquet": gpt2_toy})
        readings["gpt2"] = scalars
    if settings.stability_replicates and "adam" in labels:
        adam = next(e for e in config.entries if e.label == labels["adam"]).settings
        stab = stability_reading(mnist_table, runs, toy, adam, settings.stability_replicates, config.steps)
        if len(stab):
            tables["stability.parquet"] = stab
    try:
        for name in TABLES:
            (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            write_parquet(table, out / name)
        meta = {"kind": "bridge", "status": "complete", "version": __version__, "inputs": inputs,
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
                "toy": {"config": toy_meta.get("scan"), "labels": labels, "scanned_now": toy_in["run"]},
                "readings": readings, "tables": sorted(tables), "wall_seconds": round(time.time() - start, 2)}
        write_json(meta, out / META)
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    return {"out": out, "lines": summary_lines(out)}


def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _span(low: float, high: float) -> str:
    return _g(low) if _g(low) == _g(high) else f"{_g(low)}-{_g(high)}"


def summary_lines(directory: Path) -> list[str]:
    """The bridge's reading in a few lines, from its tables (what `focuslab bridge` and `focuslab
    plot` print)."""
    from .results import read_json, read_parquet

    directory = Path(directory)
    meta = read_json(directory / META)
    lines = []
    if (directory / "mnist.parquet").exists():
        m = read_parquet(directory / "mnist.parquet")
        per_a = read_parquet(directory / "boundary.parquet")
        r = meta["readings"]["mnist"]
        obs = r["observed_crossover"]
        resolved = m[np.isfinite(m["sigma_equiv"])]
        lines.append(f"MNIST {meta['inputs']['mnist']}: sigma_equiv {resolved['sigma_equiv'].min():.3g}-"
                     f"{resolved['sigma_equiv'].max():.3g} over batch {int(m['batch_size'].min())}-"
                     f"{int(m['batch_size'].max())} (~ B^{r['sigma_slope']:.2f}); observed Adam/Signum crossover "
                     + (f"B ≈ {obs:.0f}" if np.isfinite(obs) else "none"))
        star = per_a["sigma_star"]
        words = per_a["predicted"].where(per_a["predicted_crossover"].isna(), "a Signum-to-Adam turn within them")
        lines.append(f"  toy Adam/Signum boundary sigma*(a) {np.nanmin(star):.3g}-{np.nanmax(star):.3g} over a "
                     f"{per_a['sharpness'].min():g}-{per_a['sharpness'].max():g}; the toy at the measured sigma "
                     "predicts " + "; ".join(f"{w} at {n} of {len(per_a)} a" for w, n in words.value_counts().items())
                     + (f" ({int(per_a['off_map'].max())} batch size(s) beyond its noise axis)"
                        if "off_map" in per_a and per_a["off_map"].max() else ""))
        ext = per_a["extrapolated_crossover"]
        if np.isfinite(ext).any():
            lines.append(f"  extrapolated toy crossover B ≈ {np.nanmin(ext):.3g} (a = "
                         f"{per_a.loc[ext.idxmin(), 'sharpness']:g}) to {np.nanmax(ext):.3g} (a = "
                         f"{per_a.loc[ext.idxmax(), 'sharpness']:g})"
                         + (f": {np.nanmin(per_a['miss']):.3g}x the observed at the least" if np.isfinite(obs) else ""))
    if (directory / "gpt2.parquet").exists():
        g = read_parquet(directory / "gpt2.parquet").sort_values("final_val_loss")
        t = read_parquet(directory / "gpt2_toy.parquet")
        sigma = meta["readings"]["gpt2"]["sigma_equiv"]
        lines.append("GPT-2: observed " + " < ".join(f"{r.optimizer} {r.final_val_loss:.4f}" for r in g.itertuples())
                     + f"; sigma_equiv median {sigma:.3g}")
        firsts = t[t["rank"] == 1].groupby("optimizer")["sharpness"].agg(["min", "max", "count"])
        lines.append("  toy at that sigma, best per a: " + "; ".join(
            f"{TITLE.get(o, o)} at {int(r['count'])} a ({_span(r['min'], r['max'])})" for o, r in firsts.iterrows()))
    if (directory / "stability.parquet").exists():
        s = read_parquet(directory / "stability.parquet")
        real = s.groupby("measurement", sort=False)["stability"].first()
        lines.append(f"Adam's stability number S = lr x lambda_max(P^-1/2 H P^-1/2): real {_span(real.min(), real.max())}, "
                     f"toy at the same sigma {_span(s['toy_stability'].min(), s['toy_stability'].max())}")
    return lines
