"""Reading and writing the pipeline's Delta tables: every write is one Delta transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl.tables import TableSpec


def ensure_table(spark: SparkSession, spec: TableSpec, path: str) -> DeltaTable:
    """Create the table (empty, with its schema, partitioning and comments) if it is not there."""
    if DeltaTable.isDeltaTable(spark, path):
        return DeltaTable.forPath(spark, path)
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(spec.schema).comment(spec.comment)
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    return builder.execute()


def table_version(spark: SparkSession, path: str) -> Optional[int]:
    """Current version of the Delta table at ``path``, or None if there is none."""
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select the table's columns, in order, cast to its types."""
    return df.select([F.col(c.name).cast(c.dtype).alias(c.name) for c in spec.columns])


def append(spark: SparkSession, df: DataFrame, spec: TableSpec, path: str) -> int:
    """Append in one transaction; returns the new table version."""
    ensure_table(spark, spec, path)
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
    target = ensure_table(spark, spec, path)
    (partition_col,) = spec.partition_by
    values = sorted(set(partition_values))
    if not values:
        return 0
    in_list = ", ".join(f"'{v.isoformat() if hasattr(v, 'isoformat') else v}'" for v in values)
    condition = f"t.{partition_col} IN ({in_list}) AND t.{partition_col} = s.{partition_col} AND t.{key} = s.{key}"
    metrics = target.alias("t").merge(conform(df, spec).alias("s"), condition).whenNotMatchedInsertAll().execute()
    if metrics is not None and "num_inserted_rows" in metrics.columns:
        return int(metrics.first()["num_inserted_rows"])
    last = target.history(1).select("operationMetrics").first()[0]
    return int(last.get("numTargetRowsInserted", 0))


@dataclass(frozen=True)
class Commit:
    version: int
    rows_written: int


def replace_partition(spark: SparkSession, df: DataFrame, spec: TableSpec, path: str, value) -> Commit:
    """Replace one partition (e.g. ``ds = D``) with ``df`` in one transaction.

    Readers see either the old partition or the new one, never a mix; rows of ``df`` outside the
    partition make Delta fail the write instead of touching other partitions.
    """
    (partition_col,) = spec.partition_by
    ensure_table(spark, spec, path)
    literal = value.isoformat() if hasattr(value, "isoformat") else value
    (
        conform(df, spec)
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{partition_col} = '{literal}'")
        .save(path)
    )
    last = DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics").first()
    return Commit(version=last["version"], rows_written=int(last["operationMetrics"].get("numOutputRows", 0)))
