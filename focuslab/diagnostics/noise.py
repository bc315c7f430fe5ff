"""The noise statistics of a stack of minibatch gradients: sigma_equiv (the toy's sigma) with its
jackknife interval, B_simple, and the per-coordinate noise ratios with their quantiles
(focuslab.diagnostics states what each estimates)."""
from __future__ import annotations

import math

import numpy as np

from .gradients import _per_model

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Confidence level of the sigma_equiv intervals.
CONFIDENCE = 0.95


# --- the noise statistics -------------------------------------------------------------------------
def _moments(stack, sizes, models: int, at_batch: float, true_mean=None):
    """Per parameter tensor and model: the per-coordinate ratio r_i = sqrt(var_i / G2_i) (+inf where
    the estimate G2_i is not positive) and weight |G_i| = sqrt(max(G2_i, 0)) of the coordinates
    that are not exactly zero in every gradient (lists of numpy arrays, one per model), their
    count, sum s2 and sum G2 (models,); and what sigma_equiv's jackknife needs, summed over the
    tensor's coordinates: |D_j|^2 and D_j . gbar for the centred gradients D_j = g_j - gbar
    (models, J), and |gbar|^2 (models,).  Arithmetic in the gradients' dtype: float32 gradients
    carry ~7 digits, torch's float32 sums of squares over 1e5 coordinates are within 1e-7 of
    float64 ones (and 90x faster than summing into float64), and the statistics' sampling errors
    are percents."""
    import torch

    J = len(sizes)
    N = float(np.sum(sizes))
    out = []
    for i, x in enumerate(stack):
        x = x.reshape(J, models, -1)
        n = torch.as_tensor(np.asarray(sizes, dtype=np.float64), device=x.device, dtype=x.dtype)
        mean = torch.tensordot(n / N, x, dims=1)  # (models, n_p)
        d = x - mean
        d2 = d * d
        s2 = torch.tensordot(n / (J - 1), d2, dims=1)
        zero = (mean == 0) & (s2 == 0)  # every gradient exactly 0 there
        if true_mean is None:
            g2 = mean * mean - s2 / N
            cross = (d * mean).sum(-1).T
            m2 = (mean * mean).sum(-1)
        else:
            G = _per_model(true_mean[i], models).to(x.dtype)
            g2 = G * G
            cross = torch.zeros((models, J), dtype=x.dtype, device=x.device)
            m2 = (G * G).sum(-1)
            zero &= G == 0
        ok = g2 > 0
        ratio = torch.where(ok, torch.sqrt(s2 / at_batch / torch.where(ok, g2, 1.0)), torch.inf)
        weight = torch.sqrt(g2.clamp(min=0))
        keep = ~zero
        f64 = lambda t: t.double().cpu().numpy()  # noqa: E731
        out.append({"ratio": [ratio[m][keep[m]].cpu().numpy() for m in range(models)],
                    "weight": [weight[m][keep[m]].cpu().numpy() for m in range(models)],
                    "coords": x.shape[2], "s2": f64(s2.sum(-1)), "g2": f64(g2.sum(-1)), "dd": f64(d2.sum(-1).T),
                    "cross": f64(cross), "m2": f64(m2)})
    return out


def _snr(sizes, dd, cross, m2, at_batch: float, exhaustive: bool):
    """q = 1 / sigma_equiv^2 = sum G^2 / sum var at batch ``at_batch`` from all J gradients
    (column 0) and leaving out gradient j (column j + 1), for every statistic s of ``dd`` = |D_j|^2
    (S, J), ``cross`` = D_j . gbar (S, J), ``m2`` = |gbar|^2 (S,); returns (S, J + 1).  Without
    gradient j the mean moves by -n_j D_j / (N - n_j) (the n-weighted D sum to 0), so the
    leave-one-out sums need nothing but these.  q is finite where sigma_equiv is not (an
    unresolved sum gives q <= 0), which keeps the jackknife well defined."""
    n = np.asarray(sizes, dtype=np.float64)
    J, N = len(n), n.sum()
    scatter = dd @ n  # sum_j n_j |D_j|^2, (S,)
    s2 = np.concatenate([(scatter / (J - 1))[:, None], np.empty((len(m2), J))], axis=1)
    g2 = np.empty_like(s2)
    g2[:, 0] = m2 - (0.0 if exhaustive else s2[:, 0] / N)
    rest = N - n  # examples without gradient j
    shift = n * n * dd / (rest * rest)  # |gbar_(-j) - gbar|^2
    s2[:, 1:] = (scatter[:, None] - n * dd - rest * shift) / (J - 2)
    if exhaustive:
        g2[:, 1:] = m2[:, None]
    else:
        g2[:, 1:] = m2[:, None] - 2 * n * cross / rest + shift - s2[:, 1:] / rest
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s2 > 0, g2 * at_batch / np.where(s2 > 0, s2, 1.0), np.inf)


