"""pipeline_runs from a run's first second: a running row with a heartbeat, the end recorded
in place, and runs that died marked abandoned (a real kill: tests/test_fault_injection.py)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import time

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl import delta_io
from mtl.run_record import RunRecorder, mark_abandoned
from mtl.tables import PIPELINE_RUNS

D = dt.date(2017, 11, 26)


def _runs(spark, cfg):
    return spark.read.format("delta").load(PIPELINE_RUNS.path(cfg.storage))


def _row(spark, cfg, run_id):
    rows = _runs(spark, cfg).where(F.col("run_id") == run_id).collect()
    assert len(rows) == 1, rows
    return rows[0]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def test_a_run_is_running_from_its_start_with_a_heartbeat_then_ends_in_place(spark, make_config):
    cfg = make_config("pipeline.heartbeat_s=0.5", "pipeline.abandoned_after_s=60")
    with RunRecorder(spark, cfg, "probe", D) as run:
        first = _row(spark, cfg, run.run_id)
        assert (first.status, first.job, first.ds, first.ended_at) == ("running", "probe", D, None)
        assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
        deadline = time.monotonic() + 60
        while _row(spark, cfg, run.run_id).heartbeat_at <= first.heartbeat_at:
            assert time.monotonic() < deadline, "the heartbeat never moved"
            time.sleep(0.5)
        run.output_rows = 5
    done = _row(spark, cfg, run.run_id)
    assert (done.status, done.output_rows, done.error) == ("succeeded", 5, None)
    assert done.ended_at >= done.heartbeat_at >= first.heartbeat_at and done.started_at == first.started_at

    with pytest.raises(ValueError, match="boom"):
        with RunRecorder(spark, cfg, "probe", D) as failed:
            raise ValueError("boom")
    row = _row(spark, cfg, failed.run_id)
    assert (row.status, row.error) == ("failed", "ValueError: boom")
    assert _runs(spark, cfg).count() == 2


def test_runs_whose_process_is_gone_or_whose_heartbeat_is_stale_are_marked_abandoned(spark, make_config):
    cfg = make_config("pipeline.heartbeat_s=10", "pipeline.abandoned_after_s=300")
    now = _utcnow()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs on this host

    def row(run_id, status, host, pid, heartbeat, job="score"):
        return {
            "run_id": run_id, "job": job, "ds": D, "status": status, "started_at": heartbeat, "ended_at": None,
            "config_hash": "x", "host": host, "pid": pid, "heartbeat_at": heartbeat,
        }  # fmt: skip

    rows = [
        row("stale", "running", "elsewhere", 1, now - dt.timedelta(hours=1)),
        row("alive", "running", "elsewhere", 1, now),
        row("killed", "running", socket.gethostname(), gone.pid, now),
        row("me", "running", socket.gethostname(), os.getpid(), now - dt.timedelta(seconds=30)),
        row("other_job", "running", "elsewhere", 1, now - dt.timedelta(hours=1), job="train"),
        {**row("old", "succeeded", "elsewhere", 1, now - dt.timedelta(days=1)), "ended_at": now},
    ]
    path = PIPELINE_RUNS.path(cfg.storage)
    delta_io.append(spark, spark.createDataFrame(rows, schema=PIPELINE_RUNS.schema), PIPELINE_RUNS, path)

    found = mark_abandoned(spark, cfg, job="score", ds=D)
    assert sorted(r["run_id"] for r in found) == ["killed", "stale"]
    status = dict(_runs(spark, cfg).select("run_id", "status").collect())
    assert status == {
        "stale": "abandoned", "alive": "running", "killed": "abandoned", "me": "running",
        "other_job": "running", "old": "succeeded",
    }  # fmt: skip
    stale = _row(spark, cfg, "stale")
    assert stale.ended_at == stale.heartbeat_at
    assert stale.error.startswith("abandoned: no heartbeat since ") and "host elsewhere, pid 1" in stale.error
    # Without a job and ds (mtl-check-outputs' sweep), every stale row goes.
    assert [r["run_id"] for r in mark_abandoned(spark, cfg)] == ["other_job"]


def test_a_table_of_an_older_release_gets_the_new_columns(spark, make_config):
    cfg = make_config()
    path = PIPELINE_RUNS.path(cfg.storage)
    new = {"host", "pid", "heartbeat_at"}
    old_schema = T.StructType(
        [
            T.StructField(f.name, f.dataType, False if f.name == "ended_at" else f.nullable)
            for f in PIPELINE_RUNS.schema.fields
            if f.name not in new
        ]
    )
    DeltaTable.createIfNotExists(spark).location(path).addColumns(old_schema).execute()
    old = {f.name: None for f in old_schema.fields}
    old |= {"run_id": "old", "job": "ingest", "status": "succeeded", "started_at": _utcnow(), "ended_at": _utcnow()}
    old["config_hash"] = "x"
    spark.createDataFrame([old], schema=old_schema).write.format("delta").mode("append").save(path)

    with RunRecorder(spark, cfg, "probe", D) as run:
        assert _row(spark, cfg, run.run_id).ended_at is None
    fields = {f.name: f for f in _runs(spark, cfg).schema.fields}
    assert new <= set(fields) and fields["ended_at"].nullable
    assert _row(spark, cfg, "old").host is None
    assert _row(spark, cfg, run.run_id).status == "succeeded"
