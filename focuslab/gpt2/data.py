"""Token data in nanoGPT's format: uint16 memmaps train.bin / val.bin plus meta.json.

Tokenizers: GPT-2's BPE through tiktoken when its encoding can be loaded, otherwise (or with
--tokenizer bytes) a byte-level tokenizer (vocab 256) that always works offline.  With no data
given, the CPU presets train on English prose CPython ships (pydoc_data.topics, ~465 KB).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import FocuslabError
from ..results import atomic_write_bytes

VAL_FRACTION = 0.1


def byte_encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)


def byte_decode(tokens) -> str:
    return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")


def get_tokenizer(name: str):
    """('bytes' | 'gpt2' | 'auto') -> (name used, encode, vocab size, why)."""
    if name in ("gpt2", "auto"):
        try:
            import tiktoken

            enc = tiktoken.get_encoding("gpt2")
            return "gpt2", lambda s: np.asarray(enc.encode_ordinary(s), dtype=np.uint16), enc.n_vocab, \
                "GPT-2 BPE (tiktoken)"
        except Exception as err:  # not installed, or its BPE files cannot be fetched offline
            reason = ("tiktoken is not installed (pip install tiktoken)" if isinstance(err, ImportError)
                      else f"tiktoken could not load its GPT-2 encoding, which it downloads once ({err})")
            if name == "gpt2":
                raise FocuslabError(f"--tokenizer gpt2: {reason}; or use --tokenizer bytes") from None
            return "bytes", byte_encode, 256, f"byte-level (GPT-2 BPE unavailable: {reason})"
    if name == "bytes":
        return "bytes", byte_encode, 256, "byte-level"
    raise FocuslabError(f"--tokenizer: unknown tokenizer {name!r} (auto, gpt2, bytes)")


def interruptible(fn, *args):
    """``fn(*args)`` in a helper thread, waited for in short slices, so that Ctrl-C reaches the main
    thread at once even while a long native call (a tokenizer over a large corpus) runs."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in box:
        raise box["error"]
    return box["value"]


def read_texts(inputs) -> str:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise FocuslabError(f"--input {p}: no such file or directory")
    if not files:
        raise FocuslabError("--input: no files to read")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise FocuslabError(f"--input {f}: unreadable as UTF-8 text ({err})") from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise FocuslabError("--input: the files hold no text")
    return text


