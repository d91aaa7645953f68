"""One ``pipeline_runs`` row per job run, written whether the run succeeds or fails."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from pyspark.sql import SparkSession

from mtl import delta_io
from mtl.config import Config
from mtl.tables import PIPELINE_RUNS

log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    # Spark's session time zone is UTC, so naive UTC datetimes round-trip unchanged.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class RunRecord:
    job: str
    ds: Optional[dt.date]
    config_hash: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: dt.datetime = field(default_factory=_utcnow)
    input_rows: Optional[int] = None
    output_rows: Optional[int] = None
    rejected_rows: Optional[int] = None
    duplicate_rows: Optional[int] = None
    tables_read: dict[str, int] = field(default_factory=dict)
    tables_written: dict[str, int] = field(default_factory=dict)
    model_version: Optional[str] = None
    details: dict[str, Any] = field(default_factory=dict)


class RunRecorder:
    """Context manager: yields a RunRecord to fill in and appends it to ``pipeline_runs`` on exit.

    A failure inside the block is recorded with its message and then re-raised.
    """

    def __init__(self, spark: SparkSession, cfg: Config, job: str, ds: Optional[dt.date] = None):
        self.spark = spark
        self.path = PIPELINE_RUNS.path(cfg.storage)
        self.record = RunRecord(job=job, ds=ds, config_hash=cfg.fingerprint())

    def __enter__(self) -> RunRecord:
        log.info("run %s: %s started (ds=%s)", self.record.run_id, self.record.job, self.record.ds)
        return self.record

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "succeeded" if exc is None else "failed"
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:4000]
        try:
            self._write(status, error)
        except Exception:  # never hide the job's own error behind a bookkeeping one
            if exc is None:
                raise
            log.exception("could not record the failed run in pipeline_runs")
        return False

    def _write(self, status: str, error: Optional[str]) -> None:
        r = self.record
        row = {
            "run_id": r.run_id,
            "job": r.job,
            "ds": r.ds,
            "status": status,
            "started_at": r.started_at,
            "ended_at": _utcnow(),
            "input_rows": r.input_rows,
            "output_rows": r.output_rows,
            "rejected_rows": r.rejected_rows,
            "duplicate_rows": r.duplicate_rows,
            "tables_read": r.tables_read,
            "tables_written": r.tables_written,
            "model_version": r.model_version,
            "config_hash": r.config_hash,
            "details": json.dumps(r.details, sort_keys=True, default=str),
            "error": error,
        }
        df = self.spark.createDataFrame([row], schema=PIPELINE_RUNS.schema)
        delta_io.append(self.spark, df, PIPELINE_RUNS, self.path)
