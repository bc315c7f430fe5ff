"""Tuning (issue 26): search spaces, equal budgets drawn by one quasi-random design, trials on the
same noise as separate specs, tuning curves, and the refusals of bad input."""
import itertools
import json
import math
import tomllib

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.config import build_scan_config, config_to_toml
from focuslab.errors import FocuslabError
from focuslab.tuning import curve_ks, design_points, expected_best, parse_tune

SMALL = ["--sharpness", "1,30", "--noise", "0,2", "--lr", "1e-3,1e-2,1e-1", "--replicates", "6", "--steps", "60",
         "-j", "1", "-q"]
TABLE = ["optimizer", "sharpness", "noise", "lr", "final_loss_mean", "final_loss_std", "final_loss_median",
         "min_loss_mean", "progress_mean", "diverged"]


def _scan(args, out):
    res = CliRunner().invoke(main, ["scan", *SMALL, *args, "--out", str(out)])
    assert res.exit_code == 0, res.output + str(res.exception)
    return pd.read_parquet(out / "runs.parquet")


def test_parse_tune_takes_the_grid_after_the_last_equals_sign():
    assert parse_tune(["focus", "adam.beta1=0.8,0.9,0.99", "adam.lr=1e-4:1:5:log"]) == \
        {"focus": {}, "adam": {"beta1": "0.8,0.9,0.99", "lr": "1e-4:1:5:log"}}
    # a label that carries settings of its own
    assert parse_tune(["lion:beta2=0.9.beta2=0.9,0.99"]) == {"lion:beta2=0.9": {"beta2": "0.9,0.99"}}
    assert parse_tune(["focus:gamma=0.4"]) == {"focus:gamma=0.4": {}}
    assert parse_tune(["torch.optim.Adam.betas=(0.9,0.999),(0.99,0.999)"]) == \
        {"torch.optim.Adam": {"betas": "(0.9,0.999),(0.99,0.999)"}}


def test_the_design_draws_distinct_points_of_the_space_and_repeats_for_its_seed():
    sizes = [20, 8, 8, 6]
    a = design_points(sizes, 32, seed=0)
    assert len(a) == 32 == len(set(a))
    assert all(0 <= i < n for p in a for i, n in zip(p, sizes))
    assert a == design_points(sizes, 32, seed=0) and a != design_points(sizes, 32, seed=1)
    # every value of a dimension is reached about equally often (a space-filling design, not a corner)
    lr_counts = np.bincount([p[0] for p in design_points(sizes, 160, seed=0)], minlength=20)
    assert lr_counts.min() >= 4 and lr_counts.max() <= 12
    # no budget: the whole product; a budget as large as the product: the whole product too
    assert len(design_points([3, 2], None, 0)) == 6 == len(design_points([3, 2], 6, 0))
    # a small space with a budget close to its size still gets distinct points
    assert len(set(design_points([3, 2], 5, 0))) == 5


def test_expected_best_of_k_equals_the_average_over_every_subset():
    rng = np.random.default_rng(3)
    means = rng.normal(size=7)
    sems = rng.uniform(0.01, 0.1, 7)
    for k in range(1, 8):
        subsets = [min(means[list(c)]) for c in itertools.combinations(range(7), k)]
        value, se = expected_best(means, sems, k)
        assert value == pytest.approx(np.mean(subsets), rel=1e-12)
        assert se > 0
    assert expected_best(means, sems, 7)[0] == pytest.approx(means.min())
    assert expected_best(means, sems, 1)[0] == pytest.approx(means.mean())
    assert curve_ks(32) == [1, 2, 4, 8, 16, 32] and curve_ks(20) == [1, 2, 4, 8, 16, 20]
    # a diverged trial is +inf: it is the best of no subset but the all-diverged one
    inf = np.array([np.inf, 1.0, 2.0])
    assert expected_best(inf, np.zeros(3), 1)[0] == math.inf and expected_best(inf, np.zeros(3), 2)[0] == pytest.approx(4 / 3)


