"""`focuslab plot`: colours read back from the PNG, ties, labels, extents, formats, errors."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from focuslab.cli.main import main
from focuslab.axes import CELL_NAMES
from focuslab.phase import winners
from focuslab.plot.phase import Geometry, phase_figure
from focuslab.plot.style import PAPER_COLOURS, TIE_COLOUR

SHARP = [1.0, 10.0, 100.0]
NOISE = [0.0, 1.0, 2.0, 3.0]
OPTS = ["adam", "signum", "focus"]
# (sharpness, noise) -> (winner, its mean, runner-up mean); SE of every mean is 0.01
KNOWN = {(1.0, 0.0): ("adam", -1.0, -0.5), (10.0, 1.0): ("signum", -1.0, -0.8),
         (100.0, 3.0): ("focus", -1.0, -0.9), (1.0, 3.0): ("focus", -1.0, -0.99)}  # last: a tie at K=2


def make_results(path, sharp=SHARP, noise=NOISE, scales=("log", "linear")):
    rows = []
    for a in sharp:
        for s in noise:
            winner, best, second = KNOWN.get((a, s), ("adam", -0.6, -0.4))
            for opt in OPTS:
                mean = best if opt == winner else (second if opt == OPTS[(OPTS.index(winner) + 1) % 3]
                                                   else second + 0.3)
                rows.append({"optimizer": opt, "sharpness": a, "noise": s, "weight_decay": 0.1,
                             "phi": 0.5, "c": 0.1, "best_lr": 0.01, "replicates": 10,
                             "final_loss_mean": mean, "final_loss_std": 0.01 * math.sqrt(10),
                             "final_loss_sem": 0.01, "min_loss_mean": mean, "progress_mean": 1.0,
                             "diverged": 0, "all_diverged": False, "lr_at_edge": False})
    best = pd.DataFrame(rows)
    path.mkdir(parents=True, exist_ok=True)
    best.to_parquet(path / "best.parquet")
    best.rename(columns={"best_lr": "lr"}).to_parquet(path / "runs.parquet")
    values = {"sharpness": list(sharp), "noise": list(noise), "weight_decay": [0.1], "phi": [0.5],
              "c": [0.1], "lr": [0.01]}
    sc = {"sharpness": scales[0], "noise": scales[1], "weight_decay": "single", "phi": "single",
          "c": "single", "lr": "single"}
    meta = {"kind": "scan", "status": "complete", "digest": "x", "seed": 0, "version": "test",
            "config": {"values": values, "scales": sc, "optimizers": OPTS}}
    (path / "scan.json").write_text(json.dumps(meta))
    return best, meta


def test_winners_welch_margin_and_ties():
    df = pd.DataFrame({"optimizer": ["a", "b", "a", "b"], "x": [0, 0, 1, 1],
                       "final_loss_mean": [-1.0, -0.9, -1.0, np.inf],
                       "final_loss_sem": [0.03, 0.04, 0.1, np.inf]})
    t = winners(df, ["a", "b"], ["x"], significance=2.0)
    assert t.winner.tolist() == ["a", "a"]
    assert t.margin[0] == pytest.approx(0.1 / 0.05)  # (runner-up - winner) / hypot(sems)
    assert t.label.tolist() == ["undecided", "a"]  # 2.0 is not > 2.0; a diverged runner-up loses outright
    assert winners(df, ["a", "b"], ["x"], 0.0).label.tolist() == ["a", "a"]


def _pixel(img, ax, x, y):
    fig = ax.figure
    px, py = ax.transData.transform((x, y))
    row = int(round(fig.bbox.height - py))
    return img[row, int(round(px)), :3]


def test_phase_png_colours_ties_labels_and_extents(tmp_path):
    best, meta = make_results(tmp_path / "r")
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "r"), "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    img = imread(tmp_path / "f" / "phase.png")
    geo = Geometry(meta)
    table = winners(best, OPTS, CELL_NAMES, 2.0)
    fig, ax = phase_figure(table, OPTS, geo, "Best optimizer at best lr (undecided: margin ≤ 2 SE)")
    fig.canvas.draw()
    assert img.shape[:2] == (int(fig.bbox.height), int(fig.bbox.width))
    assert ax.get_xlabel() == "Noise std, σ" and ax.get_ylabel() == "Sharpness, log10 a"
    assert ax.get_xlim() == pytest.approx((-0.5, 3.5)) and ax.get_ylim() == pytest.approx((-0.5, 2.5))
    expect = {(1.0, 0.0): PAPER_COLOURS["adam"], (10.0, 1.0): PAPER_COLOURS["signum"],
              (100.0, 3.0): PAPER_COLOURS["focus"], (1.0, 3.0): TIE_COLOUR}
    for (a, s), rgb in expect.items():
        got = _pixel(img, ax, s, math.log10(a))
        np.testing.assert_allclose(got * 255, rgb, atol=1.5, err_msg=f"cell sharpness={a}, noise={s}")
    # the raw argmin (significance 0) colours the near-tie with its winner
    res0 = CliRunner().invoke(main, ["plot", str(tmp_path / "r"), "--out", str(tmp_path / "raw"),
                                     "--significance", "0"])
    assert res0.exit_code == 0, res0.output
    raw = imread(tmp_path / "raw" / "phase.png")
    np.testing.assert_allclose(_pixel(raw, ax, 3.0, 0.0) * 255, PAPER_COLOURS["focus"], atol=1.5)
    assert "undecided" in res.output and "raw argmin" in res.output


def test_every_format_and_every_figure_is_written(tmp_path):
    make_results(tmp_path)
    res = CliRunner().invoke(main, ["plot", str(tmp_path), "--format", "png,pdf,svg", "-q"])
    assert res.exit_code == 0, res.output
    stems = ["phase", "phase_argmin", "margin", "phase_adam_vs_signum", "phase_adam_vs_focus", "phase_signum_vs_focus",
             *[f"{k}_{o}" for o in OPTS for k in ("loss", "best_lr")]]
    for stem in stems:
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
        assert b"<svg" in (tmp_path / f"{stem}.svg").read_bytes()[:2000]


def test_linear_axes_extents_follow_cell_centres(tmp_path):
    best, meta = make_results(tmp_path, scales=("linear", "linear"))
    geo = Geometry(meta)
    fig, ax = phase_figure(winners(best, OPTS, CELL_NAMES, 2.0), OPTS, geo, "t")
    assert ax.get_ylabel() == "Sharpness, a"
    assert ax.get_ylim() == pytest.approx((1.0 - 4.5, 100.0 + 45.0))  # half spacing beyond ends


def test_one_dimensional_scan_gives_line_plot(tmp_path):
    make_results(tmp_path, sharp=[10.0])
    res = CliRunner().invoke(main, ["plot", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "best_loss.png").exists() and not (tmp_path / "phase.png").exists()


def test_plot_of_a_real_scan(tmp_path):
    """A real scan's phase map: every cell's pixel has the colour of the raw argmin winner that
    best.parquet gives, and the printed fractions are those of the table."""
    args = ["scan", "--sharpness", "1,100", "--noise", "0,2.5,3", "--replicates", "4", "--steps",
            "100", "--lr", "0.01,0.1", "-q", "-j", "1", "--out", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, ["plot", str(tmp_path), "--significance", "0"])
    assert res.exit_code == 0 and "6 cells" in res.output
    best = pd.read_parquet(tmp_path / "best.parquet")
    meta = json.loads((tmp_path / "scan.json").read_text())
    geo = Geometry(meta)
    table = winners(best, OPTS, CELL_NAMES, 0.0)
    fig, ax = phase_figure(table, OPTS, geo, "t")
    fig.canvas.draw()
    img = imread(tmp_path / "phase.png")
    for _, row in table.iterrows():
        y = math.log10(row.sharpness) if geo.log["sharpness"] else row.sharpness
        got = _pixel(img, ax, row.noise, y) * 255
        np.testing.assert_allclose(got, PAPER_COLOURS[row.winner], atol=1.5)
    counts = table.winner.value_counts()
    line = next(x for x in res.output.splitlines() if x.startswith("raw argmin"))
    for opt in OPTS:
        assert f"{geo.name(opt)} {100 * counts.get(opt, 0) / len(table):.1f}%" in line


@pytest.mark.parametrize("setup,needle", [
    (lambda p: None, "results directory not found"),
    (lambda p: p.mkdir(), "holds no focuslab results (no scan.json, mnist.json, gpt2.json or bridge.json)"),
    (lambda p: (p.mkdir(), (p / "scan.json").write_text("{not json")), "not JSON"),
    (lambda p: (p.mkdir(), (p / "scan.json").write_text('{"kind": "scan", "config": {}, "status": "running"}')),
     "not complete"),
])
def test_missing_or_malformed_results_exit_2(tmp_path, setup, needle):
    target = tmp_path / "res"
    setup(target)
    res = CliRunner().invoke(main, ["plot", str(target)])
    assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.splitlines()) == 1


def test_corrupt_table_and_bad_options_exit_2(tmp_path):
    make_results(tmp_path)
    for args, needle in ((["--format", "gif"], "--format"), (["--significance", "-1"], "--significance")):
        res = CliRunner().invoke(main, ["plot", str(tmp_path), *args])
        assert res.exit_code == 2 and needle in res.stderr
    (tmp_path / "best.parquet").write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert res.exit_code == 2 and "best.parquet" in res.stderr and len(res.stderr.splitlines()) == 1


def test_variants_get_their_own_legend_and_colour(tmp_path):
    from focuslab.plot.phase import plot_scan
    from focuslab.plot.style import colour

    args = ["scan", "--sharpness", "1,100", "--noise", "0,2.5", "--replicates", "3", "--steps", "50",
            "--lr", "0.01,0.1", "--optimizers", "adam,focus,focus:gamma=0.4", "--opt-param", "adam.beta2=0.99",
            "-q", "-j", "1", "--out", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = plot_scan(tmp_path)
    line = next(s for s in res["summary"] if s.startswith("raw argmin"))
    assert "Adam β2=0.99 " in line and "FOCUS γ=0.4 " in line and "FOCUS " in line
    labels = ["adam", "focus", "focus:gamma=0.4"]
    rgb = {lab: tuple(round(255 * c) for c in colour(lab, labels)) for lab in labels}
    assert rgb["focus"] == PAPER_COLOURS["focus"] and len(set(rgb.values())) == 3
    assert (tmp_path / "loss_focus_gamma-0.4.png").exists() and (tmp_path / "phase_focus_vs_focus_gamma-0.4.png").exists()


def _redmean(a, b) -> float:
    r = (a[0] + b[0]) / 2
    dr, dg, db = (a[i] - b[i] for i in range(3))
    return ((2 + r / 256) * dr * dr + 4 * dg * dg + (2 + (255 - r) / 256) * db * db) ** 0.5


def test_a_zoo_map_colours_every_optimizer_apart():
    """The zoo's 15 optimizers (three built-ins and twelve classes), and a map with sgd and lion among
    classes: every optimizer's colour at least 120 apart (redmean RGB) from every other's and from
    the grey of ties and undecided cells; a built-in keeps its own colour."""
    from focuslab.plot.style import TIE_COLOUR, colour

    zoo = ["adam", "signum", "focus"] + [f"pytorch_optimizer.{c}" for c in (
        "AdaBelief", "EXAdam", "RAdam", "Lion", "SophiaH", "AdaHessian", "AdamP", "SGDSaI", "Conda",
        "Muon:group.use_muon=True", "SPAM:foreach=True", "StableSPAM:foreach=True")]
    mixed = ["sgd", "lion", "adam", "pytorch_optimizer.AdaBelief", "pytorch_optimizer.Lion", "torch.optim.NAdam"]
    for labels in (zoo, mixed):
        rgb = {lab: tuple(round(255 * c) for c in colour(lab, labels)) for lab in labels}
        for head in ("adam", "signum", "focus", "sgd", "lion"):
            if head in labels:
                assert rgb[head] == PAPER_COLOURS[head]
        shades = list(rgb.values()) + [TIE_COLOUR]
        worst = min(_redmean(a, b) for i, a in enumerate(shades) for b in shades[i + 1:])
        assert worst >= 120, (worst, rgb)
