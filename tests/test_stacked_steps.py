"""K models stepped at once: FOCUS/Signum fused over stacked copies with per-row learning rates
(focuslab.optim, ``lr_rows``), and the MNIST trainer's modes (focuslab.mnist.steppers): fused,
stacked, vmapped, per model -- each equal to separate instances."""
import textwrap

import numpy as np
import pytest

from focuslab.optimizers import parse_one

torch = pytest.importorskip("torch")

from focuslab.mnist.model import BatchedMLP  # noqa: E402
from focuslab.mnist.steppers import Steppers  # noqa: E402
from focuslab.mnist.train import initial_params, train_batched, train_one  # noqa: E402
from focuslab.optim import FOCUS, Signum  # noqa: E402

LRS = [1e-3, 3e-2, 0.7]
R = 2


def _stacked_vs_separate(make, dtype, foreach, steps=25):
    """Parameters after ``steps`` steps: one instance over K stacked copies with lr_rows, and K
    instances with one lr each (the same gradients)."""
    g = torch.Generator().manual_seed(3)
    K = len(LRS) * R
    shapes = [(5, 4), (4,), (3, 2)]
    start = [torch.randn(K, *s, generator=g, dtype=dtype) for s in shapes]
    grads = [[torch.randn(K, *s, generator=g, dtype=dtype) * 10.0 ** (t % 5 - 2) for s in shapes] for t in range(steps)]
    rows = torch.tensor(LRS, dtype=torch.float64).repeat_interleave(R)
    together = [torch.nn.Parameter(x.clone()) for x in start]
    opt = make([{"params": together[:1], "weight_decay": 0.1, "lr_rows": rows},
                {"params": together[1:], "weight_decay": 0.0, "lr_rows": rows}], LRS[0], foreach)
    apart = [[torch.nn.Parameter(x[k].clone()) for x in start] for k in range(K)]
    opts = [make([{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}], LRS[k // R], foreach)
            for k, ps in enumerate(apart)]
    for t in range(steps):
        for p, gr in zip(together, grads[t]):
            p.grad = gr.clone()
        opt.step()
        for k, (ps, o) in enumerate(zip(apart, opts)):
            for p, gr in zip(ps, grads[t]):
                p.grad = gr[k].clone()
            o.step()
    return [p.detach() for p in together], [torch.stack([ps[i].detach() for ps in apart]) for i in range(len(shapes))]


def _paths(path):
    return {"loop": dict(foreach=False, fused=False), "foreach": dict(foreach=True), "fused": dict(fused=None)}[path]


MAKERS = {
    "signum": lambda groups, lr, path: Signum(groups, lr=lr, beta=0.9, **_paths(path)),
    "focus-average": lambda groups, lr, path: FOCUS(groups, lr=lr, betas=(0.9, 0.99), gamma=0.2, **_paths(path)),
    "focus-theta": lambda groups, lr, path: FOCUS(groups, lr=lr, betas=(0.9, 0.9), gamma=0.4, decay="theta",
                                                  **_paths(path)),
}


@pytest.mark.parametrize("foreach", ["loop", "foreach", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", sorted(MAKERS))
def test_sign_steps_fused_over_stacked_copies_equal_separate_instances_bit_for_bit(rule, dtype, foreach):
    together, apart = _stacked_vs_separate(MAKERS[rule], dtype, foreach)
    for x, y in zip(together, apart):
        assert torch.equal(x, y)


def test_lr_rows_must_match_every_parameters_first_dimension():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = Signum([{"params": [p], "lr_rows": torch.tensor([0.1, 0.2])}])
    p.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="lr_rows: 2 learning rates, but the group's parameters have first dimensions"):
        opt.step()


# --- the MNIST trainer -----------------------------------------------------------------------------
def _data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 96)
    images = rng.random((96, 784)) * 0.2
    for i, y in enumerate(labels):
        images[i, 56 * y:56 * y + 84] = 1.0  # learnable: the label is painted into the image
    return {"x_train": torch.from_numpy(images[:64]), "y_train": torch.from_numpy(labels[:64]),
            "x_test": torch.from_numpy(images[64:]), "y_test": torch.from_numpy(labels[64:])}


def _model():
    return BatchedMLP([initial_params(0, r, torch.float64) for r in range(R)] * len(LRS), R)


@pytest.mark.parametrize("spec", ["signum", "focus:gamma=0.4"])
def test_mnist_steps_the_sign_methods_fused_exactly_as_one_instance_per_lr(spec, monkeypatch):
    entry = parse_one(spec)
    assert Steppers(entry, _model(), LRS, R, 0.01).mode == "fused"
    fused = train_batched(_data(), entry, 8, LRS, R, 5, seed=5, weight_decay=0.01, dtype=torch.float64)
    monkeypatch.setattr(Steppers, "_fused", lambda self, wd, device: False)  # today's one instance per lr
    assert Steppers(entry, _model(), LRS, R, 0.01).mode == "stacked"
    per_lr = train_batched(_data(), entry, 8, LRS, R, 5, seed=5, weight_decay=0.01, dtype=torch.float64)
    for key in ("test_loss", "train_loss", "test_accuracy"):
        np.testing.assert_array_equal(fused[key], per_lr[key], err_msg=key)


def test_mnist_trains_a_per_tensor_optimizer_vmapped_like_the_one_at_a_time_trainer():
    pytest.importorskip("pytorch_optimizer")
    entry = parse_one("pytorch_optimizer.SGDSaI")
    steppers = Steppers(entry, BatchedMLP([initial_params(0, r, torch.float64) for r in range(R)], R), [1e-3], R, 0.01)
    assert steppers.mode == "vmapped", steppers.why
    data = _data()
    out = train_batched(data, entry, 8, [1e-3, 3e-2], R, 6, seed=5, weight_decay=0.01, dtype=torch.float64)
    assert out["stepping"].startswith("vmapped")
    for i, lr in enumerate([1e-3, 3e-2]):
        for r in range(R):
            one = train_one(data, entry, 8, lr, r, 6, seed=5, weight_decay=0.01, dtype=torch.float64)
            assert out["test_loss"][i, r] == pytest.approx(one["test_loss"], rel=1e-7), (lr, r)
            assert out["train_loss"][i, r] == pytest.approx(one["train_loss"], rel=1e-7), (lr, r)




def test_an_mnist_step_that_raises_under_vmap_retrains_the_unit_per_model(tmp_path):
    from test_vmapped import PLANTED  # planted optimizers that vmap gets wrong

    path = tmp_path / "late.py"  # branches on each model's values, on tensors larger than the probe's only
    path.write_text(PLANTED + textwrap.dedent("""

        class BigBranch(LateBranch):
            def after(self, p, state):
                if p.numel() > 100 and bool(p.sum() > 0):
                    p.mul_(0.999)
        """))
    entry = parse_one(f"{path}:BigBranch")
    data = _data()
    out = train_batched(data, entry, 8, [1e-2], R, 3, seed=5, weight_decay=0.0, dtype=torch.float64)
    assert out["stepping"].startswith("per model") and "its step under vmap raised LanesDisagree" in out["stepping"]
    for r in range(R):
        one = train_one(data, entry, 8, 1e-2, r, 3, seed=5, weight_decay=0.0, dtype=torch.float64)
        assert out["test_loss"][0, r] == pytest.approx(one["test_loss"], rel=1e-7)


# --- the fused CPU step (focuslab.optim._fused) ------------------------------------------------------
FUSED_RULES = {
    "signum": lambda ps, **k: Signum(ps, lr=0.03, beta=0.9, weight_decay=0.1, **k),
    "signum-maximize-beta0.3": lambda ps, **k: Signum(ps, lr=0.03, beta=0.3, maximize=True, **k),
    "focus-average": lambda ps, **k: FOCUS(ps, lr=0.03, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1, **k),
    "focus-theta-beta2-0.3": lambda ps, **k: FOCUS(ps, lr=0.03, betas=(0.8, 0.3), gamma=0.4, weight_decay=0.1,
                                                   decay="theta", **k),
    "focus-no-decay": lambda ps, **k: FOCUS(ps, lr=0.03, **k),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", sorted(FUSED_RULES))
def test_the_fused_cpu_step_gives_the_per_op_steps_bits(rule, dtype):
    """One pass per tensor (numba, fma as torch's vectorised kernels) against the per-tensor loop:
    40 steps, gradients over six orders of magnitude and exact zeros, a tensor whose length is not
    a multiple of any vector width (torch's scalar tail)."""
    from focuslab.optim._fused import usable

    if not usable([torch.zeros(1, dtype=dtype)]):
        pytest.skip(f"torch's {torch.backends.cpu.get_cpu_capability()} kernels: the fused step is not used here")
    g = torch.Generator().manual_seed(7)
    shapes = [(37, 29), (1031,), (3,)]
    start = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    runs = []
    for fused in (True, False):
        ps = [torch.nn.Parameter(x.clone()) for x in start]
        opt = FUSED_RULES[rule](ps, fused=fused)
        gg = torch.Generator().manual_seed(8)
        for t in range(40):
            for p in ps:
                grad = torch.randn(p.shape, generator=gg, dtype=dtype) * 10.0 ** (t % 7 - 3)
                p.grad = torch.where(torch.rand(p.shape, generator=gg) < 0.05, 0.0, grad)
            opt.step()
        runs.append([p.detach() for p in ps] + [v for p in ps for v in opt.state[p].values() if v.dim()])
    for x, y in zip(*runs):
        assert torch.equal(x, y)
