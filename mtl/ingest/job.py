"""The ingest job: raw logs -> ``events`` (new rows only) + ``events_quarantine`` (rejected rows).

Counts always add up: rows read = accepted + quarantined + duplicates, recorded in
``pipeline_runs``. Each table write is one Delta transaction, so a failed run leaves ``events``
as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Optional

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl.config import Config
from mtl.errors import InputError, JobError
from mtl.ingest.normalize import INPUT_FILE, RAW_RECORD, REJECT_DETAIL, REJECT_REASON, normalize
from mtl.ingest.read import read_raw
from mtl.run_record import RunRecorder
from mtl.tables import EVENTS, EVENTS_QUARANTINE

log = logging.getLogger(__name__)


class QuarantineLimitExceeded(JobError):
    """Too large a share of the input was rejected; nothing was written to ``events``."""


@dataclass
class IngestResult:
    run_id: str
    input_path: str
    rows_read: int
    accepted: int
    quarantined: int
    duplicates: int
    reject_reasons: dict[str, int] = field(default_factory=dict)
    events_version: Optional[int] = None
    quarantine_version: Optional[int] = None
    event_dates: list[dt.date] = field(default_factory=list)  # partitions of events this run read into


def resolve_input(cfg: Config, input_path: Optional[str], ds: Optional[dt.date]) -> str:
    path = input_path or cfg.ingest.input
    if not path:
        raise InputError("no input given: pass --input or set ingest.input in the config")
    if "{ds}" in path:
        if ds is None:
            raise InputError(f"input {path!r} contains {{ds}}: pass --ds")
        path = path.replace("{ds}", ds.isoformat())
    return path


def run_ingest(
    spark: SparkSession,
    cfg: Config,
    input_path: Optional[str] = None,
    ds: Optional[dt.date] = None,
    format_name: Optional[str] = None,
) -> IngestResult:
    format_name = format_name or cfg.ingest.format
    fmt = cfg.format_config(format_name)
    path = resolve_input(cfg, input_path, ds)
    source = cfg.ingest.source or format_name
    events_path = EVENTS.path(cfg.storage)
    quarantine_path = EVENTS_QUARANTINE.path(cfg.storage)

    with RunRecorder(spark, cfg, "ingest", ds) as run:
        run.details.update(input=path, format=format_name, source=source)
        log.info("reading %s as %s", path, format_name)
        rows = normalize(read_raw(spark, fmt, path), fmt, source, cfg.ingest)
        # Three actions read these rows (counts, quarantine, events): parse the input once.
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = _count_by_reason_and_date(rows)
            rows_read = sum(counts.values())
            if rows_read == 0:
                raise InputError(f"input {path} has no rows")
            reasons: dict[str, int] = {}
            for (reason, _), n in counts.items():
                if reason is not None:
                    reasons[reason] = reasons.get(reason, 0) + n
            quarantined = sum(reasons.values())
            valid_rows = rows_read - quarantined
            valid_dates = sorted({date for (reason, date), _ in counts.items() if reason is None})
            run.input_rows, run.rejected_rows = rows_read, quarantined
            run.details["reject_reasons"] = reasons
            log.info("read %d rows: %d valid, %d rejected %s", rows_read, valid_rows, quarantined, reasons)

            share = quarantined / rows_read
            limit_exceeded = share > cfg.ingest.max_quarantine_share

            def write_quarantine() -> Optional[int]:
                if not quarantined:
                    return None
                quarantine = _quarantine_rows(rows, run.run_id, source, limit_exceeded)
                version = delta_io.append(spark, quarantine, EVENTS_QUARANTINE, quarantine_path)
                run.tables_written[EVENTS_QUARANTINE.name] = version
                log.info("wrote %d rows to %s (version %d)", quarantined, EVENTS_QUARANTINE.name, version)
                return version

            if limit_exceeded:
                write_quarantine()
                run.output_rows, run.duplicate_rows = 0, 0
                raise QuarantineLimitExceeded(
                    f"{quarantined} of {rows_read} rows ({share:.2%}) of {path} were rejected, above the limit "
                    f"ingest.max_quarantine_share={cfg.ingest.max_quarantine_share:.2%}; nothing was written to "
                    f"{EVENTS.name}. Reasons: {reasons}. The rows are in {EVENTS_QUARANTINE.name} "
                    f"with run_id='{run.run_id}'."
                )

            before = delta_io.table_version(spark, events_path)
            if before is not None:
                run.tables_read[EVENTS.name] = before
            new_events = rows.filter(F.col(REJECT_REASON).isNull()).select(*EVENTS.column_names)
            accepted = delta_io.insert_new_rows(
                spark, new_events.dropDuplicates(["event_id"]), EVENTS, events_path, "event_id", valid_dates
            )
            events_version = delta_io.table_version(spark, events_path)
            run.tables_written[EVENTS.name] = events_version
            run.output_rows, run.duplicate_rows = accepted, valid_rows - accepted
            log.info(
                "inserted %d new events, skipped %d duplicates (events version %d)",
                accepted,
                valid_rows - accepted,
                events_version,
            )
            # After the events: a run killed between the two writes leaves events complete (its rerun
            # finds every row a duplicate) and no quarantine rows of a run that never finished; the
            # other order would leave them behind, and the rerun would add its own.
            quarantine_version = write_quarantine()
        finally:
            rows.unpersist()

    return IngestResult(
        run_id=run.run_id,
        input_path=path,
        rows_read=rows_read,
        accepted=accepted,
        quarantined=quarantined,
        duplicates=valid_rows - accepted,
        reject_reasons=reasons,
        events_version=events_version,
        quarantine_version=quarantine_version,
        event_dates=valid_dates,
    )


def _count_by_reason_and_date(rows: DataFrame) -> dict[tuple[Optional[str], Optional[dt.date]], int]:
    grouped = rows.groupBy(REJECT_REASON, "event_date").count().collect()
    return {(r[REJECT_REASON], r["event_date"]): r["count"] for r in grouped}


def _quarantine_rows(rows: DataFrame, run_id: str, source: str, run_rejected: bool) -> DataFrame:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return rows.filter(F.col(REJECT_REASON).isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        F.lit(source).alias("source"),
        F.col(INPUT_FILE).alias("input_file"),
        F.col(RAW_RECORD).alias("raw_record"),
        F.col(REJECT_REASON).alias("reason"),
        F.col(REJECT_DETAIL).alias("detail"),
        F.lit(run_rejected).alias("run_rejected"),
        F.lit(now).alias("quarantined_at"),
        F.lit(now.date()).alias("ingest_date"),
    )


def summarize(spark: SparkSession, cfg: Config, result: IngestResult) -> str:
    """A short human summary of the run and of the tables it wrote."""
    lines = [
        f"ingest run {result.run_id}",
        f"  input        {result.input_path}",
        f"  rows read    {result.rows_read:>12,}",
        f"  accepted     {result.accepted:>12,}",
        f"  duplicates   {result.duplicates:>12,}",
        f"  quarantined  {result.quarantined:>12,}  {result.reject_reasons or ''}",
    ]
    # Only the partitions this run touched: the whole table can be billions of rows.
    events = (
        spark.read.format("delta").load(EVENTS.path(cfg.storage)).filter(F.col("event_date").isin(result.event_dates))
    )
    stats = events.agg(
        F.count(F.lit(1)).alias("rows"),
        F.min("event_date").alias("first"),
        F.max("event_date").alias("last"),
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
    ).first()
    by_type = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    lines += [
        f"table {EVENTS.name} (version {result.events_version}) at {EVENTS.path(cfg.storage)}",
        f"  in the {len(result.event_dates)} dates this input covers, {stats['first']} .. {stats['last']}: "
        f"{stats['rows']:,} events, {stats['users']:,} users, {stats['items']:,} items",
        "  by type: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_type.items())),
    ]
    if result.quarantine_version is not None:
        lines.append(
            f"table {EVENTS_QUARANTINE.name} (version {result.quarantine_version}) at "
            f"{EVENTS_QUARANTINE.path(cfg.storage)}"
        )
    return "\n".join(lines)
