"""focuslab refine: the statistics on synthetic cells with a known truth (planted winner, identical
pair, null maps at the nominal error rate), and the real pipeline (resume, shards, lr extension, CLI)."""
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.refine import RefineParams, _open, cell_claim, fdr_reject


def _sample(rng, means, sd, n, shared=0.8):
    """Per-replicate losses of optimizers on common random numbers: a shared replicate effect
    (most of the noise, as in the simulator) plus each optimizer's own part."""
    common = rng.normal(0, sd * shared, n)
    return {o: m + common + rng.normal(0, sd * math.sqrt(1 - shared ** 2), n) for o, m in means.items()}


def _refine_map(rng, truths, params, scale=1.0):
    """The procedure of run_refine on synthetic cells: looks until each cell's p-value is below
    fdr/4 (the same _open rule), then Benjamini-Hochberg over the map."""
    looks = params.looks()
    data = {c: {o: np.empty(0) for o in t} for c, t in enumerate(truths)}
    open_cells = list(range(len(truths)))
    claims = {}
    done = 0
    for n in looks:
        for c in open_cells:
            new = _sample(rng, truths[c], 1.0, n - done)
            for o in new:
                data[c][o] = np.concatenate([data[c][o], new[o]])
        claims.update({c: cell_claim(data[c], scale, params.equivalence, len(looks), params.fdr) for c in open_cells})
        open_cells = _open({c: claims[c] for c in open_cells}, params)
        done = n
    ps = np.array([claims[c].p for c in range(len(truths))])
    return [claims[c] for c in range(len(truths))], fdr_reject(ps, params.fdr)


def test_a_planted_winner_is_found_and_an_identical_pair_is_tied():
    rng = np.random.default_rng(1)
    win = cell_claim(_sample(rng, {"a": -1.0, "b": -0.7, "c": -0.3}, 1.0, 400), 1.0, 0.01, looks=1)
    assert win.kind == "winner" and win.best == "a" and win.runner_up == "b" and win.p < 1e-6
    # paired differences have sd sqrt(2 (1 - 0.8^2)) = 0.85: the estimate is within 3 SE = 0.13
    assert win.ci_low < win.difference < win.ci_high < 0 and win.difference == pytest.approx(-0.3, abs=0.13)
    same = _sample(rng, {"a": -1.0, "b": -1.0}, 0.1, 2000, shared=0.999)
    tie = cell_claim(same, 1.0, 0.01, looks=1)
    assert tie.kind == "tied" and set(tie.tied) == {"a", "b"} and tie.p < 1e-6
    # a tie of two with a clearly worse third
    third = {**same, "c": same["a"] + 0.5}
    t3 = cell_claim(third, 1.0, 0.01, looks=1)
    assert t3.kind == "tied" and set(t3.tied) == {"a", "b"}


def test_a_diverging_optimizer_loses_and_all_diverged_is_its_own_outcome():
    rng = np.random.default_rng(2)
    losses = _sample(rng, {"a": -1.0, "b": -1.2}, 1.0, 50)
    losses["b"][7] = np.inf  # b diverged once at its chosen lr
    claim = cell_claim(losses, 1.0, 0.01, looks=1)
    assert claim.best == "a" and claim.kind == "winner" and claim.p == 0.0
    assert cell_claim({"a": np.full(5, np.inf), "b": np.full(5, np.inf)}, 1.0, 0.01, 1).kind == "diverged"


def test_null_cells_are_false_positives_at_most_at_the_nominal_rate():
    """2000 cells where the two optimizers are identical in distribution (eps = 0, so any claim is a
    false winner), refined with sequential looks: the per-cell rate of p <= fdr must stay below the
    nominal 5 % (it is far below: the union bound is conservative).  Tolerance: 3 binomial SE."""
    rng = np.random.default_rng(3)
    params = RefineParams(fdr=0.05, equivalence=0.0).resolved(20)
    claims, _ = _refine_map(rng, [{"a": 0.0, "b": 0.0}] * 2000, params)
    rate = np.mean([c.p <= 0.05 for c in claims])
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)


def test_null_maps_have_a_discovery_at_most_at_the_fdr_level():
    """40 maps of 200 null cells: with no true effect anywhere the FDR is the chance of any
    discovery per map, at most q = 0.05 (tolerance 3 binomial SE over the 40 maps)."""
    rng = np.random.default_rng(4)
    params = RefineParams(fdr=0.05, equivalence=0.0, max_replicates=160).resolved(20)
    maps_with_discovery = sum(_refine_map(rng, [{"a": 0.0, "b": 0.0}] * 200, params)[1].any() for _ in range(40))
    assert maps_with_discovery <= 40 * 0.05 + 3 * math.sqrt(40 * 0.05 * 0.95)


def test_a_mixed_map_finds_planted_winners_and_ties_without_false_winners():
    rng = np.random.default_rng(5)
    # planted effect 0.6 | identical; paired differences have sd 0.85, the margin is 0.3 (eps 0.3 x scale 1)
    truths = [{"a": -1.0, "b": -0.4}] * 150 + [{"a": -1.0, "b": -1.0}] * 150
    params = RefineParams(fdr=0.05, equivalence=0.3, max_replicates=1280).resolved(20)
    claims, passed = _refine_map(rng, truths, params)
    planted = [c.kind == "winner" and c.best == "a" and ok for c, ok in zip(claims[:150], passed[:150])]
    assert np.mean(planted) > 0.95
    null = list(zip(claims[150:], passed[150:]))
    assert np.mean([c.kind == "tied" and ok for c, ok in null]) > 0.8  # identical pairs: tied within the margin
    false_winners = sum(c.kind == "winner" and ok for c, ok in null)
    discoveries = int(np.sum(passed))
    assert false_winners / discoveries <= 0.05


