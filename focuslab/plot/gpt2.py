"""Paper Fig. 3 style: validation loss vs step and vs tokens, one line per GPT-2 run."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FocuslabError
from ..gpt2.config import RECOVER_META
from ..results import read_json
from .style import colour, save


def read_run(directory: Path) -> tuple[dict, list[dict]]:
    directory = Path(directory)
    meta = read_json(directory / "gpt2.json", fix=RECOVER_META.format(run=directory))
    path = directory / "metrics.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise FocuslabError(f"{path}: unreadable metrics ({err})") from None
    return meta, [r for r in rows if r.get("val_loss") is not None]


def plot_runs(directories, out=None, formats=("png",)) -> dict:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    runs = [(Path(d), *read_run(d)) for d in directories]
    out = Path(out) if out else Path(directories[0])
    out.mkdir(parents=True, exist_ok=True)
    from ..optimizers import legend_for

    names = [m.get("optimizer_label", m["config"]["optimizer"]) for _, m, _ in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, layout="constrained")
    summary = []
    for (d, meta, rows), opt in zip(runs, names):
        cfg = meta["config"]
        label = f"{legend_for(opt, {opt: cfg.get('optimizer_settings')}, meta.get('external'))}, " \
                f"lr {cfg['learning_rate']:g}"
        if len(runs) > len(set(names)):
            label += f" ({d.name})"
        c = colour(opt, names)
        for ax, key in zip(axes, ("iter", "tokens")):
            ax.plot([r[key] for r in rows], [r["val_loss"] for r in rows], marker="o", ms=3, color=c, label=label)
        if rows:
            summary.append(f"{d}: {label}: final val loss {rows[-1]['val_loss']:.4f} at iter {rows[-1]['iter']}")
    axes[0].set_xlabel("Step")
    axes[1].set_xlabel("Tokens")
    for ax in axes:
        ax.set_ylabel("Validation loss")
        ax.legend(frameon=False)
    fig.suptitle("GPT-2 validation loss", fontsize=10)
    files = save(fig, out, "val_loss", formats)
    plt.close(fig)
    return {"files": files, "summary": summary}
