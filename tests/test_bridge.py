"""`focuslab bridge`: the toy read at the sigma_equiv real runs measured, on small real runs (an MNIST
study and GPT-2 runs with diagnostics, a toy scan), checked against plain recomputations from the
input tables; the toy map scanned in-process when missing; bad input refused in one line with
nothing written."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main

torch = pytest.importorskip("torch", reason="the real runs the bridge reads (mnist, gpt2) need torch")

TOY = ["--sharpness", "1,10,100", "--noise", "0.01:1000:11:log", "--lr", "1e-3:1:4:log", "--replicates", "8",
       "--steps", "100"]
GPT2 = ["gpt2", "--dropout", "0", "--eval-iters", "2", "--max-iters", "20", "--eval-interval", "10"]


def _ok(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Small real runs: an MNIST study (adamw, signum; 4 batch sizes) and three GPT-2 runs, all with
    diagnostics; one of each without; a toy map; a scan with one noise value."""
    from test_mnist import fake_mnist

    root = tmp_path_factory.mktemp("bridge-inputs")
    fake_mnist(root / "data" / "mnist", n_train=200)
    mnist = ["mnist", "--dataset", "mnist", "--data-dir", str(root / "data"), "--lr", "1e-3,1e-2", "--replicates",
             "2", "--steps", "12", "--optimizers", "adamw,signum", "-j", "1", "-q"]
    _ok([*mnist, "--batch-size", "4,8,16,32", "--diagnostics-every", "4", "--diagnostics-reference", "8",
         "--out", str(root / "mnist")])
    _ok([*mnist, "--batch-size", "8,16", "--out", str(root / "mnist-plain")])
    for opt in ("adamw", "signum", "focus"):
        extra = ["--diagnostics-preconditioned"] if opt == "adamw" else []
        _ok([*GPT2, "--optimizer", opt, "--diagnostics-every", "10", *extra, "-q", "--out", str(root / f"gpt2-{opt}")])
    _ok([*GPT2, "--max-iters", "4", "--eval-interval", "2", "-q", "--out", str(root / "gpt2-plain")])
    _ok(["scan", *TOY, "-j", "1", "-q", "--out", str(root / "toy")])
    _ok(["scan", "--sharpness", "1,10", "--noise", "0.5", "--lr", "1e-2,1e-1", "--replicates", "2", "--steps", "20",
         "-j", "1", "-q", "--out", str(root / "flat")])
    return root


