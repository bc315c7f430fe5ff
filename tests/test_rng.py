"""The counter-based normal generator: accuracy of its math and its statistics."""
import math

import numpy as np
from numba import njit

from focuslab.toy.rng import log_pos, normal_pairs, sincos_quarter, trajectory_key, trajectory_keys


@njit
def _logs(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = log_pos(x[i])
    return out


@njit
def _sincos(x):
    out = np.empty((x.size, 2))
    for i in range(x.size):
        out[i, 0], out[i, 1] = sincos_quarter(x[i])
    return out


def test_log_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(100_000), 2.0 ** -rng.integers(1, 1000, 1000), [1.0, 2.0, 0.5]])
    x = x[x > 0]
    ref = np.log(x)
    err = np.abs(_logs(x) - ref)
    assert np.all(err <= 4 * np.spacing(np.abs(ref)) + 1e-300)


def test_sincos_matches_numpy():
    x = np.linspace(-math.pi / 4, math.pi / 4, 100_001)
    sc = _sincos(x)
    assert np.max(np.abs(sc[:, 0] - np.sin(x))) < 2e-16
    assert np.max(np.abs(sc[:, 1] - np.cos(x))) < 3e-16


def test_normals_have_the_right_moments_and_shape():
    n = 500_000
    z = normal_pairs(np.uint64(2024), 0, n).ravel()
    N = z.size
    se = 1 / math.sqrt(N)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / N)
    assert abs((z ** 3).mean()) < 5 * math.sqrt(15 / N)
    assert abs((z ** 4).mean() - 3) < 5 * math.sqrt(96 / N)
    # Kolmogorov-Smirnov distance to the normal CDF; 1.95/sqrt(N) is the 0.1% critical value
    zs = np.sort(z)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(zs / math.sqrt(2)))
    ks = max(np.max(np.arange(1, N + 1) / N - cdf), np.max(cdf - np.arange(N) / N))
    assert ks < 1.95 / math.sqrt(N)


def test_pairs_are_uncorrelated_within_and_across_steps():
    z = normal_pairs(np.uint64(99), 0, 200_000)
    tol = 5 / math.sqrt(len(z))
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < tol
    assert abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < tol


def test_keys_depend_on_seed_coordinates_and_replicate_only():
    coords = np.array([[1.0, 0.5, 0.1, 0.5, 0.1], [1.0, 0.6, 0.1, 0.5, 0.1]])
    k = trajectory_keys(5, coords, np.arange(4))
    assert len(set(k.ravel().tolist())) == 8
    assert trajectory_key(5, tuple(coords[1]), 2) == k[1, 2]  # by value, not by grid position
    other = trajectory_keys(6, coords, np.arange(4))
    assert len(set(k.ravel().tolist()) | set(other.ravel().tolist())) == 16  # another seed: 8 new keys
    a = normal_pairs(k[0, 0], 0, 10)
    np.testing.assert_array_equal(a, normal_pairs(k[0, 0], 0, 10))
    np.testing.assert_array_equal(a[5:], normal_pairs(k[0, 0], 5, 5))  # counter-based: random access
