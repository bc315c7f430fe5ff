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

One module per part of the method: ``gradients`` (the per-batch gradients and an optimizer's
preconditioner), ``noise`` (the noise statistics of the gradient stack) and ``sharpness`` (lambda_max
by Lanczos); ``measure``, here, takes them together at the current parameters.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from .gradients import (_flat_grad, _params, _per_model, _unflat, adam_preconditioner,  # noqa: F401
                        gradient_stack, mean_gradient, optimizer_preconditioner)
from .noise import CONFIDENCE, QUANTILES, noise_statistics, sigma_interval  # noqa: F401
from .sharpness import WARM_RANDOM_SHARE, _hvp, top_eigenvalue  # noqa: F401


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
        stack = gradient_stack(params, loss_fn, sampled, models=models, extra=extra,
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

        lam, vec, it = top_eigenvalue(params, h_loss, h_batch, models=models, iters=hessian_iters, tol=hessian_tol,
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
            lam_p, vec_p, it_p = top_eigenvalue(params, h_loss, h_batch, models=models, iters=hessian_iters,
                                                tol=hessian_tol, v0=eigvec_preconditioned,
                                                preconditioner=preconditioner, hvp=hvp)
            for m in range(models):
                rows[m]["lambda_max_preconditioned"] = float(lam_p[m])
                rows[m]["lambda_iterations_preconditioned"] = it_p
            out["eigvec_preconditioned"] = vec_p
    out["per_model"] = rows
    out["seconds"] = time.perf_counter() - t0
    return out