def embedded_corpus() -> str:
    """English prose shipped with CPython: the pydoc topic help texts (~465 KB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def prepare(text: str, out: Path, tokenizer: str = "auto", source: str = "") -> dict:
    """Tokenize ``text`` into out/train.bin, out/val.bin (last 10 %) and out/meta.json."""
    name, encode, vocab, why = get_tokenizer(tokenizer)
    tokens = interruptible(encode, text)
    if len(tokens) < 100:
        raise FocuslabError(f"input too small: {len(tokens)} tokens (need at least 100)")
    split = int(len(tokens) * (1 - VAL_FRACTION))
    from .config import make_run_dir

    out = Path(out)
    created = not out.exists()
    make_run_dir(out)  # a directory that cannot be made (read-only, no permission) is one line naming --out
    meta = {"tokenizer": name, "tokenizer_note": why, "vocab_size": vocab, "train_tokens": split,
            "val_tokens": len(tokens) - split, "source": source}
    try:  # meta.json last: a directory without it is not a prepared one
        atomic_write_bytes(out / "train.bin", tokens[:split].astype(np.uint16).tobytes())
        atomic_write_bytes(out / "val.bin", tokens[split:].astype(np.uint16).tobytes())
        atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode())
    except BaseException:
        if created:  # a refused or interrupted first attempt leaves nothing behind
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    return meta


def prepare_openwebtext(out: Path, num_proc: int = 8) -> dict:  # pragma: no cover - needs network
    """The paper's corpus through the `datasets` library (network needed; not run in tests)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise FocuslabError("--dataset openwebtext needs `pip install datasets tiktoken`") from None
    name, encode, vocab, why = get_tokenizer("gpt2")
    ds = load_dataset("openwebtext", num_proc=num_proc)["train"].train_test_split(
        test_size=0.0005, seed=2357, shuffle=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, part in (("train", ds["train"]), ("val", ds["test"])):
        part = part.map(lambda ex: {"ids": encode(ex["text"]).tolist() + [50256]}, remove_columns=["text"],
                        num_proc=num_proc)
        total = sum(len(x) for x in part["ids"])
        arr = np.memmap(out / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(total,))
        pos = 0
        for ids in part["ids"]:
            arr[pos:pos + len(ids)] = ids
            pos += len(ids)
        arr.flush()
        counts[split] = total
    meta = {"tokenizer": name, "tokenizer_note": why, "vocab_size": vocab, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "source": "openwebtext"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def check_block_size(lengths: dict, block_size: int, where: str) -> None:
    """One line when a split is too short for --block-size (a batch needs block_size + 1
    consecutive tokens and a choice of start): before any model is built."""
    for split in ("val", "train"):
        n = lengths[split]
        if n <= block_size + 1:
            raise FocuslabError(f"--block-size {block_size}: the {split} split of {where} has only {n} tokens; "
                                f"use --block-size {n - 2} or less, or more data (`focuslab gpt2 prepare`)")


def embedded_lengths() -> dict:
    """The split lengths ``prepare`` gives the embedded corpus as byte tokens, without writing it."""
    n = len(embedded_corpus().encode("utf-8"))
    split = int(n * (1 - VAL_FRACTION))
    return {"train": split, "val": n - split}


class TokenData:
    """Memory-mapped splits; batches are a pure function of (seed, split, iteration, micro-step),
    so any rank or a resumed run draws exactly the batches an uninterrupted run would."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        try:
            self.meta = json.loads((directory / "meta.json").read_text())
            self.splits = {s: np.memmap(directory / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val")}
        except (OSError, ValueError) as err:
            raise FocuslabError(f"--data {directory}: not a prepared token directory ({err}); run "
                                "`focuslab gpt2 prepare`") from None

    @property
    def lengths(self) -> dict:
        """Tokens in each split."""
        return {split: len(tokens) for split, tokens in self.splits.items()}

    def _starts(self, split: str, batch_size: int, block_size: int, seed: int, it: int, micro: int) -> list:
        data = self.splits[split]
        if len(data) <= block_size + 1:
            raise FocuslabError(f"{split} split has {len(data)} tokens: too few for block_size {block_size}")
        key = seed
        for part in ((0 if split == "train" else 1), it, micro):  # not hash(): str hashing is salted
            key = (key * 1_000_003 + part) % (2 ** 63)
        g = torch.Generator().manual_seed(key)
        return torch.randint(len(data) - block_size - 1, (batch_size,), generator=g).tolist()

    def _stack(self, split: str, ix: list, block_size: int, device):
        data = self.splits[split]
        x = torch.from_numpy(np.stack([data[i:i + block_size].astype(np.int64) for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block_size].astype(np.int64) for i in ix]))
        return x.to(device), y.to(device)

    def batch(self, split: str, batch_size: int, block_size: int, seed: int, it: int, micro: int,
              device="cpu"):
        """Micro-batch ``micro`` of iteration ``it``: ``batch_size`` sequences."""
        return self._stack(split, self._starts(split, batch_size, block_size, seed, it, micro), block_size, device)

    def sequences(self, split: str, batch_size: int, block_size: int, seed: int, it: int, start: int, count: int,
                  device="cpu"):
        """Sequences ``start`` .. ``start + count - 1`` of iteration ``it``, numbered across its
        micro-batches of ``batch_size`` (sequence s is row s % batch_size of micro-batch
        s // batch_size): however processes split an iteration, together they train on exactly the
        sequences one process would."""
        ix = []
        for micro in range(start // batch_size, (start + count - 1) // batch_size + 1):
            lo = max(start, micro * batch_size) - micro * batch_size
            hi = min(start + count, (micro + 1) * batch_size) - micro * batch_size
            ix += self._starts(split, batch_size, block_size, seed, it, micro)[lo:hi]
        return self._stack(split, ix, block_size, device)
