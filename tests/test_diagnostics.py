"""Gradient-noise and sharpness diagnostics against problems whose answers are known in closed form."""
import contextlib
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from focuslab.diagnostics import QUANTILES, measure, top_eigenvalue  # noqa: E402


class Valley(torch.nn.Module):
    """The toy's narrowing valley as a torch module.  A "batch" is a standard normal pair z: the
    loss's gradient is then g * (1 + noise * z), the toy's multiplicative noise (z=None: the true
    loss and gradient)."""

    def __init__(self, theta, sharpness=10.0, c=0.1, phi=math.pi / 6, noise=0.5):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64))
        self.a, self.c, self.phi, self.noise = sharpness, c, phi, noise

    def uv(self):
        cp, sp = math.cos(self.phi), math.sin(self.phi)
        return self.theta[0] * cp + self.theta[1] * sp, self.theta[1] * cp - self.theta[0] * sp

    def loss(self, z=None):
        u, v = self.uv()
        L = 0.5 * self.a * u * u * v * v - self.c * u
        if z is None:
            return L
        g = torch.autograd.grad(L, self.theta, create_graph=False, retain_graph=True)[0].detach()
        return L + (self.noise * z * g * self.theta).sum()  # gradient g (1 + noise z); Hessian unchanged

    def hessian_top(self):
        u, v = (float(x) for x in self.uv())
        h = np.array([[self.a * v * v, 2 * self.a * u * v], [2 * self.a * u * v, self.a * u * u]])
        return float(np.linalg.eigvalsh(h).max())  # the rotation to theta leaves eigenvalues unchanged


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_the_toy_noise_ratio_is_recovered_within_sampling_error(noise):
    model = Valley([1.3, 0.4], noise=noise)
    K = 4000
    z = torch.from_numpy(np.random.default_rng(0).normal(size=(K, 2)))
    out = measure(model, model.loss, list(z), reference=[None], exhaustive=True, batch_size=1)
    r = out["per_model"][0]["noise_ratio_median"]
    se = noise / math.sqrt(2 * (K - 1))  # standard error of a sample std
    assert abs(r - noise) < 4 * se, (r, noise)
    assert out["per_model"][0]["noise_ratio_unresolved"] == 0.0


def test_sigma_equiv_is_the_toys_sigma_exactly():
    """In the toy every coordinate's noise is sigma |G_i|, so sum var / sum G^2 = sigma^2 exactly.
    With noise draws standardised per coordinate (sample mean 0, sample variance 1) the K
    gradients' sample variance is sigma^2 G_i^2 to rounding, and sigma_equiv returns sigma to
    rounding, per coordinate and summed."""
    for noise in (0.3, 1.0, 3.0):
        model = Valley([1.3, 0.4], noise=noise)
        z = np.random.default_rng(1).normal(size=(16, 2))
        z = (z - z.mean(0)) / z.std(0, ddof=1)
        row = measure(model, model.loss, list(torch.from_numpy(z)), reference=[None], exhaustive=True,
                      batch_size=1, hessian=False)["per_model"][0]
        assert row["sigma_equiv"] == pytest.approx(noise, rel=1e-12)
        assert row["noise_ratio_weighted_median"] == pytest.approx(noise, rel=1e-12)
        assert row["sigma_equiv_lo"] < noise < row["sigma_equiv_hi"]
        assert row["zero_fraction"] == 0.0


def test_sigma_equiv_and_its_interval_on_the_sampled_toy():
    """Fresh noise, the true gradient unknown (K + M sampled gradients only): over R independent
    samples the 95 % intervals cover sigma at a rate within 4 binomial standard errors of 0.95, and
    the median estimate is within 4 standard errors of a median of sigma (plus the O(1/J) bias of
    a ratio of estimates)."""
    sigma, J, R = 1.0, 16, 400
    model = Valley([1.3, 0.4], noise=sigma)
    rng = np.random.default_rng(2)
    est, covered = [], []
    for _ in range(R):
        z = list(torch.from_numpy(rng.normal(size=(J, 2))))
        row = measure(model, model.loss, z[:8], reference=z[8:], batch_size=1, hessian=False)["per_model"][0]
        est.append(row["sigma_equiv"])
        covered.append(row["sigma_equiv_lo"] <= sigma <= row["sigma_equiv_hi"])
    est = np.array(est)
    assert abs(np.mean(covered) - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / R), np.mean(covered)
    se_median = 1.2533 * est.std() / math.sqrt(R)
    assert abs(np.median(est) - sigma) <= 4 * se_median + sigma / J, (np.median(est), se_median)


