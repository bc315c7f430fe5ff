"""The simulator against independent plain-Python implementations of the paper's equations."""
import hashlib
import math

import numpy as np
import pandas as pd
import pytest

from focuslab.axes import cell_array
from focuslab.config import build_scan_config
from focuslab.scan import run_scan
from focuslab.toy import kernel, reference
from focuslab.toy.landscape import grad_theta, loss, rotate
from focuslab.toy.rng import normal_pairs, trajectory_keys
from focuslab.optimizers.builtin import BY_NAME as OPTIMIZERS, get


def test_rotation_matches_row_vector_times_R():
    phi = 0.7
    R = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    theta = np.array([0.3, -1.2])
    u, v = theta @ R
    assert rotate(theta[0], theta[1], math.cos(phi), math.sin(phi)) == pytest.approx((u, v), rel=1e-15)


@pytest.mark.parametrize("a,c,phi", [(1.0, 0.1, math.pi / 6), (250.0, 0.3, 1.1), (0.1, 2.0, -0.4)])
def test_gradient_matches_finite_differences(a, c, phi):
    rng = np.random.default_rng(1)
    for x1, x2 in rng.normal(size=(20, 2)):
        u, v = rotate(x1, x2, math.cos(phi), math.sin(phi))
        g = grad_theta(u, v, a, c, math.cos(phi), math.sin(phi))
        h = 1e-6
        fd = ((loss(x1 + h, x2, a, c, phi) - loss(x1 - h, x2, a, c, phi)) / (2 * h),
              (loss(x1, x2 + h, a, c, phi) - loss(x1, x2 - h, a, c, phi)) / (2 * h))
        scale = 1 + abs(a) * (x1 * x1 + x2 * x2) ** 1.5
        assert np.allclose(g, fd, rtol=1e-7, atol=1e-7 * scale)


def test_valley_floor_descends_along_u():
    # On v = 0 the loss is -c u: moving along (cos phi, sin phi) lowers it at rate c.
    phi, c = math.pi / 6, 0.1
    assert loss(math.cos(phi) * 5, math.sin(phi) * 5, 10.0, c, phi) == pytest.approx(-0.5)


CASES = [
    ("adam", {}, dict(sharpness=10.0, noise=0.5, weight_decay=0.1, lr=0.01)),
    ("adam", {"beta2": 0.99, "eps": 1e-6}, dict(sharpness=1.0, noise=2.0, weight_decay=0.0, lr=0.1)),
    ("signum", {}, dict(sharpness=10.0, noise=1.0, weight_decay=0.1, lr=0.01)),
    ("signum", {"beta1": 0.5}, dict(sharpness=3.0, noise=2.0, weight_decay=0.05, lr=0.02)),
    ("focus", {}, dict(sharpness=10.0, noise=1.5, weight_decay=0.1, lr=0.01)),
    ("focus", {"gamma": 0.4, "decay": "average"}, dict(sharpness=3.0, noise=2.5, weight_decay=0.2, lr=0.02)),
    ("focus", {"gamma": 1.0, "beta2": 0.5, "decay": "theta"}, dict(sharpness=30.0, noise=3.0, weight_decay=0.1,
                                                                   lr=0.005)),
    ("focus", {"beta2": 0.9, "decay": "theta"}, dict(sharpness=10.0, noise=1.5, weight_decay=0.1, lr=0.01)),
    ("sgd", {}, dict(sharpness=1.0, noise=0.3, weight_decay=0.05, lr=0.005)),
    ("sgd", {"momentum": 0.5}, dict(sharpness=1.0, noise=0.3, weight_decay=0.05, lr=0.05)),
    ("lion", {}, dict(sharpness=30.0, noise=1.0, weight_decay=0.1, lr=0.005)),
    ("lion", {"beta1": 0.5, "beta2": 0.9}, dict(sharpness=3.0, noise=1.0, weight_decay=0.0, lr=0.01)),
]


def test_every_registered_optimizer_has_cases_at_and_off_its_defaults():
    for name, opt in OPTIMIZERS.items():
        params = [p for n, p, _ in CASES if n == name]
        assert {} in params and any(p for p in params), name
        for option in opt.options:
            assert {p.get(option.name, option.default) for p in params} == set(option.choices), name


