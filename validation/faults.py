"""The fault sweep: bad inputs and faults across every command, each from a fresh directory, judged
the way a new user would judge them.

    python validation/faults.py                 # every case, each in its own `python -m focuslab`
    python validation/faults.py --in-process    # the same cases through Click's test runner (faster)
    python validation/faults.py -k gpt2 -v      # the cases whose name contains "gpt2", one line each

Each case runs in a new temporary directory (its working directory, so nothing lands elsewhere),
holding copies of the results directories it needs (a small scan, a 1-D scan, a one-replicate
scan, an MNIST study, a GPT-2 run, two shards of a scan), made once at the start.  A case that
expects a refusal must give exit 2, exactly one line on stderr that starts ``focuslab: error:``
(with the words it names, where given), no traceback, and leave its directory exactly as it was:
nothing written where refused, nothing lost.  Ctrl-C must give exit 130 and keep the work; kill -9
must leave no worker behind; a rerun must finish what was interrupted.

Counts printed at the end: cases, clean, lost (a file that was there changed or went), tracebacks
(or a crash's exit code), exit-0-while-wrong (accepted what should be refused), other (a refusal
that is not one clear line, or another exit code).
Exit status: 0 when every counted case is clean.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
SCAN = ["--sharpness", "1,10", "--noise", "0,1", "--lr", "0.01,0.1", "--replicates", "3", "--steps", "20", "-j", "1"]
MNIST = ["--batch-size", "8", "--optimizers", "adamw", "--lr", "1e-2,1e-1", "--replicates", "2", "--steps", "3",
         "-j", "1"]
REFINE = ["--initial-replicates", "20", "--max-replicates", "40", "-j", "1"]
NANO = ["--config", "gpt2-nano", "--dropout", "0", "--eval-iters", "2", "--max-iters", "2", "--eval-interval", "2"]


@dataclass
class Case:
    """One fault: ``args`` of `focuslab`; ``needs`` the fixtures copied into its directory first;
    ``setup(dir)`` breaks something more; ``expect``: 'refused' (exit 2, one line, nothing changed),
    'ok' (exit 0), 'interrupt' or 'kill' (a signal once ``ready(dir)``, then ``check(dir)``)."""

    name: str
    args: list
    expect: str = "refused"
    needle: str = ""
    needs: tuple = ()
    setup: object = None
    ready: object = None
    check: object = None
    subprocess_only: bool = False
    env: dict = field(default_factory=dict)  # its environment besides ENV


# --- what the cases break ---------------------------------------------------------------------------

def truncate(rel):
    def setup(d):
        p = d / rel
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return setup


def write(rel, text):
    def setup(d):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return setup


def chain(*steps):
    def setup(d):
        for s in steps:
            s(d)
    return setup


def cases() -> list[Case]:
    c = []

    def scan(name, *args, **kw):
        c.append(Case(f"scan {name}", ["scan", *SCAN, *map(str, args), "--out", "r"], **kw))

    scan("bad grid", "--sharpness", "abc", needle="--sharpness")
    scan("empty grid", "--sharpness", "1:10:0", needle="--sharpness")
    scan("grid too large", "--sharpness", "1:10:1000000", needle="--sharpness")
    scan("negative noise", "--noise", "-1", needle="--noise")
    scan("zero lr", "--lr", "0", needle="--lr")
    scan("nan lr", "--lr", "nan", needle="--lr")
    scan("one replicate", "--replicates", "1", needle="--replicates")
    scan("zero replicates", "--replicates", "0", needle="--replicates")
    scan("zero steps", "--steps", "0", needle="--steps")
    scan("negative seed", "--seed", "-1", needle="--seed")
    scan("word for steps", "--steps", "many", needle="steps")
    scan("unknown optimizer", "--optimizers", "nosuch", needle="nosuch")
    scan("misspelt built-in", "--optimizers", "adamm", needle="did you mean adam")
    scan("misspelt torch class", "--optimizers", "torch.optim.Nadam", needle="did you mean torch.optim.NAdam")
    scan("misspelt module", "--optimizers", "torhc.optim.Adam", needle="torhc")
    scan("file without class", "--optimizers", "mine.py:Nope", setup=write("mine.py", "class Yes: pass\n"),
         needle="Nope")
    scan("boolean no", "--optimizers", "torch.optim.Adam:amsgrad=no", needle="expected true or false")
    scan("boolean yes by opt-param", "--optimizers", "torch.optim.Adam", "--opt-param", "torch.optim.Adam.amsgrad=yes",
         needle="expected true or false")
    scan("setting out of range", "--optimizers", "focus:gamma=-1", needle="gamma")
    scan("unknown setting", "--optimizers", "focus:nosuch=1", needle="nosuch")
    scan("lr as a setting", "--optimizers", "focus:lr=1", needle="lr")
    scan("repeated optimizer", "--optimizers", "adam,adam", needle="repeats")
    scan("opt-param for another optimizer", "--optimizers", "adam", "--opt-param", "focus.gamma=0.3", needle="focus")
    scan("opt-param not a number", "--optimizers", "focus", "--opt-param", "focus.gamma=abc", needle="gamma")
    scan("missing config", "--config", "nosuch.toml", needle="nosuch.toml")
    scan("config not TOML", "--config", "bad.toml", setup=write("bad.toml", "[scan\n"), needle="bad.toml")
    scan("config unknown key", "--config", "k.toml", setup=write("k.toml", "[scan]\nsharpnes = 3\n"), needle="sharpnes")
    scan("config without [scan]", "--config", "k.toml", setup=write("k.toml", "[mnist]\nsteps = 3\n"), needle="[scan]")
    scan("unknown preset", "--config", "nosuchpreset", needle="nosuchpreset")
    scan("zero jobs", "--jobs", "0", needle="--jobs")
    scan("device without a GPU", "--device", "cuda", needle="--device cuda")
    scan("unknown device", "--device", "tpu", needle="--device")
    scan("dask without scheduler", "--backend", "dask", needle="--scheduler")
    scan("scheduler without dask", "--scheduler", "tcp://127.0.0.1:1", needle="--scheduler")
    scan("shard beyond N", "--shard", "3/2", needle="--shard")
    scan("shard not K/N", "--shard", "x", needle="--shard")
    scan("shards without sbatch", "--shards", "2", needle="--sbatch")
    scan("sbatch is a directory", "--sbatch", ".", "--shards", "2", needle="--sbatch")
    scan("old --theta", "--theta", "0.5", needle="--phi")
    scan("grid too big for memory", "--sharpness", "0.1:1000:1000:log", "--noise", "0:3:1000", "--phi", "0.1:1:1000",
         needle="more than half of this machine")
    scan("grid too big for memory, dry run", "--sharpness", "0.1:1000:1000:log", "--noise", "0:3:1000",
         "--phi", "0.1:1:1000", "--dry-run", needle="more than half of this machine")
    scan("steps too many for a worker", "--steps", "1000000000", needle="per worker")
    scan("steps too many, dry run", "--steps", "1000000000", "--dry-run", needle="per worker")
    scan("more than a week", "--sharpness", "0.1:1000:300:log", "--noise", "0:3:300", "--replicates", "1000",
         "--steps", "3000000", needle="--allow-long")
    scan("more than a week, dry run", "--sharpness", "0.1:1000:300:log", "--noise", "0:3:300", "--replicates", "1000",
         "--steps", "3000000", "--dry-run", needle="--allow-long")
    scan("bad optimizer, dry run", "--optimizers", "adamm", "--dry-run", needle="did you mean adam")
    c.append(Case("scan --out is a file", ["scan", *SCAN, "--out", "f"], setup=write("f", "x"),
                  needle="not a directory"))
    c.append(Case("scan --out foreign directory", ["scan", *SCAN, "--out", "r"], setup=write("r/notes.txt", "mine"),
                  needle="not focuslab results"))
    c.append(Case("scan --out an MNIST study", ["scan", *SCAN, "--out", "mnist"], needs=("mnist",),
                  needle="holds a MNIST study"))
    c.append(Case("scan --out a GPT-2 run", ["scan", *SCAN, "--out", "gpt2"], needs=("gpt2",), needle="GPT-2 run"))
    c.append(Case("scan another config", ["scan", *SCAN, "--seed", "4", "--out", "scan"], needs=("scan",),
                  needle="different config (seed: 0 -> 4)"))
    c.append(Case("scan another config, dry run", ["scan", *SCAN, "--seed", "4", "--dry-run", "--out", "scan"],
                  needs=("scan",), needle="different config"))
    c.append(Case("scan corrupt scan.json", ["scan", *SCAN, "--out", "scan"], needs=("scan",),
                  setup=write("scan/scan.json", '{"kind": "sc'), needle="--force"))
    c.append(Case("scan corrupt best.parquet is rebuilt", ["scan", *SCAN, "--out", "scan"], needs=("scan",),
                  setup=truncate("scan/best.parquet"), expect="ok",
                  check=lambda d: _same_tables(d / "scan", FIXTURES / "scan")))
    c.append(Case("scan Ctrl-C keeps the chunks and resumes exactly",
                  ["scan", "--sharpness", "0.1:1000:6:log", "--noise", "0:3:6", "--lr", "1e-3,1e-2,1e-1",
                   "--replicates", "40", "--steps", "4000", "--chunk-steps", "2000000", "-j", "2", "--out", "r"],
                  expect="interrupt", ready=lambda d: any((d / "r" / "chunks").glob("*.parquet")),
                  check=lambda d: _resumes(d, "r"), subprocess_only=True))
    c.append(Case("scan kill -9 leaves no worker and resumes",
                  ["scan", "--sharpness", "0.1:1000:6:log", "--noise", "0:3:6", "--lr", "1e-3,1e-2,1e-1",
                   "--replicates", "40", "--steps", "4000", "--chunk-steps", "2000000", "-j", "2", "--out", "r"],
                  expect="kill", ready=lambda d: any((d / "r" / "chunks").glob("*.parquet")),
                  check=lambda d: _resumes(d, "r"), subprocess_only=True))

    def refine(name, *args, **kw):
        c.append(Case(f"refine {name}", ["refine", *map(str, args)], **kw))

    refine("no such directory", "nowhere", needle="nowhere")
    refine("an MNIST study", "mnist", needs=("mnist",))
    refine("fdr above one", "scan", "--fdr", "2", needs=("scan",), needle="--fdr")
    refine("zero replicates", "scan", "--initial-replicates", "0", needs=("scan",), needle="--initial-replicates")
    refine("zero jobs", "scan", "--jobs", "0", needs=("scan",), needle="--jobs")
    refine("an unfinished scan", "scan", needs=("scan",),
           setup=lambda d: _edit_json(d / "scan" / "scan.json", status="running"), needle="not complete")
    refine("corrupt scan.json", "scan", needs=("scan",), setup=write("scan/scan.json", "{"), needle="scan.json")
    refine("every optimizer diverges", "div", *REFINE, needs=("div",), expect="ok",
           check=lambda d: _readable(d / "div" / "decisions.parquet"))
    refine("truncated decisions.parquet", "refined", *REFINE, needs=("refined",),
           setup=truncate("refined/decisions.parquet"), expect="ok", check=lambda d: _readable(d / "refined" / "decisions.parquet"))

    def plot(name, *args, **kw):
        c.append(Case(f"plot {name}", ["plot", *map(str, args)], **kw))

    plot("no such directory", "nowhere", needle="nowhere")
    plot("not a results directory", "d", setup=write("d/x.txt", "x"), needle="holds no focuslab results")
    plot("unknown format", "scan", "--format", "bmp", needs=("scan",), needle="--format")
    for value in ("nan", "inf", "-1"):
        plot(f"significance {value}", "scan", "--significance", value, needs=("scan",), needle="--significance")
    plot("overlay without a noise axis", "line", "--overlay", "mnist", needs=("line", "mnist"), needle="--overlay")
    plot("overlay on an MNIST study", "mnist", "--overlay", "scan", needs=("mnist", "scan"), needle="--overlay")
    plot("overlay of a run without diagnostics", "scan", "--overlay", "mnist", needs=("scan", "mnist"),
         needle="diagnostics")
    plot("out is a file", "scan", "--out", "f/figs", needs=("scan",), setup=write("f", "x"), needle="--out")
    plot("two scans", "scan", "line", needs=("scan", "line"), needle="several directories")
    plot("an unfinished scan", "scan", needs=("scan",),
         setup=lambda d: _edit_json(d / "scan" / "scan.json", status="running"), needle="not complete")
    plot("corrupt best.parquet", "scan", needs=("scan",), setup=truncate("scan/best.parquet"),
         needle="rebuilds runs.parquet and best.parquet")
    plot("corrupt scan.json", "scan", needs=("scan",), setup=write("scan/scan.json", "{"), needle="--force")
    plot("corrupt mnist best.parquet", "mnist", needs=("mnist",), setup=truncate("mnist/best.parquet"),
         needle="focuslab mnist")
    plot("corrupt gpt2.json", "gpt2", needs=("gpt2",), setup=write("gpt2/gpt2.json", "{"), needle="ckpt.pt")
    plot("one replicate beyond K SE", "one", needs=("one",), needle="--significance 0")

    def mnist(name, *args, **kw):
        c.append(Case(f"mnist {name}", ["mnist", *MNIST, *map(str, args), "--out", "m"], **kw))

    mnist("batch of one", "--batch-size", "1", needle="--batch-size")
    mnist("batch beyond the data", "--batch-size", "5000", needle="--batch-size 5000")
    mnist("batch beyond the data, dry run", "--batch-size", "5000", "--dry-run", needle="--batch-size 5000")
    mnist("zero lr", "--lr", "0", needle="--lr")
    mnist("zero replicates", "--replicates", "0", needle="--replicates")
    mnist("zero steps", "--steps", "0", needle="--steps")
    mnist("unknown dataset", "--dataset", "cifar", needle="--dataset")
    mnist("fashion without data", "--dataset", "fashion-mnist", "--data-dir", "nowhere", needle="nowhere")
    mnist("unknown optimizer", "--optimizers", "adamm", needle="did you mean adam")
    mnist("boolean no", "--optimizers", "torch.optim.Adam:amsgrad=no", needle="expected true or false")
    mnist("negative weight decay", "--weight-decay", "-1", needle="--weight-decay")
    mnist("zero jobs", "--jobs", "0", needle="--jobs")
    mnist("device without a GPU", "--device", "cuda", needle="--device cuda")
    c.append(Case("mnist --out a scan", ["mnist", *MNIST, "--out", "scan"], needs=("scan",), needle="holds a scan"))
    c.append(Case("mnist another config", ["mnist", *MNIST, "--seed", "5", "--out", "mnist"], needs=("mnist",),
                  needle="different config"))
    c.append(Case("mnist another config, dry run", ["mnist", *MNIST, "--seed", "5", "--dry-run", "--out", "mnist"],
                  needs=("mnist",), needle="different config"))
    c.append(Case("mnist Ctrl-C in the first unit keeps its checkpoint",
                  ["mnist", "--batch-size", "8", "--optimizers", "adamw", "--lr", "1e-3,1e-2", "--replicates", "2",
                   "--steps", "60", "-j", "1", "-q", "--out", "m"], expect="interrupt",
                  ready=lambda d: any((d / "m" / "units" / ".inflight").glob("*.pt")),
                  check=lambda d: _kept_checkpoint(d, "m"), subprocess_only=True,
                  env={"FOCUSLAB_CHECKPOINT_EVERY": "0"}))  # a checkpoint at every step: one comes soon

    def gpt2(name, *args, **kw):
        c.append(Case(f"gpt2 {name}", ["gpt2", *NANO, *map(str, args), "--out", "g"], **kw))

    for dry in ([], ["--dry-run"]):
        tag = ", dry run" if dry else ""
        gpt2(f"block size beyond the data{tag}", "--block-size", "1000000", *dry, needle="--block-size 1000000")
        gpt2(f"bf16 on a CPU{tag}", "--dtype", "bfloat16", "--device", "cpu", *dry, needle="--dtype bfloat16")
        gpt2(f"no such data{tag}", "--data", "/nonexistent", *dry, needle="--data /nonexistent")
        gpt2(f"vocabulary too small{tag}", "--vocab-size", "10", *dry, needle="--vocab-size 10")
        gpt2(f"an optimizer that needs a closure{tag}", "--optimizer", "torch.optim.LBFGS", *dry, needle="closure")
        gpt2(f"min lr above lr{tag}", "--min-lr", "1", *dry, needle="--min-lr")
        gpt2(f"width not a multiple of heads{tag}", "--n-embd", "65", *dry, needle="--n-embd")
        gpt2(f"dropout of one{tag}", "--dropout", "1", *dry, needle="--dropout")
        gpt2(f"misspelt optimizer{tag}", "--optimizer", "adamm", *dry, needle="did you mean adam")
    gpt2("two nodes without an endpoint", "--nodes", "2", needle="--nodes 2")
    gpt2("malformed endpoint", "--gpus-per-node", "2", "--rdzv-endpoint", "nonsense", needle="HOST:PORT")
    gpt2("endpoint not this machine", "--gpus-per-node", "2", "--rdzv-endpoint", "192.0.2.1:29500",
         needle="not an address of this machine")
    gpt2("zero rendezvous timeout", "--gpus-per-node", "2", "--rdzv-timeout", "0", needle="--rdzv-timeout")
    gpt2("node rank beyond nodes", "--nodes", "2", "--node-rank", "3", "--rdzv-endpoint", "127.0.0.1:29500",
         needle="--node-rank 3")
    gpt2("unresolvable host, two nodes", "--nodes", "2", "--rdzv-endpoint", "node001.invalid:29500",
         needle="cannot resolve")
    gpt2("unresolvable host, two nodes, dry run warns", "--nodes", "2", "--rdzv-endpoint", "node001.invalid:29500",
         "--dry-run", expect="ok", check=lambda d: not (d / "g").exists())
    gpt2("sbatch is a directory", "--sbatch", ".", needle="--sbatch")
    gpt2("a config boolean that is not one", "--config", "b.toml", setup=write("b.toml", '[gpt2]\nbias = "no"\n'),
         needle="expected true or false")
    gpt2("ends inside its warm-up", "--max-iters", "4", expect="ok",
         check=lambda d, out="": "ends inside the warm-up" in out)
    c.append(Case("gpt2 --out a scan", ["gpt2", *NANO, "--out", "scan"], needs=("scan",), needle="holds a scan"))
    c.append(Case("gpt2 another config", ["gpt2", *NANO, "--seed", "3", "--out", "gpt2"], needs=("gpt2",),
                  needle="different config"))
    c.append(Case("gpt2 corrupt gpt2.json", ["gpt2", *NANO, "--out", "gpt2"], needs=("gpt2",),
                  setup=write("gpt2/gpt2.json", "{"), needle="ckpt.pt"))
    c.append(Case("gpt2 unreadable checkpoints", ["gpt2", *NANO, "--max-iters", "4", "--out", "gpt2"],
                  needs=("gpt2",), setup=chain(write("gpt2/ckpt.pt", "garbage"), write("gpt2/ckpt.prev.pt", "x")),
                  needle="--force"))

    def prepare(name, *args, **kw):
        c.append(Case(f"gpt2 prepare {name}", ["gpt2", "prepare", *map(str, args)], **kw))

    prepare("no input", "--out", "p", needle="--input")
    prepare("no such input", "--input", "nowhere.txt", "--out", "p", needle="nowhere.txt")
    prepare("binary input", "--input", "b.bin", "--out", "p", setup=lambda d: (d / "b.bin").write_bytes(b"\xff\xfe" * 99),
            needle="UTF-8")
    prepare("input too small", "--input", "t.txt", "--out", "p", setup=write("t.txt", "tiny"), needle="too small")
    prepare("out is a file", "--input", "t.txt", "--out", "f/p", setup=chain(write("t.txt", "word " * 500),
                                                                              write("f", "x")), needle="--out")
    prepare("unknown tokenizer", "--input", "t.txt", "--tokenizer", "bpe", "--out", "p", setup=write("t.txt", "w " * 99),
            needle="--tokenizer")

    def merge(name, *args, **kw):
        c.append(Case(f"merge {name}", ["merge", *map(str, args)], **kw))

    merge("no --out", "shard1", needs=("shards",), needle="--out")
    merge("no such directory", "nowhere", "--out", "m", needle="nowhere")
    merge("a directory without shards", "scan", "--out", "m", needs=("scan",), needle="no shard records")
    merge("a missing shard", "shard1", "--out", "m", needs=("shards",), needle="missing shard")
    merge("a shard twice", "shard1", "shard1", "--out", "m", needs=("shards",), needle="appears 2 times")

    def optimizers(name, *args, **kw):
        c.append(Case(f"optimizers {name}", ["optimizers", *map(str, args)], **kw))

    optimizers("misspelt built-in", "adamm", needle="did you mean adam")
    optimizers("misspelt class", "torch.optim.Adamm", needle="did you mean torch.optim.Adam")
    optimizers("a class that is no optimizer", "torch.nn.Linear", needle="not a torch.optim.Optimizer")
    optimizers("boolean no", "torch.optim.Adam:amsgrad=no", needle="expected true or false")
    c.append(Case("selftest unknown device", ["selftest", "--device", "tpu"], needle="--device"))
    c.append(Case("unknown command", ["scna"], needle="scna"))
    c.append(Case("unknown flag", ["scan", "--sharpnes", "1"], needle="--sharpnes"))
    return c


# --- fixtures: made once, copied into each case that needs them ------------------------------------

FIXTURES = Path()


def make_fixtures(root: Path, run) -> None:
    global FIXTURES
    FIXTURES = root
    steps = [
        ("scan", ["scan", *SCAN, "-q", "--out", "scan"]),
        ("line", ["scan", "--sharpness", "1,10,100", "--noise", "0.5", *SCAN[4:], "-q", "--out", "line"]),
        ("mnist", ["mnist", *MNIST, "-q", "--out", "mnist"]),
        ("gpt2", ["gpt2", *NANO, "-q", "--out", "gpt2"]),
        ("shards", ["scan", *SCAN, "--shard", "1/2", "-q", "--out", "shard1"]),
        ("div", ["scan", *SCAN[:4], "--lr", "1e10,1e11", *SCAN[6:], "-q", "--out", "div"]),
        ("refined", None),
    ]
    for name, args in steps:
        if args is not None:
            code, out, err = run(args, root)
            if code != 0:
                raise SystemExit(f"fixture {name} failed ({code}): {err[-2000:]}")
    shutil.copytree(root / "scan", root / "refined")
    code, _, err = run(["refine", "refined", *REFINE, "-q"], root)
    if code != 0:
        raise SystemExit(f"fixture refined failed: {err[-2000:]}")
    from dataclasses import replace

    from focuslab.config import build_scan_config
    from focuslab.scan import run_scan

    config = build_scan_config(None, {"sharpness": "1,10", "noise": "0,1", "lr": "0.01,0.1", "replicates": 2,
                                      "steps": 10})
    run_scan(replace(config, replicates=1), root / "one", jobs=1, progress=False)  # as an older focuslab wrote it


FIXTURE_DIRS = {"shards": ("shard1",)}


# --- checks -------------------------------------------------------------------------------------------

def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(d.rglob("*")) if "__pycache__" not in p.parts}


def _edit_json(path: Path, **values) -> None:
    import json

    meta = json.loads(path.read_text())
    meta.update(values)
    path.write_text(json.dumps(meta))


def _readable(path: Path) -> bool:
    from focuslab.results import readable_table

    return readable_table(path)


def _same_tables(a: Path, b: Path) -> bool:
    import pandas as pd

    return all(pd.read_parquet(a / t).equals(pd.read_parquet(b / t)) for t in ("runs.parquet", "best.parquet"))


def _resumes(d: Path, out: str) -> bool:
    return any((d / out / "chunks").glob("*.parquet"))


def _kept_checkpoint(d: Path, out: str) -> bool:
    return any((d / out / "units" / ".inflight").glob("*.pt"))


@dataclass
class Result:
    case: Case
    verdict: str  # clean, lost, traceback, exit0, other
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


#: A case still running after this long accepted what it should have refused (or hangs).
TIMEOUT = 600


def run_subprocess(args, cwd, timeout=TIMEOUT):
    try:
        res = subprocess.run([sys.executable, "-m", "focuslab", *map(str, args)], cwd=cwd, capture_output=True,
                             text=True, env=ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", f"still running after {timeout} s"
    return res.returncode, res.stdout, res.stderr


def run_in_process(args, cwd):
    from click.testing import CliRunner

    from focuslab.cli.main import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
    out = res.output if res.exception is None or isinstance(res.exception, SystemExit) else \
        res.output + "\nTraceback (in process): " + repr(res.exception)
    return res.exit_code, out, res.stderr


def signal_case(case: Case, d: Path) -> tuple[int, str, str, list]:
    """Start the case, send its signal once ready; returns (code, stdout, stderr, worker pids)."""
    def interruptible():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "focuslab", *map(str, case.args)], cwd=d, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **case.env}, start_new_session=True,
                            preexec_fn=interruptible)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not case.ready(d):
        time.sleep(0.05)
    workers = _children(proc.pid)
    try:
        if case.expect == "interrupt":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
    except ProcessLookupError:  # it ended before it was ready: judged by its exit code
        pass
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # workers left behind hold its output open
        proc.wait()
        time.sleep(20)
        left = [w for w in workers if _alive(w)]
        for w in left:
            os.kill(w, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n{len(left)} worker(s) were still running 2 minutes after the signal"
    return proc.returncode, out, err, workers


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def judge(case: Case, root: Path, fixtures: Path, in_process: bool) -> Result:
    d = root / f"case-{abs(hash(case.name)) % 10 ** 8:08d}"
    d.mkdir()
    for need in case.needs:
        for name in FIXTURE_DIRS.get(need, (need,)):
            shutil.copytree(fixtures / name, d / name)
    if case.setup:
        case.setup(d)
    before = snapshot(d)
    t0 = time.time()
    if case.expect in ("interrupt", "kill"):
        code, out, err, workers = signal_case(case, d)
        want = 130 if case.expect == "interrupt" else -signal.SIGKILL
        if "Traceback" in out + err:
            return Result(case, "traceback", err.strip()[-300:], time.time() - t0)
        if code != want:
            return Result(case, "other", f"exit {code}, expected {want}: {err.strip()[-300:]}", time.time() - t0)
        end = time.time() + 20
        while time.time() < end and any(_alive(w) for w in workers):
            time.sleep(0.2)
        left = [w for w in workers if _alive(w)]
        for w in left:
            os.kill(w, signal.SIGKILL)
        if left or "still running 2 minutes after" in err:
            return Result(case, "other", f"worker(s) left behind: {err.strip().splitlines()[-1]}", time.time() - t0)
        if not case.check(d):
            return Result(case, "lost", "the work done before the signal is gone", time.time() - t0)
        code, out, err = run_subprocess(case.args, d)  # the same command finishes it
        ok = code == 0 and "Traceback" not in err
        return Result(case, "clean" if ok else "other", "" if ok else f"rerun: exit {code}: {err[-300:]}",
                      time.time() - t0)
    code, out, err = (run_in_process if in_process else run_subprocess)(case.args, d)
    seconds = time.time() - t0
    if code is None:  # it ran on: accepted, or hung
        return Result(case, "exit0" if case.expect == "refused" else "other", err, seconds)
    after = snapshot(d)
    if "Traceback" in out + err or code not in (0, 1, 2, 130):
        return Result(case, "traceback", (err or out).strip()[-300:], seconds)
    gone = [k for k, v in before.items() if after.get(k) != v and not k.endswith(".lock")]
    if case.expect == "refused":
        if code == 0:
            return Result(case, "exit0", out.strip()[-200:], seconds)
        if gone:
            return Result(case, "lost", f"changed or removed: {', '.join(gone[:3])}", seconds)
        new = [k for k in after if k not in before]
        lines = err.strip().splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("focuslab: error:") or case.needle not in lines[0]:
            return Result(case, "other", f"exit {code}: {err.strip()[-300:]}", seconds)
        if new:
            return Result(case, "other", f"wrote {', '.join(new[:3])} where it refused", seconds)
        return Result(case, "clean", lines[0], seconds)
    if code != 0:
        return Result(case, "other", f"exit {code}: {err.strip()[-300:]}", seconds)
    if gone and case.check is None:
        return Result(case, "lost", f"changed or removed: {', '.join(gone[:3])}", seconds)
    if case.check is not None:
        try:
            ok = case.check(d, out + err)
        except TypeError:
            ok = case.check(d)
        if not ok:
            return Result(case, "other", "its check failed: " + (out + err).strip()[-200:], seconds)
    return Result(case, "clean", "", seconds)


def sweep(select: str = "", in_process: bool = False, verbose: bool = False, report=None) -> dict:
    """Run the cases whose name contains ``select``; returns the counts (and the results)."""
    report = report or (lambda line: print(line, flush=True))
    root = Path(tempfile.mkdtemp(prefix="focuslab-faults-"))
    try:
        fixtures = root / "fixtures"
        fixtures.mkdir()
        t0 = time.time()
        make_fixtures(fixtures, run_in_process if in_process else run_subprocess)
        report(f"fixtures made in {time.time() - t0:.0f} s")
        results = []
        for case in cases():
            if select not in case.name or (in_process and case.subprocess_only):
                continue
            r = judge(case, root, fixtures, in_process)
            results.append(r)
            if verbose or r.verdict != "clean":
                report(f"{r.verdict:9s} {r.seconds:6.1f}s  {case.name}" + (f": {r.detail}" if r.detail else ""))
        counts = {"cases": len(results), **{v: sum(r.verdict == v for r in results)
                                            for v in ("clean", "lost", "traceback", "exit0", "other")}}
        report(f"{counts['cases']} cases: {counts['clean']} clean, {counts['lost']} lost, {counts['traceback']} "
               f"tracebacks, {counts['exit0']} exit-0-while-wrong, {counts['other']} other "
               f"({time.time() - t0:.0f} s, {'in process' if in_process else 'one process each'})")
        return {**counts, "results": results}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="only the cases whose name contains this")
    ap.add_argument("--in-process", action="store_true", help="through Click's test runner (signal cases skipped)")
    ap.add_argument("-v", action="store_true", help="one line per case")
    a = ap.parse_args(argv)
    counts = sweep(a.k, a.in_process, a.v)
    return 0 if counts["clean"] == counts["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
