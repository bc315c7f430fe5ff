"""Where does a real model sit on the toy's phase map?  Gradient-noise and sharpness diagnostics for
any torch training loop:

    from focuslab.diagnostics import measure
    stats = measure(model, lambda batch: loss_of(model, batch), batches, batch_size=B,
                    reference=more_batches)

What is measured, on the current parameters (nothing is updated).  The sample is J independent
minibatch gradients g_j of n_j examples each: the K ``batches`` (n_j = ``batch_size``), the
``reference`` batches (``reference_sizes``) and a ``reference_gradient`` the training loop has
already computed at these parameters on other examples (the step's own gradient, read between
backward and the optimizer step: free).  N = sum n_j.  All J gradients feed both the mean and the
variance:

* per coordinate, the mean gbar_i = sum_j n_j g_ji / N and the per-example variance
  s2_i = sum_j n_j (g_ji - gbar_i)^2 / (J - 1) (unbiased for independently drawn examples whatever
  the n_j; equal n_j make it n times the sample variance of the J gradients);  the noise of a
  batch-B gradient, var_i = s2_i / B, at B = ``scale_to`` (default ``batch_size``: models whose
  examples interact within a batch, BatchNorm, must be measured at the run's batch size, and then
  every n_j must be B);  the squared true gradient G_i^2 = gbar_i^2 - s2_i / N, unbiased
  (``exhaustive``: the reference is the whole training set, its mean is G and only ``batches``
  sample the noise).
* **sigma_equiv** = sqrt(sum_i var_i / sum_i G_i^2) = sqrt(B_simple / B), overall and per group:
  the toy's sigma.  The toy multiplies every gradient coordinate by an independent N(1, sigma^2)
  factor, so var_i = sigma^2 G_i^2 for every i and the ratio of the sums is sigma^2 exactly; for a
  real model it is the |G|^2-weighted mean of the per-coordinate var_i / G_i^2, dominated by the
  coordinates that carry the gradient, and it stays resolved far beyond single coordinates'
  limit.  Its confidence interval (``confidence``, default 95 %) leaves out each of the J
  gradients, the independent units of the sample, in turn (a jackknife: ``sigma_interval``).
* **B_simple** = sum s2 / sum G^2, the simple gradient noise scale (McCandlish et al. 2018,
  arXiv 1812.06162): the batch size beyond which bigger batches stop paying (sigma_equiv^2 B).
* **Per-coordinate ratios** r_i = sqrt(var_i / G_i^2), the toy's sigma coordinate by coordinate,
  over the coordinates that are not exactly zero in every gradient (those, e.g. the first-layer
  weights of pixels that are black in every image, have no ratio: their share is
  ``zero_fraction``).  Where the estimate of G_i^2 is not positive the noise swamps the mean
  beyond what N examples resolve: r_i is +inf ("unresolved", a share of the non-zero coordinates).
  Resolution limit: ratios up to about sqrt(N / B) (sqrt(J) with J equal batches at B),
  ``noise_ratio_limit``; the quantiles are reported with it.  The companion summary is the
  |G|-weighted median of r_i (sign descent gains in proportion to |G_i|), which the unresolved
  coordinates (weight ~0) barely move; the plain median describes the many coordinates that carry
  almost none of the gradient.
* **Sharpness** lambda_max: the largest eigenvalue of the loss Hessian by the Lanczos method on
  Hessian-vector products (double backward: exact to rounding; finite differences of gradients
  were tried and dropped -- on a trained GPT the nonlinearity within a float32-resolvable step
  made them read 968 where the answer was 2606), warm-started from the previous measurement's
  Ritz vector when one is given; and, with an Adam-style ``preconditioner`` (sqrt(v_hat) + eps per
  coordinate, ``adam_preconditioner``), the dominant eigenvalue of P^-1/2 H P^-1/2, which is what
  adaptive optimizers' stability depends on.  Fused kernels without a double backward (flash
  attention) must be avoided in ``hessian_loss_fn`` (GPT-2 uses the math attention backend there).

Parameters may carry a leading model axis (``models=M``: M independent models stacked, as the MNIST
study trains them; ``loss_fn`` then returns M per-model losses): every statistic is per model.
Memory: the J gradients are kept (J x the parameters, in their dtype).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Confidence level of the sigma_equiv intervals.
CONFIDENCE = 0.95


def _params(model) -> list:
    if hasattr(model, "parameters"):
        return [p for p in model.parameters() if p.requires_grad]
    return [p for p in model if p.requires_grad]


def _per_model(x, models: int):
    """(models, -1) view of a tensor whose leading axis is the model axis (or (1, -1))."""
    return x.reshape(models, -1) if models > 1 else x.reshape(1, -1)


def _flat_grad(params, loss):
    """The gradient as one flat float64 vector (parameters in order, each flattened)."""
    import torch

    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss.sum(), params)]).double()


def _unflat(x, params) -> list:
    """Views of a flat vector shaped like ``params``."""
    import torch

    return [c.view(p.shape) for c, p in zip(torch.split(x, [p.numel() for p in params]), params)]


def mean_gradient(params, loss_fn: Callable, batches: Sequence, weights: Sequence[float] | None = None):
    """Weighted mean gradient over ``batches`` (weights: their sizes; default equal)."""
    weights = list(weights) if weights is not None else [1.0] * len(batches)
    total = None
    for batch, w in zip(batches, weights):
        g = _flat_grad(params, loss_fn(batch))
        total = g.mul_(w) if total is None else total.add_(g, alpha=w)
    return _unflat(total / sum(weights), params)


def gradient_stack(params, loss_fn: Callable, batches: Sequence, models: int = 1, first: Sequence | None = None,
                   extra: int = 0) -> list:
    """Each batch's gradient, one tensor per parameter of shape (len(batches) + ``extra``, models,
    numel / models) in the parameters' dtype (rows beyond the batches left for the caller);
    ``first``: the gradient of ``batches[0]`` where it is already at hand."""
    import torch

    n = len(batches) + extra
    stack = [torch.empty((n, models, p.numel() // models), dtype=p.dtype, device=p.device) for p in params]
    for j, batch in enumerate(batches):
        grads = first if (j == 0 and first is not None) else torch.autograd.grad(loss_fn(batch).sum(), params)
        for s, g in zip(stack, grads):
            s[j] = _per_model(g.detach(), models)
    return stack


def adam_preconditioner(exp_avg_sq, step: float, beta2: float, eps: float):
    """Adam's diagonal preconditioner sqrt(v_hat) + eps (v_hat = v / (1 - beta2^t)) of one tensor of
    second moments ``exp_avg_sq`` after ``step`` steps: what P^-1/2 H P^-1/2 is taken with."""
    return (exp_avg_sq.detach() / (1 - beta2 ** float(step))).sqrt() + eps


def optimizer_preconditioner(optimizer, params) -> list | None:
    """Adam's preconditioner (``adam_preconditioner``) for each of ``params`` from a torch Adam or
    AdamW's state; None for other optimizers or before every parameter has taken a step.  The one
    place that knows where an optimizer keeps its second moments."""
    import torch

    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p in params:
        st = optimizer.state.get(p, {})
        if "exp_avg_sq" not in st or id(p) not in group_of:
            return None
        g = group_of[id(p)]
        out.append(adam_preconditioner(st["exp_avg_sq"], float(st["step"]), g["betas"][1], g["eps"]))
    return out


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


# --- sharpness ------------------------------------------------------------------------------------
#: Weight of a random unit vector added to a unit warm start (see top_eigenvalue).
WARM_RANDOM_SHARE = 0.1


def top_eigenvalue(params, loss_fn: Callable, batch, models: int = 1, iters: int = 20, tol: float = 1e-6,
                   v0=None, preconditioner=None, seed: int = 0, hvp: Callable | None = None):
    """Largest eigenvalue of the Hessian of ``loss_fn(batch)`` (per model) by the Lanczos method on
    Hessian-vector products (full reorthogonalisation, at most ``iters`` steps); with
    ``preconditioner`` P (tensors like the parameters), of P^-1/2 H P^-1/2.  It stops once the top
    Ritz pair's residual |H x - theta x| is at most ``tol`` |theta| for every model: then theta is
    within tol |theta| of an eigenvalue.  Two cheaper rules were tried and dropped, both on MNIST
    runs against converged solves: stopping when theta stops moving (from a warm start it stopped
    after 2-3 steps at half of lambda_max, once at a twentieth: 7.8 for 145), and the gap bound
    r^2 / (theta_1 - theta_2) with the gap taken from the Ritz values (up to 43 % low: early Ritz
    values overstate the gap); a residual of 3 % instead of 1 % was up to 15 % low.  With 1 % the
    largest error seen was 0.14 %.  Lanczos finds the largest *algebraic* eigenvalue and converges
    far faster than power iteration (which at 20 iterations gave 2.4 where the answer was ~140, on
    a GPT model at initialisation).  Hessian-vector products by double backward.

    The Lanczos vectors are flat (models, n) tensors: one matrix product per reorthogonalisation
    instead of a loop over parameter tensors.  They are stored in float64 for float64 parameters,
    else float32 (memory: up to ``iters`` + 1 vectors of the parameters' size).  ``v0`` warm-starts
    it (the previous measurement's Ritz vector, as returned, or any start such as the gradient; a
    zero one is ignored), plus WARM_RANDOM_SHARE of a random unit vector so that every direction
    keeps a share of the start; ``hvp`` reuses the retained graph of an earlier call on the same
    loss and batch.  Returns (eigenvalues (models,), the top Ritz vector (models, n), steps)."""
    import torch

    hessian_times = hvp or _hvp(params, loss_fn, batch)
    dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
    device = params[0].device
    shapes = [p.shape for p in params]
    sizes = [p.numel() // models for p in params]

    def flat(ts):
        return torch.cat([_per_model(t.detach(), models).to(dtype) for t in ts], dim=1)

    def unflat(x):
        return [c.reshape(s) for c, s in zip(torch.split(x, sizes, dim=1), shapes)]

    scale = flat(preconditioner).double().rsqrt().to(dtype) if preconditioner is not None else None

    def op(x):
        w = x * scale if scale is not None else x
        hv = flat(hessian_times(unflat(w)))
        return hv * scale if scale is not None else hv

    def dot(a, b):  # per model, accumulated in float64 (8x faster than converting both vectors first)
        return (a * b).sum(1, dtype=torch.float64)

    def unit(x):
        return x / torch.sqrt(dot(x, x)).to(dtype)[:, None]

    gen = torch.Generator().manual_seed(seed)
    v = unit(torch.randn((models, sum(sizes)), generator=gen, dtype=dtype).to(device))
    if v0 is not None:  # a warm start alone can sit on a no-longer-top eigenvector: keep a random share
        start = (v0 if torch.is_tensor(v0) else flat(v0)).to(device, dtype)
        norm = torch.sqrt(dot(start, start))
        usable = torch.isfinite(norm) & (norm > 0)  # a zero or non-finite start leaves the random one
        start = torch.where(usable[:, None], start / torch.where(usable, norm, 1.0).to(dtype)[:, None], 0.0)
        v = unit(WARM_RANDOM_SHARE * v + start)
    basis = torch.empty((iters + 1, models, v.shape[1]), dtype=dtype, device=device)
    basis[0] = v
    alphas, betas = [], []
    ritz = None
    steps = 0
    for steps in range(1, iters + 1):
        q = basis[:steps]
        w = op(q[-1])
        alpha = dot(q[-1], w)
        w = w - alpha.to(device, dtype)[:, None] * q[-1]  # the three-term recurrence ...
        if steps > 1:
            w = w - betas[-1].to(device, dtype)[:, None] * q[-2]
        # ... then one full reorthogonalisation pass against every basis vector, which removes what
        # rounding left (on the MNIST comparison: the same eigenvalues and step counts as two full
        # classical Gram-Schmidt passes, at the cost of one)
        w = w - torch.einsum("km,kmn->mn", torch.einsum("kmn,mn->km", q, w), q)
        alphas.append(alpha.cpu())
        beta = torch.sqrt(torch.clamp(dot(w, w), min=0.0))
        top, ritz = _ritz(alphas, betas, models)
        residual = beta.cpu().double() * torch.abs(ritz[:, -1])  # |H x - top x| of the Ritz vector x
        done = bool(torch.all(residual <= tol * torch.abs(top))) or bool(torch.all(beta < 1e-12))
        if done or steps == iters:
            break
        betas.append(beta.cpu())
        basis[steps] = w / torch.clamp(beta, min=1e-300).to(dtype)[:, None]
    vec = torch.einsum("mk,kmn->mn", ritz.to(device, dtype), basis[:ritz.shape[1]])
    return top.numpy(), vec, steps


def _ritz(alphas, betas, models):
    """Top eigenvalue of each model's Lanczos tridiagonal matrix and its eigenvector (coordinates
    in the Lanczos basis), shapes (models,) and (models, k)."""
    import torch

    k = len(alphas)
    tops, vecs = [], []
    for m in range(models):
        t = np.zeros((k, k))
        for i in range(k):
            t[i, i] = float(alphas[i][m])
            if i + 1 < k:
                t[i, i + 1] = t[i + 1, i] = float(betas[i][m])
        values, vectors = np.linalg.eigh(t)
        tops.append(values[-1])
        vecs.append(vectors[:, -1])
    return torch.tensor(tops, dtype=torch.float64), torch.tensor(np.array(vecs), dtype=torch.float64)


def _hvp(params, loss_fn, batch):
    """v -> H v for the loss on ``batch`` (double backward through one retained graph)."""
    import torch

    grads = torch.autograd.grad(loss_fn(batch).sum(), params, create_graph=True)

    def hessian_times(w):
        return torch.autograd.grad(grads, params, grad_outputs=[x.to(p.dtype) for x, p in zip(w, params)],
                                   retain_graph=True)
    hessian_times.gradient = [g.detach() for g in grads]  # the batch's gradient, for free
    return hessian_times




def measure(model, loss_fn: Callable, batches: Sequence, *, batch_size: int, reference: Sequence | None = None,
            reference_sizes: Sequence[int] | None = None, exhaustive: bool = False,
            reference_gradient: Sequence | None = None, reference_gradient_size: int | None = None,
            scale_to: int | None = None, models: int = 1, groups: dict | None = None, hessian: bool = True,
            hessian_batch=None, hessian_iters: int = 20, hessian_tol: float = 1e-3,
            hessian_loss_fn: Callable | None = None, eigvec=None, preconditioner=None,
            eigvec_preconditioned=None, batch_gradients: Callable | None = None,
            confidence: float = CONFIDENCE) -> dict:
    """All diagnostics at the current parameters (see the module docstring); per model when
    ``models`` > 1.  ``batches``: K batches of ``batch_size`` examples.  ``reference``: further
    independent batches of ``reference_sizes`` examples (default ``batch_size`` each), or with
    ``exhaustive`` the batches that together make up the whole training set (their size-weighted
    mean is then the exact gradient, and only ``batches`` sample the noise).
    ``reference_gradient``: a gradient (tensors like the parameters) already computed at these
    parameters on ``reference_gradient_size`` examples independent of the others (not with
    ``exhaustive``).  ``scale_to``: the batch the noise is reported at (default ``batch_size``).
    ``groups`` maps a group name to indices into the parameter list (default: one group per
    parameter tensor, named p0, p1, ...).  ``hessian_loss_fn`` (default ``loss_fn``) is the loss the
    Hessian is taken of: it must support double backward.  ``batch_gradients(batches)``, where a
    model can do it faster than one backward pass per batch (stacked copies of a small model): one
    tensor per parameter, shape (len(batches), *param.shape), row j the gradient of
    ``loss_fn(batches[j])``; it then computes the K batches' and the reference's gradients in one
    call (equal sizes only).  Returns plain numbers (one row per model in "per_model"), plus
    "eigvec" (and "eigvec_preconditioned") to warm-start the next call, and "seconds" spent."""
    import torch

    t0 = time.perf_counter()
    if reference_gradient is not None and (exhaustive or not reference_gradient_size):
        raise ValueError("reference_gradient needs reference_gradient_size and cannot join an exhaustive reference")
    params = _params(model)
    k = len(batches)
    if k < 2:
        raise ValueError("gradient statistics need at least two batches (K >= 8 recommended)")
    reference = list(reference or [])
    ref_sizes = [int(s) for s in reference_sizes] if reference_sizes is not None else [batch_size] * len(reference)
    if len(ref_sizes) != len(reference):
        raise ValueError(f"reference_sizes has {len(ref_sizes)} entries for {len(reference)} reference batches")
    h_loss = hessian_loss_fn or loss_fn
    h_batch = hessian_batch if hessian_batch is not None else batches[0]
    hvp = _hvp(params, h_loss, h_batch) if hessian else None  # one graph for both eigenproblems
    sampled = list(batches) if exhaustive else list(batches) + reference
    sizes = [batch_size] * k + ([] if exhaustive else ref_sizes)
    extra = 1 if reference_gradient is not None else 0
    if batch_gradients is not None and not exhaustive:
        if len(set(sizes)) > 1:
            raise ValueError("batch_gradients needs reference batches of batch_size examples")
        stack = [g.detach().reshape(len(sampled), models, -1) for g in batch_gradients(sampled)]
        if extra:
            stack = [torch.cat([s, s.new_empty((1, *s.shape[1:]))]) for s in stack]
    else:  # the Hessian's graph holds the first batch's gradient already
        stack = gradient_stack(params, loss_fn, sampled, models, extra=extra,
                               first=hvp.gradient if hvp is not None and hessian_batch is None else None)
    if extra:
        for s, g in zip(stack, reference_gradient):
            s[-1] = _per_model(g.detach(), models).to(s.dtype)
        sizes.append(int(reference_gradient_size))
    true_mean = mean_gradient(params, loss_fn, reference, ref_sizes) if exhaustive else None
    at = scale_to or batch_size
    rows = noise_statistics(stack, sizes, at_batch=at, models=models, groups=groups, true_mean=true_mean,
                            confidence=confidence)
    del stack
    out = {"models": models, "gradients": len(sizes), "batch_size": batch_size, "noise_at_batch": at,
           "reference_size": int(sum(sizes)),
           "reference": "exhaustive" if exhaustive else f"{len(sizes)} sampled gradients, {int(sum(sizes))} examples"}
    if hessian:
        # a cold solve starts from the Hessian batch's gradient, which lies mostly in the top
        # eigenspace (Gur-Ari et al. 2018, arXiv 1812.04754): gpt2-mini at initialisation took 12
        # Lanczos steps from it against 21 from a random vector, to the same residual (an MNIST
        # batch-64 unit took 14 against 11: not a rule, but GPT's solves are the costly ones)
        def gradient():  # flat (models, n), only for a cold solve
            return torch.cat([_per_model(g, models) for g in hvp.gradient], dim=1)

        lam, vec, it = top_eigenvalue(params, h_loss, h_batch, models, hessian_iters, hessian_tol,
                                      v0=eigvec if eigvec is not None else gradient(), hvp=hvp)
        for m in range(models):
            rows[m]["lambda_max"] = float(lam[m])
            rows[m]["lambda_iterations"] = it
        out["eigvec"] = vec
        if preconditioner is not None:
            if eigvec_preconditioned is None:  # the gradient in the preconditioned coordinates
                grad = gradient()
                scale = torch.cat([_per_model(x.detach(), models) for x in preconditioner], dim=1).double().rsqrt()
                eigvec_preconditioned = grad * scale.to(grad.dtype)
            lam_p, vec_p, it_p = top_eigenvalue(params, h_loss, h_batch, models, hessian_iters, hessian_tol,
                                                v0=eigvec_preconditioned, preconditioner=preconditioner, hvp=hvp)
            for m in range(models):
                rows[m]["lambda_max_preconditioned"] = float(lam_p[m])
                rows[m]["lambda_iterations_preconditioned"] = it_p
            out["eigvec_preconditioned"] = vec_p
    out["per_model"] = rows
    out["seconds"] = time.perf_counter() - t0
    return out