@pytest.mark.parametrize("name,params,setting", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_kernel_matches_reference_trajectory(name, params, setting):
    """Metrics of the compiled kernel == those of the plain stepper fed the same normal draws."""
    phi, c, steps = math.pi / 6, 0.1, 300
    settings = get(name).resolve(params)
    cell = cell_array(sharpness=setting["sharpness"], noise=setting["noise"],
                      weight_decay=setting["weight_decay"], phi=phi, c=c)
    keys = trajectory_keys(7, cell, np.arange(3))
    for T in (1, 2, 3, 17, steps):
        out = kernel.run(OPTIMIZERS[name], settings, cell, np.array([setting["lr"]]), keys, T)
        for r in range(3):
            normals = normal_pairs(keys[0, r], 0, T + 1)
            ref = reference.trajectory(name, settings, phi=phi, c=c, normals=normals, steps=T, **setting)
            assert not ref["diverged"] and out["diverged"][0, 0, r] == 0
            assert out["final_loss"][0, 0, r] == pytest.approx(ref["final_loss"], rel=1e-12, abs=1e-15)
            assert out["min_loss"][0, 0, r] == pytest.approx(ref["min_loss"], rel=1e-12, abs=1e-15)
            assert out["progress"][0, 0, r] == pytest.approx(ref["progress"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("decay", ["theta", "average"])
def test_signum_is_focus_with_gamma_zero(decay):
    cell = cell_array(sharpness=10.0, noise=1.0, weight_decay=0.0, phi=0.5, c=0.1)  # no decay: forms agree
    keys = trajectory_keys(3, cell, np.arange(8))
    lrs = np.array([0.003, 0.03])
    a = kernel.run(get("signum"), get("signum").resolve({}), cell, lrs, keys, 200)
    b = kernel.run(get("focus"), get("focus").resolve({"gamma": 0.0, "decay": decay}), cell, lrs, keys, 200)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_divergence_is_flagged_and_not_nan_poisoned():
    cell = cell_array(sharpness=10.0, noise=0.0, weight_decay=0.0, phi=0.5, c=0.1)
    keys = trajectory_keys(0, cell, np.arange(4))
    out = kernel.run(get("sgd"), get("sgd").resolve({}), cell, np.array([1e-3, 5.0]), keys, 300)
    assert out["diverged"][0, 0].sum() == 0
    assert out["diverged"][0, 1].all()
    assert not np.isnan(out["min_loss"][0, 0]).any()


@pytest.mark.parametrize("name", ["adam", "focus"])
def test_results_do_not_depend_on_how_lanes_are_tiled(name):
    """The kernel tiles (lr, replicate) lanes by the call's shape (a block shares each replicate's
    normals across its lrs); any sub-grid must give the same bits as the whole."""
    rng = np.random.default_rng(0)
    cells = cell_array(sharpness=rng.uniform(0.1, 100, 5), noise=rng.uniform(0, 3, 5), weight_decay=0.1,
                       phi=0.5, c=0.1)
    keys = trajectory_keys(11, cells, np.arange(301))  # 300+ replicates: several replicate tiles
    lrs = np.logspace(-3, 0, 7)
    settings = get(name).resolve({})
    whole = kernel.run(OPTIMIZERS[name], settings, cells, lrs, keys, 60)
    again = kernel.run(OPTIMIZERS[name], settings, cells, lrs, keys, 60)
    for k in whole:
        np.testing.assert_array_equal(whole[k], again[k])
    for i in (0, 3):  # one cell, one lr, a few replicates: other tiles, same bits
        one_cell = kernel.run(OPTIMIZERS[name], settings, cells[i:i + 1], lrs, keys[i:i + 1], 60)
        one_lr = kernel.run(OPTIMIZERS[name], settings, cells[i:i + 1], lrs[4:5], keys[i:i + 1], 60)
        few = kernel.run(OPTIMIZERS[name], settings, cells[i:i + 1], lrs[2:6], keys[i:i + 1, 17:20], 60)
        for k in whole:
            np.testing.assert_array_equal(one_cell[k][0], whole[k][i])
            np.testing.assert_array_equal(one_lr[k][0, 0], whole[k][i, 4])
            np.testing.assert_array_equal(few[k][0], whole[k][i, 2:6, 17:20])


# sha256 (first 20 hex digits) of the result columns of small scans computed by focuslab's first
# engine (one kernel for all rules, before the per-rule kernels and shared-noise blocks): the
# engine must still produce exactly these tables.
GOLDEN = {"adam": "2d06c343fefff31a9965", "signum": "190deffa49b5faba06e6",
          "focus": "0344e322d190e3fba581", "sgd": "68b5706a79866aba5424",
          "lion": "d408c72fd1fe806a37fd", "focus+avg": "408e768c7ce5b2a46bae"}
GOLDEN_COLUMNS = ["final_loss_mean", "final_loss_std", "final_loss_median", "min_loss_mean",
                  "min_loss_std", "progress_mean", "progress_std", "diverged"]


def _fingerprints(runs: pd.DataFrame, tag: str = "") -> dict:
    out = {}
    for opt, g in runs.groupby("optimizer", sort=False):
        h = hashlib.sha256()
        for col in GOLDEN_COLUMNS:
            h.update(g[col].to_numpy().tobytes())
        out[opt + tag] = h.hexdigest()[:20]
    return out


def test_tables_are_bit_identical_to_the_first_engine(tmp_path):
    cfg = build_scan_config(None, {"sharpness": "0.1:1000:5:log", "noise": "0:3:6", "lr": "1e-3:1:6:log",
                                   "replicates": 7, "steps": 300, "optimizers": "adam,signum,focus,sgd,lion",
                                   "chunk_steps": 40000})
    run_scan(cfg, tmp_path / "a", jobs=1, progress=False)
    avg = build_scan_config(None, {"sharpness": "0.1:1000:3:log", "noise": "0:3:3", "lr": "1e-3:1:4:log",
                                   "replicates": 5, "steps": 200, "optimizers": "focus",
                                   "optimizer": {"focus": {"decay": "average", "gamma": 0.4}}})
    run_scan(avg, tmp_path / "b", jobs=1, progress=False)
    got = {**_fingerprints(pd.read_parquet(tmp_path / "a" / "runs.parquet")),
           **_fingerprints(pd.read_parquet(tmp_path / "b" / "runs.parquet"), "+avg")}
    assert got == GOLDEN