def _synthetic(seed, n_gauss=2000, n_t=500, n_sparse=1000, n_zero=500):
    """A gradient with known per-coordinate noise ratios r_i = std_i / |G_i|: Gaussian noise
    (r from 0.1 to 3), Student-t noise with 5 degrees of freedom (heavy tails, r 0.2 to 2), sparse
    coordinates that are G_i / p in a fraction p (0.05 to 0.5) of the batches and 0 otherwise, like
    the first-layer weights of a rarely lit pixel (r = sqrt((1 - p) / p), up to 4.4), and
    coordinates that are exactly 0 in every batch.  Returns G, r, the kinds and draw(J) -> (J, n)."""
    rng = np.random.default_rng(seed)
    kinds = np.repeat([0, 1, 2, 3], [n_gauss, n_t, n_sparse, n_zero])
    G = np.exp(rng.normal(size=kinds.size)) * rng.choice([-1.0, 1.0], size=kinds.size)
    G[kinds == 3] = 0.0
    r = np.zeros(kinds.size)
    r[kinds == 0] = np.exp(rng.uniform(math.log(0.1), math.log(3.0), n_gauss))
    r[kinds == 1] = np.exp(rng.uniform(math.log(0.2), math.log(2.0), n_t))
    p = rng.uniform(0.05, 0.5, n_sparse)
    r[kinds == 2] = np.sqrt((1 - p) / p)

    def draw(J):
        z = np.zeros((J, kinds.size))
        z[:, kinds == 0] = rng.normal(size=(J, n_gauss))
        z[:, kinds == 1] = rng.standard_t(5, size=(J, n_t)) / math.sqrt(5 / 3)  # unit variance
        z[:, kinds == 2] = ((rng.uniform(size=(J, n_sparse)) < p) / p - 1) / r[kinds == 2]
        return G * (1 + r * z)  # the sparse ones: G / p where lit, else exactly 0

    return G, r, kinds, draw


def _gradient_rows(g):
    """Gradients given as rows: a linear model whose batch j's loss has gradient g[j]."""
    theta = torch.zeros(g.shape[1], dtype=torch.float64, requires_grad=True)
    return theta, (lambda row: (theta * row).sum()), list(torch.from_numpy(g))


def _old_quantiles(g, k=8):
    """The statistic as it was before issue 21: the variance from the first k gradients only, the
    mean from all of them, and exactly-zero coordinates (0/0) counted as unresolved (+inf)."""
    var = g[:k].var(0, ddof=1)
    g2 = g.mean(0) ** 2 - var / len(g)
    r = np.where(g2 > 0, np.sqrt(var / np.where(g2 > 0, g2, 1.0)), np.inf)
    return np.quantile(np.where(np.isfinite(r), r, np.finfo(float).max), QUANTILES)


def test_known_noise_ratios_with_zero_and_heavy_tailed_coordinates_are_recovered():
    """8 + 392 gradients of the synthetic problem (the issue's --diagnostics-reference 392): the
    quantiles of the per-coordinate ratio over the non-zero coordinates, their |G|-weighted median,
    the zero share and sigma_equiv come back.  Tolerance: a coordinate's ratio estimate from J
    draws has a relative standard error of about sqrt((kappa - 1) / J) / 2 (kappa the noise's
    kurtosis; the sparse ones at p = 0.05 have kappa ~ 1 / p - 3 = 17), so 0.1 at J = 400;
    quantiles and the median are allowed two of that.  The old statistic (variance from 8 batches,
    zero coordinates unresolved) fails the same check: a sparse coordinate dark in all 8 batches
    reads 0, and the 12.5 % zero coordinates push the 95 % quantile to +inf."""
    G, r, kinds, draw = _synthetic(seed=3)
    J = 400
    g = draw(J)
    theta, loss, rows = _gradient_rows(g)
    row = measure([theta], loss, rows[:8], reference=rows[8:], batch_size=1, hessian=False)["per_model"][0]
    nonzero = kinds != 3
    true_q = np.quantile(r[nonzero], QUANTILES)
    true_wmedian = np.quantile(r[nonzero], 0.5, weights=np.abs(G[nonzero]), method="inverted_cdf")
    true_sigma = math.sqrt(((r * G) ** 2).sum() / (G ** 2).sum())
    tol = 2 * math.sqrt((1 / 0.05 - 3 - 1) / J) / 2
    got_q = np.array([row[f"noise_ratio_q{int(round(100 * q)):02d}"] for q in QUANTILES])

    def recovered(q):
        return bool(np.all(np.abs(q / true_q - 1) <= tol))

    assert recovered(got_q), (got_q, true_q)
    assert row["noise_ratio_weighted_median"] == pytest.approx(true_wmedian, rel=tol)
    assert row["zero_fraction"] == pytest.approx(np.mean(kinds == 3), abs=1.0 / kinds.size)
    assert row["noise_ratio_limit"] == pytest.approx(math.sqrt(J))
    assert row["sigma_equiv_lo"] <= true_sigma <= row["sigma_equiv_hi"], (row["sigma_equiv"], true_sigma)
    assert row["sigma_equiv_hi"] / row["sigma_equiv_lo"] < 1.2  # 400 gradients pin it to a few percent
    old = _old_quantiles(g)
    assert not recovered(old), old
    assert old[0] < (1 - tol) * true_q[0] and old[-1] > 1e300  # the two biases the issue names


