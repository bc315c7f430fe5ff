"""How the batched MNIST trainer steps its K stacked models with a real torch optimizer.

The K = n_lr x R models live in stacked (K, ...) tensors (focuslab.mnist.model.BatchedMLP).  The
optimizer is the entry's own torch class (torch.optim.AdamW for ``adamw``, focuslab.optim.FOCUS,
any pytorch_optimizer or user class), over parameters that are *views* of that storage, so its
in-place updates are the models' updates:

* **stacked** (element-wise rules): one instance per learning rate over the (R, ...) slices of
  that lr's R replicates -- chosen when the probe (focuslab.optimizers.probe.stacks) finds that
  stacked copies step bit for bit as separate ones; a class that takes per-row learning rates
  (``ROW_LRS``: focuslab.optim's FOCUS and Signum) gets ONE instance over all K models, its group
  holding each model's lr (``lr_rows``): one operation per tensor per step for all K models
  ("fused");
* **vmapped** (per-tensor rules the probe finds exact under vmap: AdamP, SGD-SaI, Lamb, ...): one
  instance per learning rate whose own ``step()`` runs under ``torch.func.vmap`` over that lr's R
  models (focuslab.optim.vmapped.Stacked), each model's tensors in nn.Linear's orientation;
* **per model** (the rest): one instance per model over its own tensors, in nn.Linear's orientation
  (out, in), exactly as the one-at-a-time trainer would build it.

Weight decay goes to the Linear weights only (the paper's setup): two param groups per instance.
Optimizers that take Hessian-vector products of ``p.grad`` (SophiaH, AdaHessian) get gradients
with their graph; then the views are the graph's leaves (the stacked tensors are concatenated
from them at every step).  Optimizers that need a closure are refused: the trainer computes one
gradient per step.
"""
from __future__ import annotations

import torch

from .model import decays


class StepFailed(RuntimeError):
    """A step under vmap raised: its in-place updates may be half applied (the caller trains again,
    one model per instance)."""


