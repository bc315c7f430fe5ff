"""Any torch optimizer on the toy (focuslab.toy.plugin), the spec grammar (focuslab.optimizers), and
cross-checks against code nobody here wrote (torch.optim, pytorch_optimizer)."""
import json
import math
import textwrap

import numpy as np
import pytest

from focuslab.axes import cell_array
from focuslab.errors import FocuslabError
from focuslab.optimizers import BuiltinEntry, ExternalEntry, parse_list, parse_one, parse_opt_params
from focuslab.optimizers.builtin import get
from focuslab.optimizers.spec import parse_spec, split_list
from focuslab.toy import kernel
from focuslab.toy.rng import trajectory_keys

torch = pytest.importorskip("torch")

from focuslab.optimizers.toyprobe import probe  # noqa: E402
from focuslab.toy import plugin  # noqa: E402
from focuslab.toy.plugin import Plan  # noqa: E402

# Optimizers written for these tests, loaded through the file grammar (path/to/file.py:Class).
USER_OPTIMIZERS = '''
import torch


def sign(x):  # numba's np.sign: +-1, else x itself (+-0 keeps its sign, NaN stays NaN)
    return torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, x))


class ExactSignum(torch.optim.Optimizer):
    """Signum in the toy kernel's order of operations: m <- b1 m + (1 - b1) g; x <- x - lr (sign m + wd x)."""

    def __init__(self, params, lr=0.01, beta1=0.9, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, beta1=beta1, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, lr, wd = group["beta1"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                m = state["m"]
                m.copy_(b1 * m + (1.0 - b1) * p.grad)
                p.copy_(p - lr * (sign(m) + wd * p))


class TensorNorm(torch.optim.Optimizer):
    """Normalised gradient descent per tensor: couples the rows of a batched tensor, not tensors."""

    def __init__(self, params, lr=0.01, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad / (p.grad.norm() + 1e-12), alpha=-group["lr"])
                p.mul_(1 - group["lr"] * group["weight_decay"])


class GlobalNorm(TensorNorm):
    """Normalised by the norm over every tensor of the instance: couples everything."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            total = torch.sqrt(sum((p.grad ** 2).sum() for p in group["params"]))
            for p in group["params"]:
                p.add_(p.grad / (total + 1e-12), alpha=-group["lr"])


class LateCoupling(ExactSignum):
    """ExactSignum for 150 steps, then a tensor-wide mean enters: beyond the probe's 100 steps."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                n = self.state[p].get("n", 0) + 1
                if n > 150:
                    p.grad.add_(p.grad.mean())
                super().step()
                self.state[p]["n"] = n
                return


class TwoQueries(ExactSignum):
    """Needs a closure and asks it for two gradients a step; steps on the first (query 0 = the
    kernel's draw for that step), so it must equal ExactSignum bit for bit."""

    @torch.no_grad()
    def step(self, closure):
        first = None
        with torch.enable_grad():
            closure()
            first = [p.grad.clone() for g in self.param_groups for p in g["params"]]
            closure()
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = first.pop(0)
        super().step()


class NotAnOptimizer:
    pass
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_opts.py"
    path.write_text(USER_OPTIMIZERS)
    return path


def small_grid():
    cells = cell_array(sharpness=[0.3, 10.0, 300.0], noise=[0.0, 1.5, 3.0], weight_decay=[0.1, 0.0, 0.2],
                       phi=[math.pi / 6, 1.1, -0.4], c=[0.1, 0.3, 2.0])
    return cells, np.array([1e-3, 1e-2, 0.1]), trajectory_keys(3, cells, np.arange(5))


def plan_of(entry, **changes):
    return Plan(**{**probe(entry, time_it=False).to_dict(), **changes})


# --- the grammar ------------------------------------------------------------------------------
def test_lists_split_on_top_level_commas_only():
    assert split_list("adam, focus:gamma=0.4,pytorch_optimizer.AdaBelief:betas=(0.9,0.95)") == \
        ["adam", "focus:gamma=0.4", "pytorch_optimizer.AdaBelief:betas=(0.9,0.95)"]
    assert split_list(["a", " b "]) == ["a", "b"]
    with pytest.raises(FocuslabError, match="unclosed bracket"):
        split_list("x:betas=(0.9,0.95")


def test_spec_kinds_settings_and_group_keys():
    p = parse_spec("pytorch_optimizer.Muon:group.use_muon=True:momentum=0.90")
    assert (p.kind, p.target, p.settings, p.group) == ("path", "pytorch_optimizer.Muon", {"momentum": 0.9},
                                                       {"use_muon": True})
    p = parse_spec("path/to/my.py:MyOpt:eps=1e-8:decay=average:betas=(0.9, 0.95)")
    assert (p.kind, p.target, p.cls) == ("file", "path/to/my.py", "MyOpt")
    assert p.settings == {"eps": 1e-8, "decay": "average", "betas": (0.9, 0.95)}
    assert parse_spec("adabelief").kind == "name"


@pytest.mark.parametrize("text,needle", [
    ("focus:lr=0.1", "the learning rate is the study's lr axis"),
    ("focus:weight_decay=0.1", "weight decay is the study's own"),
    ("my.py", "a file needs its class"),
    ("my.py:gamma=1", "a file needs its class"),
    ("focus:gamma", "expected KEY=VALUE"),
    ("focus:gamma=1:gamma=2", "sets gamma twice"),
    ("focus:gamma=[1", "unclosed bracket"),
    ("9lives", "neither a name"),
])
def test_malformed_specs_are_one_line_errors(text, needle):
    with pytest.raises(FocuslabError, match=needle.replace("[", r"\[")):
        parse_list(text)


def test_labels_are_normalised_stable_and_file_safe():
    a = parse_one("focus:gamma=0.40:beta2=0.90")
    b = parse_one("focus:beta2=0.9:gamma=4e-1")
    assert a.label == b.label == "focus:beta2=0.9:gamma=0.4"  # the definition's order, shortest numbers
    assert a.slug == "focus_beta2-0.9_gamma-0.4"
    c = parse_one("adabelief:betas=(0.9, 0.950)")
    assert c.label == "pytorch_optimizer.AdaBelief:betas=(0.9,0.95)" and isinstance(c, ExternalEntry)
    assert parse_one("pytorch_optimizer.AdaBelief").name == parse_one("AdaBelief").name
    assert all(ch.isalnum() or ch in "._-" for ch in c.slug)
    # a spelled alias keeps its spelling (and title): adamw on MNIST, adam on the toy
    assert parse_one("adamw").label == "adamw" and parse_one("adamw").title == "AdamW"


def test_builtins_win_bare_names_and_registry_names_resolve():
    assert isinstance(parse_one("lion"), BuiltinEntry)
    assert isinstance(parse_one("pytorch_optimizer.Lion"), ExternalEntry)
    assert parse_one("soap").name == "pytorch_optimizer.SOAP"
    with pytest.raises(FocuslabError, match="did you mean adabelief"):
        parse_one("adabeleif")


def test_opt_params_take_the_setting_after_the_last_dot():
    assert parse_opt_params(["pytorch_optimizer.AdaBelief.eps=1e-12", "focus.gamma=0.4"]) == \
        {"pytorch_optimizer.AdaBelief": {"eps": 1e-12}, "focus": {"gamma": 0.4}}
    entries = parse_list("adam,adabelief", parse_opt_params(["pytorch_optimizer.AdaBelief.eps=1e-12"]))
    assert entries[1].settings == {"eps": 1e-12} and entries[1].label == "pytorch_optimizer.AdaBelief"
    with pytest.raises(FocuslabError, match="is not among the optimizers"):
        parse_list("adam", parse_opt_params(["adabelief.eps=1e-12"]))
    with pytest.raises(FocuslabError, match="repeats"):
        parse_list("adabelief,pytorch_optimizer.AdaBelief")


@pytest.mark.parametrize("text,needle", [
    ("nosuchmodule.Opt", "cannot import module 'nosuchmodule'"),
    ("torch.optim.NoSuchThing", "has no 'NoSuchThing'"),
    ("torch.nn.Linear", "is not a torch.optim.Optimizer"),
    ("torch.optim.NAdam:betaz=(0.9,0.99)", "takes no setting 'betaz'"),
])
def test_external_bad_input_names_the_spec(text, needle):
    with pytest.raises(FocuslabError, match=needle) as err:
        parse_list(text)
    assert text.split(":")[0] in str(err.value) and "\n" not in str(err.value)


def test_user_file_class_label_origin_and_edits(user_file, tmp_path):
    e = parse_one(f"{user_file}:ExactSignum:beta1=0.5")
    assert e.label == "my_opts.ExactSignum:beta1=0.5" and e.origin.startswith("sha256:")
    assert e.name == f"{user_file.resolve()}:ExactSignum"
    with pytest.raises(FocuslabError, match="is not a torch.optim.Optimizer"):
        parse_one(f"{user_file}:NotAnOptimizer")
    with pytest.raises(FocuslabError, match="defines no 'Nope'"):
        parse_one(f"{user_file}:Nope")
    with pytest.raises(FocuslabError, match="file not found"):
        parse_one(f"{tmp_path}/missing.py:X")
    edited = tmp_path / "my_opts.py"
    edited.write_text(USER_OPTIMIZERS + "\n# edited\n")
    assert parse_one(f"{edited}:ExactSignum").origin != e.origin  # a study would refuse to mix them


# --- the engine is exact: streams, gradient, metrics, divergence --------------------------------
@pytest.mark.parametrize("mode", ["batched", "tensors", "single"])
def test_a_plugin_with_the_kernels_arithmetic_reproduces_the_kernel_bit_for_bit(user_file, mode):
    cells, lrs, keys = small_grid()
    entry = parse_one(f"{user_file}:ExactSignum")
    plan = plan_of(entry, mode=mode)
    assert probe(entry, time_it=False).mode == "batched"
    got = plugin.run(entry, plan, cells, lrs, keys, 300)
    want = kernel.run(get("signum"), {"beta1": 0.9}, cells, lrs, keys, 300)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_divergence_is_flagged_as_in_the_kernel(user_file):
    cells = cell_array(sharpness=10.0, noise=0.0, weight_decay=0.0, phi=0.5, c=0.1)
    keys = trajectory_keys(0, cells, np.arange(4))
    entry = parse_one(f"{user_file}:ExactSignum")
    got = plugin.run(entry, plan_of(entry), cells, np.array([1e-3, 1e200]), keys, 300)
    want = kernel.run(get("signum"), {"beta1": 0.9}, cells, np.array([1e-3, 1e200]), keys, 300)
    np.testing.assert_array_equal(got["diverged"], want["diverged"])
    assert want["diverged"][0, 1].all() and not want["diverged"][0, 0].any()


# --- separability is checked, not assumed ---------------------------------------------------------
def _one_by_one(entry, cells, lrs, keys, steps):
    return plugin.run(entry, plan_of(entry, mode="single"), cells, lrs, keys, steps)


def test_probe_sorts_optimizers_by_what_they_couple(user_file):
    tensor_norm = probe(parse_one(f"{user_file}:TensorNorm"), time_it=False)
    assert (tensor_norm.mode, tensor_norm.fallback) == ("vmapped", "tensors")
    # one instance per trajectory under vmap is the definition itself; n tensors in one instance are not
    global_norm = probe(parse_one(f"{user_file}:GlobalNorm"), time_it=False)
    assert (global_norm.mode, global_norm.fallback) == ("vmapped", "single")
    assert probe(parse_one("torch.optim.AdamW"), time_it=False).mode == "batched"
    cells, lrs, keys = small_grid()
    for name in ("TensorNorm", "GlobalNorm"):
        entry = parse_one(f"{user_file}:{name}")
        got = plugin.run(entry, probe(entry, time_it=False), cells, lrs, keys, 200)
        want = _one_by_one(entry, cells, lrs, keys, 200)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # forcing the batched form on a coupled rule changes the answer: the probe is not a formality
    entry = parse_one(f"{user_file}:TensorNorm")
    wrong = plugin.run(entry, plan_of(entry, mode="batched"), cells, lrs, keys, 200, check_sentinels=False)
    assert not np.array_equal(wrong["final_loss"], _one_by_one(entry, cells, lrs, keys, 200)["final_loss"])


def test_a_coupling_beyond_the_probe_is_caught_by_the_sentinels(user_file):
    entry = parse_one(f"{user_file}:LateCoupling")
    plan = probe(entry, time_it=False)
    assert plan.mode == "batched"  # the probe's 100 steps cannot see it ...
    cells, lrs, keys = small_grid()
    got = plugin.run(entry, plan, cells, lrs, keys, 200)  # ... the run's sentinels do
    want = _one_by_one(entry, cells, lrs, keys, 200)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_closure_optimizers_get_numbered_gradient_queries(user_file):
    entry = parse_one(f"{user_file}:TwoQueries")
    plan = probe(entry, time_it=False)
    assert plan.closure and not plan.graph
    cells, lrs, keys = small_grid()
    got = plugin.run(entry, plan, cells, lrs, keys, 150)
    want = kernel.run(get("signum"), {"beta1": 0.9}, cells, lrs, keys, 150)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_refusals_are_one_line_and_name_the_spec():
    from focuslab.optimizers import plans

    with pytest.raises(FocuslabError, match=r"pytorch_optimizer.Muon: Muon\(\.\.\.\) failed: .*use_muon.* group\.KEY"):
        probe(parse_one("pytorch_optimizer.Muon"), time_it=False)
    with pytest.raises(FocuslabError, match="torch.optim.LBFGS: takes no weight_decay.*--weight-decay 0"):
        plans(parse_list("torch.optim.LBFGS"), [0.0, 0.1])
    assert plans(parse_list("torch.optim.LBFGS"), [0.0])["torch.optim.LBFGS"].closure  # without decay: runs


# --- cross-checks against code nobody here wrote ----------------------------------------------------
def _tables(specs, **grid):
    from focuslab.config import build_scan_config
    from focuslab.scan import cell_values
    from focuslab.optimizers import plans

    cfg = build_scan_config(None, {"sharpness": "0.1:1000:5:log", "noise": "0:3:4", "lr": "1e-3:1:10:log",
                                   "replicates": 40, "steps": 500, "optimizers": specs, **grid})
    cells = cell_values(cfg)
    lrs = np.asarray(cfg.axes["lr"].values)
    keys = trajectory_keys(cfg.seed, cells, np.arange(cfg.replicates))
    P = plans(cfg.entries, cfg.axes["weight_decay"].values)
    return cfg, [e.simulate(cells, lrs, keys, cfg.steps, P.get(e.label)) for e in cfg.entries]


def _agree(a, b, replicates):
    """Paired agreement of two implementations on the same streams: each (cell, lr) mean final loss
    within 4 paired standard errors (or 1e-9 relative where the pairs barely differ), the same
    divergence, and every cell's best lr within one grid step with a best loss inside 2 % or
    3 combined SE."""
    fa, fb = a["final_loss"], b["final_loss"]
    np.testing.assert_array_equal(a["diverged"], b["diverged"])
    ok = ~a["diverged"].astype(bool).any(-1)
    d = fa - fb
    se = d.std(-1, ddof=1) / math.sqrt(replicates)
    mean = d.mean(-1)
    tiny = np.abs(mean) <= 1e-9 * (1 + np.abs(fa.mean(-1)))
    assert np.all(tiny[ok] | (np.abs(mean[ok]) <= 4 * se[ok])), np.max(np.abs(mean[ok]) / np.maximum(se[ok], 1e-300))
    ma, mb = np.where(a["diverged"], np.inf, fa).mean(-1), np.where(b["diverged"], np.inf, fb).mean(-1)
    ia, ib = ma.argmin(1), mb.argmin(1)
    assert np.all(np.abs(ia - ib) <= 1)
    rows = np.arange(len(ia))
    la, lb = ma[rows, ia], mb[rows, ib]
    sa = fa[rows, ia].std(-1, ddof=1) / math.sqrt(replicates)
    sb = fb[rows, ib].std(-1, ddof=1) / math.sqrt(replicates)
    assert np.all((np.abs(la - lb) <= 0.02 * np.abs(la)) | (np.abs(la - lb) <= 3 * np.hypot(sa, sb)))


@pytest.mark.slow
def test_torch_adamw_reproduces_native_adam():
    cfg, (native, torch_adamw) = _tables("adam,torch.optim.AdamW")
    _agree(native, torch_adamw, cfg.replicates)


@pytest.mark.slow
def test_pytorch_optimizer_lion_and_focus_reproduce_native_rules_where_they_coincide():
    pytest.importorskip("pytorch_optimizer")
    cfg, (lion, po_lion) = _tables("lion,pytorch_optimizer.Lion")
    _agree(lion, po_lion, cfg.replicates)
    # pytorch_optimizer's FOCUS is Algorithm 1 (decay toward the average): the native focus with
    # decay=average and the same betas and gamma
    cfg, (focus, po_focus) = _tables("focus:decay=average,pytorch_optimizer.FOCUS:betas=(0.9,0.9):gamma=0.2")
    _agree(focus, po_focus, cfg.replicates)


# --- studies end to end ---------------------------------------------------------------------------
def test_scan_with_plugins_records_plans_and_resumes(tmp_path, user_file):
    from focuslab.config import build_scan_config
    from focuslab.results import read_json, read_parquet
    from focuslab.scan import run_scan

    cfg = build_scan_config(None, {"sharpness": "1,10", "noise": "0,2", "lr": "1e-3,1e-2", "replicates": 4,
                                   "steps": 50, "optimizers": f"signum,{user_file}:ExactSignum,torch.optim.AdamW"})
    run_scan(cfg, tmp_path, jobs=1, progress=False)
    meta = read_json(tmp_path / "scan.json")
    assert set(meta["plugins"]) == {"my_opts.ExactSignum", "torch.optim.AdamW"}
    assert meta["config"]["external"]["torch.optim.AdamW"]["origin"].startswith("torch ")
    runs = read_parquet(tmp_path / "runs.parquet")
    a = runs[runs.optimizer == "signum"].final_loss_mean.to_numpy()
    b = runs[runs.optimizer == "my_opts.ExactSignum"].final_loss_mean.to_numpy()
    np.testing.assert_array_equal(a, b)
    assert run_scan(cfg, tmp_path, jobs=1, progress=False).get("already_complete")
    # the scan.json config rebuilds to the same digest (refine and merge depend on it)
    from focuslab.scan import config_from_meta

    assert config_from_meta(meta).digest() == meta["digest"]


def test_stochastic_hessian_optimizers_run_batched_and_repeat_exactly():
    pytest.importorskip("pytorch_optimizer")
    entry = parse_one("pytorch_optimizer.AdaHessian")
    plan = probe(entry, time_it=False)
    assert plan.graph and plan.stochastic and plan.mode == "batched"
    cells, lrs, keys = small_grid()
    one = plugin.run(entry, plan, cells, lrs, keys, 60)
    two = plugin.run(entry, plan, cells, lrs, keys, 60)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])
    assert np.isfinite(one["final_loss"][~one["diverged"].astype(bool)]).all()


def test_scan_cli_refuses_bad_plugins_in_one_line_and_writes_nothing(tmp_path, user_file):
    from click.testing import CliRunner

    from focuslab.cli.main import main

    for spec, needle in [("torch.optim.LBFGS", "takes no weight_decay"),
                         ("pytorch_optimizer.Muon", "use_muon"),
                         (f"{user_file}:NotAnOptimizer", "not a torch.optim.Optimizer"),
                         ("adam,nosuch.module.Opt", "cannot import module 'nosuch'")]:
        res = CliRunner().invoke(main, ["scan", "--optimizers", spec, "--sharpness", "1", "--noise", "0",
                                        "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "out").exists()


def test_mnist_trains_stacked_and_per_model_optimizers_like_the_one_at_a_time_trainer():
    """float64, so that the batched trainer (stacked models, views into them) and the one-at-a-time
    trainer (nn.Module + the same class) can be held to 1e-7: a wrong stacking is off by ~1e-2."""
    from focuslab.mnist.model import BatchedMLP
    from focuslab.mnist.steppers import Steppers
    from focuslab.mnist.train import initial_params, train_batched, train_one

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 96)
    images = rng.random((96, 784)) * 0.2
    for i, y in enumerate(labels):
        images[i, 56 * y:56 * y + 84] = 1.0  # learnable: the label is painted into the image
    data = {"x_train": torch.from_numpy(images[:64]), "y_train": torch.from_numpy(labels[:64]),
            "x_test": torch.from_numpy(images[64:]), "y_test": torch.from_numpy(labels[64:])}
    for spec, mode in (("torch.optim.NAdam", "stacked"), ("pytorch_optimizer.AdamP", "per model")):
        if spec.startswith("pytorch_optimizer"):
            pytest.importorskip("pytorch_optimizer")
        entry = parse_one(spec)
        model = BatchedMLP([initial_params(0, r, torch.float64) for r in range(2)], 2)
        assert Steppers(entry, model, [1e-3], 2, 0.01).mode == mode
        out = train_batched(data, entry, 8, [1e-3, 3e-3], 2, 12, seed=5, weight_decay=0.01, dtype=torch.float64)
        for i, lr in enumerate([1e-3, 3e-3]):
            for r in range(2):
                one = train_one(data, entry, 8, lr, r, 12, seed=5, weight_decay=0.01, dtype=torch.float64)
                assert out["test_loss"][i, r] == pytest.approx(one["test_loss"], rel=1e-7), (spec, lr, r)
                assert out["train_loss"][i, r] == pytest.approx(one["train_loss"], rel=1e-7), (spec, lr, r)


def test_gpt2_builds_the_class_of_any_spec_and_refuses_closures(tmp_path):
    from focuslab.gpt2.config import build_train_config
    from focuslab.gpt2.model import GPT
    from focuslab.gpt2.train import make_optimizer

    cfg = build_train_config("gpt2-nano", None, {"optimizer": "torch.optim.NAdam:momentum_decay=0.005"})
    model = GPT(cfg.model_config(256))
    opt = make_optimizer(cfg, model)
    assert type(opt).__name__ == "NAdam" and opt.defaults["momentum_decay"] == 0.005
    assert cfg.optimizer == "torch.optim.NAdam:momentum_decay=0.005" and cfg.optimizer_origin.startswith("torch ")
    cfg = build_train_config("gpt2-nano", None, {"optimizer": "torch.optim.LBFGS", "weight_decay": 0.0})
    with pytest.raises(FocuslabError, match="LBFGS.*needs a closure"):
        make_optimizer(cfg, model)


def test_every_builtin_runs_on_the_plugin_path_as_its_own_torch_class():
    """Each built-in's torch optimizer, run on the toy as if it were external, agrees with its
    numba rule statistically (the definitions coincide; only the rounding differs)."""
    cells, lrs, keys = small_grid()
    from focuslab.optimizers import builtin

    for b in builtin.BUILTINS:
        entry = parse_one(b.name)
        fake = _AsExternal(entry)
        plan = Plan("batched", False, False, False, "", "", math.nan)
        got = plugin.run(fake, plan, cells, lrs, keys, 200)
        want = kernel.run(b, entry.settings, cells, lrs, keys, 200)
        np.testing.assert_array_equal(got["diverged"], want["diverged"])
        live = ~want["diverged"].astype(bool)
        close = np.isclose(got["final_loss"][live], want["final_loss"][live], rtol=1e-6, atol=1e-9)
        assert live.mean() > 0.3 and close.mean() > 0.7, (b.name, live.mean(), close.mean())


class _AsExternal:
    """A built-in entry that the plugin engine steps with the built-in's torch class."""

    def __init__(self, entry):
        self.entry, self.label = entry, entry.label

    def build_torch(self, groups, lr, device="cpu"):
        return self.entry.build_torch(groups, lr, device)


def test_json_round_trip_of_external_settings():
    e = parse_one("pytorch_optimizer.AdaBelief:betas=(0.9,0.95)")
    rebuilt = parse_one(e.spec, json.loads(json.dumps({"betas": [0.9, 0.95]})))
    assert rebuilt.label == e.label and rebuilt.name == e.name


def test_a_dry_run_plans_with_the_probed_speed_of_an_external_optimizer(tmp_path):
    from click.testing import CliRunner

    from focuslab.cli.main import main

    out = tmp_path / "s"
    args = ["scan", "--sharpness", "1,10", "--noise", "0,1", "--replicates", "4", "--steps", "100", "--out", str(out),
            "--dry-run", "-j", "1"]
    native = CliRunner().invoke(main, [*args, "--optimizers", "adam"])
    plugin = CliRunner().invoke(main, [*args, "--optimizers", "adam,torch.optim.AdamW"])
    assert native.exit_code == 0 and plugin.exit_code == 0, plugin.output
    assert "probed speed of 1 external optimizer" in plugin.output and "probed" not in native.output
    assert not out.exists()  # a plan writes nothing