def _bridge(runs, out, *extra):
    return ["bridge", "--mnist", str(runs / "mnist"), "--gpt2", str(runs / "gpt2-adamw"), "--gpt2",
            str(runs / "gpt2-signum"), "--gpt2", str(runs / "gpt2-focus"), "--toy", str(runs / "toy"),
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def bridged(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bridge") / "b"
    res = _ok(_bridge(runs, out))
    return out, res.output


def _interp_log(noise, values, sigma):
    return float(np.interp(math.log(sigma), np.log(noise), values))


@pytest.mark.slow
def test_the_mnist_reading_is_the_toy_map_at_each_batch_sizes_measured_sigma(runs, bridged):
    out, printed = bridged
    m = pd.read_parquet(out / "mnist.parquet").set_index("batch_size")
    diag = pd.read_parquet(runs / "mnist" / "diagnostics.parquet")
    best = pd.read_parquet(runs / "mnist" / "best.parquet").set_index(["optimizer", "batch_size"])
    assert sorted(m.index) == [4, 8, 16, 32]
    for b in m.index:  # AdamW's unit at its best lr, the median over the measurements after step 0
        rows = diag[(diag.optimizer == "adamw") & (diag.batch_size == b) & (diag.step > 0)]
        rows = rows[np.isclose(rows.lr, best.loc[("adamw", b), "best_lr"])]
        assert m.loc[b, "sigma_equiv"] == rows.sigma_equiv.median()
        la, ls = best.loc[("adamw", b), "test_loss_mean"], best.loc[("signum", b), "test_loss_mean"]
        assert m.loc[b, "improvement"] == pytest.approx(1 - ls / la, rel=1e-12)
    toy = pd.read_parquet(runs / "toy" / "best.parquet")
    pred = pd.read_parquet(out / "mnist_toy.parquet")
    assert len(pred) == 3 * 4
    for r in pred.itertuples():  # (L_Adam - L_Signum) / |L_Adam|, each interpolated linearly in log sigma
        cell = {o: toy[(toy.optimizer == o) & np.isclose(toy.sharpness, r.sharpness)].sort_values("noise")
                for o in ("adam", "signum")}
        la = _interp_log(cell["adam"].noise, cell["adam"].final_loss_mean, r.sigma_equiv)
        ls = _interp_log(cell["signum"].noise, cell["signum"].final_loss_mean, r.sigma_equiv)
        assert r.predicted_improvement == pytest.approx((la - ls) / abs(la), rel=1e-9, abs=1e-12)
    per_a = pd.read_parquet(out / "boundary.parquet")
    for r in per_a.itertuples():  # sigma*(a) sits where Adam - Signum turns positive, between grid values
        g = {o: toy[(toy.optimizer == o) & np.isclose(toy.sharpness, r.sharpness)].sort_values("noise")
             .set_index("noise")["final_loss_mean"] for o in ("adam", "signum")}
        d = g["adam"] - g["signum"]
        ups = [k for k in range(len(d) - 1) if d.iloc[k] <= 0 < d.iloc[k + 1]]  # Adam ahead, then Signum
        if ups:  # the first such turn, interpolated in log sigma between its grid values
            k = ups[0]
            assert d.index[k] < r.sigma_star <= d.index[k + 1]
            x0, x1 = math.log(d.index[k]), math.log(d.index[k + 1])
            assert r.sigma_star == pytest.approx(math.exp(x0 + (x1 - x0) * -d.iloc[k] / (d.iloc[k + 1] - d.iloc[k])))
        else:
            assert np.isnan(r.sigma_star)
        signs = [np.sign(p) == np.sign(m.loc[b, "improvement"]) for b, p in
                 pred[np.isclose(pred.sharpness, r.sharpness)][["batch_size", "predicted_improvement"]].itertuples(index=False)]
        assert r.signs_right == pytest.approx(np.mean(signs))
    meta = json.loads((out / "bridge.json").read_text())
    assert meta["kind"] == "bridge" and meta["status"] == "complete"
    assert meta["inputs"]["mnist"] == str(runs / "mnist") and meta["inputs"]["toy"] == str(runs / "toy")
    fit = np.polyfit(np.log([8, 16, 32]), np.log(m.loc[[8, 16, 32], "sigma_equiv"]), 1)
    assert meta["readings"]["mnist"]["sigma_slope"] == pytest.approx(fit[0], rel=1e-9)
    assert f"~ B^{fit[0]:.2f}" in printed


@pytest.mark.slow
def test_the_gpt2_reading_ranks_the_toy_at_the_runs_median_sigma(runs, bridged):
    out, printed = bridged
    g = pd.read_parquet(out / "gpt2.parquet").set_index("optimizer")
    sigmas = []
    for opt in ("adamw", "signum", "focus"):
        meta = json.loads((runs / f"gpt2-{opt}" / "gpt2.json").read_text())
        d = pd.read_parquet(runs / f"gpt2-{opt}" / "diagnostics.parquet")
        assert g.loc[opt, "final_val_loss"] == meta["final"]["val_loss"]
        assert g.loc[opt, "sigma_equiv"] == d[d.step > 0].sigma_equiv.median()
        sigmas.append(d[d.step > 0].sigma_equiv.median())
    t = pd.read_parquet(out / "gpt2_toy.parquet")
    assert (t.sigma_equiv == np.median(sigmas)).all()
    toy = pd.read_parquet(runs / "toy" / "best.parquet")
    for a, rows in t.groupby("sharpness"):
        for r in rows.itertuples():
            cell = toy[(toy.optimizer == r.optimizer) & np.isclose(toy.sharpness, a)].sort_values("noise")
            assert r.final_loss_mean == pytest.approx(_interp_log(cell.noise, cell.final_loss_mean, r.sigma_equiv),
                                                      rel=1e-12)
        assert rows.sort_values("rank").final_loss_mean.is_monotonic_increasing
    order = " < ".join(f"{o} {v:.4f}" for o, v in g.final_val_loss.sort_values().items())
    assert f"GPT-2: observed {order}" in printed


def test_the_toy_stability_number_is_the_top_eigenvalue_of_the_preconditioned_hessian_along_adams_path():
    """The bridge's vectorised S against a plain per-step loop: Adam's own second moments from the
    path's noisy gradients, H in theta coordinates, numpy's eigvalsh of P^-1/2 H P^-1/2."""
    from focuslab.bridge import toy_stability
    from focuslab.toy import landscape, reference

    a, noise, lr, steps = 10.0, 0.7, 0.02, 60
    toy = pd.DataFrame({"optimizer": ["adam"], "sharpness": [a], "noise": [noise], "best_lr": [lr],
                        "weight_decay": [0.1], "phi": [math.pi / 6], "c": [0.1]})
    hp = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    s, got_noise, got_lr = toy_stability(toy, hp, a, 0.9, replicates=1, steps=steps)
    assert (got_noise, got_lr) == (noise, lr)
    rng = np.random.default_rng([int(round(1e6 * a)), 0])
    normals = rng.normal(size=(steps + 1, 2))
    path = reference.trajectory("adam", hp, sharpness=a, noise=noise, weight_decay=0.1, phi=math.pi / 6, c=0.1,
                                lr=lr, normals=normals, steps=steps)["path"]
    co, si = math.cos(math.pi / 6), math.sin(math.pi / 6)
    R = np.array([[co, -si], [si, co]])
    v, values = np.zeros(2), []
    for t in range(1, steps + 1):
        u, w = landscape.rotate(*path[t - 1], co, si)
        g = np.array(landscape.grad_theta(u, w, a, 0.1, co, si)) * (1 + noise * normals[t])
        v = 0.999 * v + 0.001 * g * g
        if t <= steps // 2:
            continue
        u, w = landscape.rotate(*path[t], co, si)
        h = R @ np.array([[a * w * w, 2 * a * u * w], [2 * a * u * w, a * u * u]]) @ R.T
        p = np.sqrt(v / (1 - 0.999 ** t)) + 1e-8
        values.append(lr * np.linalg.eigvalsh(h / np.sqrt(np.outer(p, p)))[-1])
    assert s == pytest.approx(np.median(values), rel=1e-9)


@pytest.mark.slow
def test_the_figures_come_from_focuslab_plot_and_a_rerun_is_refused_only_for_other_inputs(runs, bridged, tmp_path):
    out, printed = bridged
    res = _ok(["plot", str(out), "--out", str(tmp_path / "fig")])
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["gpt2_bridge.png", "mnist_bridge.png",
                                                                     "stability_bridge.png"]
    assert res.output.splitlines()[0] == printed.splitlines()[0]  # the same reading, from the tables
    s = pd.read_parquet(out / "stability.parquet")
    assert set(s.measurement) >= {"MNIST B=8", "GPT-2 gpt2-adamw"} and s.toy_stability.gt(0).all()
    assert (s.stability > 0).all() and len(s) % 3 == 0  # every measurement at each of the map's 3 a
    _ok(_bridge(runs, out))  # the same inputs: read again
    res = CliRunner().invoke(main, _bridge(runs, out, "--stability-replicates", "2"))
    assert res.exit_code == 2 and "holds a bridge of other inputs" in res.stderr
    _ok(_bridge(runs, out, "--stability-replicates", "2", "--force"))


@pytest.mark.slow
def test_a_missing_toy_map_is_scanned_in_process_from_toy_config(runs, tmp_path, monkeypatch):
    import subprocess

    import focuslab.scan

    calls = []
    real = focuslab.scan.run_scan

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the bridge started a subprocess: {args}")

    monkeypatch.setattr(focuslab.scan, "run_scan", counted)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    config = tmp_path / "toy.toml"
    config.write_text('[scan]\nsharpness = "1,100"\nnoise = "0.1:100:7:log"\nlr = "1e-3:1:4:log"\n'
                      'optimizers = ["adam", "signum"]\nreplicates = 4\nsteps = 60\n')
    res = _ok(["bridge", "--mnist", str(runs / "mnist"), "--toy", str(tmp_path / "toy"), "--toy-config", str(config),
               "--stability-replicates", "0", "-j", "1", "--out", str(tmp_path / "b")])
    assert calls == [tmp_path / "toy"] and "scanning the toy map into" in res.output
    scan = json.loads((tmp_path / "toy" / "scan.json").read_text())
    assert scan["status"] == "complete" and scan["scan"]["noise"] == "0.1:100:7:log"
    assert not (tmp_path / "b" / "stability.parquet").exists()
    _ok(["bridge", "--mnist", str(runs / "mnist"), "--toy", str(tmp_path / "toy"), "--toy-config", str(config),
         "--stability-replicates", "0", "--out", str(tmp_path / "b")])
    assert calls == [tmp_path / "toy"]  # a finished map is read, not scanned again


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["--mnist", "{gpt2-adamw}"], "--mnist {gpt2-adamw} holds a GPT-2 run (gpt2.json), not a MNIST study"),
    (["--gpt2", "{mnist}"], "--gpt2 {mnist} holds a MNIST study (mnist.json), not a GPT-2 run"),
    (["--mnist", "{mnist}", "--toy", "{gpt2-adamw}"], "--toy {gpt2-adamw} holds a GPT-2 run (gpt2.json), not a toy scan"),
    (["--mnist", "{mnist-plain}"], "--mnist {mnist-plain}: no diagnostics.parquet (the MNIST study was run without "
                                   "--diagnostics-every N)"),
    (["--gpt2", "{gpt2-plain}"], "--gpt2 {gpt2-plain}: no diagnostics.parquet"),
    (["--mnist", "{mnist}", "--toy", "{flat}"], "--toy {flat}: a scan without a noise axis (noise 0.5)"),
    (["--mnist", "{mnist}", "--toy", "{new}", "--toy-config", "fig2b"], "--toy-config fig2b: the scan also varies "
                                                                       "weight_decay"),
    (["--mnist", "{mnist}", "--toy", "{new}", "--toy-config", "{flat}/nothing.toml"], "--toy-config"),
    (["--mnist", "{nowhere}"], "--mnist {nowhere}: no such directory"),
    (["--toy", "{toy}"], "give --mnist RUN_DIR and/or --gpt2 RUN_DIR"),
    (["--mnist", "{mnist}", "--toy", "{toy}", "--out", "{flat}"], "--out {flat} holds a scan (scan.json)"),
    (["--mnist", "{mnist}", "--toy", "{toy}", "--stability-replicates", "-1"], "--stability-replicates: must be >= 0"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(runs, tmp_path, args, needle):
    names = {p.name: str(p) for p in runs.iterdir()} | {"new": str(tmp_path / "new-toy"),
                                                         "nowhere": str(tmp_path / "nowhere")}
    args = [a.format(**names) for a in args]
    if "--toy" not in args:
        args += ["--toy", names["toy"]]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]

    def listing():
        return sorted((str(p), p.stat().st_mtime_ns) for p in runs.rglob("*"))

    before = listing()
    res = CliRunner().invoke(main, ["bridge", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("focuslab: error: "), res.stderr
    assert needle.format(**names) in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "new-toy").exists()
    assert listing() == before


def _table(path: Path) -> list[dict]:
    """A Markdown table written by focuslab.report, as rows of {header: cell}."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


@pytest.mark.slow
def test_the_docs_tables_are_written_from_the_results_directories(runs, bridged, tmp_path):
    from focuslab import report

    root = tmp_path / "results"
    root.mkdir()
    (root / "mnist-5k-diag").symlink_to(runs / "mnist")
    for opt in ("adamw", "signum", "focus"):
        (root / f"gpt2-mini-{opt}").symlink_to(runs / f"gpt2-{opt}")
    (root / "bridge").symlink_to(bridged[0])
    written, skipped = report.write_tables(root, tmp_path / "tables")
    assert set(written) == {"mnist-diagnostics.md", "gpt2-mini.md", "bridge-mnist.md", "bridge-boundary.md",
                            "bridge-gpt2.md", "bridge-stability.md"}
    assert any(s.startswith("paper-maps.md: no ") for s in skipped)
    m = pd.read_parquet(bridged[0] / "mnist.parquet").set_index("batch_size")
    rows = _table(tmp_path / "tables" / "mnist-diagnostics.md")
    assert [int(r["B"]) for r in rows] == sorted(m.index)
    for r in rows:
        b = int(r["B"])
        assert r["σ_equiv [95 %]"].split()[0] == format(m.loc[b, "sigma_equiv"], ".3g")
        assert r["I(B)"] == f"{100 * m.loc[b, 'improvement']:+.0f} % ± {100 * m.loc[b, 'improvement_error']:.0f} %"
    for r in _table(tmp_path / "tables" / "gpt2-mini.md"):
        meta = json.loads((root / r["run"].strip("`") / "gpt2.json").read_text())
        assert r["final val loss"] == f"{meta['final']['val_loss']:.4f}"
    pred = pd.read_parquet(bridged[0] / "mnist_toy.parquet")
    for r in _table(tmp_path / "tables" / "bridge-mnist.md"):
        for col, cell in r.items():
            if col.startswith("toy, a = "):
                a = float(col.split("= ")[1])
                q = pred[(pred.batch_size == int(r["B"])) & np.isclose(pred.sharpness, a)].predicted_improvement
                assert cell == f"{100 * q.iloc[0]:+.0f} %"
    assert (tmp_path / "tables" / "bridge-boundary.md").read_text().startswith(
        f"<!-- written by `python -m focuslab.report` from {root / 'bridge'}")