def test_sigma_equiv_intervals_cover_on_the_synthetic_problem_at_8_plus_24():
    """The MNIST default sample (J = 8 + 24) of the synthetic problem, R independent times: the
    95 % intervals cover the true sigma_equiv at a rate within 4 binomial standard errors of 0.95.
    (Where one coordinate that is non-zero in a twentieth of the batches carries an eighth of the
    noise, the sample rarely holds it and coverage fell to 0.80 at J = 32, 0.94 at J = 64: see
    sigma_interval.)"""
    from focuslab.diagnostics import noise_statistics

    G, r, kinds, draw = _synthetic(seed=1)
    true_sigma = math.sqrt(((r * G) ** 2).sum() / (G ** 2).sum())
    J, R = 32, 200
    covered = []
    for _ in range(R):
        row = noise_statistics([torch.from_numpy(draw(J)).reshape(J, 1, -1)], [1] * J, at_batch=1)[0]
        covered.append(row["sigma_equiv_lo"] <= true_sigma <= row["sigma_equiv_hi"])
    assert abs(np.mean(covered) - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / R), np.mean(covered)


def test_the_toy_sharpness_is_the_analytic_top_eigenvalue():
    for theta in ([1.3, 0.4], [0.2, -0.9], [2.0, 1.5]):
        model = Valley(theta)
        lam, _, _ = top_eigenvalue([model.theta], lambda b: model.loss(), None, iters=200, tol=1e-14)
        assert lam[0] == pytest.approx(model.hessian_top(), rel=1e-6)


def test_a_quadratic_with_known_hessian_gives_its_top_eigenvalue_to_1e_4():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    eig = np.array([10.0, 7.0, 5.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.2, 0.1, 0.05])
    A = torch.from_numpy(q @ np.diag(eig) @ q.T)
    theta = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    lam, vec, iters = top_eigenvalue([theta], lambda b: 0.5 * theta @ A @ theta, None, iters=500, tol=1e-10)
    assert abs(lam[0] - 10.0) < 1e-4 and iters < 500
    assert abs(float(vec[0] @ torch.from_numpy(q[:, 0]))) == pytest.approx(1.0, abs=1e-4)


def test_the_noise_scale_of_linear_regression_matches_its_closed_form():
    """y = x.w* + e, x ~ N(0, I_d), e ~ N(0, s^2), loss 1/2 (x.w - y)^2 at w = w* + delta: the per-example
    gradient x (x.delta - e) has mean delta and covariance (|delta|^2 + s^2) I + delta delta^T, so
    B_simple = tr(Sigma) / |G|^2 = (d (|delta|^2 + s^2) + |delta|^2) / |delta|^2."""
    d, s, b, K = 5, 2.0, 16, 3000
    rng = np.random.default_rng(2)
    w_star = rng.normal(size=d)
    delta = np.array([0.5, -0.3, 0.2, 0.0, 0.1])
    w = torch.tensor(w_star + delta, requires_grad=True)

    def batch(n):
        x = rng.normal(size=(n, d))
        return torch.from_numpy(x), torch.from_numpy(x @ w_star + s * rng.normal(size=n))

    def loss(xy):
        x, y = xy
        return 0.5 * ((x @ w - y) ** 2).mean()

    ref = [batch(100_000) for _ in range(4)]
    out = measure([w], loss, [batch(b) for _ in range(K)], reference=ref, batch_size=b,
                  reference_sizes=[100_000] * 4, hessian=False)
    n2 = float(delta @ delta)
    want = (d * (n2 + s * s) + n2) / n2
    got = out["per_model"][0]["noise_scale_simple"]
    # tr(Sigma) from K minibatch variances: relative SE ~ sqrt(2 / (d K)) plus the |G|^2 estimate's;
    # 6 % is over 3 standard errors of the two together (measured spread over seeds: ~1.5 %)
    assert got == pytest.approx(want, rel=0.06), (got, want)


