"""The monitor job: drift and health of one ds, judged against ``monitoring.thresholds``.

    python jobs/monitor.py --ds D        (after check_outputs in the daily DAG and in mtl-pipeline)

1. measures input drift (PSI of every dense feature and of the event mix, event volume),
   prediction drift (PSI of p_click, p_purchase, p_repurchase_*), output health (users scored,
   catalogue coverage, new items, candidate sources) and model health (today's evaluation
   against its trailing mean), each against the reference window before ds;
2. judges every measurement by the first threshold rule that matches it and replaces the ds
   partition of ``monitoring_metrics`` with the judged rows;
3. writes a report with each metric's history to an MLflow run of its own;
4. sends the breaches to the webhook in ``monitoring.alert.webhook_url_env`` (if set);
5. fails (exit 1) when a measurement crossed a fail bound, naming the metric, its value and the
   bound. Warn breaches are recorded, logged and alerted, and the job succeeds.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mtl import delta_io, registry
from mtl.config import Config
from mtl.errors import JobError
from mtl.monitor import alerts, report
from mtl.monitor.measure import input_drift, model_health, output_health, prediction_drift
from mtl.monitor.metrics import BOUNDS, FAIL, Judged, breaches, judge_all
from mtl.run_record import RunRecorder
from mtl.tables import MONITORING_METRICS

log = logging.getLogger(__name__)

JOB = "monitor"
REPORT_FILE = "monitoring_report.html"


class MonitorBreach(JobError):
    """A monitored metric crossed a fail bound on ds."""


@dataclass(frozen=True)
class MonitorResult:
    ds: dt.date
    judged: list[Judged]
    table_version: int
    alert: alerts.Delivery
    report_uri: Optional[str]

    @property
    def severities(self) -> Counter:
        return Counter(j.severity for j in self.judged)


def _rows(run_id: str, ds: dt.date, judged: list[Judged], computed_at: dt.datetime) -> list[dict]:
    out = []
    for j in judged:
        m, rule = j.measurement, j.rule
        bounds = {b: getattr(rule, b) if rule else None for b in BOUNDS}
        out.append(
            {
                "ds": ds,
                "run_id": run_id,
                "check_group": m.check_group,
                "metric": m.metric,
                "subject": m.subject,
                "value": m.value,
                "reference_value": m.reference_value,
                "severity": j.severity,
                **bounds,
                "reference_start": m.reference_start,
                "reference_end": m.reference_end,
                "note": m.note,
                "computed_at": computed_at,
            }
        )
    return out


def _timed(stage: str, fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    log.info("monitor: %s, %d metrics in %.1f s", stage, len(out), time.perf_counter() - started)
    return out


def _report(spark: SparkSession, cfg: Config, ds: dt.date, judged: list[Judged]) -> Optional[str]:
    """Render the report from monitoring_metrics' history and log it to an MLflow run; the
    report is a by-product: a failure to store it is logged, not raised."""
    try:
        start = ds - dt.timedelta(days=cfg.monitoring.history_days)
        history = (
            spark.read.format("delta")
            .load(MONITORING_METRICS.path(cfg.storage))
            .where(F.col("ds").between(F.lit(start), F.lit(ds)))
            .select("ds", "metric", "subject", "value", *BOUNDS)
            .toPandas()
        )
        page = report.render(ds, judged, history, start)
        with tempfile.TemporaryDirectory(prefix="mtl-monitor-") as folder:
            (Path(folder) / REPORT_FILE).write_text(page, encoding="utf-8")
            tags = {"mtl.job": JOB, "mtl.ds": ds.isoformat()}
            with registry.MlflowRun(cfg, run_name=f"monitor {ds}", tags=tags) as run:
                counts = Counter(j.severity for j in judged)
                run.log_metrics({f"monitor_{s}": float(counts[s]) for s in ("ok", "warn", "fail")}, step=0)
                run.log_artifact_folder(folder, "monitoring")
                return f"{run.artifact_uri}/monitoring/{REPORT_FILE}"
    except Exception:
        log.exception("could not write the monitoring report for ds %s", ds)
        return None


def run_monitor(spark: SparkSession, cfg: Config, ds: dt.date) -> MonitorResult:
    """Measure, judge, record, report, alert; raise MonitorBreach on a fail breach (after the
    rows are written and the alert is sent)."""
    rules = cfg.monitoring.thresholds
    with RunRecorder(spark, cfg, JOB, ds) as run:
        computed_at = run.started_at
        measurements = []
        for stage, fn in (
            ("input drift", input_drift),
            ("prediction drift", prediction_drift),
            ("output health", output_health),
            ("model health", model_health),
        ):
            measurements += _timed(stage, fn, spark, cfg, ds, run.tables_read)
        judged = judge_all(measurements, rules)
        rows = _rows(run.run_id, ds, judged, computed_at)
        df = spark.createDataFrame(rows, MONITORING_METRICS.schema)
        commit = delta_io.replace_partition(
            spark, df, MONITORING_METRICS, MONITORING_METRICS.path(cfg.storage), ds, cfg.storage.conflict_retries
        )
        run.tables_written[MONITORING_METRICS.name] = commit.version
        run.output_rows = commit.rows_written
        found = breaches(judged)
        for j in found:
            (log.error if j.severity == FAIL else log.warning)("monitor %s: %s", j.severity, j.describe())
        to_send = breaches(judged, cfg.monitoring.alert.min_severity)
        delivery = (
            alerts.send(cfg.monitoring.alert, alerts.payload(ds, run.run_id, to_send))
            if to_send
            else alerts.Delivery(False, 0, "nothing to send")
        )
        report_uri = _report(spark, cfg, ds, judged)
        counts = Counter(j.severity for j in judged)
        run.details.update(
            severities=dict(counts),
            breaches=[j.describe() for j in found],
            alert=delivery.reason,
            report=report_uri,
        )
        failed = [j for j in found if j.severity == FAIL]
        if failed:
            raise MonitorBreach(
                f"ds {ds}: {len(failed)} monitored metric(s) crossed a fail bound:\n  "
                + "\n  ".join(j.describe() for j in failed)
            )
    return MonitorResult(ds, judged, commit.version, delivery, report_uri)


def summarize(result: MonitorResult) -> str:
    c = result.severities
    measured = sum(j.measurement.value is not None for j in result.judged)
    alert = "alert sent" if result.alert.sent else f"no alert ({result.alert.reason})"
    return (
        f"ds {result.ds}: {len(result.judged)} metrics ({measured} measured), {c['fail']} fail, {c['warn']} warn; "
        f"monitoring_metrics version {result.table_version}; {alert}"
        + (f"; report {result.report_uri}" if result.report_uri else "")
    )
