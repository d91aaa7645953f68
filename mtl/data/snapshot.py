"""The Parquet files behind a Delta table's rows for a ds range, pinned to one table version.

Training reads Parquet files with Petastorm, not the Delta table, so the file list has to come
from the Delta log. Globbing the table folder would be wrong: overwriting a partition (the daily
rerun of build_features) only marks the old files removed in the log, and they stay on disk until
VACUUM, so a glob would read the old and the new rows together. Pinning the version makes every
Horovod rank and every epoch read the same rows even while the daily job rewrites a partition,
and lets the run record say exactly which data a model was trained on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl.errors import InputError
from mtl.tables import DS

# Table features that make a Parquet file say something else than the table: deletion vectors
# hide rows of a file without rewriting it, column mapping stores columns under physical names.
# A plain Parquet reader cannot honour either.
UNREADABLE_FEATURES = ("deletionVectors", "columnMapping")


@dataclass(frozen=True)
class Snapshot:
    """What a training run reads: the table ``version``, the Parquet ``files`` of the ds range
    (URIs as Delta names them, sorted, so that every rank shards the same list the same way),
    their total ``rows`` and the ds of each file (``file_days``, from the Delta log's partition
    values: the files themselves do not hold ds)."""

    version: int
    files: list[str]
    rows: int
    file_days: dict[str, dt.date] = field(default_factory=dict)


def snapshot_files(
    spark: SparkSession,
    table_path: str,
    ds_from: dt.date,
    ds_to: dt.date,
    version: Optional[int] = None,
) -> Snapshot:
    """The files holding the rows of ``ds_from..ds_to`` (inclusive) in ``version`` of the Delta
    table at ``table_path`` (default: its current version, recorded in the result).

    Every day of the range must have rows: a hole (a build_features day that failed or has not
    run yet) would otherwise train on less data than asked for without anyone noticing. Raises
    InputError for that, for an empty range, a missing table, a version that cannot be read, and
    a table whose files a plain Parquet reader would misread.
    """
    if ds_to < ds_from:
        raise InputError(f"ds range {ds_from}..{ds_to} is empty: it ends before it starts")
    current = delta_io.table_version(spark, table_path)
    if current is None:
        raise InputError(f"no Delta table at {table_path}")
    _check_plain_parquet(spark, table_path)
    read_version = current if version is None else version
    table = _read_version(spark, table_path, read_version)
    if DS.name not in table.columns:
        raise InputError(f"the Delta table at {table_path} has no {DS.name} column to select days by")

    in_range = table.where(F.col(DS.name).between(F.lit(ds_from), F.lit(ds_to)))
    # Only the partition column is needed: Spark counts rows from the Parquet footers.
    rows_per_day = {r[DS.name]: r["count"] for r in in_range.groupBy(DS.name).count().collect()}
    where = f"the Delta table at {table_path} (version {read_version})"
    if not rows_per_day:
        present = sorted(r[0] for r in table.select(DS.name).distinct().collect())
        has = f"ds {describe_days(present)}" if present else "no rows at all"
        raise InputError(f"{where} has no rows for ds {ds_from}..{ds_to}; it has {has}")
    missing = [d for d in _days(ds_from, ds_to) if d not in rows_per_day]
    if missing:
        raise InputError(
            f"{where} has no rows for ds {describe_days(missing)} (asked for {ds_from}..{ds_to}; "
            f"present: {describe_days(sorted(rows_per_day))}): run build_features for the missing days"
        )
    # One metadata-only query per day: partition pruning lists that day's files from the log.
    file_days = {f: day for day in rows_per_day for f in in_range.where(F.col(DS.name) == F.lit(day)).inputFiles()}
    return Snapshot(version=read_version, files=sorted(file_days), rows=sum(rows_per_day.values()), file_days=file_days)


def describe_days(days: Sequence[dt.date]) -> str:
    """Sorted dates as runs of consecutive days, e.g. ``2024-03-01..2024-03-09, 2024-03-12``:
    a long backfill reads as a few ranges instead of hundreds of dates."""
    runs: list[list[dt.date]] = []
    for day in days:
        if runs and day - runs[-1][1] == dt.timedelta(days=1):
            runs[-1][1] = day
        else:
            runs.append([day, day])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def _days(first: dt.date, last: dt.date) -> Iterator[dt.date]:
    for offset in range((last - first).days + 1):
        yield first + dt.timedelta(days=offset)


def _read_version(spark: SparkSession, path: str, version: int) -> DataFrame:
    try:
        return spark.read.format("delta").option("versionAsOf", version).load(path)
    except AnalysisException as e:  # e.g. a version past the latest, or one whose log was cleaned up
        raise InputError(f"cannot read version {version} of the Delta table at {path}: {e}") from e


def _check_plain_parquet(spark: SparkSession, path: str) -> None:
    features = DeltaTable.forPath(spark, path).detail().select("tableFeatures").first()[0] or []
    unreadable = sorted(set(features) & set(UNREADABLE_FEATURES))
    if unreadable:
        raise InputError(
            f"the Delta table at {path} uses {', '.join(unreadable)}: its Parquet files do not hold exactly "
            "the table's rows and columns, so they cannot be read directly; rewrite it without them"
        )
