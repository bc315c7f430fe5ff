"""Where does a real model sit on the toy's phase map?  Gradient-noise and sharpness diagnostics for
any torch training loop:

    from focuslab.diagnostics import measure
    stats = measure(model, lambda batch: loss_of(model, batch), batches, reference=ref_batches,
                    batch_size=B, reference_size=len(train_set), exhaustive=True)

What is measured, on the current parameters (nothing is updated):

* **Noise ratio per coordinate**, r_i = std_i / |mean_i|, the toy's sigma: a gradient g (1 + sigma z)
  has std / |mean| = sigma.  std_i comes from the K ``batches`` (K >= 8 independent minibatch
  gradients).  The mean does *not*: taken from the same K gradients, |mean_i| is itself noisy and
  r_i is pulled toward sqrt(K) where noise is high.  It comes from ``reference`` batches instead --
  the whole training set where it fits (``exhaustive=True``: then it is the true gradient) or a
  larger batch, whose own noise is removed from the squared mean without bias:
  G_i^2 = mean_ref_i^2 - var_i * b / reference_size.  Where that estimate is not positive the noise
  swamps the mean beyond what the reference can resolve and r_i is +inf (the quantiles say how many).
  A gradient the training loop has already computed at these parameters on other examples (the
  step's own minibatch gradient, read between backward and the optimizer step) can join the
  reference for free: ``reference_gradient=[p.grad ...]``, ``reference_gradient_size=B``.
  Reported as quantiles over coordinates, overall and per parameter group.
* **Simple gradient noise scale** B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018,
  arXiv 1812.06162), Sigma the per-example covariance: tr(Sigma) = b * sum_i var_i for minibatches
  of b examples, |G|^2 as above.  The batch size beyond which bigger batches stop paying.
* **Sharpness** lambda_max: the largest eigenvalue of the loss Hessian by the Lanczos method on
  Hessian-vector products (double backward: exact to rounding; finite differences of gradients
  were tried and dropped -- on a trained GPT the nonlinearity within a float32-resolvable step
  made them read 968 where the answer was 2606), warm-started from the previous measurement's
  Ritz vector when one is given; and, with an Adam-style ``preconditioner`` (sqrt(v_hat) + eps per
  coordinate), the dominant eigenvalue of P^-1/2 H P^-1/2, which is what adaptive optimizers'
  stability depends on.  Fused kernels without a double backward (flash attention) must be
  avoided in ``hessian_loss_fn`` (GPT-2 uses the math attention backend there).

``batch_size`` is the size b of the diagnostic batches.  When the run's batch B is larger
(``scale_to=B``: GPT-2 diagnostics use micro-batches so that K of them cost one training
iteration), the noise is reported at B assuming independently sampled examples: var_B = var_b * b / B.
That assumption fails for models whose examples interact within a batch (BatchNorm); there, measure
at the run's batch size.

Parameters may carry a leading model axis (``models=M``: M independent models stacked, as the MNIST
study trains them; ``loss_fn`` then returns M per-model losses): every statistic is per model.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _params(model) -> list:
    if hasattr(model, "parameters"):
        return [p for p in model.parameters() if p.requires_grad]
    return [p for p in model if p.requires_grad]


def _per_model(x, models: int):
    """(models, -1) view of a tensor whose leading axis is the model axis (or (1, -1))."""
    return x.reshape(models, -1) if models > 1 else x.reshape(1, -1)


def _flat_grad(params, loss):
    """The gradient as one flat float64 vector (parameters in order, each flattened): a few large
    operations per batch instead of several per parameter tensor."""
    import torch

    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss.sum(), params)]).double()


def _unflat(x, params) -> list:
    """Views of a flat vector shaped like ``params``."""
    import torch

    return [c.view(p.shape) for c, p in zip(torch.split(x, [p.numel() for p in params]), params)]


def gradient_stats(params, loss_fn: Callable, batches: Sequence, models: int = 1, first: Sequence | None = None):
    """Per-coordinate mean and variance (ddof=1) of the gradients over ``batches`` (float64);
    ``first``: the gradient of ``batches[0]`` where it is already at hand."""
    import torch

    k = len(batches)
    if k < 2:
        raise ValueError("gradient statistics need at least two batches (K >= 8 recommended)")
    total = square = None
    for j, batch in enumerate(batches):
        if j == 0 and first is not None:
            g = torch.cat([x.reshape(-1) for x in first]).double()
        else:
            g = _flat_grad(params, loss_fn(batch))
        if total is None:
            total, square = g.clone(), g * g
        else:
            total += g
            square.addcmul_(g, g)
    mean = total / k
    var = ((square - k * mean * mean) / (k - 1)).clamp_(min=0.0)
    return _unflat(mean, params), _unflat(var, params)


def stacked_stats(stack: Sequence, k: int, weights: Sequence[float] | None = None):
    """The same statistics from gradients computed together: ``stack`` holds one tensor per
    parameter, shape (n, *param.shape), row j the gradient of batch j.  Returns the mean and
    variance (ddof=1) of the first ``k`` rows and the weighted mean of the others (None when there
    are none), all float64."""
    import torch

    stack = [g.detach().double() for g in stack]
    mean = [g[:k].mean(0) for g in stack]
    # two passes by hand: torch.var over the leading axis takes a slow CPU path (~10x here)
    var = [(g[:k] - m).square().sum(0) / (k - 1) for g, m in zip(stack, mean)]
    rest = None
    n = stack[0].shape[0] - k
    if n > 0:
        w = torch.as_tensor(list(weights) if weights is not None else [1.0] * n, dtype=torch.float64,
                            device=stack[0].device)
        rest = [torch.tensordot(w, g[k:], dims=1) / w.sum() for g in stack]
    return mean, var, rest


def mean_gradient(params, loss_fn: Callable, batches: Sequence, weights: Sequence[float] | None = None):
    """Weighted mean gradient over ``batches`` (weights: their sizes; default equal)."""
    weights = list(weights) if weights is not None else [1.0] * len(batches)
    total = None
    for batch, w in zip(batches, weights):
        g = _flat_grad(params, loss_fn(batch))
        total = g.mul_(w) if total is None else total.add_(g, alpha=w)
    return _unflat(total / sum(weights), params)


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


_BIG = np.finfo(np.float64).max


def _quantile(r, q):
    """Interpolated quantile(s) of ratios that may be +inf (unresolved): inf stands in as the
    largest float, so interpolation stays finite, and a result that large is reported as +inf.
    ``q`` a number (returns a float) or a sequence (returns an array, one partition for all)."""
    v = np.quantile(np.where(np.isfinite(r), r, _BIG), q)
    v = np.where(v > 1e300, np.inf, v)
    return float(v) if np.ndim(v) == 0 else v


def _quantiles(r, qs=QUANTILES) -> dict:
    names = [f"q{int(round(100 * q)):02d}" for q in qs]
    values = _quantile(r, list(qs)) if len(r) else [math.nan] * len(qs)
    out = {n: float(v) for n, v in zip(names, values)}
    out["median"] = out["q50"] if "q50" in out else (_quantile(r, 0.5) if len(r) else math.nan)
    out["unresolved"] = float(np.mean(~np.isfinite(r))) if len(r) else math.nan
    return out


def measure(model, loss_fn: Callable, batches: Sequence, *, reference: Sequence | None = None,
            batch_size: int, reference_size: int | None = None, exhaustive: bool = False,
            reference_weights: Sequence[float] | None = None, scale_to: int | None = None, models: int = 1,
            groups: dict | None = None, hessian: bool = True, hessian_batch=None, hessian_iters: int = 20,
            eigvec=None, preconditioner=None, eigvec_preconditioned=None, pool: bool = False,
            hessian_tol: float = 1e-3, hessian_loss_fn: Callable | None = None,
            reference_gradient: Sequence | None = None, reference_gradient_size: int | None = None,
            batch_gradients: Callable | None = None) -> dict:
    """All diagnostics at the current parameters (see the module docstring); per model when
    ``models`` > 1.  ``groups`` maps a group name to indices into the parameter list (default: one
    group per parameter tensor, named p0, p1, ...).  ``pool``: fold the K batches into a
    non-exhaustive reference's mean (more data for the same cost).  ``hessian_loss_fn`` (default
    ``loss_fn``) is the loss the Hessian is taken of: it must support double backward.
    ``reference_gradient``: a mean gradient (tensors like the parameters) already computed at these
    parameters on ``reference_gradient_size`` examples independent of ``batches``, pooled into the
    reference mean by size (not with ``exhaustive``).  ``batch_gradients(batches)``, where a model
    can do it faster than one backward pass per batch (stacked copies of a small model): one tensor
    per parameter, shape (len(batches), *param.shape), row j the gradient of ``loss_fn(batches[j])``;
    it then computes the K batches' and the reference's gradients in one call.  Returns
    plain numbers (lists per model), plus "eigvec" (and "eigvec_preconditioned") to warm-start the
    next call, and "seconds" spent."""
    import torch

    t0 = time.perf_counter()
    if reference_gradient is not None and (exhaustive or not reference_gradient_size):
        raise ValueError("reference_gradient needs reference_gradient_size and cannot join an exhaustive reference")
    params = _params(model)
    k = len(batches)
    if k < 2:
        raise ValueError("gradient statistics need at least two batches (K >= 8 recommended)")
    h_loss = hessian_loss_fn or loss_fn
    h_batch = hessian_batch if hessian_batch is not None else batches[0]
    hvp = _hvp(params, h_loss, h_batch) if hessian else None  # one graph for both eigenproblems
    if batch_gradients is not None:
        mean, var, ref_mean = stacked_stats(batch_gradients(list(batches) + list(reference or [])), k,
                                            reference_weights)
    else:  # the Hessian's graph holds the first batch's gradient already
        mean, var = gradient_stats(params, loss_fn, batches, models,
                                   first=hvp.gradient if hvp is not None and hessian_batch is None else None)
        ref_mean = mean_gradient(params, loss_fn, reference, reference_weights) if reference else None
    parts = []  # (mean gradient, examples) pooled into the reference by size
    if reference:
        parts.append((ref_mean, reference_size or batch_size * len(reference)))
    if reference_gradient is not None:
        parts.append(([g.detach().double() for g in reference_gradient], reference_gradient_size))
    if parts:
        if pool and not exhaustive:  # the K batches are more examples of the same mean
            parts.append((mean, k * batch_size))
        size = sum(n for _, n in parts)
        g_ref = parts[0][0] if len(parts) == 1 else [sum(n * g[i] for g, n in parts) / size for i in range(len(params))]
        noise_in_ref = 0.0 if exhaustive else batch_size / size
    else:  # the K batches themselves: unbiased, but noisy where the noise is high
        g_ref, noise_in_ref = mean, 1.0 / k
    scale = batch_size / scale_to if scale_to else 1.0
    per = lambda xs: [_per_model(x, models).cpu().numpy() for x in xs]  # noqa: E731
    var_np, ref_np = per(var), per(g_ref)
    g2 = [r * r - noise_in_ref * v for r, v in zip(ref_np, var_np)]
    ratio = [np.where(g > 0, np.sqrt(v * scale / np.where(g > 0, g, 1.0)), np.inf) for v, g in zip(var_np, g2)]
    groups = groups or {f"p{i}": [i] for i in range(len(params))}
    out = {"models": models, "batches": k, "batch_size": batch_size, "noise_at_batch": scale_to or batch_size,
           "reference_size": (size if parts else k * batch_size),
           "reference": "exhaustive" if (parts and exhaustive) else ("independent" if parts else "the K batches")}
    rows = []
    for m in range(models):
        r_all = np.concatenate([r[m] for r in ratio])
        q = _quantiles(r_all)
        tr = batch_size * sum(float(v[m].sum()) for v in var_np)
        gsq = sum(float(g[m].sum()) for g in g2)
        row = {f"noise_ratio_{k_}": v for k_, v in q.items()}
        row["noise_ratio_median"] = q["median"]
        row["noise_scale_simple"] = tr / gsq if gsq > 0 else math.inf
        row["grad_norm"] = math.sqrt(max(gsq, 0.0))
        row["noise_trace_per_example"] = tr
        for name, idx in groups.items():
            rg = np.concatenate([ratio[i][m] for i in idx])
            row[f"noise_ratio_median.{name}"] = _quantile(rg, 0.5) if len(rg) else math.nan
        rows.append(row)
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
            lam_p, vec_p, _ = top_eigenvalue(params, h_loss, h_batch, models, hessian_iters, hessian_tol,
                                             v0=eigvec_preconditioned, preconditioner=preconditioner, hvp=hvp)
            for m in range(models):
                rows[m]["lambda_max_preconditioned"] = float(lam_p[m])
            out["eigvec_preconditioned"] = vec_p
    out["per_model"] = rows
    out["seconds"] = time.perf_counter() - t0
    return out
