"""focuslab.refine as a package (issue 27): scan.json names the procedure and its version, never its
prose, and still reads the records that held the prose; the tables do not depend on how the cells
are cut into work units or shards (the units carry slices of the scan's means); the lattice is the
race's only view of its candidates."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from focuslab.cli.main import main
from focuslab.refine import PROCEDURE, Lattice, RefineParams, RefineRun, plan_refine, procedure_of, run_refine

SCAN = ["scan", "--sharpness", "1,30,300", "--noise", "0,1.5,3", "--lr", "3e-3,1e-2,3e-2,1e-1", "--replicates", "8",
        "--steps", "80", "--optimizers", "adam,signum,focus", "-j", "1", "-q"]
SMALL = dict(initial_replicates=20, max_replicates=80)
FLAGS = ["--initial-replicates", "20", "--max-replicates", "80", "-j", "1", "-q"]
TABLES = ("decisions.parquet", "replicates.parquet", "refine/lrs.parquet")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan") / "s"
    assert CliRunner().invoke(main, [*SCAN, "--out", str(out)]).exit_code == 0
    return out


@pytest.fixture(scope="module")
def refined(scanned, tmp_path_factory):
    out = shutil.copytree(scanned, tmp_path_factory.mktemp("refined") / "s")
    assert CliRunner().invoke(main, ["refine", str(out), *FLAGS]).exit_code == 0
    return out


def _tables(d):
    return [pd.read_parquet(d / name) for name in TABLES]


def test_scan_json_names_the_procedure_and_its_version_not_its_prose(refined, scanned, tmp_path, monkeypatch):
    record = json.loads((refined / "scan.json").read_text())["refine"]
    assert record["procedure"] == {"name": "focuslab.refine", "version": 3} == PROCEDURE
    assert "procedure_version" not in record and all(len(json.dumps(v)) < 200 for k, v in record.items()
                                                      if k not in ("attempts", "params", "fractions"))
    # the method's statement can be edited without changing what a refinement records
    import focuslab.refine as package

    monkeypatch.setattr(package, "__doc__", "Edited prose.\n\nA different statement of the method.")
    again = shutil.copytree(scanned, tmp_path / "again")
    assert CliRunner().invoke(main, ["refine", str(again), *FLAGS]).exit_code == 0
    other = json.loads((again / "scan.json").read_text())["refine"]
    keep = ("digest", "params", "procedure", "fractions", "steps_spent", "decided", "bh_threshold", "rounds")
    assert {k: other[k] for k in keep} == {k: record[k] for k in keep}


def test_a_record_that_holds_the_old_prose_is_still_read(refined, tmp_path):
    old = shutil.copytree(refined, tmp_path / "old")
    meta = json.loads((old / "scan.json").read_text())
    meta["refine"]["procedure"] = "**Estimand.**  m_o = min over the candidate lrs ... (the docstring, as written)"
    meta["refine"]["procedure_version"] = 3
    (old / "scan.json").write_text(json.dumps(meta))
    assert procedure_of(meta["refine"]) == {"name": "focuslab.refine", "version": 3}
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(main, ["refine", str(old), *FLAGS[:-1], *extra])
        assert res.exit_code == 0 and "already refined" in res.output, res.output
    res = CliRunner().invoke(main, ["refine", str(old), *FLAGS, "--fdr", "0.1"])
    assert res.exit_code == 2 and "(--fdr: 0.05 -> 0.1)" in res.stderr  # the settings differ, not the procedure
    meta["refine"]["procedure_version"] = 2
    assert procedure_of(meta["refine"])["version"] == 2
    assert CliRunner().invoke(main, ["plot", str(old)]).exit_code == 0


def test_the_tables_do_not_depend_on_work_units_shards_or_resumption(refined, scanned, tmp_path):
    """Units of 2 cells (the scan's means travel to each unit as a slice), computed as two shards in
    one directory, one unit then lost and recomputed: the same tables bit for bit as one unit of
    every cell."""
    units = RefineParams(**SMALL, chunk_cells=2)
    d = shutil.copytree(scanned, tmp_path / "units")
    for k in (2, 1):
        run_refine(d, units, run=RefineRun(shard=f"{k}/2"), jobs=1, progress=False)
    assert not (d / "decisions.parquet").exists()
    assert len(list((d / "refine" / "units").glob("c*.data.parquet"))) == 5
    (d / "refine" / "units" / "c00003.parquet").unlink()
    info = run_refine(d, units, jobs=2, progress=False, log=lambda *_: None)
    assert info["units_computed"] >= 1
    for a, b in zip(_tables(refined), _tables(d), strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_the_plan_of_a_sharded_run_counts_its_own_units(scanned):
    plan = plan_refine(scanned, RefineParams(**SMALL, chunk_cells=2), RefineRun(shard="2/2"), jobs=4)
    assert plan.mine == [1, 3] and plan.work.workers == 2
    whole = plan_refine(scanned, RefineParams(**SMALL, chunk_cells=2), jobs=1)
    assert plan.work.steps_least < whole.work.steps_least and whole.mine == [0, 1, 2, 3, 4]


def test_the_lattice_grows_the_race_by_neighbours_and_a_midpoint():
    lat = Lattice([1e-3, 1e-2, 1e-1], RefineParams(lr_levels=1, extend_steps=1))
    assert (lat.lo, lat.hi) == (-2, 6)
    scores = {0: 1.0, 2: 0.5, 4: 0.7}
    grow = lat.grow(2, scores.get)
    assert grow == [0, 4, 3]  # grid neighbours of a grid-level leader, then the midpoint towards the better one
    assert lat.grow(3, scores.get) == []  # a midpoint at the finest level: nothing finer to add
    assert lat.grow(6, {}.get) == [4]  # the edge of the lattice's reach
    assert int(lat.most(4, 2)) == 9 == lat.size() and np.array_equal(lat.most(2, np.array([1, 0])), [4, 3])
