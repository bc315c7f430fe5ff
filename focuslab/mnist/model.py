"""The paper's MNIST MLP, one at a time (nn.Module) and K at a time (stacked weights).

784 -> 128 x5 -> 10: every Linear is preceded by BatchNorm1d, hidden Linears are followed by ReLU
(BN -> Linear -> ReLU, ..., BN -> Linear).  Linear weights get weight decay; biases and BatchNorm
parameters do not.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (784, 128, 128, 128, 128, 128, 10)
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
FOLD_MIN_BATCH = 128  # from this batch size on, fold the input BatchNorm into the first Linear


def init_params(generator: torch.Generator, widths=WIDTHS, dtype=torch.float32) -> dict:
    """nn.Linear's default init (uniform +-1/sqrt(fan_in)) and BatchNorm's (ones, zeros), drawn from
    ``generator`` so that a replicate's models start identically in both trainers."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        bound = 1 / math.sqrt(n_in)
        params[f"bn{i}.weight"] = torch.ones(n_in, dtype=dtype)
        params[f"bn{i}.bias"] = torch.zeros(n_in, dtype=dtype)
        params[f"fc{i}.weight"] = (torch.rand(n_out, n_in, generator=generator, dtype=dtype) * 2 - 1) * bound
        params[f"fc{i}.bias"] = (torch.rand(n_out, generator=generator, dtype=dtype) * 2 - 1) * bound
    return params


def decays(name: str) -> bool:
    """Weight decay on Linear weights only."""
    return name.startswith("fc") and name.endswith(".weight")


class MLP(nn.Module):
    """One model, as in the paper's script (the reference for the batched trainer)."""

    def __init__(self, params: dict, widths=WIDTHS):
        super().__init__()
        depth = len(widths) - 1
        self.bn = nn.ModuleList(nn.BatchNorm1d(widths[i], eps=BN_EPS, momentum=BN_MOMENTUM) for i in range(depth))
        self.fc = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(depth))
        dtype = params["fc0.weight"].dtype
        self.to(dtype)
        with torch.no_grad():
            for i in range(depth):
                for kind, mod in (("bn", self.bn[i]), ("fc", self.fc[i])):
                    mod.weight.copy_(params[f"{kind}{i}.weight"])
                    mod.bias.copy_(params[f"{kind}{i}.bias"])

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay = [m.weight for m in self.fc]
        rest = [p for m in self.fc for p in (m.bias,)] + [p for m in self.bn for p in m.parameters()]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def forward(self, x):  # x: (B, 784)
        for i, (bn, fc) in enumerate(zip(self.bn, self.fc)):
            x = fc(bn(x))
            if i < len(self.fc) - 1:
                x = x.relu()
        return x