def test_taking_the_mean_from_the_same_batches_is_biased_and_the_reference_is_not():
    """The issue's warning: with |mean_i| from the same K gradients, r is pulled toward sqrt(K) when
    the noise is high (sigma >> 1: |mean| ~ sigma |g| |N(0,1)| / sqrt(K), so r ~ sqrt(K) / |N(0,1)|,
    median sqrt(8) / 0.674 = 4.2, whatever sigma).  With an exhaustive reference sigma comes back."""
    sigma, K = 50.0, 8
    model = Valley([1.3, 0.4], noise=sigma)
    rng = np.random.default_rng(3)
    naive, ours = [], []
    for _ in range(200):
        z = list(torch.from_numpy(rng.normal(size=(K, 2))))
        g = torch.stack([torch.autograd.grad(model.loss(zz), model.theta)[0] for zz in z])
        naive.append(np.median((g.std(0, unbiased=True) / g.mean(0).abs()).numpy()))
        ours.append(measure(model, model.loss, z, reference=[None], exhaustive=True, batch_size=1,
                            hessian=False)["per_model"][0]["noise_ratio_median"])
    assert abs(np.median(ours) / sigma - 1) < 0.1  # the sample std of 8 draws: median ~0.96 sigma
    assert 2.5 < np.median(naive) < 8.0  # about sqrt(K) / 0.674, nowhere near sigma = 50


def test_every_gradient_joins_mean_and_variance_by_size():
    """The K batches, the reference batches and a gradient already computed (the training step's,
    read before the optimizer step) are one sample of J gradients of different sizes n_j: the mean
    weights them by n_j, the per-example variance is sum_j n_j (g_j - mean)^2 / (J - 1), G^2 loses
    that variance / N.  Checked against the estimator written out in numpy, and against passing the
    same examples as reference batches."""
    d, b, K = 6, 4, 12
    rng = np.random.default_rng(5)
    w_star = rng.normal(size=d)
    w = torch.tensor(w_star + rng.normal(size=d), requires_grad=True)

    def batch(n):
        x = rng.normal(size=(n, d))
        return torch.from_numpy(x), torch.from_numpy(x @ w_star + rng.normal(size=n))

    def loss(xy):
        x, y = xy
        return 0.5 * ((x @ w - y) ** 2).mean()

    def grad(xy):
        return torch.autograd.grad(loss(xy), w)[0].numpy()

    small, ref, step = [batch(b) for _ in range(K)], batch(40), batch(24)
    out = measure([w], loss, small, reference=[ref], reference_sizes=[40], batch_size=b, hessian=False,
                  reference_gradient=[torch.from_numpy(grad(step))], reference_gradient_size=24)
    g = np.array([grad(xy) for xy in small] + [grad(ref), grad(step)])
    n = np.array([b] * K + [40, 24], dtype=float)
    N = n.sum()
    mean = n @ g / N
    s2 = n @ (g - mean) ** 2 / (len(n) - 1)  # per example
    g2 = mean ** 2 - s2 / N
    var = s2 / b
    want_r = np.median(np.where(g2 > 0, np.sqrt(var / np.where(g2 > 0, g2, 1)), np.inf))
    got = out["per_model"][0]
    assert out["reference_size"] == N and out["gradients"] == K + 2
    assert got["noise_ratio_median"] == pytest.approx(want_r, rel=1e-12)
    assert got["noise_scale_simple"] == pytest.approx(s2.sum() / g2.sum(), rel=1e-12)
    assert got["sigma_equiv"] == pytest.approx(math.sqrt(var.sum() / g2.sum()), rel=1e-12)
    assert got["noise_ratio_limit"] == pytest.approx(math.sqrt(N / b))
    # the same examples given as two reference batches (with their sizes) read the same
    both = measure([w], loss, small, reference=[ref, step], reference_sizes=[40, 24], batch_size=b,
                   hessian=False)["per_model"][0]
    for key in ("noise_ratio_median", "sigma_equiv", "sigma_equiv_lo", "sigma_equiv_hi"):
        assert both[key] == pytest.approx(got[key], rel=1e-12), key
    with pytest.raises(ValueError):
        measure([w], loss, small, reference=[None], exhaustive=True, batch_size=b, hessian=False,
                reference_gradient=[torch.from_numpy(grad(step))], reference_gradient_size=24)


