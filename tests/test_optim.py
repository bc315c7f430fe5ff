"""focuslab.optim against independent per-element implementations and the toy simulator."""
import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from focuslab.optim import FOCUS, Signum  # noqa: E402


def algorithm1_reference(theta0, grads, *, lr, beta1, beta2, gamma, wd, decay, start=1):
    """Per-element Python-float Algorithm 1 (decay toward the average) or the toy form."""
    theta = [float(x) for x in theta0]
    m = [0.0] * len(theta)
    avg = [0.0] * len(theta)
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    for t, g in enumerate(grads, start=start):
        for i, gi in enumerate(g):
            m[i] = beta1 * m[i] + (1 - beta1) * float(gi)
            if gamma is None:  # Signum
                theta[i] = theta[i] - lr * (sign(m[i]) + wd * theta[i])
                continue
            avg[i] = beta2 * avg[i] + (1 - beta2) * theta[i]
            hat = avg[i] / (1 - beta2 ** t)
            if decay == "average":
                theta[i] = theta[i] - lr * wd * hat
                theta[i] = theta[i] - lr * (sign(m[i]) + gamma * sign(theta[i] - hat))
            else:
                theta[i] = theta[i] - lr * (sign(m[i]) + gamma * sign(theta[i] - hat) + wd * theta[i])
    return theta


GROUPS = [dict(lr=0.01, gamma=0.2, weight_decay=0.1, decay="average", betas=(0.9, 0.99)),
          dict(lr=0.003, gamma=0.0, weight_decay=0.0, decay="average", betas=(0.8, 0.9)),
          dict(lr=0.02, gamma=0.5, weight_decay=0.3, decay="theta", betas=(0.95, 0.5))]


def _grads(seed, shapes, steps):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("foreach", [False, True])
def test_focus_matches_per_element_algorithm1_over_groups(foreach):
    shapes = [(3, 4), (5,), (2, 2)]
    steps = 60
    params = [torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(i)).requires_grad_()
              for i, s in enumerate(shapes)]
    start = [p.detach().clone() for p in params]
    opt = FOCUS([{"params": [p], **grp} for p, grp in zip(params, GROUPS)], foreach=foreach)
    grads = _grads(1, shapes, steps)
    for t in range(steps):
        for p, g in zip(params, grads[t]):
            p.grad = g.clone()
        opt.step()
    for k, (p, grp) in enumerate(zip(params, GROUPS)):
        ref = algorithm1_reference(start[k].ravel().tolist(), [grads[t][k].ravel() for t in range(steps)],
                                   lr=grp["lr"], beta1=grp["betas"][0], beta2=grp["betas"][1],
                                   gamma=grp["gamma"], wd=grp["weight_decay"], decay=grp["decay"])
        np.testing.assert_allclose(p.detach().ravel().numpy(), ref, rtol=1e-12, atol=1e-14)


def test_signum_matches_reference_and_keeps_one_buffer():
    p = torch.randn(7, dtype=torch.float64, requires_grad=True)
    start = p.detach().clone()
    opt = Signum([p], lr=0.01, beta=0.8, weight_decay=0.2)
    grads = _grads(2, [(7,)], 40)
    for g in grads:
        p.grad = g[0].clone()
        opt.step()
    ref = algorithm1_reference(start.tolist(), [g[0] for g in grads], lr=0.01, beta1=0.8, beta2=0.0,
                               gamma=None, wd=0.2, decay="theta")
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
    buffers = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
    assert len(buffers) == 1
    f = FOCUS([torch.zeros(3, requires_grad=True)])
    f.param_groups[0]["params"][0].grad = torch.ones(3)
    f.step()
    assert sum(torch.is_tensor(v) and v.shape == (3,) for v in f.state[f.param_groups[0]["params"][0]].values()) == 2


def test_late_parameter_gets_its_own_bias_correction():
    a = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    b = torch.linspace(-1, 1, 4, dtype=torch.float64, requires_grad=True)
    b0 = b.detach().clone()
    opt = FOCUS([a, b], lr=0.01, gamma=0.3, weight_decay=0.1)
    grads = _grads(3, [(4,), (4,)], 30)
    for t, (ga, gb) in enumerate(grads):
        a.grad = ga.clone()
        b.grad = gb.clone() if t >= 10 else None  # b first gets a gradient at step 11
        opt.step()
    assert opt.state[b]["step"].item() == 20 and opt.state[a]["step"].item() == 30
    ref = algorithm1_reference(b0.tolist(), [g[1] for g in grads[10:]], lr=0.01, beta1=0.9, beta2=0.99,
                               gamma=0.3, wd=0.1, decay="average")
    np.testing.assert_allclose(b.detach().numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [FOCUS, Signum])