def sigma_interval(q, confidence: float = CONFIDENCE):
    """Confidence interval of sigma_equiv from ``_snr``'s (S, J + 1) array q: (low, high) arrays of
    shape (S,), high = +inf where the sample cannot bound sigma_equiv from above (the interval of
    sum G^2 reaches 0).

    Built on q = 1 / sigma_equiv^2 by the delete-one jackknife over the J gradients, the independent
    units of the sample: q_(j) is q without gradient j, se^2 = (J - 1) / J sum_j (q_(j) - mean)^2,
    and the interval q +- t_{J-1} se (Student's t quantile: scipy.special.stdtrit, which imports in
    half the time of scipy.stats), mapped to sigma_equiv = q^-1/2.
    Why this is valid: sum G^2 and sum s2 are unbiased quadratic forms of the J independent
    gradients (for equal sizes, U-statistics), q a smooth function of them, and the jackknife
    variance of such functions is consistent (Arvesen 1969); each leave-one-out estimate is an
    estimate of the same kind from J - 1 gradients.  The bootstrap was tried and dropped: a
    gradient drawn twice into a resample counts as signal in the pairwise products, so resampled
    q sit far above q (on real MNIST gradients at batch 32, 95 % percentile intervals covered the
    1200-batch value in 0 of 112 samples).  Where the sample cannot show the noise, no interval
    from it can: on a synthetic gradient where one coordinate, non-zero in about 1 batch in 17,
    carried 12 % of sum var, the 95 % intervals covered in 77-80 % of samples at J = 16-32 and
    94 % at J = 64 (tests/test_diagnostics.py's synthetic problem).  On real gradients
    (benchmarks/bench_diagnostics.py, README) they covered a 1200-batch value in 92-100 % of
    samples in 13 of 16 MNIST settings and 96 % on gpt2-mini, and 76-86 % at batch 512."""
    from scipy.special import stdtrit

    J = q.shape[1] - 1
    loo = q[:, 1:]
    with np.errstate(invalid="ignore"):
        se = np.sqrt((J - 1) / J * ((loo - loo.mean(1, keepdims=True)) ** 2).sum(1))
    t = stdtrit(J - 1, 0.5 + confidence / 2)
    lo, hi = q[:, 0] - t * se, q[:, 0] + t * se
    with np.errstate(divide="ignore", invalid="ignore"):
        sig_lo = np.where(hi > 0, 1 / np.sqrt(np.where(hi > 0, hi, 1.0)), np.inf)
        sig_hi = np.where(lo > 0, 1 / np.sqrt(np.where(lo > 0, lo, 1.0)), np.inf)
    return sig_lo, sig_hi


def _sigma(q):
    with np.errstate(divide="ignore"):
        return np.where(q > 0, 1 / np.sqrt(np.where(q > 0, q, 1.0)), np.inf)


def _quantile(r, q):
    """Interpolated quantile(s) of ratios that may be +inf (unresolved): inf stands in as the
    largest float of r's dtype, so interpolation stays finite, and a result that large is reported
    as +inf.  ``q`` a number (returns a float) or a sequence (returns an array, one partition for
    all)."""
    big = np.finfo(r.dtype).max
    v = np.quantile(np.where(np.isfinite(r), r, big), q)
    v = np.where(v > big / 2, np.inf, v.astype(np.float64))
    return float(v) if np.ndim(v) == 0 else v


