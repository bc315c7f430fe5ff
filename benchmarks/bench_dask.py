"""Speed-up of a scan on a local Dask cluster with 2 workers vs 1 (same scan, same run).

    python benchmarks/bench_dask.py [--replicates 10]

Each cluster is a distributed.LocalCluster of separate worker processes (1 thread each) on
127.0.0.1; the scan is the default preset with fewer replicates.  Times include shipping chunk
tables back to the client and writing them.  The two result tables are checked to be identical.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=10)
    args = ap.parse_args()
    from dask.distributed import LocalCluster

    from focuslab.config import build_scan_config
    from focuslab.scan import run_scan

    cfg = build_scan_config(None, {"replicates": args.replicates, "chunk_steps": 50_000_000})
    walls, tables = {}, {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, tempfile.TemporaryDirectory() as tmp:
            run_scan(build_scan_config(None, {"sharpness": 1, "noise": 0, "steps": 10}), tmp + "/warm",
                     backend="dask", scheduler=cluster.scheduler_address, progress=False)  # load kernels
            t0 = time.perf_counter()
            run_scan(cfg, tmp + "/scan", backend="dask", scheduler=cluster.scheduler_address,
                     progress=False)
            walls[workers] = time.perf_counter() - t0
            tables[workers] = pd.read_parquet(tmp + "/scan/runs.parquet")
    pd.testing.assert_frame_equal(tables[1], tables[2], check_exact=True)
    print(f"scan: {cfg.total_steps():.3g} optimizer steps, {cfg.n_cells} cells")
    for w, t in walls.items():
        print(f"{w} Dask worker(s): {t:.1f} s  ({t * 1e9 / cfg.total_steps() * w:.2f} ns/step per worker)")
    print(f"speed-up 2 vs 1 workers: {walls[1] / walls[2]:.2f}x (tables identical)")


if __name__ == "__main__":
    main()
