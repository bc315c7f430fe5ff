"""focuslab refine: the test on Gaussian and on the simulator's heavy-tailed nulls, the procedure on
cells with a known truth (planted winners, ties, leads inside the margin, best lrs between grid
points and beyond the grid, BH-consistent stopping), and the real pipeline (resume, shards, lock,
tables, CLI, plot)."""
import json
import math
import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.options import declared, flag
from focuslab.refine import (Lattice, Moments, PoolSampler, RefineParams, _locked, exceeds_p,
                             fdr_reject, lower_bound, refine_cell, refine_map)

GRID = np.exp(np.linspace(math.log(1e-3), math.log(1e-1), 9))  # 1.78x apart
FAST = dict(initial_replicates=50, max_replicates=800)  # looks at 50, 100, 200, 400, 800


def _se(p, n):
    """Three binomial standard errors of a rate p over n trials."""
    return 3 * math.sqrt(p * (1 - p) / n)


# --- the test itself --------------------------------------------------------------------------------
def test_p_values_are_uniform_and_bounds_match_them_on_gaussian_nulls():
    rng = np.random.default_rng(0)
    R, n = 20000, 100
    est, sel = rng.normal(0, 1, (R, n)), rng.normal(0, 1, (R, n // 2))
    m = Moments.of(est, sel)
    p = exceeds_p(m, 0.0)
    for alpha in (0.2, 0.05, 0.01):
        assert abs(np.mean(p <= alpha) - alpha) <= _se(alpha, R)
    # the bound is the test inverted: p <= alpha exactly when the bound is above the threshold
    low = lower_bound(m, 0.05)
    assert np.array_equal(p <= 0.05, low > 0.0) or np.mean((p <= 0.05) != (low > 0.0)) < 1e-3
    # a constant difference is known exactly
    flat = Moments.of(np.full((1, 10), 0.3), np.full((1, 5), 0.3))
    assert exceeds_p(flat, 0.2)[0] == 0.0 and exceeds_p(flat, 0.3)[0] == 1.0 and lower_bound(flat, 0.01)[0] == pytest.approx(0.3)


def _heavy_pool(params, size=4000, seed=7):
    """Signum and FOCUS in the heavy-tailed geometry (c = 1, phi = 0, a = 10, sigma = 2.5, 300
    steps) at every lr the race can reach, FOCUS shifted so that both have the same best mean."""
    from focuslab.axes import cell_array
    from focuslab.optimizers import parse_one
    from focuslab.toy.rng import trajectory_keys

    grid = np.exp(np.linspace(math.log(1e-3), math.log(1.0), 20))
    lattice = Lattice(grid, params)
    # the lrs a race can reach from the scan's best (grid lr 8 or 9 here): grid lrs 3..15 and midpoints
    lrs = np.array([lattice.lr(u) for u in range(3 * lattice.unit, 15 * lattice.unit + 1)])
    cell = cell_array(sharpness=10.0, noise=2.5, weight_decay=0.1, phi=0.0, c=1.0)
    keys = trajectory_keys(seed, cell, np.arange(size))
    y = {}
    for name in ("signum", "focus"):
        out = parse_one(name).simulate(cell, lrs, keys, 300)
        y[name] = np.where(out["diverged"][0] == 1, np.inf, out["final_loss"][0])
    shift = y["signum"].mean(axis=1).min() - y["focus"].mean(axis=1).min()
    return grid, lattice, {"signum": (lrs, y["signum"]), "focus": (lrs, y["focus"] + shift)}


@pytest.fixture(scope="module")
def heavy():
    return _heavy_pool(RefineParams(equivalence=0.0, **FAST))


def test_the_test_holds_on_heavy_tailed_differences_from_the_simulator_where_t_fails(heavy):
    """Centred paired differences of FOCUS and Signum at lr 0.026 (near both optimizers' best) in
    the heavy geometry (skewness about -4, excess kurtosis about 35), resampled: one-sided rejections at 1e-3 in each
    direction stay within 2x nominal (plus 3 binomial SE over the draws), while a paired t-test
    on the same samples errs by more than that in the direction of the short tail."""
    from scipy import stats
    from scipy.special import stdtr

    _, _, pool = heavy
    s, f = pool["signum"][1], pool["focus"][1]
    row = int(np.argmin(np.abs(pool["signum"][0] - 0.02637)))
    d = f[row] - s[row]
    d = d - d.mean()
    assert abs(stats.skew(d)) > 2 and stats.kurtosis(d) > 15  # really heavy-tailed
    rng = np.random.default_rng(1)
    R, n, alpha = 20000, 200, 1e-3
    est, sel = d[rng.integers(0, len(d), (R, n))], d[rng.integers(0, len(d), (R, n // 2))]
    m = Moments.of(est, sel)
    upper, lower = exceeds_p(m, 0.0), exceeds_p(Moments.of(-est, -sel), 0.0)
    bound = 2 * alpha + _se(2 * alpha, R)
    assert np.mean(upper <= alpha) <= bound and np.mean(lower <= alpha) <= bound
    t = est.mean(axis=1) / (est.std(axis=1, ddof=1) / math.sqrt(n))
    assert max(np.mean(stdtr(n - 1, -t) <= alpha), np.mean(stdtr(n - 1, t) <= alpha)) > bound


def test_heavy_tailed_null_cells_from_the_simulator_stay_below_the_nominal_rate(heavy):
    """400 cells resampled from the heavy-tailed pool with equal best means (margin 0, so any
    claim is false), raced and looked at as refine does: the per-cell rate of p <= 0.05 stays
    below 0.05 + 3 binomial SE."""
    grid, lattice, pool = heavy
    params = RefineParams(equivalence=0.0, **FAST)
    p = []
    for c in range(400):
        s = PoolSampler(pool, c, 50, 2 * params.max_replicates)
        p.append(refine_cell(s, {o: s.screen(o, grid) for o in pool}, params, lattice, 0.05, list(pool)).p)
    assert np.mean(np.array(p) <= 0.05) <= 0.05 + _se(0.05, 400)


def test_fdr_reject_is_benjamini_hochberg():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    assert fdr_reject(p, 0.05).tolist() == [True, True, False, False, False, False, False, False]


# --- the procedure on known truths ----------------------------------------------------------------
def _gaussian_pool(curves: dict, lrs, size=20000, sd=0.03, seed=0):
    """Losses whose means follow ``curves`` (label -> mean per lr), with most of the noise shared by
    the lrs of one optimizer (as in the simulator) and a part shared by all optimizers."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 1, size)
    pool = {}
    for label, means in curves.items():
        own = rng.normal(0, 1, size)
        y = np.asarray(means, dtype=float)[:, None] + sd * (0.3 * common + 0.9 * own
                                                            + 0.3 * rng.normal(0, 1, (len(lrs), size)))
        pool[label] = (np.asarray(lrs), y)
    return pool


def _bowl(lattice, best_lr, depth, curvature=0.02):
    """Mean loss -depth + curvature * log(lr / best_lr)^2 at every lattice lr."""
    us = np.arange(lattice.lo, lattice.hi + 1)
    lrs = np.array([lattice.lr(u) for u in us])
    return lrs, -depth + curvature * np.log(lrs / best_lr) ** 2


def _cells(pool, n, params, seed=0):
    return [(s, {o: s.screen(o, GRID) for o in pool})
            for s in (PoolSampler(pool, seed * 1000 + c, 50, 2 * params.max_replicates) for c in range(n))]


def test_a_planted_winner_is_found_a_tie_is_tied_and_a_lead_inside_the_margin_never_wins():
    params = RefineParams(**FAST)
    lattice = Lattice(GRID, params)
    lrs, a = _bowl(lattice, 0.01, 1.0)
    _, b = _bowl(lattice, 0.02, 0.97)  # a leads b by 3 %, the margin is 1 %
    _, c = _bowl(lattice, 0.005, 1.0)  # c equals a
    _, d = _bowl(lattice, 0.01, 0.995)  # d is 0.5 % behind a: inside the margin
    results, passed = refine_map(_cells(_gaussian_pool({"a": a, "b": b}, lrs), 30, params), params, lattice, ["a", "b"])
    assert sum(ok and r.kind == "winner" and r.best == "a" for r, ok in zip(results, passed, strict=True)) >= 27
    assert not any(ok and r.kind == "winner" and r.best == "b" for r, ok in zip(results, passed, strict=True))
    assert np.mean([r.leader == "a" for r in results]) >= 0.9
    results, passed = refine_map(_cells(_gaussian_pool({"a": a, "c": c}, lrs, seed=1), 30, params), params, lattice,
                                 ["a", "c"])
    assert sum(ok and r.kind == "tied" and set(r.tied) == {"a", "c"} for r, ok in zip(results, passed, strict=True)) >= 27
    results, passed = refine_map(_cells(_gaussian_pool({"a": a, "d": d}, lrs, seed=2), 30, params), params, lattice,
                                 ["a", "d"])
    assert not any(ok and r.kind == "winner" for r, ok in zip(results, passed, strict=True))
    # ... and is the planted decision, a tie within the margin (not cells left undecided): 24 of 30 here
    assert sum(ok and r.kind == "tied" and set(r.tied) == {"a", "d"} for r, ok in zip(results, passed, strict=True)) >= 20
    # three optimizers: a wins, with the tie of the other two irrelevant
    results, passed = refine_map(_cells(_gaussian_pool({"a": a, "b": b, "c2": b}, lrs, seed=3), 20, params), params,
                                 lattice, ["a", "b", "c2"])
    assert sum(ok and r.kind == "winner" and r.best == "a" for r, ok in zip(results, passed, strict=True)) >= 18


def test_the_estimand_is_each_optimizer_at_its_best_lr_not_at_the_scans_pick():
    """Optimizer a is best at an lr between two grid lrs, where it beats b by 2 %; at either grid
    lr it leads by only 0.3 %, inside the 1 % margin.  The race refines to the midpoint and a
    wins; racing grid lrs only (--lr-levels 0), a never wins: a and b are tied."""
    params = RefineParams(**FAST)
    lattice = Lattice(GRID, params)
    mid = math.sqrt(GRID[4] * GRID[5])
    lrs, a = _bowl(lattice, mid, 1.0, curvature=0.2)
    _, b = _bowl(lattice, GRID[2], 0.98, curvature=0.2)
    pool = _gaussian_pool({"a": a, "b": b}, lrs, seed=4)
    results, passed = refine_map(_cells(pool, 20, params), params, lattice, ["a", "b"])
    chosen = [next(x.lr for x in r.arms["a"] if x.u == r.selected["a"]) for r in results]
    assert np.mean(np.isclose(chosen, mid)) >= 0.9
    assert sum(ok and r.kind == "winner" and r.best == "a" for r, ok in zip(results, passed, strict=True)) >= 18
    coarse = RefineParams(lr_levels=0, **FAST)
    results, passed = refine_map(_cells(pool, 20, coarse), coarse, Lattice(GRID, coarse), ["a", "b"])
    assert not any(ok and r.kind == "winner" for r, ok in zip(results, passed, strict=True))
    # at the grid lrs a's 0.3 % lead is inside the margin: the cells are decided as ties (20 of 20 here)
    assert sum(ok and r.kind == "tied" and set(r.tied) == {"a", "b"} for r, ok in zip(results, passed, strict=True)) >= 16


def test_a_best_lr_beyond_the_grid_is_reached():
    params = RefineParams(**FAST)
    lattice = Lattice(GRID, params)
    beyond = GRID[-1] * (GRID[1] / GRID[0]) ** 2  # two grid steps past the top
    lrs, a = _bowl(lattice, beyond, 1.0)
    _, b = _bowl(lattice, GRID[3], 0.9)
    s = PoolSampler(_gaussian_pool({"a": a, "b": b}, lrs, seed=5), 0, 50, 1600)
    r = refine_cell(s, {o: s.screen(o, GRID) for o in ("a", "b")}, params, lattice, 0.05, ["a", "b"])
    chosen = next(x.lr for x in r.arms["a"] if x.u == r.selected["a"])
    assert chosen > GRID[-1] * 1.5 and r.kind == "winner" and r.best == "a"


def test_divergence_is_a_certain_loss_and_all_diverged_is_its_own_outcome():
    params = RefineParams(**FAST)
    lattice = Lattice(GRID, params)
    lrs, a = _bowl(lattice, 0.01, 1.0)
    pool = _gaussian_pool({"a": a, "b": a - 0.5}, lrs, seed=6)  # b would be far better ...
    pool["b"][1][:, ::97] = np.inf  # ... but diverges now and then at every lr: its mean is +inf
    s = PoolSampler(pool, 0, 50, 1600)
    r = refine_cell(s, {o: s.screen(o, GRID) for o in pool}, params, lattice, 0.05, ["a", "b"])
    assert r.kind == "winner" and r.best == "a" and r.p == 0.0
    gone = {o: (lrs, np.full((len(lrs), 100), np.inf)) for o in ("a", "b")}
    s = PoolSampler(gone, 0, 50, 1600)
    assert refine_cell(s, {o: s.screen(o, GRID) for o in gone}, params, lattice, 0.05, ["a", "b"]).kind == "diverged"


def test_no_cell_ends_undecided_because_it_stopped_early():
    """A sparse map: 6 cells with a moderate lead among 44 null ones.  The moderate cells stop at
    p <= 0.05, above BH's threshold for this map; refine_map continues them, and in the end every
    cell passed BH or ran every look."""
    params = RefineParams(equivalence=0.0, **FAST)
    lattice = Lattice(GRID, params)
    lrs, a = _bowl(lattice, 0.01, 1.0)
    _, b = _bowl(lattice, 0.01, 0.995)
    cells = (_cells(_gaussian_pool({"a": a, "b": b}, lrs, seed=7), 6, params, seed=1)
             + _cells(_gaussian_pool({"a": a, "b": a}, lrs, seed=8), 44, params, seed=2))
    first = [refine_cell(*c, params, lattice, params.fdr, ["a", "b"]) for c in cells]
    results, passed = refine_map(cells, params, lattice, ["a", "b"])
    last = len(params.looks()) - 1
    continued = [i for i, (r0, r) in enumerate(zip(first, results, strict=True)) if r.look > r0.look]
    assert continued  # the rule was exercised
    assert all(ok or r.look == last for r, ok in zip(results, passed, strict=True))


def test_lead_intervals_cover_the_truth():
    """The lead interval (at 95 %, per cell) covers the planted relative lead in at least 95 % of
    cells, minus 3 binomial SE."""
    from focuslab.refine import lead_interval

    params = RefineParams(**FAST)
    lattice = Lattice(GRID, params)
    lrs, a = _bowl(lattice, 0.01, 1.0)
    _, b = _bowl(lattice, 0.01, 0.985)
    results, _ = refine_map(_cells(_gaussian_pool({"a": a, "b": b}, lrs, seed=9), 60, params), params, lattice,
                            ["a", "b"])
    truth = {"a": -1.0, "b": -0.985}
    cover = []
    for r in results:
        low, high = lead_interval(r.contrasts, 0.05, params.spending(), 2, r.scale)
        cover.append(low <= (truth[r.runner_up] - truth[r.leader]) / r.scale <= high)
    assert np.mean(cover) >= 0.95 - _se(0.95, 60)


def test_the_lattice_places_midpoints_and_steps_beyond_the_grid():
    lat = Lattice([1e-3, 1e-2, 1e-1], RefineParams(lr_levels=2, extend_steps=2, lr_max=0.5))
    assert lat.lr(0) == 1e-3 and lat.lr(4) == 1e-2 and lat.lr(2) == pytest.approx(math.sqrt(1e-5))
    assert lat.lr(1) == pytest.approx(math.sqrt(1e-3 * lat.lr(2))) and lat.level(1) == 2 and lat.level(2) == 1
    assert lat.lr(-4) == pytest.approx(1e-4) and lat.lo == -8 and lat.hi == 8 + 2  # 10^-0.25 is above lr_max
    assert lat.lr(lat.hi) <= 0.5


def test_the_lock_serialises_concurrent_shards(tmp_path):
    (tmp_path / "refine").mkdir()
    order = []

    def other():
        with _locked(tmp_path):
            order.append(("other", time.monotonic()))

    with _locked(tmp_path):
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append(("first", time.monotonic()))
    thread.join(5)
    assert [name for name, _ in order] == ["first", "other"]


# --- the real pipeline ----------------------------------------------------------------------------
SCAN = ["scan", "--sharpness", "1,30,300", "--noise", "0,1.5,3", "--lr", "3e-3,1e-2,3e-2,1e-1",
        "--replicates", "8", "--steps", "80", "--optimizers", "adam,signum,focus", "-j", "1", "-q"]
REFINE = ["--initial-replicates", "20", "--max-replicates", "80", "-j", "1", "-q"]


def _tables(d):
    return (pd.read_parquet(d / "decisions.parquet"), pd.read_parquet(d / "replicates.parquet"),
            pd.read_parquet(d / "refine" / "lrs.parquet"))


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

    monkeypatch.setattr(refine_mod.RefineParams, "chunk_cells", 2)  # several units
    full = _copy(scanned, tmp_path / "full")
    res = CliRunner().invoke(main, ["refine", str(full), *REFINE[:-1]])
    assert res.exit_code == 0, res.output
    assert "decisions.parquet" in res.output and "winner" in res.output
    decisions, reps, lrs = _tables(full)
    assert len(decisions) == 9 and set(decisions.outcome) <= {"winner", "tied", "undecided", "diverged"}
    cols = {"sharpness", "noise", "outcome", "winner", "tied", "leader", "runner_up", "lead", "lead_low", "lead_high",
            "margin", "p_value", "q_value", "replicates", "estimation_replicates", "looks", "steps", "lr_extended"}
    assert cols <= set(decisions.columns)
    assert (decisions.leader != "").all()
    assert (reps.replicate >= 8).all()  # fresh streams: the scan used 0..7
    # `replicates` is what the table holds: the racing lrs' fresh replicates at the cell's last look
    held = reps.groupby(["cell", "optimizer", "lr"]).replicate.nunique()
    for _, row in decisions.iterrows():
        assert (held.loc[row.cell].max() if row.cell in held.index else 0) == row.replicates
        assert row.estimation_replicates == round(row.replicates * 2 / 3)
    # selection and estimation replicates are disjoint and interleaved 1:2
    assert set(reps[reps.selection].replicate - 8) <= set(range(0, 10 ** 6, 3))
    assert lrs.groupby(["cell", "optimizer"]).selected.sum().le(1).all() and lrs.selected.sum() >= 9
    meta = json.loads((full / "scan.json").read_text())
    assert meta["refine"]["status"] == "complete" and meta["refine"]["steps_spent"] > 0
    again = CliRunner().invoke(main, ["refine", str(full), *REFINE[:-1]])
    assert "already refined" in again.output
    # interrupted: some work units lost -> recomputed, same tables
    cut = _copy(scanned, tmp_path / "cut")
    CliRunner().invoke(main, ["refine", str(cut), *REFINE])
    units = sorted((cut / "refine" / "units").glob("*.parquet"))
    for f in units[1::3]:
        f.unlink()
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
    assert len(json.loads((sh / "scan.json").read_text())["refine"]["attempts"]) == 3
    for other in (cut, sh):
        for a, b in zip(_tables(full), _tables(other)):
            pd.testing.assert_frame_equal(a, b, check_exact=True)
    res = CliRunner().invoke(main, ["plot", str(full)])
    assert res.exit_code == 0 and "refined (BH FDR 0.05, margin 1%" in res.output
    for name in ("phase_decisive.png", "replicates_used.png", "lead.png"):
        assert (full / name).exists()


def test_refine_help_shows_every_setting_with_its_default():
    out = CliRunner().invoke(main, ["refine", "--help"]).output
    for f in declared(RefineParams):
        assert flag(f) in out
    assert "--chunk-cells" not in out  # a resolved layout, not a choice
    assert "[default: 0.05]" in out and "[default: 6400]" in out and "[default: 200]" in out


@pytest.mark.parametrize("args,needle", [
    (["--fdr", "2"], "--fdr: must be in (0, 1)"), (["--equivalence", "-0.1"], "--equivalence"),
    (["--max-replicates", "10", "--initial-replicates", "20"], "below the first look"),
    (["--initial-replicates", "21"], "--initial-replicates: must be an even number"),
    (["--lr-levels", "9"], "--lr-levels"),
])
def test_bad_refine_options_exit_2(scanned, args, needle):
    res = CliRunner().invoke(main, ["refine", str(scanned), *args])
    assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.splitlines()) == 1


def test_refine_needs_a_finished_scan(tmp_path):
    res = CliRunner().invoke(main, ["refine", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_refine_runs_any_torch_optimizer_on_the_scans_engine(tmp_path):
    """An external optimizer is refined through the toy's one entry point, in the mode the scan's
    probe recorded: torch.optim.AdamW's fresh replicates are native adam's (same streams, same
    landscape, same update rule), trajectory by trajectory."""
    scan = [a if a != "adam,signum,focus" else "adam,torch.optim.AdamW" for a in SCAN]
    out = tmp_path / "s"
    assert CliRunner().invoke(main, [*scan, "--out", str(out)]).exit_code == 0
    assert "torch.optim.AdamW" in json.loads((out / "scan.json").read_text())["plugins"]
    res = CliRunner().invoke(main, ["refine", str(out), *REFINE])
    assert res.exit_code == 0, res.output
    reps = pd.read_parquet(out / "replicates.parquet")
    native, plugin = reps[reps.optimizer == "adam"], reps[reps.optimizer == "torch.optim.AdamW"]
    pair = native.merge(plugin, on=["cell", "lr", "replicate"], suffixes=("_n", "_p"))
    assert len(native) > 0 and len(pair) == len(native) == len(plugin)
    assert (pair.diverged_n == pair.diverged_p).all()
    live = pair[~pair.diverged_n]
    np.testing.assert_allclose(live.final_loss_p, live.final_loss_n, rtol=1e-6, atol=1e-9)