def test_tuned_rows_equal_the_rows_of_the_same_trials_listed_as_separate_specs(tmp_path):
    """Common random numbers: a trial sees its cell's noise, whatever else is run beside it."""
    tuned = _scan(["--optimizers", "adam,focus", "--tune", "adam.beta1=0.8,0.99",
                   "--tune", "focus.gamma=0,0.4"], tmp_path / "t")
    listed = _scan(["--optimizers", "adam,adam:beta1=0.8,adam:beta1=0.99,focus,focus:gamma=0,focus:gamma=0.4"],
                   tmp_path / "l")
    assert set(tuned.columns) >= {"trial", "design", "defaults", "beta1", "gamma"}
    for opt, setting, label in (("adam", "beta1", "adam:beta1={}"), ("focus", "gamma", "focus:gamma={}")):
        rows = tuned[tuned.optimizer == opt]
        assert len(rows) == 4 * 3 * 3  # cells x lrs x (two tuned values + the defaults line)
        for value, group in rows.groupby(setting):
            own = group[group.design] if value not in (0.9, 0.2) else group
            spec = opt if not own.design.any() else label.format(f"{value:g}")
            want = listed[listed.optimizer == spec].drop(columns="optimizer").reset_index(drop=True)
            got = own.drop(columns="optimizer")[want.columns].reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want, check_exact=True)
    # the defaults line is the optimizer at its own settings: the untuned rows, bit for bit
    line = tuned[(tuned.optimizer == "adam") & tuned.defaults].drop(columns=["trial", "design", "defaults", "beta1",
                                                                            "gamma"])
    plain = listed[listed.optimizer == "adam"]
    pd.testing.assert_frame_equal(line.reset_index(drop=True), plain.reset_index(drop=True), check_exact=True)


def test_a_budget_gives_every_tuned_optimizer_the_same_number_of_design_trials(tmp_path):
    cfg = build_scan_config(None, {"optimizers": "adam,signum,focus,lion",
                                   "tune": {"adam": {}, "signum": {}, "focus": {}, "lion": {}}, "budget": 32})
    for label in cfg.optimizers:
        trials = cfg.trials(label)
        assert sum(t.design for t in trials) == 32
        assert sum(t.defaults for t in trials) == len(cfg.axes["lr"])  # the defaults line: every lr
        assert len({(t.lr, t.settings) for t in trials}) == len(trials)
    tuning = cfg.to_dict()["tuning"]
    assert tuning["budget"] == 32 and "Sobol" in tuning["design"] and tuning["seed"] == 0
    assert set(tuning["spaces"]["focus"]) == {"lr", "beta1", "beta2", "gamma", "base"}
    # the config file that a run keeps rebuilds the same trials (same digest)
    again = build_scan_config(tomllib.loads(config_to_toml(cfg))["scan"])
    assert again.digest() == cfg.digest()
    other = build_scan_config(None, {"optimizers": "adam,signum,focus,lion", "design_seed": 1,
                                     "tune": {"adam": {}, "signum": {}, "focus": {}, "lion": {}}, "budget": 32})
    assert other.digest() != cfg.digest()
    # an untuned scan keeps the digest it always had
    assert build_scan_config().digest() == build_scan_config(None, {}).digest()
    assert "tuning" not in build_scan_config().to_dict()


def test_an_optimizer_gets_its_own_lr_range(tmp_path):
    cfg = build_scan_config(None, {"optimizers": "adam,signum", "tune": {"signum": {"lr": "1e-5:1e-2:4:log"}}})
    assert sorted({t.lr for t in cfg.trials("signum")}) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])
    assert [t.lr for t in cfg.trials("adam")] == list(cfg.axes["lr"].values)


