"""Two runs writing the same partition at once: the one that commits second is retried (the
replace is idempotent) or, with no retries left, fails with one sentence naming the table and
the partition, and the table holds exactly one run's rows either way."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl import delta_io
from mtl.delta_io import WriteConflict
from mtl.tables import Column, TableSpec

D = dt.date(2024, 3, 15)
SPEC = TableSpec(
    name="conflict_probe",
    columns=(
        Column("value", T.LongType(), False, "Which run wrote the row."),
        Column("ds", T.DateType(), False, "Partition."),
    ),
    partition_by=("ds",),
    comment="A table for the conflict test.",
)


def _slow_rows(spark, value: int, started: Path):
    """One row of ``value`` whose computation signals ``started`` and then takes two seconds: the
    write's snapshot is taken before it, the commit after it."""

    @F.udf("long")
    def slow(v):
        started.touch()
        time.sleep(2.0)
        return v

    return spark.range(1).select(slow(F.lit(value)).alias("value"), F.lit(D).alias("ds"))


def _race(spark, path: str, started: Path, retries: int) -> list:
    """Writer 1 (slow) starts; writer 2 replaces the same partition and commits while writer 1
    computes. Returns what writer 1 raised, if anything."""
    raised = []

    def first():
        try:
            delta_io.replace_partition(spark, _slow_rows(spark, 1, started), SPEC, path, D, conflict_retries=retries)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the slow writer never started computing"
    delta_io.replace_partition(spark, spark.createDataFrame([(2, D)], "value long, ds date"), SPEC, path, D)
    thread.join(timeout=120)
    assert not thread.is_alive()
    return raised


def _values(spark, path: str) -> list[int]:
    return sorted(r.value for r in spark.read.format("delta").load(path).collect())


@pytest.mark.parametrize("retries", [0, 1])
def test_a_partition_replace_that_loses_the_commit_race(spark, tmp_path, retries):
    path = str(tmp_path / SPEC.name)
    delta_io.replace_partition(spark, spark.createDataFrame([(0, D)], "value long, ds date"), SPEC, path, D)

    raised = _race(spark, path, tmp_path / "started", retries)

    if retries == 0:
        assert len(raised) == 1 and isinstance(raised[0], WriteConflict), raised
        message = str(raised[0])
        assert message.startswith("table conflict_probe (ds = '2024-03-15'): another run committed to it")
        assert "safe to rerun" in message and "\n" not in message
        assert _values(spark, path) == [2]  # the winner's rows only: the loser wrote nothing
    else:
        assert raised == []
        assert _values(spark, path) == [1]  # the retry replaced the winner's partition, whole
