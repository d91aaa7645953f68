"""Each job that writes, killed for real inside its write: SIGKILL of its whole process tree at a
pause point just before one of its commits (``MTL_PAUSE_AT``, mtl/faults.py). Then every table it
touches is exactly as before or exactly as after a complete run, the run record says abandoned,
and the rerun ends where an uninterrupted run ends. The ingest case runs in CI; the others,
which need a trained world, are slow."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from mtl import delta_io, registry
from mtl.cli.pipeline import run_day
from mtl.config import Config, load_config
from mtl.faults import MARKER_ENV, PAUSE_ENV
from mtl.features.job import build_features
from mtl.ingest.job import run_ingest
from mtl.tables import (
    CANDIDATES,
    DAILY_RECOMMENDATIONS,
    EVENTS,
    EVENTS_QUARANTINE,
    FEATURE_STATS,
    ITEM_FEATURES,
    ITEM_NEIGHBOURS,
    MODEL_METRICS,
    PIPELINE_RUNS,
    REPURCHASE_PREDICTIONS,
    TRAINING_EXAMPLES,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
    TableSpec,
)
from tests.conftest import LOCAL_CONF, ROOT, TEST_OVERRIDES
from tests.support.worlds import START, build_world, world_overrides

# Columns that differ between two complete runs by construction (which run, when).
VOLATILE = {"run_id", "quarantined_at", "ingest_date", "evaluated_at", "computed_at"}
FEATURE_TABLES = (
    USER_FEATURES,
    ITEM_FEATURES,
    USER_CATEGORY_FEATURES,
    USER_ITEM_FEATURES,
    FEATURE_STATS,
    ITEM_NEIGHBOURS,
    CANDIDATES,
    TRAINING_EXAMPLES,
)


def _content(spark, cfg: Config, spec: TableSpec):
    """(Delta version, the rows without volatile columns, sorted); (None, None) with no table."""
    version, df = delta_io.read_pinned(spark, spec.path(cfg.storage))
    if df is None:
        return None, None
    df = df.drop(*[c for c in df.columns if c in VOLATILE])
    return version, sorted((tuple(_rounded(v) for v in r) for r in df.collect()), key=repr)


def _rounded(value):
    # Scores computed twice agree to float noise (thread scheduling), not bit for bit.
    return round(value, 6) if isinstance(value, float) else value


def _contents(spark, cfg, specs):
    return {spec.name: _content(spark, cfg, spec) for spec in specs}


def _command(job: str, overrides: list[str], *args: str) -> list[str]:
    cmd = [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--conf", str(LOCAL_CONF)]
    for override in [*TEST_OVERRIDES, *overrides]:
        cmd += ["--set", override]
    return cmd + list(args)


def _killed_at(point: str, cmd: list[str], tmp: Path) -> int:
    """Run ``cmd`` until it pauses at ``point``, SIGKILL its process group; its pid."""
    marker = tmp / f"paused-{point.replace(':', '_')}"
    env = {**os.environ, PAUSE_ENV: point, MARKER_ENV: str(marker)}
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 900
    while not marker.exists():
        if job.poll() is not None:
            pytest.fail(f"the job ended (rc {job.returncode}) before pausing at {point}: {job.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"the job never reached {point}"
        time.sleep(0.5)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    return job.pid


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]


def _runs(spark, cfg):
    return spark.read.format("delta").load(PIPELINE_RUNS.path(cfg.storage))


def _status_of(spark, cfg, pid: int) -> str:
    (row,) = _runs(spark, cfg).where(F.col("pid") == pid).collect()
    return row.status


def _check(before, killed, after, names):
    """Each table as before (same Delta version: nothing committed) or with the rows of after (its
    version may differ: the rerun commits again, e.g. a MERGE that finds nothing new)."""
    for name in names:
        as_before = killed[name] == before[name]
        as_after = killed[name][1] == after[name][1]
        assert as_before or as_after, f"{name}: neither as before nor as after a complete run"


# ---- ingest (CI)


def _ingest_inputs(tmp: Path) -> tuple[Path, Path]:
    day1, day2 = tmp / "day1.csv", tmp / "day2.csv"
    day1.write_text("1,100,10,pv,1511600000\n2,101,11,buy,1511650000\n")
    # new events, one already ingested, two rows that quarantine
    day2.write_text("3,102,12,pv,1511700000\n4,103,12,cart,1511710000\n2,101,11,buy,1511650000\n5,104\nx,y,z,pv,abc\n")
    return day1, day2


@pytest.mark.parametrize("point", ["write:events", pytest.param("write:events_quarantine", marks=pytest.mark.slow)])
def test_ingest_killed_inside_its_write(spark, tmp_path, point):
    day1, day2 = _ingest_inputs(tmp_path)
    overrides = [f"storage.warehouse={tmp_path / 'warehouse'}", "ingest.max_quarantine_share=0.5"]
    cfg = load_config(LOCAL_CONF, TEST_OVERRIDES + overrides)
    run_ingest(spark, cfg, str(day1))
    specs = (EVENTS, EVENTS_QUARANTINE)
    before = _contents(spark, cfg, specs)

    pid = _killed_at(point, _command("ingest", overrides, "--input", str(day2)), tmp_path)
    killed = _contents(spark, cfg, specs)
    (record,) = _runs(spark, cfg).where(F.col("pid") == pid).collect()
    assert (record.job, record.status, record.ended_at) == ("ingest", "running", None)
    run_ingest(spark, cfg, str(day2))  # the rerun, here in the test's process
    after = _contents(spark, cfg, specs)
    _check(before, killed, after, [s.name for s in specs])
    (record,) = _runs(spark, cfg).where(F.col("pid") == pid).collect()
    assert record.status == "abandoned" and f"pid {pid}" in record.error
    assert _runs(spark, cfg).where("status = 'succeeded'").count() == 2

    # The rerun ends where one uninterrupted run ends.
    clean = load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={tmp_path / 'clean'}"] + overrides[1:])
    run_ingest(spark, clean, str(day1))
    run_ingest(spark, clean, str(day2))
    reference = _contents(spark, clean, specs)
    assert {n: rows for n, (_, rows) in after.items()} == {n: rows for n, (_, rows) in reference.items()}
    assert len(after[EVENTS.name][1]) == 4 and len(after[EVENTS_QUARANTINE.name][1]) == 2


# ---- the jobs after ingest (slow: they need a world with a published model)

D1 = START + dt.timedelta(days=8)
D2 = D1 + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def chain_world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_world")
    overrides = world_overrides(
        root,
        "pipeline.full_retrain_weekday=null",
        "gate.metrics=[{task: click, metric: auc, floor: 0.5}]",
        "gate.tolerance=1.0",  # the kill tests publish a second version whatever its metrics
        "evaluation.baselines=[popularity]",
    )
    cfg = build_world(spark, load_config(LOCAL_CONF, overrides), [D1 - dt.timedelta(days=k) for k in (3, 2, 1)])
    run_day(spark, cfg, D1)
    return cfg, [o for o in overrides if not o.startswith("storage.warehouse=")], root


def _copy(cfg: Config, overrides: list[str], root: Path, name: str) -> tuple[Config, list[str]]:
    """The world's warehouse copied (Delta tables hold relative paths; MLflow's store is a folder)."""
    source = Path(cfg.storage.warehouse)
    target = root / name
    shutil.copytree(source, target)
    moved = [*overrides, f"storage.warehouse={target}"]
    return load_config(LOCAL_CONF, moved), moved


@pytest.fixture(scope="module")
def feature_world(spark, tmp_path_factory):
    """The session's world of this flavour with features up to D1 (no model needed)."""
    root = tmp_path_factory.mktemp("fault_features")
    overrides = world_overrides(root)
    cfg = build_world(spark, load_config(LOCAL_CONF, overrides), [D1 - dt.timedelta(days=k) for k in (2, 1, 0)])
    return cfg, [o for o in overrides if not o.startswith("storage.warehouse=")], root


