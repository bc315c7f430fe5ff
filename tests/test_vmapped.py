"""The vmapped mode: any optimizer's own step() under torch.func.vmap (focuslab.optim.vmapped), on
the toy (focuslab.toy.vmapped) -- exact where the probe accepts it, refused or caught where vmap
gets it wrong, and recomputed one mode down after an exception."""
import math
import textwrap

import numpy as np
import pytest

from focuslab.axes import cell_array
from focuslab.optimizers import parse_one
from focuslab.toy.rng import trajectory_keys

torch = pytest.importorskip("torch")

from focuslab.optim import vmapped  # noqa: E402
from focuslab.optimizers.toyprobe import probe, probe_steps  # noqa: E402
from focuslab.toy import plugin  # noqa: E402
from focuslab.toy.plugin import Plan  # noqa: E402

PLANTED = '''
import torch


class Momentum(torch.optim.Optimizer):
    """Heavy ball over the gradient normalised per tensor (a per-tensor rule: vmapped, not batched)."""

    late = 150  # the step from which the subclasses below misbehave

    def __init__(self, params, lr=0.01, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    def scale(self, p, state):
        return 1.0

    def after(self, p, state):
        pass

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["n"] = state.get("n", 0) + 1
                if "m" not in state:
                    state["m"] = torch.zeros_like(p)
                state["m"].mul_(0.9).add_(p.grad / (p.grad.norm() + 1e-12))
                p.add_(state["m"], alpha=-group["lr"] * self.scale(p, state))
                self.after(p, state)
                p.mul_(1 - group["lr"] * group["weight_decay"])


class SkipsWithoutGrad(Momentum):
    """Halves its step where the parameter does not require grad: a batched parameter reports
    requires_grad=False, so under vmap this is silently wrong from the first step (SophiaH and
    AdaHessian skip their Hessian that way)."""

    def scale(self, p, state):
        return 1.0 if p.requires_grad else 0.5


class LateSkip(Momentum):
    """SkipsWithoutGrad from step ``late`` on: beyond the probe's 100 steps, for the sentinels."""

    def scale(self, p, state):
        return 0.5 if state["n"] > self.late and not p.requires_grad else 1.0


class LateBranch(Momentum):
    """From step ``late`` on, a Python branch on a per-trajectory value: under vmap the trajectories
    disagree, the step raises after half its in-place updates, and the chunk must be recomputed."""

    def after(self, p, state):
        if state["n"] > self.late and bool(p.sum() > 0):
            p.mul_(0.999)
'''


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "planted.py"
    path.write_text(PLANTED)
    return path


def small_grid(n_rep=3):
    cells = cell_array(sharpness=[0.3, 10.0, 300.0], noise=[0.0, 1.5, 3.0], weight_decay=[0.1, 0.0, 0.1],
                       phi=[math.pi / 6, 1.1, -0.4], c=[0.1, 0.3, 2.0])
    return cells, np.array([1e-3, 3e-2]), trajectory_keys(5, cells, np.arange(n_rep))


def plan_for(entry, mode, fallback="single"):
    plan = probe(entry, time_it=False)
    return Plan(**{**plan.to_dict(), "mode": mode, "fallback": fallback})


def assert_same(got, want):
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# --- real optimizers: vmapped equals one instance per trajectory, bit for bit ----------------------
REAL = ["pytorch_optimizer.AdamP", "pytorch_optimizer.SGDSaI", "pytorch_optimizer.Conda",
        "pytorch_optimizer.Muon:group.use_muon=True", "pytorch_optimizer.Lamb"]


@pytest.mark.parametrize("spec", REAL)
def test_real_per_tensor_optimizers_run_vmapped_and_equal_separate_instances(spec):
    pytest.importorskip("pytorch_optimizer")
    entry = parse_one(spec)
    plan = probe(entry, time_it=False)
    assert plan.mode == "vmapped", plan.why
    cells, lrs, keys = small_grid()
    got = plugin.run(entry, plan, cells, lrs, keys, 40, check_sentinels=False)
    assert_same(got, plugin.run(entry, plan_for(entry, "single"), cells, lrs, keys, 40))


@pytest.mark.parametrize("spec", [
    "pytorch_optimizer.SPAM:foreach=True:update_proj_gap=60:warmup_epoch=10",
    "pytorch_optimizer.StableSPAM:foreach=True:update_proj_gap=60", "pytorch_optimizer.SOAP"])
