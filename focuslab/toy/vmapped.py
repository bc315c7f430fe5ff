"""The plug-in engine's "vmapped" lanes: for each (weight decay, lr) run of lanes, ONE instance of
the optimizer whose own ``step()`` runs under ``torch.func.vmap`` over the run's trajectories
(focuslab.optim.vmapped.Stacked): every trajectory is a (2,)-shaped parameter as in "tensors" and
"single" modes, so per-tensor reductions (norms, trust ratios, orthogonalisation) see one
trajectory each, but the optimizer's Python runs once per step for the whole run, not once per
trajectory.  The parameters are the rows of the lanes' storage (updated in place), the gradients
the rows of the lanes' gradient storage (filled by numba, as in every mode).

Chosen only where focuslab.optimizers.toyprobe finds it equal, bit for bit, to one instance per
trajectory; the sentinel trajectories of every chunk and the fall-back on any exception
(focuslab.toy.plugin.run) keep a real run exact beyond the probe's reach.
"""
from __future__ import annotations

import numpy as np


class VmappedRuns:
    """The stacked optimizers of a set of lanes (``lanes``: focuslab.toy.plugin._Lanes), one per run
    ``(a, b)`` of lanes sharing learning rate ``lr[a]`` and weight decay ``wd[a]``."""

    def __init__(self, entry, lanes, runs, lr, wd):
        from ..optim.vmapped import Stacked, Unsupported

        if lanes.plan.graph:
            raise Unsupported("vmapped mode does not carry gradients with their graph (Hessian-vector "
                              "products: a batched parameter reports requires_grad=False)")
        self.runs = runs
        self.stacked = [Stacked(lambda groups, lr=float(lr[a]): entry.build_torch(groups, lr),
                                [{"params": [lanes.X[a:b]], "weight_decay": float(wd[a])}]) for a, b in runs]

    def step(self, lanes, t: int, z_for) -> None:
        if lanes.plan.closure:
            for k, (st, (a, b)) in enumerate(zip(self.stacked, self.runs)):
                st.step([lanes.G[a:b]], closure=lanes._closure(k, t))
            return
        lanes.set_grads(z_for(t))
        for st, (a, b) in zip(self.stacked, self.runs):
            st.step([lanes.G[a:b]])

    def finite(self, out: np.ndarray) -> None:
        """``out[i] &=`` lane i's parameter-shaped state is finite (divergence, as in other modes)."""
        for st, (a, b) in zip(self.stacked, self.runs):
            for value in st.state_tensors(0).values():
                if value.shape == (b - a, 2) and value.is_floating_point():
                    out[a:b] &= np.isfinite(value.detach().double().numpy()).all(axis=1)

    def fallbacks(self) -> set[str]:
        """Ops vmap ran through its slow per-trajectory path (a speed note, not an error)."""
        return set().union(*(st.fallbacks for st in self.stacked)) if self.stacked else set()