def _weighted_median(r, weight, bins: int = 4096) -> float:
    """The |G|-weighted median of resolved ratios (unresolved ones have G^2 <= 0: weight 0): the
    smallest r whose cumulative weight reaches half the total, as numpy.quantile(r, 0.5,
    weights=weight, method="inverted_cdf") gives it.  Found in linear time: the weights are summed
    into log-spaced bins and only the bin that holds the median is sorted (a full sort of GPT-2's
    ~1M coordinates took 80 ms of a measurement)."""
    keep = np.isfinite(r) & (weight > 0)
    if not keep.any():
        return math.inf if len(r) else math.nan
    r, w = r[keep], weight[keep]
    half = 0.5 * w.sum()
    x = np.log(np.maximum(r, np.finfo(r.dtype).tiny))
    lo, hi = float(x.min()), float(x.max())
    idx = ((x - lo) * ((bins - 1) / (hi - lo))).astype(np.int64) if hi > lo else np.zeros(len(x), np.int64)
    cum = np.cumsum(np.bincount(idx, weights=w, minlength=bins))
    b = min(int(np.searchsorted(cum, half)), bins - 1)  # the bin where the cumulative weight reaches half
    inside = idx == b
    order = np.argsort(r[inside], kind="stable")
    below = cum[b - 1] if b > 0 else 0.0
    c = below + np.cumsum(w[inside][order])
    return float(r[inside][order][min(int(np.searchsorted(c, half)), len(c) - 1)])


def noise_statistics(stack, sizes, *, at_batch: float, models: int = 1, groups: dict | None = None,
                     true_mean=None, confidence: float = CONFIDENCE) -> list[dict]:
    """The noise statistics of the module docstring from J gradients: ``stack`` one tensor per
    parameter, shape (J, models, ...), row j the gradient of n_j = ``sizes[j]`` examples; the
    noise is reported at batch ``at_batch``; ``true_mean`` (tensors like the parameters): the
    exact gradient, when known.  ``groups`` maps a name to indices into the parameter list.
    Returns one row (a dict of plain numbers) per model."""
    J = len(sizes)
    if J < 2:
        raise ValueError("gradient statistics need at least two gradients (K >= 8 recommended)")
    moments = _moments(stack, sizes, models, at_batch, true_mean)
    groups = groups or {f"p{i}": [i] for i in range(len(stack))}
    names = [None, *groups]  # None: all parameters
    members = {None: list(range(len(stack))), **groups}
    N = float(np.sum(sizes))
    exhaustive = true_mean is not None
    rows = []
    for m in range(models):
        dd = np.stack([sum(moments[i]["dd"][m] for i in members[g]) for g in names])
        cross = np.stack([sum(moments[i]["cross"][m] for i in members[g]) for g in names])
        m2 = np.array([sum(float(moments[i]["m2"][m]) for i in members[g]) for g in names])
        q = _snr(sizes, dd, cross, m2, at_batch, exhaustive)
        lo, hi = sigma_interval(q, confidence)
        sigma = _sigma(q[:, 0])
        r_all = np.concatenate([mo["ratio"][m] for mo in moments])
        n_coords = sum(mo["coords"] for mo in moments)
        trace = sum(float(mo["s2"][m]) for mo in moments)
        gsq = sum(float(mo["g2"][m]) for mo in moments)
        row = {"sigma_equiv": float(sigma[0]), "sigma_equiv_lo": float(lo[0]), "sigma_equiv_hi": float(hi[0]),
               "gradients": J}
        names_q = [f"q{int(round(100 * x)):02d}" for x in QUANTILES]
        values = _quantile(r_all, list(QUANTILES)) if len(r_all) else [math.nan] * len(QUANTILES)
        row.update({f"noise_ratio_{k}": float(v) for k, v in zip(names_q, values)})
        row["noise_ratio_median"] = row["noise_ratio_q50"]
        row["noise_ratio_weighted_median"] = _weighted_median(r_all, np.concatenate([mo["weight"][m] for mo in moments]))
        row["noise_ratio_unresolved"] = float(np.mean(~np.isfinite(r_all))) if len(r_all) else math.nan
        row["noise_ratio_limit"] = math.inf if exhaustive else math.sqrt(N / at_batch)
        row["zero_fraction"] = 1.0 - len(r_all) / n_coords if n_coords else math.nan
        row["noise_scale_simple"] = trace / gsq if gsq > 0 else math.inf
        row["grad_norm"] = math.sqrt(max(gsq, 0.0))
        row["noise_trace_per_example"] = trace
        for k, g in enumerate(names[1:], start=1):
            row[f"sigma_equiv.{g}"] = float(sigma[k])
            row[f"sigma_equiv_lo.{g}"] = float(lo[k])
            row[f"sigma_equiv_hi.{g}"] = float(hi[k])
        rows.append(row)
    return rows


