"""Diagnostics along a GPT-2 run: focuslab.diagnostics measured on the run's own model, optimizer and
fixed batches at iteration 0 and every --diagnostics-every iterations, into RUN/diagnostics.parquet,
without changing the training (its RNG is saved and restored)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

class _Diagnostics:
    """focuslab.diagnostics at iteration 0 and every N, on the unwrapped model and fixed batches.

    The noise sample is J = K + M + 1 gradients: K micro-batches of batch_size/K sequences (together
    one iteration's compute), M = ``diagnostics_reference`` further batches of batch_size sequences,
    and the training step's own gradient (read after its backward, before clipping and the optimizer
    step: free; computed from the same batches at the last iteration, where no step follows, or
    when a float16 step overflowed).  All J feed the mean and the per-example variance (GPT-2's
    sequences are independent examples, so gradients of different sizes combine, and the noise is
    reported at the run's batch of batch_size x gradient_accumulation_steps sequences).
    lambda_max on one micro-batch by double-backward Hessian-vector products (math attention
    backend) warm-started from the last measurement, Lanczos stopped once the top Ritz pair's
    residual is below 1 % of it (focuslab.diagnostics.top_eigenvalue), and for AdamW also the
    preconditioned lambda_max (warm-started the same way).  The first batch's gradient is read from
    the Hessian's graph (computed with the math attention backend: the same gradient to rounding).
    The torch RNG is saved and restored, so the training is bit-identical with and without
    diagnostics."""

    def __init__(self, cfg, model, data, opt, *, device, run, amp):
        self.cfg, self.model, self.opt, self.run, self.amp = cfg, model, opt, Path(run), amp
        self.data, self.device = data, device
        k = cfg.diagnostics_batches
        micro = max(1, cfg.batch_size // k)
        self.micro = micro
        self.batches = [data.batch("train", micro, cfg.block_size, cfg.seed + 7, 0, j, device) for j in range(k)]
        self.reference = [data.batch("train", cfg.batch_size, cfg.block_size, cfg.seed + 8, 0, j, device)
                          for j in range(cfg.diagnostics_reference)]
        names = [n for n, p in model.named_parameters()]
        self.groups = {}
        for i, n in enumerate(names):
            key = "embeddings" if n.startswith(("wte", "wpe")) else (
                "block" + n.split(".")[1] if n.startswith("blocks.") else "final_ln")
            self.groups.setdefault(key, []).append(i)
        self.rows, self.seconds, self.eigvec, self.eigvec_p = [], 0.0, None, None
        path = self.run / "diagnostics.parquet"
        if path.exists():  # a resumed run keeps the rows measured before
            import pandas as pd

            self.rows = pd.read_parquet(path).to_dict("records")

    def loss(self, batch):
        x, y = batch
        with self.amp:
            return self.model(x, y)[1].float()

    def hessian_loss(self, batch):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return self.loss(batch)

    def step_gradient(self, it: int):
        """The mean gradient over iteration ``it``'s training batches (all ranks' together), as the
        training step would compute it."""
        from ..diagnostics import mean_gradient

        cfg = self.cfg
        batches = [self.data.batch("train", cfg.batch_size, cfg.block_size, cfg.seed, it, k, self.device)
                   for k in range(cfg.gradient_accumulation_steps)]
        return mean_gradient([p for p in self.model.parameters()], self.loss, batches)

    def measure(self, it: int, lr: float, elapsed: float, step_gradient=None, grad_scale: float = 1.0) -> float:
        """One row at iteration ``it``; ``step_gradient``: the training step's gradient at these
        parameters (p.grad after backward, scaled by ``grad_scale``).  Returns the seconds spent."""
        import pandas as pd

        from ..diagnostics import measure, optimizer_preconditioner
        from ..results import write_parquet

        if any(r["step"] == it for r in self.rows):
            return 0.0
        t0 = time.perf_counter()
        cpu_rng = torch.get_rng_state()
        if step_gradient is not None:
            step_gradient = [g.detach().double() / grad_scale for g in step_gradient]
            if not all(bool(torch.isfinite(g).all()) for g in step_gradient):
                step_gradient = None  # an overflowed float16 step
        if step_gradient is None:
            step_gradient = self.step_gradient(it)
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        pre = optimizer_preconditioner(self.opt, list(self.model.parameters())) \
            if it > 0 and self.cfg.diagnostics_preconditioned else None
        # J = K micro-batches + the reference batches + the step's gradient, all in the mean and the
        # variance; the Hessian by double backward through the math attention backend (the fused
        # kernels have none)
        out = measure(self.model, self.loss, self.batches, reference=self.reference, batch_size=self.micro,
                      reference_sizes=[self.cfg.batch_size] * len(self.reference),
                      scale_to=self.cfg.batch_size * self.cfg.gradient_accumulation_steps, groups=self.groups,
                      eigvec=self.eigvec, eigvec_preconditioned=self.eigvec_p if pre is not None else None,
                      hessian_iters=20 if self.eigvec is None else 10, hessian_tol=1e-2, preconditioner=pre,
                      hessian_loss_fn=self.hessian_loss, reference_gradient=step_gradient,
                      reference_gradient_size=self.cfg.batch_size * self.cfg.gradient_accumulation_steps)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        self.eigvec, self.eigvec_p = out["eigvec"], out.get("eigvec_preconditioned")
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.rows.append({"step": it, "tokens": it * self.cfg.batch_size * self.cfg.block_size *
                          self.cfg.gradient_accumulation_steps, "lr": lr, "optimizer": self.cfg.optimizer,
                          **out["per_model"][0], "seconds": seconds, "elapsed": elapsed})
        write_parquet(pd.DataFrame(self.rows), self.run / "diagnostics.parquet")
        return seconds