@pytest.mark.slow
def test_build_features_killed_between_and_inside_its_writes(spark, feature_world):
    cfg, overrides, root = feature_world
    cfg, overrides = _copy(cfg, overrides, root, "features_kill")
    before = _contents(spark, cfg, FEATURE_TABLES)
    pid = _killed_at("write:training_examples", _command("build_features", overrides, "--ds", str(D2)), root)
    killed = _contents(spark, cfg, FEATURE_TABLES)
    _run(_command("build_features", overrides, "--ds", str(D2)))
    after = _contents(spark, cfg, FEATURE_TABLES)
    _check(before, killed, after, [s.name for s in FEATURE_TABLES])
    assert killed[TRAINING_EXAMPLES.name] == before[TRAINING_EXAMPLES.name]
    assert _status_of(spark, cfg, pid) == "abandoned"
    build_features(spark, cfg, D2)  # uninterrupted, again: nothing changes
    assert {n: rows for n, (_, rows) in _contents(spark, cfg, FEATURE_TABLES).items()} == {
        n: rows for n, (_, rows) in after.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "job, point, specs",
    [
        ("score", "write:daily_recommendations", (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS)),
        ("evaluate", "write:model_metrics", (MODEL_METRICS,)),
    ],
)
def test_output_jobs_killed_inside_their_write(spark, chain_world, job, point, specs):
    cfg, overrides, root = chain_world
    cfg, overrides = _copy(cfg, overrides, root, f"{job}_kill")
    build_features(spark, cfg, D2)
    before = _contents(spark, cfg, specs)
    pid = _killed_at(point, _command(job, overrides, "--ds", str(D2)), root)
    killed = _contents(spark, cfg, specs)
    assert killed == before
    _run(_command(job, overrides, "--ds", str(D2)))
    after = _contents(spark, cfg, specs)
    assert after != before
    assert _status_of(spark, cfg, pid) == "abandoned"
    _run(_command(job, overrides, "--ds", str(D2)))  # uninterrupted, again
    assert {n: rows for n, (_, rows) in _contents(spark, cfg, specs).items()} == {
        n: rows for n, (_, rows) in after.items()
    }


@pytest.mark.slow
def test_train_and_publish_killed_before_they_register_or_publish(spark, chain_world):
    cfg, overrides, root = chain_world
    cfg, overrides = _copy(cfg, overrides, root, "registry_kill")
    build_features(spark, cfg, D2)
    versions = registry.versions_for_ds(cfg, D2.isoformat())
    champion = registry.champion_version(cfg)

    pid = _killed_at(f"register:{cfg.tracking.registered_model}", _command("train", overrides, "--ds", str(D2)), root)
    assert registry.versions_for_ds(cfg, D2.isoformat()) == versions == []
    _run(_command("train", overrides, "--ds", str(D2)))
    (trained,) = registry.versions_for_ds(cfg, D2.isoformat())
    assert _status_of(spark, cfg, pid) == "abandoned"

    _run(_command("evaluate", overrides, "--ds", str(D2), "--model", trained))
    publish = _command("publish", overrides, "--ds", str(D2), "--model", trained)
    pid = _killed_at(f"publish:{cfg.tracking.champion_alias}", publish, root)
    assert registry.champion_version(cfg) == champion
    _run(publish)
    assert registry.champion_version(cfg) == trained
    assert _status_of(spark, cfg, pid) == "abandoned"