def test_stacked_models_equal_each_model_measured_alone():
    models = [Valley(t, noise=n) for t, n in (([1.3, 0.4], 0.5), ([0.2, -0.9], 1.0), ([2.0, 1.5], 2.0))]
    theta = torch.nn.Parameter(torch.stack([m.theta.detach() for m in models]))  # (3, 2)
    z = list(torch.from_numpy(np.random.default_rng(4).normal(size=(50, 2))))

    def stacked(zz):
        losses = []
        for k, m in enumerate(models):
            cp, sp = math.cos(m.phi), math.sin(m.phi)
            u, v = theta[k, 0] * cp + theta[k, 1] * sp, theta[k, 1] * cp - theta[k, 0] * sp
            L = 0.5 * m.a * u * u * v * v - m.c * u
            if zz is not None:
                g = torch.autograd.grad(L, theta, retain_graph=True)[0][k].detach()
                L = L + (m.noise * zz * g * theta[k]).sum()
            losses.append(L)
        return torch.stack(losses)

    together = measure([theta], stacked, z, reference=[None], exhaustive=True, batch_size=1, models=3,
                       hessian_batch=None, hessian_iters=50)
    for k, m in enumerate(models):
        alone = measure(m, m.loss, z, reference=[None], exhaustive=True, batch_size=1, hessian_iters=50,
                        hessian_batch=None)
        for key in ("noise_ratio_median", "noise_scale_simple"):
            assert together["per_model"][k][key] == pytest.approx(alone["per_model"][0][key], rel=1e-12)
        assert together["per_model"][k]["lambda_max"] == pytest.approx(m.hessian_top(), rel=1e-6)


# --- in the commands ------------------------------------------------------------------------------
def test_mnist_diagnostics_leave_training_unchanged_and_fill_the_table(tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from focuslab.cli.main import main
    from test_mnist import fake_mnist

    fake_mnist(tmp_path / "data" / "mnist")
    args = ["mnist", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--batch-size", "4,16",
            "--lr", "1e-3,1e-2", "--replicates", "2", "--steps", "12", "--optimizers", "adamw,signum", "-j", "1"]
    assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "plain"), "-q"]).exit_code == 0
    res = CliRunner().invoke(main, [*args, "--diagnostics-every", "4", "--out", str(tmp_path / "diag")])
    assert res.exit_code == 0, res.output
    assert "diagnostics cost" in res.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "plain" / "runs.parquet"),
                                  pd.read_parquet(tmp_path / "diag" / "runs.parquet"), check_exact=True)
    d = pd.read_parquet(tmp_path / "diag" / "diagnostics.parquet")
    assert {"step", "noise_ratio_median", "noise_scale_simple", "lambda_max", "optimizer", "batch_size", "lr",
            "replicate", "noise_ratio_q25", "noise_ratio_q75", "sigma_equiv", "sigma_equiv_lo", "sigma_equiv_hi",
            "sigma_equiv.layer0", "noise_ratio_weighted_median", "zero_fraction", "noise_ratio_limit"} <= set(d.columns)
    assert (d.noise_ratio_limit == math.sqrt(8 + 24)).all()  # the default: 8 + 24 batches at the run's size
    # the printed cost is the units' diagnostics seconds over their training seconds, as recorded per unit
    unit = d.groupby(["optimizer", "batch_size"]).first()
    assert (unit.diagnostics_seconds > 0).all() and (unit.diagnostics_seconds < unit.unit_seconds).all()
    cost = unit.diagnostics_seconds.sum() / (unit.unit_seconds - unit.diagnostics_seconds).sum()
    assert f"diagnostics cost {100 * cost:.0f}% of training time" in res.output
    assert sorted(d.step.unique()) == [0, 4, 8, 12] and set(d.replicate) == {0}
    assert len(d) == 4 * 1 * 2 * 2  # steps x the best lr x batch sizes x optimizers
    best = pd.read_parquet(tmp_path / "diag" / "best.parquet").set_index(["optimizer", "batch_size"])["best_lr"]
    for (opt, b), g in d.groupby(["optimizer", "batch_size"]):
        assert set(g.lr) == {best[(opt, b)]}, (opt, b)
    adam = d[(d.optimizer == "adamw") & (d.step > 0)]
    assert adam.lambda_max_preconditioned.notna().all() and (d.lambda_max.abs() > 0).all()
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "diag")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "diag" / "diagnostics.png").exists() and (tmp_path / "diag" / "noise_scale.png").exists()
    assert "B_simple" in res.output