def test_optimizers_with_late_events_run_vmapped_exactly_past_them(spec):
    """SPAM clips from step grad_accu_steps (20) on and resets its moments every update_proj_gap
    steps (60 here, 500 by default), StableSPAM resets every update_proj_gap steps, SOAP
    re-orthogonalises every precondition_frequency (10) steps: the probe steps past them, and so does
    the run compared here."""
    pytest.importorskip("pytorch_optimizer")
    entry = parse_one(spec)
    plan = probe(entry, time_it=False)
    assert plan.mode == "vmapped", plan.why
    assert plan.probe_steps == probe_steps(entry) >= 100
    cells, lrs, keys = small_grid(2)
    steps = plan.probe_steps + 10
    got = plugin.run(entry, plan, cells[:2], lrs, keys[:2], steps, check_sentinels=False)
    assert_same(got, plugin.run(entry, plan_for(entry, "single"), cells[:2], lrs, keys[:2], steps))


def test_the_probe_steps_past_the_periods_an_optimizer_names():
    pytest.importorskip("pytorch_optimizer")
    assert probe_steps(parse_one("pytorch_optimizer.AdamP")) == 100
    assert probe_steps(parse_one("pytorch_optimizer.SPAM")) == 2 * 500 + 2  # update_proj_gap
    assert probe_steps(parse_one("pytorch_optimizer.SPAM:update_proj_gap=60")) == 2 * 60 + 2
    assert probe_steps(parse_one("pytorch_optimizer.StableSPAM")) == 1200  # capped


# --- what vmap gets wrong is refused by the probe or caught by the sentinels ---------------------
def test_an_optimizer_vmap_gets_silently_wrong_is_refused_by_the_probe(planted):
    entry = parse_one(f"{planted}:SkipsWithoutGrad")
    plan = probe(entry, time_it=False)
    assert plan.mode == "tensors" and "the step under vmap differs from n instances" in plan.why
    forced = plan_for(entry, "vmapped")
    cells, lrs, keys = small_grid()
    wrong = plugin.run(entry, forced, cells, lrs, keys, 20, check_sentinels=False)
    right = plugin.run(entry, plan_for(entry, "single"), cells, lrs, keys, 20)
    assert not np.array_equal(wrong["final_loss"], right["final_loss"])  # the probe is not a formality
    assert_same(plugin.run(entry, plan, cells, lrs, keys, 20), right)


def test_a_vmap_error_beyond_the_probe_is_caught_by_the_sentinels(planted):
    entry = parse_one(f"{planted}:LateSkip")
    plan = probe(entry, time_it=False)
    assert (plan.mode, plan.fallback) == ("vmapped", "tensors")  # the probe's 100 steps cannot see it ...
    cells, lrs, keys = small_grid()
    got = plugin.run(entry, plan, cells, lrs, keys, 200)  # ... the sentinels (one per lr) do
    assert_same(got, plugin.run(entry, plan_for(entry, "single"), cells, lrs, keys, 200))


def test_an_exception_mid_chunk_recomputes_the_chunk_one_mode_down(planted, monkeypatch):
    entry = parse_one(f"{planted}:LateBranch")
    plan = probe(entry, time_it=False)
    assert (plan.mode, plan.fallback) == ("vmapped", "tensors")
    modes = []
    real_run = plugin.run

    def spy(entry, plan, *args, **kwargs):
        modes.append(plan.mode)
        return real_run(entry, plan, *args, **kwargs)

    monkeypatch.setattr(plugin, "run", spy)
    cells, lrs, keys = small_grid()
    got = plugin.run(entry, plan, cells, lrs, keys, 200, check_sentinels=False)
    assert modes == ["vmapped", "tensors"]  # the step raised (trajectories disagree) after half its updates
    monkeypatch.setattr(plugin, "run", real_run)
    assert_same(got, plugin.run(entry, plan_for(entry, "single"), cells, lrs, keys, 200))


def test_an_optimizer_no_mode_runs_exactly_but_its_definition_runs_single_with_its_cost():
    pytest.importorskip("pytorch_optimizer")
    entry = parse_one("pytorch_optimizer.Prodigy")
    plan = probe(entry)
    assert plan.mode == "single" and plan.ns_per_step > 0
    assert "vmapped fails" in plan.why
    line = entry.describe(plan)
    assert line.startswith("pytorch_optimizer.Prodigy ") and "single" in line and "ns per trajectory-step" in line


# --- the mode's rewrites, each against a plain per-copy loop -----------------------------------------
def _per_copy(fn, *stacked):
    outs = [fn(*[x[i].clone() for x in stacked]) for i in range(stacked[0].shape[0])]
    return [torch.stack([o[k] for o in outs]) for k in range(len(outs[0]))]


def _vmapped(fn, *stacked):
    def body(*xs):
        with vmapped.Batchable(stacked[0].shape[0], torch._C._functorch.maybe_current_level()):
            return fn(*xs)

    return list(torch.func.vmap(body)(*[x.clone() for x in stacked]))


