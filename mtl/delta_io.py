"""Reading and writing the pipeline's Delta tables: every write is one Delta transaction."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import delta.exceptions
import delta.exceptions.captured  # noqa: F401 - makes PySpark raise Delta's conflicts as these classes
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl.errors import JobError
from mtl.faults import pause_point
from mtl.tables import TableSpec

log = logging.getLogger(__name__)

# Every class delta.exceptions exports is a commit conflict: another transaction committed to
# the table first (ConcurrentAppendException and its siblings).
CONFLICTS = tuple(getattr(delta.exceptions, name) for name in delta.exceptions.__all__)


class WriteConflict(JobError):
    """Another run committed to the same table while this one was writing; nothing was written."""


@contextmanager
def _named_conflicts(spec: TableSpec, where: str = "") -> Iterator[None]:
    try:
        yield
    except CONFLICTS as exc:
        raise WriteConflict(
            f"table {spec.name}{where}: another run committed to it while this one was writing "
            f"({type(exc).__name__}); this run wrote nothing there, and it is safe to rerun the job"
        ) from None


def _sql_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _literal(value) -> str:
    """A partition value as it appears in a SQL predicate (dates as ISO text)."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def ensure_table(spark: SparkSession, spec: TableSpec, path: str) -> DeltaTable:
    """Create the table (empty, with its schema, partitioning and comments) if it is not there;
    bring an existing one up to the spec's columns (see evolve)."""
    if DeltaTable.isDeltaTable(spark, path):
        table = DeltaTable.forPath(spark, path)
        evolve(spark, spec, path, table.toDF().schema)
        return table
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(spec.schema).comment(spec.comment)
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    return builder.execute()


def evolve(spark: SparkSession, spec: TableSpec, path: str, schema) -> None:
    """A table written by an older release gets the columns the spec added since (null in its
    old rows) and loses NOT NULL where the spec now allows nulls: metadata-only commits."""
    have = {f.name: f for f in schema.fields}
    added = [c for c in spec.columns if c.name not in have]
    relaxed = [c for c in spec.columns if c.name in have and c.nullable and not have[c.name].nullable]
    if added:
        columns = ", ".join(f"{c.name} {c.dtype.simpleString()} COMMENT '{_sql_text(c.comment)}'" for c in added)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
        log.info("table %s: added columns %s", spec.name, [c.name for c in added])
    for column in relaxed:
        spark.sql(f"ALTER TABLE delta.`{path}` ALTER COLUMN {column.name} DROP NOT NULL")
        log.info("table %s: column %s now allows nulls", spec.name, column.name)


def table_version(spark: SparkSession, path: str) -> Optional[int]:
    """Current version of the Delta table at ``path``, or None if there is none."""
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def read_pinned(spark: SparkSession, path: str) -> tuple[Optional[int], Optional[DataFrame]]:
    """(current version, the table at that version), or (None, None) when there is no table:
    every read of one run then sees the same snapshot, and the run can record which."""
    version = table_version(spark, path)
    if version is None:
        return None, None
    return version, spark.read.format("delta").option("versionAsOf", version).load(path)


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select the table's columns, in order, cast to its types."""
    return df.select([F.col(c.name).cast(c.dtype).alias(c.name) for c in spec.columns])


def append(spark: SparkSession, df: DataFrame, spec: TableSpec, path: str) -> int:
    """Append in one transaction; returns the new table version."""
    pause_point(f"write:{spec.name}")  # before the table's creation too: that is a commit of its own
    ensure_table(spark, spec, path)
    with _named_conflicts(spec):
        conform(df, spec).write.format("delta").mode("append").save(path)
    return table_version(spark, path)


def insert_new_rows(
    spark: SparkSession,
    df: DataFrame,
    spec: TableSpec,
    path: str,
    key: str,
    partition_values: Iterable,
) -> int:
    """Insert rows whose ``key`` is not in the table yet (an insert-only MERGE, one transaction).

    ``df`` must hold each key once. The partition values the batch touches are given as
    literals so Delta reads only those partitions of the target. Returns rows inserted.
    """
    pause_point(f"write:{spec.name}")
    target = ensure_table(spark, spec, path)
    (partition_col,) = spec.partition_by
    values = sorted(set(partition_values))
    if not values:
        return 0
    in_list = ", ".join(f"'{_literal(v)}'" for v in values)
    condition = f"t.{partition_col} IN ({in_list}) AND t.{partition_col} = s.{partition_col} AND t.{key} = s.{key}"
    with _named_conflicts(spec, f" ({partition_col} IN ({in_list}))"):
        metrics = target.alias("t").merge(conform(df, spec).alias("s"), condition).whenNotMatchedInsertAll().execute()
    if metrics is not None and "num_inserted_rows" in metrics.columns:
        return int(metrics.first()["num_inserted_rows"])
    last = target.history(1).select("operationMetrics").first()[0]
    return int(last.get("numTargetRowsInserted", 0))


@dataclass(frozen=True)
class Commit:
    version: int
    rows_written: int


def replace_partition(
    spark: SparkSession, df: DataFrame, spec: TableSpec, path: str, value, conflict_retries: int = 0
) -> Commit:
    """Replace one partition (e.g. ``ds = D``) with ``df`` in one transaction (see replace_where)."""
    (partition_col,) = spec.partition_by
    return replace_where(spark, df, spec, path, f"{partition_col} = '{_literal(value)}'", conflict_retries)


def replace_where(
    spark: SparkSession, df: DataFrame, spec: TableSpec, path: str, predicate: str, conflict_retries: int = 0
) -> Commit:
    """Replace the rows matching ``predicate`` (SQL, on partition columns at least) with ``df`` in
    one transaction.

    Readers see either the old rows or the new ones, never a mix; rows of ``df`` outside the
    predicate make Delta fail the write instead of touching other rows. A commit that loses the
    race to another run's is tried again up to ``conflict_retries`` times (the replace is
    idempotent), then fails with a WriteConflict naming the table and the predicate.
    """
    pause_point(f"write:{spec.name}")
    table = ensure_table(spark, spec, path)
    writer = conform(df, spec).write.format("delta").mode("overwrite").option("replaceWhere", predicate)
    for attempt in range(conflict_retries + 1):
        try:
            with _named_conflicts(spec, f" ({predicate})"):
                writer.save(path)
            break
        except WriteConflict as exc:
            if attempt == conflict_retries:
                raise
            log.warning("%s; retrying (%d of %d)", exc, attempt + 1, conflict_retries)
    last = table.history(1).select("version", "operationMetrics").first()
    return Commit(version=last["version"], rows_written=int(last["operationMetrics"].get("numOutputRows", 0)))