def test_mnist_best_lr_diagnostics_are_the_every_lr_measurement_of_that_lr():
    """``best`` measures kept copies after training; ``all`` measures every lr as it goes: the
    best lr's rows must agree (the noise statistics to rounding, lambda_max within Lanczos' 1 %
    stopping rule, which in ``all`` waits for every model)."""
    from focuslab.mnist.train import to_tensors, train_batched

    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in (("train", 256), ("test", 64)):  # learnable: the label painted into the image
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 3] = 255
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    data = to_tensors(arrays)
    kw = dict(lrs=[1e-3, 1e-2, 1e-1], replicates=2, steps=8, seed=1, diagnostics_every=4, diagnostics_reference=4)
    for opt in ("adamw", "signum"):
        best = train_batched(data, opt, 8, diagnostics_lrs="best", **kw)
        every = train_batched(data, opt, 8, diagnostics_lrs="all", **kw)
        np.testing.assert_array_equal(best["test_loss"], every["test_loss"])
        lr = kw["lrs"][int(np.argmin(best["test_loss"].mean(1)))]
        rows = best["diagnostics"]
        assert [r["step"] for r in rows] == [0, 4, 8] and {r["lr"] for r in rows} == {lr}
        same = [r for r in every["diagnostics"] if r["lr"] == lr]
        assert len(every["diagnostics"]) == 3 * len(kw["lrs"])
        for a, b in zip(rows, same, strict=True):
            for key in ("noise_ratio_median", "noise_ratio_q25", "noise_scale_simple", "grad_norm", "sigma_equiv",
                        "sigma_equiv_lo", "noise_ratio_weighted_median"):
                assert a[key] == pytest.approx(b[key], rel=1e-6), (opt, a["step"], key)
            assert a["lambda_max"] == pytest.approx(b["lambda_max"], rel=0.05), (opt, a["step"])
        if opt == "adamw":
            assert all(np.isfinite(r["lambda_max_preconditioned"]) for r in rows if r["step"] > 0)