# --- the real pipeline --------------------------------------------------------------------------
SCAN = ["scan", "--sharpness", "1,30,300", "--noise", "0,1.5,3", "--lr", "3e-3,1e-2,3e-2,1e-1",
        "--replicates", "8", "--steps", "80", "--optimizers", "adam,signum,focus", "-j", "1", "-q"]
REFINE = ["--initial-replicates", "8", "--max-replicates", "32", "-j", "1", "-q"]


def _tables(d):
    return pd.read_parquet(d / "decisions.parquet"), pd.read_parquet(d / "replicates.parquet")


@pytest.fixture
def scanned(tmp_path):
    assert CliRunner().invoke(main, [*SCAN, "--out", str(tmp_path / "s")]).exit_code == 0
    return tmp_path / "s"


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_refine_end_to_end_resume_and_shards_give_identical_tables(scanned, tmp_path, monkeypatch):
    from focuslab import refine as refine_mod

    monkeypatch.setattr(refine_mod.RefineParams, "chunk_cells", 2)  # several units per look
    full = _copy(scanned, tmp_path / "full")
    res = CliRunner().invoke(main, ["refine", str(full), *REFINE[:-1]])
    assert res.exit_code == 0, res.output
    assert "decisions.parquet" in res.output and "winner" in res.output
    decisions, reps = _tables(full)
    assert len(decisions) == 9 and set(decisions.outcome) <= {"winner", "tied", "undecided", "diverged"}
    cols = {"sharpness", "noise", "outcome", "winner", "tied", "runner_up", "difference", "ci_low", "ci_high",
            "replicates", "lr_extended"}
    assert cols <= set(decisions.columns)
    assert (reps.replicate >= 8).all()  # estimation replicates are fresh: the scan used 0..7
    per = reps.groupby(["cell", "optimizer"]).replicate.nunique()
    for _, row in decisions.iterrows():  # the decision's replicate count is what the table holds
        if row.outcome != "diverged":
            assert per.loc[row.cell].min() == row.replicates
    again = CliRunner().invoke(main, ["refine", str(full), *REFINE[:-1]])
    assert "already refined" in again.output
    # interrupted: some work units lost -> recomputed, same tables
    cut = _copy(scanned, tmp_path / "cut")
    CliRunner().invoke(main, ["refine", str(cut), *REFINE])
    units = sorted((cut / "refine" / "units").glob("*.parquet"))
    for f in units[1::3]:
        f.unlink()
    import json

    meta = json.loads((cut / "scan.json").read_text())
    meta["refine"]["status"] = "running"
    (cut / "scan.json").write_text(json.dumps(meta))
    assert CliRunner().invoke(main, ["refine", str(cut), *REFINE]).exit_code == 0
    # sharded in one shared directory, then the final run
    sh = _copy(scanned, tmp_path / "sh")
    for k in (2, 1):
        assert CliRunner().invoke(main, ["refine", str(sh), *REFINE, "--shard", f"{k}/2"]).exit_code == 0
    assert not (sh / "decisions.parquet").exists()
    assert CliRunner().invoke(main, ["refine", str(sh), *REFINE]).exit_code == 0
    for other in (cut, sh):
        for a, b in zip(_tables(full), _tables(other)):
            pd.testing.assert_frame_equal(a, b, check_exact=True)
    res = CliRunner().invoke(main, ["plot", str(full)])
    assert res.exit_code == 0 and "refined (BH FDR 0.05, ties within 1%" in res.output
    assert (full / "phase_decisive.png").exists() and (full / "replicates_used.png").exists()


def test_an_lr_on_the_grid_edge_is_extended(tmp_path):
    """Adam at lrs far too small: the best is the grid's top edge, so refine moves outward."""
    args = ["scan", "--sharpness", "10", "--noise", "0,0.5", "--lr", "1e-4,2e-4", "--replicates", "6",
            "--steps", "100", "--optimizers", "adam,signum", "-j", "1", "-q", "--out", str(tmp_path / "e")]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, ["refine", str(tmp_path / "e"), "--initial-replicates", "6",
                                    "--max-replicates", "12", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    decisions = pd.read_parquet(tmp_path / "e" / "decisions.parquet")
    sel = pd.read_parquet(tmp_path / "e" / "refine" / "selection.parquet")
    assert (decisions.lr_extended > 0).all() and decisions.lr_edge_checked.all()
    assert (sel[sel.optimizer == "adam"].lr > 2e-4 * 1.9).all()  # at least one doubling past the top


@pytest.mark.parametrize("args,needle", [
    (["--fdr", "2"], "--fdr: must be in (0, 1)"), (["--equivalence", "-0.1"], "--equivalence"),
    (["--max-replicates", "1"], "--max-replicates: must be >= 2"),
    (["--initial-replicates", "40", "--max-replicates", "20"], "below the first look"),
])
def test_bad_refine_options_exit_2(scanned, args, needle):
    res = CliRunner().invoke(main, ["refine", str(scanned), *args])
    assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.splitlines()) == 1


def test_refine_needs_a_finished_scan(tmp_path):
    res = CliRunner().invoke(main, ["refine", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.stderr