def test_foreach_equals_single_tensor_bitwise(cls, dtype):
    shapes = [(8, 3), (3,), (4, 4, 2)]
    base = [torch.randn(s, generator=torch.Generator().manual_seed(i)).to(dtype) for i, s in enumerate(shapes)]
    runs = []
    for foreach in (False, True):
        ps = [b.clone().requires_grad_() for b in base]
        kw = dict(lr=0.01, weight_decay=0.1)
        groups = [{"params": ps[:2], **kw}, {"params": ps[2:], **kw, "lr": 0.05}]
        opt = cls(groups, foreach=foreach)
        for gs in _grads(5, shapes, 25):
            for p, g in zip(ps, gs):
                p.grad = g.to(dtype)
            opt.step()
        runs.append(ps)
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)


def _train(opt_factory, steps, state=None, model_state=None, start=0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    if model_state is not None:
        model.load_state_dict(model_state)
    opt = opt_factory(model.parameters())
    if state is not None:
        opt.load_state_dict(state)
    data = torch.Generator().manual_seed(1)
    xs = [torch.randn(16, 5, generator=data, dtype=torch.float64) for _ in range(40)]
    for t in range(start, steps):
        opt.zero_grad()
        model(xs[t]).pow(2).mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("cls", [FOCUS, Signum])
def test_state_dict_round_trip_resumes_exactly(cls):
    make = lambda ps: cls(ps, lr=0.01, weight_decay=0.05)  # noqa: E731
    full, _ = _train(make, 40)
    half, opt = _train(make, 20)
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_model = copy.deepcopy(half.state_dict())
    resumed, _ = _train(make, 40, state=saved_opt, model_state=saved_model, start=20)
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_lr_scheduler_drives_the_step_size():
    p = torch.zeros(3, requires_grad=True)
    opt = Signum([p], lr=0.1, beta=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(3):
        before = p.detach().clone()
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
        moves.append((before - p.detach())[0].item())
    assert moves == pytest.approx([0.1, 0.05, 0.025])


def test_toy_landscape_trajectory_equals_simulator_rule():
    """A 2-D parameter on the narrowing valley: torch FOCUS == the simulator's focus rule."""
    from focuslab.toy import kernel
    from focuslab.toy.landscape import grad_theta, loss_uv, rotate
    from focuslab.toy.rng import normal_pairs, trajectory_keys
    from focuslab.optimizers.builtin import get

    from focuslab.axes import cell_array

    a, noise, wd, phi, c, lr, steps = 10.0, 1.5, 0.1, math.pi / 6, 0.1, 0.01, 200
    cell = cell_array(sharpness=a, noise=noise, weight_decay=wd, phi=phi, c=c)
    cp, sp = math.cos(phi), math.sin(phi)
    for decay in ("theta", "average"):
        key = trajectory_keys(0, cell, np.arange(1))
        z = normal_pairs(key[0, 0], 0, steps + 1)
        theta = torch.tensor(1e-4 * z[0], dtype=torch.float64, requires_grad=True)
        opt = FOCUS([theta], lr=lr, betas=(0.9, 0.9), gamma=0.2, weight_decay=wd, decay=decay)
        losses = []
        for t in range(1, steps + 1):
            u, v = rotate(*theta.detach().tolist(), cp, sp)
            g = np.array(grad_theta(u, v, a, c, cp, sp)) * (1.0 + noise * z[t])
            theta.grad = torch.from_numpy(g)
            opt.step()
            losses.append(loss_uv(*rotate(*theta.detach().tolist(), cp, sp), a, c))
        out = kernel.run(get("focus"), get("focus").resolve({"decay": decay, "beta2": 0.9}), cell,
                         np.array([lr]), key, steps)
        assert losses[-1] == pytest.approx(out["final_loss"][0, 0, 0], rel=1e-10)
        assert min(losses) == pytest.approx(out["min_loss"][0, 0, 0], rel=1e-10)


def test_maximize_ascends():
    p = torch.zeros(2, requires_grad=True)
    q = torch.zeros(2, requires_grad=True)
    o1, o2 = FOCUS([p], lr=0.1, maximize=True), FOCUS([q], lr=0.1)
    for _ in range(3):
        p.grad = torch.tensor([1.0, -2.0])
        q.grad = -p.grad
        o1.step()
        o2.step()
    assert torch.equal(p, q) and p[0] > 0


def test_bf16_state_is_fp32_by_default_and_param_dtype_on_request():
    p = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    for fp32, want in ((True, torch.float32), (False, torch.bfloat16)):
        opt = FOCUS([p], lr=1e-3, fp32_state=fp32)
        p.grad = torch.ones(4, dtype=torch.bfloat16)
        opt.step()
        assert opt.state[p]["exp_avg"].dtype == want and opt.state[p]["param_avg"].dtype == want


def test_fp32_state_tracks_a_moving_bf16_parameter_and_bf16_state_stalls():
    """The average's increment (1 - beta2) * (theta - avg) falls below bf16's resolution next to
    avg: kept in bf16 it stalls, kept in fp32 (the default) it is the exact EMA of the parameter."""
    errors = {}
    for fp32 in (True, False):
        x = torch.full((1,), 1.0, dtype=torch.bfloat16, requires_grad=True)
        opt = FOCUS([x], lr=0.02, betas=(0.9, 0.99), gamma=0.1, fp32_state=fp32)  # moves ~0.02 per step
        ema = 0.0
        for _ in range(200):
            ema = 0.99 * ema + 0.01 * x.item()  # the average is taken of theta before each step
            x.grad = torch.ones(1, dtype=torch.bfloat16)
            opt.step()
        bc = 1 - 0.99 ** 200
        errors[fp32] = abs(opt.state[x]["param_avg"].item() / bc - ema / bc)
    assert errors[True] < 1e-5, errors
    assert errors[False] > 1e-2, errors


def test_grad_scaler_and_non_finite_steps_are_skipped():
    model = torch.nn.Linear(3, 1)
    opt = FOCUS(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(4, 3)).sum() * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # a finite step is FOCUS's step on the unscaled gradient: the same as without the scaler
    twin = torch.nn.Linear(3, 1)
    twin.load_state_dict(model.state_dict())
    ref = FOCUS(twin.parameters(), lr=0.01)
    x = torch.randn(4, 3)
    opt.zero_grad()
    scaler.scale(model(x).sum()).backward()
    scaler.step(opt)
    twin(x).sum().backward()
    ref.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
        assert not torch.equal(p, before[0] if p.dim() == 2 else before[1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "learning rate"), (dict(betas=(1.0, 0.9)), "beta1"), (dict(betas=(0.9, -0.1)), "beta2"),
    (dict(betas=0.9), "betas"), (dict(gamma=-0.1), "gamma"), (dict(weight_decay=-1e-3), "weight_decay"),
    (dict(decay="sideways"), "decay"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FOCUS([torch.zeros(1, requires_grad=True)], **kwargs)


def test_signum_validation_and_sparse_gradients_rejected():
    with pytest.raises(ValueError, match="beta"):
        Signum([torch.zeros(1, requires_grad=True)], beta=1.5)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = FOCUS(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.slow
def test_torch_compile_of_the_training_step():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    b = copy.deepcopy(a)
    oa, ob = FOCUS(a.parameters(), lr=1e-2, weight_decay=0.1), FOCUS(b.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(32, 8), torch.randn(32, 1)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(step)
    for _ in range(4):
        la, lb = compiled(a, oa), step(b, ob)
        assert la.item() == pytest.approx(lb.item(), rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1)).double())
    opt = FOCUS(model.parameters(), lr=0.01, weight_decay=0.1)
    data = torch.Generator().manual_seed(3)
    for _ in range(15):
        x = torch.randn(8, 6, generator=data, dtype=torch.float64)
        opt.zero_grad()
        model(x[rank * 4:(rank + 1) * 4]).pow(2).mean().backward()  # each rank half the batch
        opt.step()
    if rank == 0:
        torch.save([p.detach() for p in model.module.parameters()], out_file)
    dist.destroy_process_group()


def test_distributed_data_parallel_matches_single_process(tmp_path):
    import torch.multiprocessing as mp
    from distributed_helpers import launch_with_retries

    def launch(port):
        init = tmp_path / f"init-{port}"  # a fresh rendezvous file per try
        try:
            mp.spawn(_ddp_worker, args=(2, str(init), str(tmp_path / "p.pt")), nprocs=2, join=True)
        except mp.ProcessExitedException as err:
            return False, str(err)
        return True, ""

    launch_with_retries(launch)
    ddp_params = torch.load(tmp_path / "p.pt")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1)).double()
    opt = FOCUS(model.parameters(), lr=0.01, weight_decay=0.1)
    data = torch.Generator().manual_seed(3)
    for _ in range(15):
        x = torch.randn(8, 6, generator=data, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    for p, q in zip(model.parameters(), ddp_params, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
