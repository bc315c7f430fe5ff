"""Scans beyond one machine: shards + merge, the SLURM driver script, a Dask cluster."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.config import build_scan_config, config_to_toml, load_toml
from focuslab.scan import assign_shards, plan_chunks, run_scan

ARGS = ["--sharpness", "0.5,5,50", "--noise", "0:3:4", "--lr", "0.003,0.03,0.3", "--replicates", "5",
        "--steps", "60", "--chunk-steps", "2000", "--optimizers", "adam,focus"]
CFG = {"sharpness": "0.5,5,50", "noise": "0:3:4", "lr": "0.003,0.03,0.3", "replicates": 5, "steps": 60,
       "chunk_steps": 2000, "optimizers": "adam,focus"}


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def same_tables(p, q):
    for name in ("runs.parquet", "best.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(Path(p) / name), pd.read_parquet(Path(q) / name),
                                      check_exact=True)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run_scan(build_scan_config(None, CFG), out, jobs=1, progress=False)
    return out


def test_shards_are_disjoint_complete_and_balanced():
    chunks = plan_chunks(build_scan_config(None, {**CFG, "chunk_steps": 7000}))
    for n in (1, 2, 3, 5):
        shards = assign_shards(chunks, n)
        names = [c.name for s in shards for c in s]
        assert sorted(names) == sorted(c.name for c in chunks)
        loads = [sum(c.cost for c in s) for s in shards]
        assert max(loads) - min(loads) <= max(c.cost for c in chunks)
        assert shards == assign_shards(chunks, n)  # deterministic


def test_shards_in_own_dirs_merge_to_the_unsharded_tables(tmp_path, unsharded):
    for k in (1, 2, 3):
        assert cli("scan", *ARGS, "--shard", f"{k}/3", "--out", tmp_path / f"s{k}", "-j", 1, "-q").exit_code == 0
    res = cli("merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    same_tables(tmp_path / "m", unsharded)


def test_shards_sharing_one_out_dir(tmp_path, unsharded):
    for k in (2, 1):
        assert cli("scan", *ARGS, "--shard", f"{k}/2", "--out", tmp_path, "-j", 1, "-q").exit_code == 0
    assert not (tmp_path / "runs.parquet").exists()
    assert cli("merge", tmp_path, "--out", tmp_path, "-q").exit_code == 0
    same_tables(tmp_path, unsharded)


def test_merge_refuses_missing_duplicated_and_mismatched_shards(tmp_path):
    for k in (1, 2, 3):
        cli("scan", *ARGS, "--shard", f"{k}/3", "--out", tmp_path / f"s{k}", "-j", 1, "-q")
    res = cli("merge", tmp_path / "s1", tmp_path / "s3", "--out", tmp_path / "m")
    assert res.exit_code == 2 and "missing shard(s) 2/3" in res.stderr
    cli("scan", *ARGS, "--shard", "1/3", "--out", tmp_path / "dup", "-j", 1, "-q")
    res = cli("merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", tmp_path / "dup", "--out", tmp_path / "m")
    assert res.exit_code == 2 and "shard 1/3 appears 2 times" in res.stderr
    cli("scan", *ARGS, "--seed", 9, "--shard", "2/3", "--out", tmp_path / "other", "-j", 1, "-q")
    res = cli("merge", tmp_path / "s1", tmp_path / "other", tmp_path / "s3", "--out", tmp_path / "m")
    assert res.exit_code == 2 and "different config or seed" in res.stderr
    (tmp_path / "s2" / "chunks" / sorted(os.listdir(tmp_path / "s2" / "chunks"))[0]).unlink()
    res = cli("merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", "--out", tmp_path / "m")
    assert res.exit_code == 2 and "lacks chunk" in res.stderr
    assert len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize("args,needle", [(["--shard", "0/3"], "1 <= K <= N"), (["--shard", "two"], "K/N"),
                                         (["--sbatch", "x.sh"], "--shards N"),
                                         (["--backend", "dask"], "--scheduler"),
                                         (["--scheduler", "tcp://127.0.0.1:1"], "only meaningful"),
                                         (["--sbatch", "x.sh", "--shards", "999"], "only")])
def test_bad_distribution_options(tmp_path, args, needle):
    res = cli("scan", *ARGS, *args, "--out", tmp_path)
    assert res.exit_code == 2 and needle in res.stderr, res.output


def test_config_round_trips_through_toml(tmp_path):
    cfg = build_scan_config(load_toml("fig2a", "scan"), {"optimizer": {"focus": {"gamma": 0.4}}})
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert build_scan_config(load_toml(path, "scan")).digest() == cfg.digest()


def _fake_slurm(bindir: Path):
    """sbatch that runs the submitted script at once (each array index in turn); srun = exec."""
    bindir.mkdir()
    (bindir / "sbatch").write_text("""#!/bin/bash
script=$(mktemp); cat > "$script"
echo "sbatch $*" >> "$FAKE_SLURM_LOG"
range=$(sed -n 's/^#SBATCH --array=\\(.*\\)$/\\1/p' "$script")
if [ -n "$range" ]; then
  for i in $(seq ${range%-*} ${range#*-}); do SLURM_ARRAY_TASK_ID=$i SLURM_CPUS_PER_TASK=1 bash "$script" >> "$FAKE_SLURM_LOG" 2>&1 || exit 1; done
  echo "4242;cluster"
else
  bash "$script" >> "$FAKE_SLURM_LOG" 2>&1 || exit 1; echo 4243
fi
""")
    (bindir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    for f in bindir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)


def test_sbatch_driver_runs_array_then_merge(tmp_path, unsharded):
    out = tmp_path / "res"
    res = cli("scan", *ARGS, "--out", out, "--sbatch", tmp_path / "job.sh", "--shards", 3,
              "--sbatch-option", "partition=cpu", "--sbatch-option", "time=00:10:00", "-j", 1)
    assert res.exit_code == 0, res.output
    text = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --array=1-3" in text and "#SBATCH --partition=cpu" in text
    assert "--dependency=afterok:${array_id}" in text and '--shard "${SLURM_ARRAY_TASK_ID}/3"' in text
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    assert not out.exists()  # writing the script runs nothing
    _fake_slurm(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FAKE_SLURM_LOG": str(tmp_path / "slurm.log")}
    run = subprocess.run(["bash", str(tmp_path / "job.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "array job 4242 (3 shards) and merge job 4243" in run.stdout
    assert "--dependency=afterok:4242" in (tmp_path / "slurm.log").read_text()
    same_tables(out, unsharded)


def test_dry_run_prints_and_writes_nothing(tmp_path):
    res = cli("scan", *ARGS, "--out", tmp_path / "o", "--shards", 2, "--dry-run")
    assert res.exit_code == 0 and res.output.startswith("#!/bin/bash") and "--array=1-2" in res.output
    assert not (tmp_path / "o").exists()


def test_dask_local_cluster_equals_local_run(tmp_path, unsharded):
    distributed = pytest.importorskip("dask.distributed", reason="optional extra focuslab[dask]")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        res = cli("scan", *ARGS, "--backend", "dask", "--scheduler", cluster.scheduler_address,
                  "--out", tmp_path, "-q")
        assert res.exit_code == 0, res.output
    same_tables(tmp_path, unsharded)


def test_unreachable_dask_scheduler_is_a_clear_error(tmp_path):
    pytest.importorskip("dask.distributed", reason="optional extra focuslab[dask]")
    res = cli("scan", *ARGS, "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9", "--out", tmp_path)
    assert res.exit_code == 2 and "cannot connect" in res.stderr and len(res.stderr.splitlines()) == 1
