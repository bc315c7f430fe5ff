"""python -m focuslab.report writes the docs' tables from results directories: the numbers in a
table are the results' own (checked against the tables they come from), and what it cannot write
for want of results it names."""
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab import report
from focuslab.cli.main import main


def _table(path: Path) -> list[dict]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "results"
    scan = ["scan", "--sharpness", "1,10,100", "--noise", "0:3:4", "--lr", "1e-3:1:4:log", "--replicates", "6",
            "--steps", "60", "-j", "1", "-q"]
    for name in ("fig2a", "fig2b", "default"):
        res = CliRunner().invoke(main, [*scan, "--seed", str(len(name)), "--out", str(root / name)])
        assert res.exit_code == 0, res.output
    for name in ("fig2a", "fig2b"):
        res = CliRunner().invoke(main, ["refine", str(root / name), "-j", "1", "-q", "--initial-replicates", "20",
                                        "--max-replicates", "40"])
        assert res.exit_code == 0, res.output
    return root


@pytest.mark.slow
def test_the_decided_maps_table_is_the_decisions_own(refined, tmp_path):
    written, skipped = report.write_tables(refined, tmp_path, only=["paper-maps.md"])
    assert written == ["paper-maps.md"] and not skipped
    rows = {r["map"]: r for r in _table(tmp_path / "paper-maps.md")}
    for label, name in (("Fig. 2a", "fig2a"), ("Fig. 2b", "fig2b")):
        d = pd.read_parquet(refined / name / "decisions.parquet")
        for opt, title in (("adam", "Adam"), ("signum", "Signum"), ("focus", "FOCUS")):
            share = ((d.outcome == "winner") & (d.winner == opt)).mean()
            assert rows[label][f"{title} wins"] == f"{100 * share:.1f} %"
        assert rows[label]["undecided"] == f"{100 * (d.outcome == 'undecided').mean():.1f} %"
        assert rows[label]["tied within the margin"].startswith(f"{100 * (d.outcome == 'tied').mean():.1f} %")


@pytest.mark.slow
def test_the_main_job_block_is_what_focuslab_plot_prints(refined, tmp_path):
    report.write_tables(refined, tmp_path, only=["main-job.md"])
    block = (tmp_path / "main-job.md").read_text().split("```text\n", 1)[1].split("```", 1)[0]
    res = CliRunner().invoke(main, ["plot", str(refined / "default"), "--out", str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    printed = [ln for ln in res.output.splitlines() if not ln.startswith("wrote ")]
    assert block.splitlines() == printed


@pytest.mark.slow
def test_the_zoo_table_counts_each_optimizers_cells(refined, tmp_path):
    report.write_tables(refined, tmp_path, only=["zoo.md"])  # no results/zoo: skipped, nothing written
    assert not (tmp_path / "zoo.md").exists()
    text = report.zoo(refined / "default")
    best = pd.read_parquet(refined / "default" / "best.parquet")
    argmin = best.loc[best.groupby(["sharpness", "noise"]).final_loss_mean.idxmin(), "optimizer"]
    (tmp_path / "zoo.md").write_text(text)
    for row in _table(tmp_path / "zoo.md"):
        opt = row["optimizer"].strip("`")
        assert row["best in (raw argmin)"] == f"{100 * (argmin == opt).mean():.1f} %"
        assert row["how it ran"] == "native"


def test_an_unknown_table_is_refused_in_one_line(capsys):
    assert report.main(["nonsense.md"]) == 2
    assert "unknown table nonsense.md" in capsys.readouterr().err


@pytest.mark.slow
def test_the_gamma_slice_table_counts_the_decisions_and_measures_gamma_zero(tmp_path):
    root = tmp_path / "results"
    specs = "focus:beta1=0.95:gamma=0,focus:beta1=0.95:gamma=0.2,focus:beta1=0.95:gamma=0.8"
    res = CliRunner().invoke(main, ["scan", "--sharpness", "1,100", "--noise", "1,2.5", "--lr", "1e-3:1:4:log",
                                    "--optimizers", specs, "--replicates", "6", "--steps", "80", "-j", "1", "-q",
                                    "--out", str(root / "gamma-slice")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["refine", str(root / "gamma-slice"), "-j", "1", "-q", "--initial-replicates",
                                    "20", "--max-replicates", "40"])
    assert res.exit_code == 0, res.output
    assert report.write_tables(root, tmp_path, only=["gamma-slice.md"])[0] == ["gamma-slice.md"]
    rows = _table(tmp_path / "gamma-slice.md")
    d = pd.read_parquet(root / "gamma-slice" / "decisions.parquet")
    lrs = pd.read_parquet(root / "gamma-slice" / "refine" / "lrs.parquet")
    chosen = lrs[lrs.selected].set_index(["cell", "optimizer"])["estimation_mean"]
    assert [r["σ"] for r in rows] == ["1", "2.5"]
    for r in rows:
        g = d[d.noise == float(r["σ"])]
        assert int(r["cells"]) == len(g) == 2
        for gamma, spec in zip(("0", "0.2", "0.8"), specs.split(",")):
            assert int(r[f"γ = {gamma} wins"]) == int((g.winner == spec).sum())
        assert int(r["not a single winner"]) == int((g.outcome != "winner").sum())
        gaps = []
        for cell in g.cell:  # gamma = 0's selected loss over the cell's best selected loss, by hand
            m = {o: chosen[(cell, o)] for o in specs.split(",")}
            gaps.append((m[specs.split(",")[0]] - min(m.values())) / abs(min(m.values())))
        assert r["γ = 0's loss above the cell's best (median)"] == f"{100 * float(pd.Series(gaps).median()):.1f} %"


@pytest.mark.slow
def test_the_refined_zoo_table_is_the_decisions_own(refined, tmp_path):
    (tmp_path / "t.md").write_text(report.zoo_refined(refined / "fig2a"))
    d = pd.read_parquet(refined / "fig2a" / "decisions.parquet")
    rows = {r["optimizer"].strip("`"): r for r in _table(tmp_path / "t.md")}
    assert set(rows) == {"adam", "signum", "focus"}
    for opt, row in rows.items():
        assert row["wins (refined)"] == f"{100 * ((d.outcome == 'winner') & (d.winner == opt)).mean():.1f} %"
        in_tie = sum(opt in t.split(",") for t in d[d.outcome == "tied"].tied) / len(d)
        assert row["in a tie within the margin"] == f"{100 * in_tie:.1f} %"
    assert f"{len(d)} cells: undecided {100 * (d.outcome == 'undecided').mean():.1f} %" in (tmp_path / "t.md").read_text()