def test_stacked_batch_gradients_give_the_same_statistics_as_one_pass_per_batch():
    """The MNIST model's one-pass gradients over stacked copies (``batch_gradients``) against the
    plain loop over batches, for two models at once."""
    import torch.nn.functional as F

    from focuslab.mnist.model import BatchedMLP
    from focuslab.mnist.train import batch_gradients, initial_params

    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 784, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    model = BatchedMLP([initial_params(0, r, torch.float32) for r in range(2)], 1)
    names = list(model.params)
    params = [model.params[n] for n in names]
    batches = [torch.randperm(64, generator=gen)[:4] for _ in range(10)]

    def loss(i):
        logits = model(x[i].unsqueeze(0), train=True, track=False)
        return F.cross_entropy(logits.reshape(-1, 10), y[i].repeat(2), reduction="none").view(2, -1).mean(1)

    kw = dict(reference=batches[6:], batch_size=4, models=2, hessian=False)
    loop = measure(params, loss, batches[:6], **kw)["per_model"]
    fast = measure(params, loss, batches[:6], batch_gradients=lambda idx: batch_gradients(model, x, y, idx),
                   **kw)["per_model"]
    for a, b in zip(loop, fast, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


def test_gpt2_diagnostics_leave_training_unchanged_and_place_the_run_on_the_map(tmp_path):
    import json

    import pandas as pd
    from click.testing import CliRunner

    from focuslab.cli.main import main

    nano = ["gpt2", "--dropout", "0", "--eval-iters", "2", "--max-iters", "20", "--eval-interval", "10",
            "--optimizer", "adamw"]
    assert CliRunner().invoke(main, [*nano, "-q", "--out", str(tmp_path / "plain")]).exit_code == 0
    diag_run = CliRunner().invoke(main, [*nano, "--diagnostics-every", "10", "--diagnostics-preconditioned",
                                         "--out", str(tmp_path / "diag")])
    assert diag_run.exit_code == 0, diag_run.output
    a = torch.load(tmp_path / "plain" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "diag" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    d = pd.read_parquet(tmp_path / "diag" / "diagnostics.parquet")
    assert d.step.tolist() == [0, 10, 20]
    assert d.noise_scale_simple.gt(0).all() and d.lambda_max.gt(0).all()
    assert d.lambda_max_preconditioned.iloc[1:].notna().all()  # asked for: measured after step 0
    plain = CliRunner().invoke(main, [*nano, "--diagnostics-every", "20", "-q", "--out", str(tmp_path / "noprec")])
    assert plain.exit_code == 0, plain.output
    p = pd.read_parquet(tmp_path / "noprec" / "diagnostics.parquet")
    assert p.step.tolist() == [0, 20] and p.lambda_max.tolist() == pytest.approx(d.lambda_max.iloc[[0, 2]].tolist(), rel=0.05)
    assert "lambda_max_preconditioned" not in p or p.lambda_max_preconditioned.isna().all()  # off by default
    assert {"sigma_equiv.embeddings", "sigma_equiv.block0", "sigma_equiv_hi.block0"} <= set(d.columns)
    assert (d.sigma_equiv_lo <= d.sigma_equiv).all() and (d.sigma_equiv <= d.sigma_equiv_hi).all()
    assert (d.gradients == 8 + 1 + 1).all()  # K micro-batches, one reference batch, the step's gradient
    meta = json.loads((tmp_path / "diag" / "gpt2.json").read_text())
    # the cost is the diagnostics' seconds over the training's own (the run's wall time less them), as
    # printed: 3 measurements, each at least K micro-batches (one iteration's compute), a reference
    # batch and the Lanczos solve, against 20 iterations; 0.3 or more in compute, 0.84-22 measured on
    # a shared 2-core machine, so 0.05 leaves room for a training slowed by other work
    cost = meta["diagnostics_cost_fraction"]
    said = re.search(r"diagnostics: 3 measurements, ([\d.]+) s = ([\d.]+)% of the training time", diag_run.output)
    assert said, diag_run.output
    seconds, wall = float(said.group(1)), meta["wall_seconds"]
    assert float(said.group(2)) == pytest.approx(100 * cost, abs=0.06)
    low, high = seconds - 0.05, seconds + 0.05  # printed to 0.1 s; the wall time to 0.01 s
    assert low / (wall + 0.01 - low) <= cost <= high / max(1e-9, wall - 0.01 - high), (cost, seconds, wall)
    assert 0.05 <= cost, cost
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "diag")])
    assert res.exit_code == 0, res.output
    assert f"final val loss {meta['final']['val_loss']:.4f} at iter 20" in res.output
    assert (tmp_path / "diag" / "diagnostics.png").exists() and (tmp_path / "diag" / "val_loss.png").exists()
    # the overlay places the run at its measured sigma_equiv: the median over the measurements after
    # step 0, the band their range, inside the scan's noise axis (0..3): drawn on the map, not an arrow
    from focuslab.plot.diagnostics import load_overlays

    later = d[d.step > 0].sigma_equiv
    ((lo, centre, hi, label),) = load_overlays([tmp_path / "diag"])
    assert (lo, centre, hi, label) == (later.min(), later.median(), later.max(), "diag")
    assert 0 < lo <= centre <= hi < 3
    scan = ["scan", "--sharpness", "1,10", "--noise", "0:3:4", "--lr", "0.01,0.1", "--replicates", "3",
            "--steps", "30", "-q", "-j", "1", "--out", str(tmp_path / "s")]
    assert CliRunner().invoke(main, scan).exit_code == 0
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "s"), "--overlay", str(tmp_path / "diag")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "phase_here.png").exists()
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "s"), "--overlay", str(tmp_path / "plain")])
    assert res.exit_code == 2 and "no diagnostics.parquet" in res.stderr


def test_the_top_eigenvalue_is_the_largest_not_the_largest_in_magnitude():
    A = torch.diag(torch.tensor([-9.0, 2.0, 1.0, -3.0], dtype=torch.float64))
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    lam, _, _ = top_eigenvalue([theta], lambda b: 0.5 * theta @ A @ theta, None, iters=300, tol=1e-12)
    assert lam[0] == pytest.approx(2.0, abs=1e-6)