class Steppers:
    """The optimizer instances of one unit, and how gradients reach them.

    Stacked mode shares storage: each instance's parameters are views of the model's stacked
    tensors.  Per-model mode gives each model's tensors their own contiguous storage in nn.Linear's
    orientation (optimizers that reshape with ``.view`` need that), and writes them back into the
    stacked tensors after every step.  With gradient graphs the instances' parameters are the
    leaves in both modes and the model reads their concatenation."""

    def __init__(self, entry, model, lrs, replicates: int, weight_decay: float, *, device="cpu",
                 avoid_vmapped: bool = False):
        self.entry, self.model, self.R = entry, model, replicates
        self.lrs = [float(v) for v in lrs]
        self.graph, self.stochastic, self.mode, self.why = entry.stacking(weight_decay)
        if self.mode == "vmapped" and avoid_vmapped:
            self.mode, self.why = "per model", f"{self.why}; but its step under vmap raised in this unit"
        self.shared = self.mode == "stacked" and not self.graph
        self.names = list(model.params)
        R, n_lr = replicates, len(self.lrs)
        self.blocks = [(i * R, (i + 1) * R) for i in range(n_lr)] if self.mode != "per model" else \
            [(k, k + 1) for k in range(n_lr * R)]
        if self.shared and self._fused(weight_decay, device):
            return
        self.instances = []  # {name: param} per instance
        self.opts = []
        for a, b in self.blocks:
            params = {}
            for name in self.names:
                full = model.params[name].detach()
                if self.mode == "stacked":
                    part = full[a:b]
                elif self.mode == "vmapped":  # R models, each in nn.Linear's orientation
                    part = torch.stack([self._oriented(name, full[k]) for k in range(a, b)]).contiguous()
                else:
                    part = self._oriented(name, full[a]).contiguous()
                params[name] = torch.nn.Parameter(part if self.shared else part.clone(), requires_grad=True)
            groups = [{"params": [params[n] for n in self.names if decays(n)], "weight_decay": weight_decay},
                      {"params": [params[n] for n in self.names if not decays(n)], "weight_decay": 0.0}]
            lr = self.lrs[a // R]
            if self.mode == "vmapped":
                from ..optim.vmapped import Stacked

                self.opts.append(Stacked(lambda gs, lr=lr: entry.build_torch(gs, lr, str(device)), groups))
            else:
                self.opts.append(entry.build_torch(groups, lr, str(device)))
            self.instances.append(params)
        if self.graph:  # the leaves are the instances' parameters; the model reads their concatenation
            self._assemble()

    def _fused(self, weight_decay: float, device) -> bool:
        """ONE instance over all K models with per-row learning rates, where the class takes them."""
        K = len(self.lrs) * self.R
        rows = torch.tensor(self.lrs, dtype=torch.float64).repeat_interleave(self.R)
        params = {n: torch.nn.Parameter(self.model.params[n].detach(), requires_grad=True) for n in self.names}
        groups = [{"params": [params[n] for n in self.names if decays(n)], "weight_decay": weight_decay,
                   "lr_rows": rows},
                  {"params": [params[n] for n in self.names if not decays(n)], "weight_decay": 0.0, "lr_rows": rows}]
        opt = self.entry.build_torch(groups, self.lrs[0], str(device))
        if not getattr(opt, "ROW_LRS", False):
            return False
        self.mode, self.blocks, self.instances, self.opts = "fused", [(0, K)], [params], [opt]
        self.why = f"{self.why}; one instance over all {K} models, each row with its own lr"
        return True

    @staticmethod
    def _oriented(name: str, t: torch.Tensor) -> torch.Tensor:
        """A model's tensor as nn.Linear holds it (BatchedMLP stores Linear weights transposed)."""
        return t.t() if name.startswith("fc") and name.endswith(".weight") else t

    @staticmethod
    def _oriented_rows(name: str, t: torch.Tensor) -> torch.Tensor:
        """Rows of a model's stacked tensor, each as nn.Linear holds it, in contiguous storage."""
        return (t.transpose(1, 2) if name.startswith("fc") and name.endswith(".weight") else t).contiguous()

    def _order(self) -> list[str]:
        """Parameter names in the order of an instance's groups (decayed first)."""
        return [n for n in self.names if decays(n)] + [n for n in self.names if not decays(n)]

    def _stacked(self, name: str, parts):
        """The model's (K, ...) layout of per-instance tensors."""
        if self.mode in ("stacked", "fused"):
            return torch.cat(parts, 0)
        if self.mode == "vmapped":
            parts = [x for part in parts for x in part.unbind(0)]
        return torch.stack([self._oriented(name, x) for x in parts], 0)

    def _assemble(self):
        for name in self.names:
            self.model.params[name] = self._stacked(name, [inst[name] for inst in self.instances])

    def _write_back(self):
        with torch.no_grad():
            for name in self.names:
                self.model.params[name].copy_(self._stacked(name, [inst[name] for inst in self.instances]))

    def leaves(self) -> list:
        """What the loss is differentiated with respect to, in the order of ``step``'s gradients."""
        if self.graph:
            return [inst[n] for inst in self.instances for n in self.names]
        return [self.model.params[n] for n in self.names]

    def step(self, grads) -> None:
        """One optimizer step, given the gradients of ``leaves()`` (same order)."""
        if self.graph:
            it = iter(grads)
            for inst in self.instances:
                for name in self.names:
                    inst[name].grad = next(it)
        elif self.mode == "vmapped":
            grad = dict(zip(self.names, grads))
            for (a, b), opt in zip(self.blocks, self.opts):
                try:
                    opt.step([self._oriented_rows(n, grad[n][a:b]) for n in self._order()])
                except Exception as err:  # noqa: BLE001 -- any failure of the vmapped step: train again without it
                    text = str(err).strip().splitlines()
                    raise StepFailed(f"its step under vmap raised {type(err).__name__}: "
                                     f"{text[0] if text else ''}") from err
            self._write_back()
            return
        else:
            grad = dict(zip(self.names, grads))
            for (a, b), inst in zip(self.blocks, self.instances):
                for name, p in inst.items():
                    p.grad = grad[name][a:b] if self.mode in ("stacked", "fused") else \
                        self._oriented(name, grad[name][a]).contiguous()
        for opt in self.opts:
            opt.step()
        if self.graph:
            self._assemble()
        elif not self.shared:
            self._write_back()

    def state_dict(self) -> dict:
        """Everything a resumed unit needs to step on exactly as if never stopped: the models'
        parameters (as each instance holds them) and each instance's optimizer state."""
        return {"mode": self.mode, "params": {n: p.detach().clone() for n, p in self.model.params.items()},
                "instances": [{n: p.detach().clone() for n, p in inst.items()} for inst in self.instances],
                "opts": [opt.state_dict() for opt in self.opts]}

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode or len(state["opts"]) != len(self.opts):
            raise ValueError("a checkpoint of another layout")
        with torch.no_grad():
            for inst, saved in zip(self.instances, state["instances"]):
                for name, p in inst.items():
                    p.copy_(saved[name])
            if not self.graph:
                for name, p in self.model.params.items():
                    p.copy_(state["params"][name])
        for opt, saved in zip(self.opts, state["opts"]):
            opt.load_state_dict(saved)
        if self.graph:
            self._assemble()

    def stacked_state(self, key: str, name: str) -> torch.Tensor | None:
        """The optimizer's per-parameter state ``key`` (e.g. "exp_avg_sq") of tensor ``name`` for all K
        models, stacked as the model stores it; None when the optimizer keeps no such state."""
        parts = []
        for opt, inst in zip(self.opts, self.instances):
            if self.mode == "vmapped":
                value = opt.state_tensors(self._order().index(name)).get(key)
            else:
                value = opt.state.get(inst[name], {}).get(key)
            if value is None or not torch.is_tensor(value) or value.shape != inst[name].shape:
                return None
            parts.append(value)
        return self._stacked(name, parts).detach()


class StateView:
    """``state[name] -> (exp_avg, exp_avg_sq)`` of all K models, stacked (None where absent), read
    from the optimizer instances on demand (the diagnostics' preconditioner)."""

    def __init__(self, steppers: Steppers):
        self.steppers = steppers

    def __getitem__(self, name: str):
        return (self.steppers.stacked_state("exp_avg", name), self.steppers.stacked_state("exp_avg_sq", name))