def test_best_tables_and_tuning_curves(tmp_path):
    out = tmp_path / "b"
    runs = _scan(["--optimizers", "adam,signum", "--tune", "adam.beta1=0.5,0.9,0.99", "--budget", "5"], out)
    best = pd.read_parquet(out / "best.parquet")
    defaults = pd.read_parquet(out / "best_defaults.parquet")
    curves = pd.read_parquet(out / "tuning.parquet")
    design = runs[runs.design]
    for (opt, a, s), g in design.groupby(["optimizer", "sharpness", "noise"]):
        row = best[(best.optimizer == opt) & (best.sharpness == a) & (best.noise == s)].iloc[0]
        top = g.loc[g.final_loss_mean.idxmin()]
        assert row.final_loss_mean == top.final_loss_mean and row.best_lr == top.lr and row.beta1 == top.beta1
        line = runs[(runs.optimizer == opt) & (runs.sharpness == a) & (runs.noise == s) & runs.defaults]
        drow = defaults[(defaults.optimizer == opt) & (defaults.sharpness == a) & (defaults.noise == s)].iloc[0]
        assert drow.final_loss_mean == line.final_loss_mean.min()
        c = curves[(curves.optimizer == opt) & (curves.sharpness == a) & (curves.noise == s)].sort_values("k")
        n = g.trial.nunique()
        assert c.expected_best.iloc[-1] == pytest.approx(g.final_loss_mean.min())
        assert c[c.k == 1].expected_best.iloc[0] == pytest.approx(g.final_loss_mean.mean())
        assert (np.diff(c.expected_best.to_numpy()) <= 1e-12).all() and c.trials.iloc[0] == n
    assert (best[best.optimizer == "adam"].best_trial >= 0).all()


def test_the_planted_advantage_wins_only_when_tuned(tmp_path):
    """lion:beta2=0.9 is Signum exactly (its update is then Signum's); its only possible advantage
    is a non-default beta2.  Untuned it never beats signum; tuned over beta2 it wins where Lion's
    longer timescale helps (at low noise on this grid)."""
    from focuslab.phase import winners

    args = ["--sharpness", "1,30", "--noise", "0,0.5", "--lr", "1e-3:1:8:log", "--replicates", "20", "--steps", "300",
            "-j", "1", "-q"]
    for tuned in (False, True):
        out = tmp_path / f"p{tuned}"
        extra = ["--tune", "lion:beta2=0.9.beta2=0.9,0.99,0.999"] if tuned else []
        res = CliRunner().invoke(main, ["scan", *args, "--optimizers", "signum,lion:beta2=0.9", *extra,
                                        "--out", str(out)])
        assert res.exit_code == 0, res.output
        best = pd.read_parquet(out / "best.parquet")
        w = winners(best, ["signum", "lion:beta2=0.9"], ["sharpness", "noise"], significance=2.0)
        won = (w.label == "lion:beta2=0.9").sum()
        if tuned:
            assert won >= 1 and (best[best.optimizer == "lion:beta2=0.9"].beta2 > 0.9).any()
        else:
            assert won == 0 and (w.margin == 0).all()  # exactly the same losses: never a winner


