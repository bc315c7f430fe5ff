"""The simulator against independent plain-Python implementations of the paper's equations."""
import math

import numpy as np
import pytest

from focuslab.toy import kernel, reference
from focuslab.toy.landscape import grad_theta, loss, rotate
from focuslab.toy.rng import normal_pairs, trajectory_keys
from focuslab.toy.updates import RULES


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
    ("adam", {}, dict(a=10.0, noise_std=0.5, weight_decay=0.1, lr=0.01)),
    ("adam", {"beta2": 0.99, "eps": 1e-6}, dict(a=1.0, noise_std=2.0, weight_decay=0.0, lr=0.1)),
    ("signum", {}, dict(a=10.0, noise_std=1.0, weight_decay=0.1, lr=0.01)),
    ("focus", {}, dict(a=10.0, noise_std=1.5, weight_decay=0.1, lr=0.01)),
    ("focus", {"gamma": 0.4, "decay": "average"}, dict(a=3.0, noise_std=2.5, weight_decay=0.2, lr=0.02)),
    ("sgd", {"momentum": 0.5}, dict(a=1.0, noise_std=0.3, weight_decay=0.05, lr=0.05)),
    ("lion", {}, dict(a=30.0, noise_std=1.0, weight_decay=0.1, lr=0.005)),
]


@pytest.mark.parametrize("name,params,setting", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_kernel_matches_reference_trajectory(name, params, setting):
    """Metrics of the vectorised kernel == those of the plain stepper fed the same noise draws."""
    theta, c, steps = math.pi / 6, 0.1, 300
    rule = RULES[name]
    hp_all = {**rule.defaults, **params}
    keys = trajectory_keys(7, np.array([[setting["a"], setting["noise_std"], setting["weight_decay"],
                                         theta, c]]), np.arange(3))
    cell = np.array([[setting["a"], setting["noise_std"], setting["weight_decay"],
                      math.cos(theta), math.sin(theta), c]])
    for T in (1, 2, 3, 17, steps):
        out = kernel.run(rule.code, rule.vector(params), cell, np.array([setting["lr"]]), keys, T)
        for r in range(3):
            noise = normal_pairs(keys[0, r], 0, T + 1)
            ref = reference.trajectory(name, hp_all, theta=theta, c=c, noise=noise, steps=T, **setting)
            assert not ref["diverged"] and out["diverged"][0, 0, r] == 0
            assert out["final_loss"][0, 0, r] == pytest.approx(ref["final_loss"], rel=1e-12, abs=1e-15)
            assert out["min_loss"][0, 0, r] == pytest.approx(ref["min_loss"], rel=1e-12, abs=1e-15)
            assert out["progress"][0, 0, r] == pytest.approx(ref["progress"], rel=1e-12, abs=1e-15)


def test_signum_is_focus_with_gamma_zero():
    cell = np.array([[10.0, 1.0, 0.1, math.cos(0.5), math.sin(0.5), 0.1]])
    keys = trajectory_keys(3, cell[:, :5], np.arange(8))
    lrs = np.array([0.003, 0.03])
    a = kernel.run(RULES["signum"].code, RULES["signum"].vector({}), cell, lrs, keys, 200)
    b = kernel.run(RULES["focus"].code, RULES["focus"].vector({"gamma": 0.0}), cell, lrs, keys, 200)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_focus_attraction_changes_the_trajectory():
    cell = np.array([[10.0, 2.0, 0.1, math.cos(0.5), math.sin(0.5), 0.1]])
    keys = trajectory_keys(3, cell[:, :5], np.arange(8))
    a = kernel.run(RULES["signum"].code, RULES["signum"].vector({}), cell, np.array([0.01]), keys, 200)
    b = kernel.run(RULES["focus"].code, RULES["focus"].vector({}), cell, np.array([0.01]), keys, 200)
    assert not np.array_equal(a["final_loss"], b["final_loss"])


def test_divergence_is_flagged_and_not_nan_poisoned():
    cell = np.array([[10.0, 0.0, 0.0, math.cos(0.5), math.sin(0.5), 0.1]])
    keys = trajectory_keys(0, cell[:, :5], np.arange(4))
    out = kernel.run(RULES["sgd"].code, RULES["sgd"].vector({}), cell, np.array([1e-3, 5.0]), keys, 300)
    assert out["diverged"][0, 0].sum() == 0
    assert out["diverged"][0, 1].all()


def test_kernel_is_deterministic_and_independent_of_lane_batching():
    rng = np.random.default_rng(0)
    cells = np.column_stack([rng.uniform(0.1, 100, 9), rng.uniform(0, 3, 9), np.full(9, 0.1),
                             np.full(9, math.cos(0.5)), np.full(9, math.sin(0.5)), np.full(9, 0.1)])
    keys = trajectory_keys(11, cells[:, :5], np.arange(37))  # 9*2*37 lanes: several partial blocks
    lrs = np.array([0.01, 0.1])
    rule = RULES["adam"]
    whole = kernel.run(rule.code, rule.vector({}), cells, lrs, keys, 100)
    again = kernel.run(rule.code, rule.vector({}), cells, lrs, keys, 100)
    for i in range(9):  # one cell at a time: different block composition, same bits
        single = kernel.run(rule.code, rule.vector({}), cells[i:i + 1], lrs, keys[i:i + 1], 100)
        for k in whole:
            np.testing.assert_array_equal(single[k][0], whole[k][i])
    for k in whole:
        np.testing.assert_array_equal(whole[k], again[k])