def test_a_warm_start_on_a_lower_eigenvector_still_finds_the_top():
    """The previous measurement's top eigenvector can become an interior one as training moves:
    started exactly there, the Krylov space never leaves it (stopping when the Ritz value stops
    moving, or when the basis is exhausted, reported 10 here), so the start is mixed with a random
    vector and the stop waits for a small residual."""
    eig = torch.arange(1.0, 51.0, dtype=torch.float64)
    theta = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    start = torch.zeros(1, 50, dtype=torch.float64)
    start[0, 9] = 1.0  # the eigenvector of 10
    lam, vec, _ = top_eigenvalue([theta], lambda b: 0.5 * (eig * theta * theta).sum(), None, iters=50, tol=1e-8,
                                 v0=start)
    assert lam[0] == pytest.approx(50.0, rel=1e-6)
    assert abs(float(vec[0, 49])) == pytest.approx(1.0, abs=1e-3)
    near = start + 1e-3 * torch.randn(1, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam, _, steps = top_eigenvalue([theta], lambda b: 0.5 * (eig * theta * theta).sum(), None, iters=50,
                                   tol=1e-2, v0=near)
    assert lam[0] == pytest.approx(50.0, rel=1e-2) and steps < 50
    lam, _, _ = top_eigenvalue([theta], lambda b: 0.5 * (eig * theta * theta).sum(), None, iters=50, tol=1e-8,
                               v0=torch.zeros(1, 50, dtype=torch.float64))  # a zero start (a zero gradient)
    assert lam[0] == pytest.approx(50.0, rel=1e-6)


def test_gpt2_sharpness_is_the_dense_hessians_top_eigenvalue(tmp_path):
    """The GPT-2 path (micro-batch, math attention for double backward, AdamW preconditioner) against
    the top eigenvalue of the full Hessian, built column by column, of a GPT small enough to hold it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from focuslab.gpt2.config import TrainConfig
    from focuslab.gpt2.data import TokenData, embedded_corpus, prepare
    from focuslab.gpt2.model import GPT
    from focuslab.gpt2.train import _Diagnostics

    prepare(embedded_corpus()[:20000], tmp_path / "data", "bytes")
    data = TokenData(tmp_path / "data")
    cfg = TrainConfig(n_layer=1, n_head=2, n_embd=4, block_size=8, vocab_size=256, batch_size=8,
                      optimizer="adamw", diagnostics_every=1, diagnostics_reference=1,
                      diagnostics_preconditioned=True, out=str(tmp_path / "run"))
    torch.manual_seed(0)
    model = GPT(cfg.model_config(256))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # well away from the initialisation's near-linear regime
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for it in range(3):
        x, y = data.batch("train", 8, 8, 0, it, 0, "cpu")
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
    (tmp_path / "run").mkdir()
    diag = _Diagnostics(cfg, model, data, opt, device="cpu", run=tmp_path / "run", amp=contextlib.nullcontext())
    diag.measure(3, 1e-2, 0.0)
    row = diag.rows[-1]
    params = list(model.parameters())
    x, y = diag.batches[0]
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(model(x, y)[1], params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        n = flat.numel()
        H = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat[i], params, retain_graph=True)])
                         for i in range(n)]).double().numpy()
    H = 0.5 * (H + H.T)
    assert row["lambda_max"] == pytest.approx(np.linalg.eigvalsh(H).max(), rel=2e-3)
    st = [opt.state[p] for p in params]
    pre = torch.cat([((s["exp_avg_sq"] / (1 - 0.999 ** float(s["step"]))).sqrt() + 1e-8).reshape(-1)
                     for s in st]).double().numpy()
    scaled = H / np.sqrt(pre)[:, None] / np.sqrt(pre)[None, :]
    assert row["lambda_max_preconditioned"] == pytest.approx(np.linalg.eigvalsh(scaled).max(), rel=2e-3)


def test_gpt2_reads_the_training_steps_own_gradient_as_the_reference(tmp_path, monkeypatch):
    """The free part of the GPT-2 reference: p.grad after the accumulated backward is the mean gradient
    over that iteration's training batches, i.e. what ``step_gradient`` computes where no step follows."""
    from focuslab.gpt2 import train as gtrain
    from focuslab.gpt2.config import build_train_config

    seen = []
    original = gtrain._Diagnostics.measure

    def check(self, it, lr, elapsed, step_gradient=None, grad_scale=1.0):
        if step_gradient is not None:
            want = self.step_gradient(it)
            seen.append(it)
            for g, w in zip(step_gradient, want, strict=True):
                torch.testing.assert_close(g.double() / grad_scale, w, rtol=1e-5, atol=1e-7)
        return original(self, it, lr, elapsed, step_gradient, grad_scale)

    monkeypatch.setattr(gtrain._Diagnostics, "measure", check)
    cfg = build_train_config(flags=dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                                        gradient_accumulation_steps=2, dropout=0.0, max_iters=6, eval_interval=3,
                                        eval_iters=1, optimizer="focus", diagnostics_every=3),
                             out=str(tmp_path / "run"))
    gtrain.train(cfg, log=lambda *a: None, progress=False)
    assert seen == [0, 3]
