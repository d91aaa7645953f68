"""The one place that names the pipeline's Delta tables, their schemas and their locations."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyspark.sql import types as T

from mtl.config import StorageConfig


@dataclass(frozen=True)
class Column:
    name: str
    dtype: T.DataType
    nullable: bool
    comment: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...]
    comment: str

    @property
    def schema(self) -> T.StructType:
        return T.StructType(
            [T.StructField(c.name, c.dtype, c.nullable, metadata={"comment": c.comment}) for c in self.columns]
        )

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def path(self, storage: StorageConfig) -> str:
        return f"{warehouse_root(storage)}/{self.name}"


def resolve_path(path: str) -> str:
    """A URI as given; a relative local folder is taken from the working directory."""
    path = path.rstrip("/")
    if "://" in path or path.startswith("file:"):
        return path
    return os.path.abspath(path)


def warehouse_root(storage: StorageConfig) -> str:
    return resolve_path(storage.warehouse)


EVENTS = TableSpec(
    name="events",
    comment="Canonical behaviour events, one row per distinct source event, written by ingest.",
    partition_by=("event_date",),
    columns=(
        Column("event_id", T.StringType(), False, "Deterministic hash of the normalised source row; the dedup key."),
        Column("user_id", T.StringType(), False, "User id as in the source."),
        Column("item_id", T.StringType(), False, "Item id as in the source."),
        Column("category_id", T.StringType(), True, "Item category id, when the source has one."),
        Column("event_type", T.StringType(), False, "One of impression, view, click, fav, cart, purchase."),
        Column("event_ts", T.TimestampType(), False, "When the event happened (UTC)."),
        Column("event_date", T.DateType(), False, "Calendar date of event_ts in the business time zone."),
        Column("quantity", T.IntegerType(), True, "Units bought, for purchases whose source records it."),
        Column("price", T.DoubleType(), True, "Unit price, when the source records it."),
        Column("source", T.StringType(), False, "Name of the source the event came from."),
    ),
)

EVENTS_QUARANTINE = TableSpec(
    name="events_quarantine",
    comment="Raw rows that ingest rejected, with the reason; nothing read is ever dropped silently.",
    partition_by=("ingest_date",),
    columns=(
        Column("run_id", T.StringType(), False, "The ingest run that read the row (see pipeline_runs)."),
        Column("source", T.StringType(), False, "Source name the run was ingesting."),
        Column("input_file", T.StringType(), True, "File the row was read from."),
        Column("raw_record", T.StringType(), True, "The raw line, or the raw row as JSON."),
        Column("reason", T.StringType(), False, "Reason code, e.g. MALFORMED_RECORD, TIMESTAMP_OUT_OF_RANGE."),
        Column("detail", T.StringType(), True, "The offending value, where there is one."),
        Column("run_rejected", T.BooleanType(), False, "True when the run failed its quarantine limit and wrote no events."),
        Column("quarantined_at", T.TimestampType(), False, "When the run wrote the row (UTC)."),
        Column("ingest_date", T.DateType(), False, "UTC date of quarantined_at."),
    ),
)

PIPELINE_RUNS = TableSpec(
    name="pipeline_runs",
    comment="One row per job run: what it read and wrote, counts, status.",
    partition_by=(),
    columns=(
        Column("run_id", T.StringType(), False, "Unique id of the run."),
        Column("job", T.StringType(), False, "Job name, e.g. ingest."),
        Column("ds", T.DateType(), True, "Logical date the run was for, if any."),
        Column("status", T.StringType(), False, "succeeded or failed."),
        Column("started_at", T.TimestampType(), False, "Run start (UTC)."),
        Column("ended_at", T.TimestampType(), False, "Run end (UTC)."),
        Column("input_rows", T.LongType(), True, "Rows read."),
        Column("output_rows", T.LongType(), True, "Rows written to the main output table."),
        Column("rejected_rows", T.LongType(), True, "Rows quarantined."),
        Column("duplicate_rows", T.LongType(), True, "Rows dropped as duplicates of existing or other input rows."),
        Column("tables_read", T.MapType(T.StringType(), T.LongType()), True, "Table name -> Delta version read."),
        Column("tables_written", T.MapType(T.StringType(), T.LongType()), True, "Table name -> Delta version written."),
        Column("model_version", T.StringType(), True, "Model version used or produced, if any."),
        Column("config_hash", T.StringType(), False, "Fingerprint of the resolved config."),
        Column("details", T.StringType(), True, "JSON with job-specific facts (e.g. counts per reject reason)."),
        Column("error", T.StringType(), True, "Error message of a failed run."),
    ),
)

ALL_TABLES = (EVENTS, EVENTS_QUARANTINE, PIPELINE_RUNS)


def markdown_docs() -> str:
    """Analyst-facing description of every table, generated from the specs above."""
    out = ["# Tables", "", "Generated from `mtl/tables.py` by `python -m mtl.tables`; do not edit by hand.", ""]
    for spec in ALL_TABLES:
        partitioning = ", ".join(spec.partition_by) or "none"
        out += [f"## `{spec.name}`", "", spec.comment, "", f"Partitioned by: {partitioning}.", ""]
        out += ["| column | type | nullable | meaning |", "|---|---|---|---|"]
        out += [
            f"| `{c.name}` | {c.dtype.simpleString()} | {'yes' if c.nullable else 'no'} | {c.comment} |"
            for c in spec.columns
        ]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown_docs(), end="")