class BatchedMLP:
    """K = n_lr x R independent MLPs with stacked weights (model k uses data replicate k % R).

    Parameters are (K, ...) leaf tensors: fc{i}.weight is stored transposed, (K, in, out).  Each
    model has its own BatchNorm batch statistics, affine parameters and running statistics.

    Speed: the input BatchNorm's statistics depend only on a replicate's data, so the first layer
    is computed as  BN0(x) W + b = xhat_r (gamma_k * W_k) + (beta_k W_k + b_k):  one GEMM per
    replicate against all of its models' folded weights, never materialising a (K, B, 784) input.
    Hidden BatchNorms are one fused multiply-add over the activations.
    """

    def __init__(self, per_model: list[dict], replicates: int, device="cpu"):
        self.depth = len([k for k in per_model[0] if k.startswith("fc") and k.endswith(".weight")])
        self.K, self.R = len(per_model), replicates
        self.params = {}
        for name in per_model[0]:
            stacked = torch.stack([p[name] for p in per_model])
            if name.startswith("fc") and name.endswith(".weight"):
                stacked = stacked.transpose(1, 2)
            self.params[name] = stacked.contiguous().to(device).requires_grad_()
        self.running = {}
        for i in range(self.depth):
            n = per_model[0][f"bn{i}.weight"].numel()
            dt = per_model[0][f"bn{i}.weight"].dtype
            self.running[f"bn{i}.mean"] = torch.zeros(self.K, n, dtype=dt, device=device)
            self.running[f"bn{i}.var"] = torch.ones(self.K, n, dtype=dt, device=device)

    def subset(self, models: list[int]) -> "BatchedMLP":
        """Copies of some of the models (their parameters as new leaves, one replicate's data layout),
        e.g. for diagnostics that must not touch the training state."""
        sub = BatchedMLP.__new__(BatchedMLP)
        sub.depth, sub.K, sub.R = self.depth, len(models), 1
        index = torch.as_tensor(models, device=next(iter(self.params.values())).device)
        sub.params = {n: p.detach()[index].clone().requires_grad_() for n, p in self.params.items()}
        sub.running = {n: r[index].clone() for n, r in self.running.items()}
        return sub

    def repeated(self, n: int) -> "BatchedMLP":
        """Each model n times in a row as new leaves, copy j reading data replicate j (model k * n + j
        is a copy of model k): the gradients of n copies on n different batches in one pass."""
        rep = BatchedMLP.__new__(BatchedMLP)
        rep.depth, rep.K, rep.R = self.depth, self.K * n, n
        rep.params = {k: p.detach().repeat_interleave(n, dim=0).requires_grad_() for k, p in self.params.items()}
        rep.running = {k: r.repeat_interleave(n, dim=0) for k, r in self.running.items()}
        return rep

    def _stats(self, i: int, x: torch.Tensor, train: bool, rows: int, track: bool = True):
        """Batch (train) or running (eval) mean/var, (rows, F); updates running stats in train unless
        ``track`` is off."""
        if not train:
            return self.running[f"bn{i}.mean"][:rows], self.running[f"bn{i}.var"][:rows]
        # two passes (mean, then mean squared deviation): torch.var_mean over the middle dim of a
        # (K, B, F) tensor takes a slow reduction path on CPU (~30x slower here)
        mean = x.mean(1)
        var = (x - mean.unsqueeze(1)).square().mean(1)
        if not track:
            return mean, var
        with torch.no_grad():
            n = x.shape[1]
            reps = self.K // rows
            self.running[f"bn{i}.mean"].lerp_(mean.detach().repeat(reps, 1), BN_MOMENTUM)
            self.running[f"bn{i}.var"].lerp_(var.detach().repeat(reps, 1) * (n / max(n - 1, 1)), BN_MOMENTUM)
        return mean, var

    def __call__(self, x: torch.Tensor, train: bool, track: bool = True) -> torch.Tensor:
        """x: (R, B, 784), one minibatch per replicate -> logits (K, B, 10)."""
        P, K, R = self.params, self.K, self.R
        n_lr, B = K // R, x.shape[1]
        mean, var = self._stats(0, x, train, R, track)
        W0 = P["fc0.weight"]  # (K, 784, out)
        out = W0.shape[2]
        if B >= FOLD_MIN_BATCH:  # fold: cost ~ 6 passes over the K x 784 x out weights
            xhat = (x - mean.unsqueeze(1)) * torch.rsqrt(var + BN_EPS).unsqueeze(1)  # (R, B, 784)
            w_eff = P["bn0.weight"].unsqueeze(-1) * W0
            b_eff = torch.bmm(P["bn0.bias"].unsqueeze(1), W0).squeeze(1) + P["fc0.bias"]  # (K, out)
            w_rep = w_eff.view(n_lr, R, -1, out).permute(1, 2, 0, 3).reshape(R, -1, n_lr * out)
            h = torch.bmm(xhat, w_rep).view(R, B, n_lr, out).permute(2, 0, 1, 3).reshape(K, B, out)
            h = h + b_eff.unsqueeze(1)
        else:  # small batches: materialising the (K, B, 784) input is cheaper
            h = self._bn_linear(0, x.repeat(n_lr, 1, 1), mean.repeat(n_lr, 1), var.repeat(n_lr, 1))
        for i in range(1, self.depth):
            h = F.relu(h)
            mean, var = self._stats(i, h, train, K, track)
            h = self._bn_linear(i, h, mean, var)
        return h

    def _bn_linear(self, i, h, mean, var):
        """BatchNorm then Linear, for all K models.  (h - mean) is formed first, as nn.BatchNorm1d
        does: a feature constant within the batch then normalises to exactly 0 (folding the mean
        into the shift leaves ~1e-13 there, which sign-based optimizers turn into full steps)."""
        P = self.params
        scale = (torch.rsqrt(var + BN_EPS) * P[f"bn{i}.weight"]).unsqueeze(1)  # (K, 1, F)
        normed = torch.addcmul(P[f"bn{i}.bias"].unsqueeze(1), h - mean.unsqueeze(1), scale)
        return torch.baddbmm(P[f"fc{i}.bias"].unsqueeze(1), normed, P[f"fc{i}.weight"])
