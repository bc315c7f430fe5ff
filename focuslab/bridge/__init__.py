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

One module per job: ``inputs`` (the settings and every input, checked before anything is written),
``readings`` (the toy map read at a measured sigma, and the three readings) and this one (the command's
library function, ``run_bridge``, and the summary of a finished bridge).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FocuslabError
from .inputs import (META, TABLES, TITLE, TOY_NAME, BridgeSettings, _entry_labels, _gpt2_input,  # noqa: F401
                     _mnist_input, _toy_input)
from .readings import (gpt2_reading, mnist_reading, sign_change, stability_reading, toy_boundary,  # noqa: F401
                       toy_improvement, toy_losses, toy_rows, toy_stability)


def run_bridge(settings: BridgeSettings, *, jobs: int | None = None, force: bool = False, device: str = "auto",
               progress: bool = True, say=lambda line: None) -> dict:
    """Check every input, scan the toy map when --toy holds none, read it at the runs' sigma_equiv,
    and write the tables and bridge.json into ``settings.out``.  Returns {"out", "lines"}: the
    directory and the reading in a few lines."""
    from ..results import claim_dir, read_json, write_json, write_parquet

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
        from ..scan import run_scan

        say(f"focuslab bridge: scanning the toy map into {toy_in['path']} ({toy_in['config'].total_steps():.3g} "
            f"optimizer steps; resumable)")
        run_scan(toy_in["config"], toy_in["path"], jobs=jobs, progress=progress, device=device)
    from ..results import load_scan

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
        stab = stability_reading(mnist_table, runs, toy, adam, replicates=settings.stability_replicates,
                                 steps=config.steps)
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
    from ..results import read_json, read_parquet

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