@pytest.mark.parametrize("args,needle", [
    (["--tune", "adam.gamma=0.1,0.2"], "--tune adam.gamma: Adam has no setting 'gamma'"),
    (["--tune", "adam.beta1=0.5,1.5"], "--tune adam.beta1 must be in [0, 1), got 1.5"),
    (["--tune", "adam.beta1="], "--tune adam.beta1: empty grid"),
    (["--tune", "adam.beta1=0.9,high"], "--tune adam.beta1"),
    (["--tune", "adam.beta1=0.8,0.8"], "repeated values"),
    (["--optimizers", "focus", "--tune", "focus.decay=average,sideways"], "decay must be one of average, theta"),
    (["--tune", "adam.lr=0,1e-2"], "--tune adam.lr: learning rates must be finite and > 0"),
    (["--tune", "adam", "--budget", "0"], "--budget: must be >= 1"),
    (["--tune", "adam.beta1=0.8,0.9", "--budget", "7"], "--budget 7 is larger than adam's space (6 points"),
    (["--tune", "lion"], "--tune lion: lion is not among the optimizers (adam, signum)"),
    (["--budget", "4"], "--budget: nothing is tuned"),
    (["--tune", "nosuch.beta1=0.9"], "--tune nosuch"),
])
def test_bad_tuning_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "x"
    res = CliRunner().invoke(main, ["scan", *SMALL, "--optimizers", "adam,signum", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists()


def test_a_config_file_tunes_with_scan_tune_tables(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[scan]\noptimizers = ["adam", "focus"]\nbudget = 4\n\n[scan.tune.focus]\n\n'
                   '[scan.tune.adam]\nbeta1 = "0.8,0.99"\nlr = "1e-4,1e-3,1e-2"\n')
    from focuslab.config import load_toml

    c = build_scan_config(load_toml(str(cfg), "scan"))
    assert set(c.tuning.spaces) == {"adam", "focus"} and c.tuning.budget == 4
    assert [d.name for d in c.tuning.spaces["focus"].dims] == ["beta1", "beta2", "gamma"]
    assert c.tuning.spaces["adam"].lr.values == pytest.approx((1e-4, 1e-3, 1e-2))
    with pytest.raises(FocuslabError, match=r"\[scan.tune\] must hold one table per optimizer"):
        build_scan_config({"tune": {"adam": "0.9"}})


def test_an_external_class_is_tuned_by_its_constructor_settings(tmp_path):
    pytest.importorskip("torch")
    cfg = build_scan_config(None, {"optimizers": "adam,torch.optim.Adam", "weight_decay": 0.0,
                                   "tune": {"torch.optim.Adam": {"betas": "(0.9,0.999),(0.99,0.999)", "eps": "1e-8,1e-6"}}})
    space = cfg.tuning.spaces["torch.optim.Adam"]
    assert [d.name for d in space.dims] == ["betas", "eps"] and space.dims[0].values == ((0.9, 0.999), (0.99, 0.999))
    assert not space.dims[0].numeric and space.dims[1].numeric
    with pytest.raises(FocuslabError, match="--tune torch.optim.Adam.gamma: Adam takes no setting 'gamma'"):
        build_scan_config(None, {"optimizers": "torch.optim.Adam", "weight_decay": 0.0,
                                 "tune": {"torch.optim.Adam": {"gamma": "1,2"}}})
    with pytest.raises(FocuslabError, match="--tune torch.optim.Adam.eps"):
        build_scan_config(None, {"optimizers": "torch.optim.Adam", "weight_decay": 0.0,
                                 "tune": {"torch.optim.Adam": {"eps": "-1,1e-8"}}})
    with pytest.raises(FocuslabError, match="declares no default space"):
        build_scan_config(None, {"optimizers": "torch.optim.Adam", "weight_decay": 0.0,
                                 "tune": {"torch.optim.Adam": {}}})


def test_a_tuned_scan_resumes_and_merges_its_shards_to_the_same_tables(tmp_path):
    args = ["--optimizers", "adam,signum", "--tune", "adam.beta1=0.8,0.99", "--chunk-steps", "2000"]
    whole = _scan(args, tmp_path / "w")
    for k in (1, 2):
        res = CliRunner().invoke(main, ["scan", *SMALL, *args, "--out", str(tmp_path / f"s{k}"), "--shard", f"{k}/2"])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(whole, pd.read_parquet(tmp_path / "m" / "runs.parquet"), check_exact=True)
    for name in ("best.parquet", "best_defaults.parquet", "tuning.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "w" / name), pd.read_parquet(tmp_path / "m" / name),
                                      check_exact=True)
    meta = json.loads((tmp_path / "w" / "scan.json").read_text())
    assert meta["config"]["tuning"]["spaces"]["adam"]["beta1"]["values"] == [0.8, 0.99]


# --- refine races trials ---------------------------------------------------------------------------
def test_refine_races_a_tuned_optimizers_trials_on_fresh_replicates_of_their_settings(tmp_path):
    from focuslab.config import build_scan_config as build
    from focuslab.toy.rng import trajectory_keys

    out = tmp_path / "r"
    runs = _scan(["--optimizers", "adam,signum", "--tune", "adam.beta1=0.5,0.9,0.99", "--budget", "6",
                  "--replicates", "8"], out)
    res = CliRunner().invoke(main, ["refine", str(out), "--initial-replicates", "20", "--max-replicates", "80",
                                    "-j", "1", "-q"])
    assert res.exit_code == 0, res.output + str(res.exception)
    decisions = pd.read_parquet(out / "decisions.parquet")
    lrs = pd.read_parquet(out / "refine" / "lrs.parquet")
    reps = pd.read_parquet(out / "replicates.parquet")
    assert len(decisions) == 4 and "beta1" in lrs and "beta1" in reps
    assert lrs[lrs.optimizer == "signum"].beta1.isna().all() and lrs[lrs.optimizer == "adam"].beta1.notna().all()
    # the race starts from the scan's best design trial of each cell
    design = runs[(runs.optimizer == "adam") & runs.design]
    for (a, s), g in design.groupby(["sharpness", "noise"]):
        top = g.loc[g.final_loss_mean.idxmin()]
        cell = int(decisions[(decisions.sharpness == a) & (decisions.noise == s)].cell.iloc[0])
        raced = lrs[(lrs.cell == cell) & (lrs.optimizer == "adam")]
        assert ((raced.lr == top.lr) & (raced.beta1 == top.beta1)).any()
    # a fresh replicate of a candidate is the simulator at that candidate's settings on a new stream
    cfg = build(json.loads((out / "scan.json").read_text())["scan"])
    row = reps[(reps.optimizer == "adam")].iloc[-1]
    coords = np.array([[float(decisions[decisions.cell == row.cell][c].iloc[0]) for c in
                        ("sharpness", "noise", "weight_decay", "phi", "c")]])
    entry = cfg.entry("adam").with_settings({"beta1": float(row.beta1)})
    sim = entry.simulate(coords, np.array([row.lr]), trajectory_keys(cfg.seed, coords, np.array([row.replicate])),
                         cfg.steps)
    assert sim["final_loss"][0, 0, 0] == row.final_loss
    meta = json.loads((out / "scan.json").read_text())
    assert meta["refine"]["status"] == "complete"


def test_a_planted_best_trial_is_found_and_wins():
    """Known truth: a pool where one of the tuned optimizer's trials is far better than anything of
    the other's; the race selects that trial and the cell names the tuned optimizer the winner."""
    from focuslab.refine import PoolSampler, RefineParams, TrialSpace, refine_cell
    from focuslab.refine.lattice import Lattice
    from focuslab.tuning import Trial

    grid = np.exp(np.linspace(math.log(1e-3), math.log(1e-1), 5))
    params = RefineParams(initial_replicates=40, max_replicates=320)
    rng = np.random.default_rng(0)
    P = 4000
    base = rng.normal(0, 1, P)
    lattice = Lattice(grid, params)
    lrs = np.array([lattice.lr(u) for u in range(lattice.lo, lattice.hi + 1)])
    settings = [{"beta1": 0.5}, {"beta1": 0.9}, {"beta1": 0.99}]
    rows, keys, where = [], [], []
    for s in settings:
        for lr in lrs:
            mean = 1.0 + 0.3 * abs(math.log(lr / grid[2])) - (0.5 if s["beta1"] == 0.99 else 0.0)
            rows.append(mean + base + 0.05 * rng.normal(0, 1, P))
            keys.append(lr)
            where.append(s)
    pool = {"tuned": (np.array(keys), np.array(rows), where),
            "plain": (lrs, np.array([1.0 + 0.3 * abs(math.log(lr / grid[2])) + base + 0.05 * rng.normal(0, 1, P)
                                     for lr in lrs]))}
    sampler = PoolSampler(pool, 1, 30, 2 * params.max_replicates)
    trials = [Trial(float(lr), tuple(s.items())) for s in settings for lr in grid]
    space = TrialSpace(trials, grid, params)
    screens = {"tuned": sampler.screen_trials("tuned", trials), "plain": sampler.screen("plain", grid)}
    r = refine_cell(sampler, screens, params, {"tuned": space, "plain": lattice}, params.fdr, ["tuned", "plain"])
    assert r.kind == "winner" and r.best == "tuned"
    chosen = r.selected["tuned"]
    assert space.setting_values(chosen) == {"beta1": 0.99} and space.lr(chosen) == pytest.approx(grid[2])