def _rewrites(a, b):
    """foreach ops, in-place ops vmap runs slowly, out=, factories and an agreed Python value."""
    state = torch.zeros(3, dtype=a.dtype)  # a factory: per copy under the mode
    scalar = torch.zeros((), dtype=a.dtype)
    torch._foreach_lerp_([state], [a], 0.3)
    torch._foreach_addcmul_([state], [a], [b], value=0.5)
    scalar.lerp_(a.abs().max(), 0.1)
    c = a.clone()
    c.addcdiv_(b, b.abs() + 1, value=-0.25).clamp_(-1.0, 1.0)
    out = torch.empty(3, dtype=a.dtype)
    torch.mul(a, b, out=out)
    norms = torch._foreach_norm([a, b])
    if bool(torch.zeros(()) == 0):  # every copy agrees: a Python value is fine
        c.add_(1.0)
    return state, scalar.expand(1), c, out, torch.stack(norms)


def test_the_modes_rewrites_equal_a_per_copy_loop_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(7, 3, generator=g, dtype=torch.float64) * 10 ** torch.arange(7.0).view(-1, 1) for _ in "ab")
    for got, want in zip(_vmapped(_rewrites, a, b), _per_copy(_rewrites, a, b)):
        assert torch.equal(got, want)


def test_low_precision_small_products_round_once_as_the_cpu_kernels_do():
    def newton_schulz_step(x):
        a = x @ x.mT
        b = torch.addmm(a, a, a, beta=-4.775, alpha=2.0315)
        return (torch.addmm(x, b, x, beta=3.4445, alpha=1.0),)

    x = torch.randn(64, 1, 2, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    assert torch.equal(_vmapped(newton_schulz_step, x)[0], _per_copy(newton_schulz_step, x)[0])


def test_copies_that_disagree_on_a_python_value_raise():
    def branch(a):
        return (a * 2,) if bool(a.sum() > 0) else (a,)

    with pytest.raises(vmapped.LanesDisagree):
        _vmapped(branch, torch.tensor([[1.0], [-1.0]]))


def test_stacked_carries_per_copy_state_and_group_entries_between_steps():
    class GroupCounter(torch.optim.Optimizer):
        """Keeps a per-copy tensor in its param group: carried like state."""

        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    group["seen"] = group.get("seen", torch.zeros_like(p)) + p.grad
                    p.sub_(group["seen"], alpha=group["lr"])

    phys = torch.zeros(4, 2, dtype=torch.float64)
    st = vmapped.Stacked(lambda groups: GroupCounter(groups), [{"params": [phys]}])
    for t in range(3):
        st.step([torch.arange(8.0, dtype=torch.float64).view(4, 2) * (t + 1)])
    alone = []
    for i in range(4):
        p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = GroupCounter([p])
        for t in range(3):
            p.grad = torch.arange(8.0, dtype=torch.float64).view(4, 2)[i] * (t + 1)
            opt.step()
        alone.append(p.detach())
    assert torch.equal(phys, torch.stack(alone))


def test_a_torch_without_the_internals_is_refused_in_one_line(monkeypatch, planted):
    monkeypatch.setattr(vmapped, "INTERNALS", vmapped.INTERNALS + ("no_such_internal",))
    assert "lacks no_such_internal" in vmapped.check_internals()
    plan = probe(parse_one(f"{planted}:Momentum"), time_it=False)
    assert plan.mode == "tensors" and "vmapped fails (Unsupported: torch " in plan.why


def test_the_toy_record_carries_torchs_version():
    from focuslab.optimizers.entries import torch_version

    assert parse_one("torch.optim.AdamW").record()["torch"] == torch_version() == torch.__version__


def test_the_vmapped_rewrite_list_matches_this_torch():
    """NATIVE_INPLACE lists in-place ops that vmap batches itself: were one to lose its batching
    rule (a torch upgrade), vmap would warn, and the probe's note would say so."""
    import warnings

    x = torch.randn(4, 3).abs() + 0.5
    for name in sorted(vmapped.NATIVE_INPLACE):
        method = getattr(torch.Tensor, name, None)
        if method is None:
            continue
        def fn(t, method=method, name=name):
            u = t.clone()
            args = {"fill_": (1.0,), "clamp_min_": (0.1,), "clamp_max_": (0.1,), "masked_fill_": (t > 1, 0.0)}.get(
                name, (t,) if name in ("add_", "sub_", "mul_", "div_", "copy_", "copysign_", "atan2_", "true_divide_",
                                       "subtract_", "multiply_", "divide_") else ())
            method(u, *args)
            return u

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.func.vmap(fn)(x)
        assert not [w for w in caught if "batching rule" in str(w.message)], name
