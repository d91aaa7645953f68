"""The check_outputs job: data-quality checks of the published output tables for one ds.

    python jobs/check_outputs.py --ds D        (the last task of the daily DAG and of mtl-pipeline)

Reads the ds partition of ``daily_recommendations`` and ``repurchase_predictions`` as published
(not the score job's staging copy) and runs every check in ``steps.QUALITY_CHECKS``: a missing or
empty partition, null ids, ranks that are not 1..n (n <= scoring.k) per user, probabilities
outside [0, 1], two model versions. Any violation fails the job (exit 1) with one line per broken
check; nothing is written except the run's ``pipeline_runs`` row.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl.config import Config
from mtl.errors import JobError
from mtl.pipeline.steps import QUALITY_CHECKS
from mtl.run_record import RunRecorder, mark_abandoned
from mtl.score.output_checks import check_recommendations, check_repurchase
from mtl.tables import DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS, TableSpec

log = logging.getLogger(__name__)

JOB = "check_outputs"
PROBABILITY_PREFIX = "p_repurchase_"


class OutputQualityError(JobError):
    """A published output table broke one of its guarantees for ds."""


def _partition(
    spark: SparkSession, cfg: Config, spec: TableSpec, ds: dt.date
) -> tuple[Optional[int], Optional[DataFrame]]:
    """(table version, the ds partition at that version), or (None, None) without a table."""
    version, table = delta_io.read_pinned(spark, spec.path(cfg.storage))
    return version, None if table is None else table.where(F.col("ds") == F.lit(ds))


def _recommendation_checks(df: DataFrame, k: int) -> tuple[list[str], dict]:
    """Null ids, ranks 1..n per user with n <= k and no item twice, probabilities in [0, 1]
    (the score job's own checks of its staged rows, run again on what was published)."""
    result = check_recommendations(df, k)
    return list(result.violations), {"rows": result.rows, "users": result.users}


def _repurchase_checks(df: DataFrame) -> tuple[list[str], dict]:
    """Null ids, repeated keys, and the p_repurchase_* columns: each null on every row (the model
    has no such task) or in [0, 1] on every row, at least one of them with values."""
    columns = [c for c in df.columns if c.startswith(PROBABILITY_PREFIX)]
    counts = df.agg(F.count(F.lit(1)).alias("rows"), *[F.count(c).alias(c) for c in columns]).first()
    rows = counts["rows"]
    filled = [c for c in columns if counts[c] == rows]
    violations = [f"{c} is null on {rows - counts[c]:,} of {rows:,} rows" for c in columns if 0 < counts[c] < rows]
    if not any(counts[c] for c in columns):
        violations.append(f"no {PROBABILITY_PREFIX}* column has a value")
    result = check_repurchase(df, filled)
    return violations + list(result.violations), {"rows": result.rows, "users": result.users, "probabilities": filled}


def check_outputs(spark: SparkSession, cfg: Config, ds: dt.date) -> str:
    """Run QUALITY_CHECKS on the ds partitions; return a one-line summary, raise
    OutputQualityError listing every failed check."""
    failures: list[str] = []
    details: dict[str, dict] = {}
    versions: dict[str, list[str]] = {}
    with RunRecorder(spark, cfg, JOB, ds) as run:
        # Runs of any job for ds that died (killed, machine lost) are marked, and named below.
        abandoned = [f"{r['job']} (run {r['run_id']}, pid {r['pid']})" for r in mark_abandoned(spark, cfg, ds=ds)]
        run.details["abandoned_runs"] = abandoned
        for spec, checks in (
            (DAILY_RECOMMENDATIONS, lambda df: _recommendation_checks(df, cfg.scoring.k)),
            (REPURCHASE_PREDICTIONS, _repurchase_checks),
        ):
            version, df = _partition(spark, cfg, spec, ds)
            if version is None:
                failures.append(f"{spec.name}: no table at {spec.path(cfg.storage)}")
                continue
            run.tables_read[spec.name] = version
            if df.limit(1).count() == 0:
                failures.append(f"{spec.name}: no rows for ds {ds} (table version {version})")
                continue
            violations, facts = checks(df)
            details[spec.name] = facts
            versions[spec.name] = sorted(str(r[0]) for r in df.select("model_version").distinct().collect())
            failures += [f"{spec.name}: {v}" for v in violations]
        if len(versions) == 2:
            found = set(versions[DAILY_RECOMMENDATIONS.name]) | set(versions[REPURCHASE_PREDICTIONS.name])
            if len(found) != 1:
                failures.append(
                    "model_version: both tables should come from one model version, found "
                    + "; ".join(f"{t}: {', '.join(v)}" for t, v in versions.items())
                )
        run.input_rows = sum(d["rows"] for d in details.values())
        run.model_version = next(iter(versions.get(DAILY_RECOMMENDATIONS.name, [])), None)
        run.details.update(tables=details, failures=failures, checks=[f"{c.table}.{c.name}" for c in QUALITY_CHECKS])
        if failures:
            raise OutputQualityError(
                f"the outputs of ds {ds} fail {len(failures)} check(s):\n  " + "\n  ".join(failures)
            )
    rec, rep = details[DAILY_RECOMMENDATIONS.name], details[REPURCHASE_PREDICTIONS.name]
    return (
        f"ds {ds}: {len(QUALITY_CHECKS)} checks passed; daily_recommendations {rec['rows']:,} rows for "
        f"{rec['users']:,} users, repurchase_predictions {rep['rows']:,} rows for {rep['users']:,} users "
        f"({', '.join(rep['probabilities'])}); model version {run.model_version}"
        + (f"; marked {len(abandoned)} run(s) of ds {ds} abandoned: {', '.join(abandoned)}" if abandoned else "")
    )
