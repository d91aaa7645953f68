"""One ``pipeline_runs`` row per job run, from its first second to its end.

The row is appended when the run starts (status ``running``, with the host, the process id and
a heartbeat time that a background thread refreshes every ``pipeline.heartbeat_s``), then
updated to ``succeeded`` or ``failed`` when it ends. A run that never ends (killed, machine
lost) leaves its ``running`` row behind; the next run of the same job and ds, and
``mtl-check-outputs``, mark it ``abandoned`` once its heartbeat is older than
``pipeline.abandoned_after_s``, or at once when its process is gone from this host.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl import delta_io
from mtl.config import Config
from mtl.faults import pause_point
from mtl.tables import PIPELINE_RUNS

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, ABANDONED = "running", "succeeded", "failed", "abandoned"
# Bookkeeping writes race only other runs' bookkeeping rows: a few tries settle it.
_CONFLICT_TRIES = 5


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
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


def _retrying(what: str, write) -> None:
    for attempt in range(_CONFLICT_TRIES):
        try:
            write()
            return
        except (delta_io.WriteConflict, *delta_io.CONFLICTS):
            if attempt == _CONFLICT_TRIES - 1:
                raise
            log.info("pipeline_runs: %s lost a commit race, retrying", what)


def _process_gone(host: Optional[str], pid: Optional[int]) -> bool:
    """True only when the process is known dead: on this host and no such pid."""
    if host != socket.gethostname() or pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def mark_abandoned(
    spark: SparkSession, cfg: Config, job: Optional[str] = None, ds: Optional[dt.date] = None
) -> list[dict[str, Any]]:
    """Mark ``running`` rows (of ``job`` and ``ds`` when given) whose run is gone as abandoned;
    returns them (run_id, job, ds, host, pid, heartbeat_at)."""
    path = PIPELINE_RUNS.path(cfg.storage)
    if not DeltaTable.isDeltaTable(spark, path):
        return []
    delta_io.ensure_table(spark, PIPELINE_RUNS, path)
    rows = spark.read.format("delta").load(path).where(F.col("status") == RUNNING)
    if job is not None:
        rows = rows.where(F.col("job") == job)
    if ds is not None:
        rows = rows.where(F.col("ds") == F.lit(ds))
    now = _utcnow()
    stale_before = now - dt.timedelta(seconds=cfg.pipeline.abandoned_after_s)
    dead = []
    for r in rows.select("run_id", "job", "ds", "host", "pid", "heartbeat_at", "started_at").collect():
        last = r["heartbeat_at"] or r["started_at"]
        if last < stale_before or _process_gone(r["host"], r["pid"]):
            dead.append(r.asDict() | {"heartbeat_at": last})
    for r in dead:
        reason = (
            f"abandoned: no heartbeat since {r['heartbeat_at']:%Y-%m-%d %H:%M:%S} UTC "
            f"(host {r['host']}, pid {r['pid']}); the process was killed or its machine lost"
        )

        def update(r=r, reason=reason) -> None:
            DeltaTable.forPath(spark, path).update(
                condition=(F.col("run_id") == r["run_id"]) & (F.col("status") == RUNNING),
                set={"status": F.lit(ABANDONED), "ended_at": F.lit(r["heartbeat_at"]), "error": F.lit(reason)},
            )

        _retrying("mark abandoned", update)
        log.warning("run %s: %s for ds %s %s", r["run_id"], r["job"], r["ds"], reason)
    return dead


class RunRecorder:
    """Context manager: appends the run's ``running`` row on entry, keeps its heartbeat while the
    block runs (the heartbeat thread first marks the job and ds's dead runs abandoned, off the
    job's own path), and records how it ended on exit. A failure inside the block is recorded
    with its message and then re-raised."""

    def __init__(self, spark: SparkSession, cfg: Config, job: str, ds: Optional[dt.date] = None):
        self.spark = spark
        self.cfg = cfg
        self.path = PIPELINE_RUNS.path(cfg.storage)
        self.record = RunRecord(job=job, ds=ds, config_hash=cfg.fingerprint())
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None
        self._lock = threading.Lock()  # one bookkeeping commit at a time from this process

    def __enter__(self) -> RunRecord:
        r = self.record
        row = self._row(RUNNING, None)
        delta_io.ensure_table(self.spark, PIPELINE_RUNS, self.path)
        frame = delta_io.conform(self.spark.createDataFrame([row], schema=PIPELINE_RUNS.schema), PIPELINE_RUNS)
        with self._lock:
            _retrying("start", lambda: frame.write.format("delta").mode("append").save(self.path))
        self._heartbeat = threading.Thread(target=self._beat, name=f"heartbeat {r.run_id}", daemon=True)
        self._heartbeat.start()
        log.info("run %s: %s started (ds=%s)", r.run_id, r.job, r.ds)
        pause_point(f"{r.job}:started")
        return r

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        status = SUCCEEDED if exc is None else FAILED
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:4000]
        try:
            self._update(self._row(status, error))
        except Exception:  # never hide the job's own error behind a bookkeeping one
            if exc is None:
                raise
            log.exception("could not record the failed run in pipeline_runs")
        return False

    def _beat(self) -> None:
        try:
            with self._lock:
                mark_abandoned(self.spark, self.cfg, self.record.job, self.record.ds)
        except Exception:
            log.warning("run %s: could not look for abandoned runs", self.record.run_id, exc_info=True)
        while not self._stop.wait(self.cfg.pipeline.heartbeat_s):
            try:
                self._update({"heartbeat_at": _utcnow()})
            except Exception:  # a missed beat is not worth failing the job for
                log.warning("run %s: could not refresh its heartbeat", self.record.run_id, exc_info=True)

    def _update(self, values: dict[str, Any]) -> None:
        """Set ``values`` on the run's row (one transaction; a run's row sits in the file its
        start appended, so the update rewrites that file only)."""
        types = {c.name: c.dtype for c in PIPELINE_RUNS.columns}
        assignments = {name: _literal(value, types[name]) for name, value in values.items() if name != "run_id"}

        def update() -> None:
            DeltaTable.forPath(self.spark, self.path).update(
                condition=F.col("run_id") == self.record.run_id, set=assignments
            )

        with self._lock:
            _retrying("update", update)

    def _row(self, status: str, error: Optional[str]) -> dict[str, Any]:
        r = self.record
        now = _utcnow()
        return {
            "run_id": r.run_id,
            "job": r.job,
            "ds": r.ds,
            "status": status,
            "started_at": r.started_at,
            "ended_at": None if status == RUNNING else now,
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
            "host": r.host,
            "pid": r.pid,
            "heartbeat_at": now,
        }


def _literal(value: Any, dtype: T.DataType):
    """A Python value as a Column of ``dtype`` (maps built key by key: F.lit takes no dict)."""
    if isinstance(dtype, T.MapType):
        pairs = [F.lit(x) for item in sorted((value or {}).items()) for x in item]
        return F.create_map(*pairs).cast(dtype)
    return F.lit(value).cast(dtype)
