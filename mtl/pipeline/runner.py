"""``mtl-pipeline run``: the daily chain in one local process (one Spark session), in date order.

For ds D:

1. ingest: the configured input (``ingest.input``, ``{ds}`` filled in); idempotent;
2. build_features: D, the days of the training window that have no training examples yet, and
   the days whose repurchase label window has just closed (their labels are now observed);
3. train: incremental from the published model; full on ``pipeline.full_retrain_weekday`` or
   when nothing is published yet;
4. evaluate the new version on D against the baselines and the champion;
5. publish: the quality gate; a refusal is reported and the chain goes on, scoring with the
   previous champion (there is none on the very first day: then the chain stops there);
6. score D with the champion; 7. check the output tables.

Every step is idempotent, so a rerun of a ds replaces what it wrote, and ``--from STEP`` resumes
a failed run at the step that failed. Airflow runs the same steps as spark-submit tasks
(airflow_dags/).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from mtl.cli import DEFAULT_CONF, parse_ds, setup_logging
from mtl.config import Config, ConfigError, load_config
from mtl.errors import JobError
from mtl.features.schema import REPURCHASE_HORIZONS_DAYS

log = logging.getLogger(__name__)

STEPS = ("ingest", "build_features", "train", "evaluate", "publish", "score", "check_outputs")


@dataclass
class DayReport:
    ds: dt.date
    lines: list[str] = field(default_factory=list)
    model_version: Optional[str] = None
    published: Optional[bool] = None
    seconds: dict[str, float] = field(default_factory=dict)


class StepFailed(JobError):
    def __init__(self, step: str, ds: dt.date, cause: BaseException):
        super().__init__(f"step {step!r} failed for ds {ds}: {type(cause).__name__}: {cause}\n"
                         f"fix the cause, then resume with: mtl-pipeline run --ds {ds} --from {step}")
        self.step = step


def feature_days(spark, cfg: Config, ds: dt.date) -> list[dt.date]:
    """D, the window days without training examples, and days whose label windows just closed."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from mtl.tables import TRAINING_EXAMPLES

    window = [ds - dt.timedelta(days=k) for k in range(cfg.training.window_days, 0, -1)]
    path = TRAINING_EXAMPLES.path(cfg.storage)
    have = set()
    if DeltaTable.isDeltaTable(spark, path):
        have = {r[0] for r in spark.read.format("delta").load(path).select("ds").distinct().collect()}
    matured = {ds - dt.timedelta(days=n) for n in REPURCHASE_HORIZONS_DAYS}
    return sorted({d for d in window if d not in have or d in matured} | {ds})


def _train_mode(cfg: Config, ds: dt.date) -> str:
    from mtl import registry

    if registry.champion_version(cfg) is None:
        return "full"
    weekday = cfg.pipeline.full_retrain_weekday
    return "full" if weekday is not None and ds.weekday() == weekday else "incremental"


def _scored_version(spark, cfg: Config, ds: dt.date) -> Optional[str]:
    """The model version of the last successful score run for ds, if any."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from mtl.tables import PIPELINE_RUNS

    path = PIPELINE_RUNS.path(cfg.storage)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    last = (spark.read.format("delta").load(path)
            .where((F.col("job") == "score") & (F.col("status") == "succeeded") & (F.col("ds") == F.lit(ds)))
            .orderBy(F.col("started_at").desc()).select("model_version").first())
    return last[0] if last else None


def run_day(spark, cfg: Config, ds: dt.date, start_at: str = STEPS[0], retrain: bool = False) -> DayReport:
    """Run the steps of one ds from ``start_at`` on; the first failure stops the chain."""
    from mtl import registry
    from mtl.evaluate.job import run_evaluate
    from mtl.evaluate.publish import GateRefused, run_publish
    from mtl.features.job import build_features
    from mtl.ingest.job import run_ingest
    from mtl.pipeline.quality import check_outputs
    from mtl.score.job import run_score
    from mtl.train.job import run_train

    report = DayReport(ds)

    def ingest() -> None:
        r = run_ingest(spark, cfg, ds=ds)
        report.lines.append(f"ingest: {r.rows_read:,} rows read, {r.accepted:,} new events, "
                            f"{r.duplicates:,} duplicates, {r.quarantined:,} quarantined")

    def features() -> None:
        days = feature_days(spark, cfg, ds)
        for day in days:
            r = build_features(spark, cfg, day)
        report.lines.append(f"build_features: ds {', '.join(map(str, days))}; for {ds}: "
                            + ", ".join(f"{k} {v:,}" for k, v in r.rows.items()))

    def train() -> None:
        # A rerun of the day keeps the day's model: retraining would change what it published.
        trained = registry.versions_for_ds(cfg, ds.isoformat())
        if trained and not retrain:
            report.model_version = trained[-1]
            report.lines.append(f"train: version {trained[-1]} was trained for {ds} already (rerun: reused)")
            return
        mode = _train_mode(cfg, ds)
        r = run_train(spark, cfg, ds, mode)
        report.model_version = r.model_version
        report.lines.append(f"train ({mode}): version {r.model_version} on ds {r.train_days[0]}..{r.train_days[1]} "
                            f"({r.train_rows:,} rows)")

    def evaluate() -> None:
        version = report.model_version or registry.latest_version(cfg)
        r = run_evaluate(spark, cfg, ds, version)
        report.model_version = r.model_version
        report.lines.append(f"evaluate: version {r.model_version} on {ds}; report {r.report_uri}")
        report.lines.extend("  " + line for line in _metric_lines(r.rows))

    def publish() -> None:
        champion = registry.champion_version(cfg)
        if champion is not None and int(champion) > int(report.model_version):
            report.published = False
            report.lines.append(f"publish: skipped, a newer version ({champion}) is already published")
            return
        try:
            r = run_publish(spark, cfg, ds, report.model_version)
            report.published = True
            report.lines.append(f"publish: version {r.model_version} is the champion")
        except GateRefused as refused:
            report.published = False
            champion = registry.champion_version(cfg)
            report.lines.append(f"publish: refused ({refused}); scoring keeps the champion {champion or '(none)'}")
            if champion is None:
                raise JobError("the gate refused the first model and there is no published model to score with") from refused

    def score() -> None:
        # A rerun scores with the model the day was scored with before, so its output stays the same.
        before = _scored_version(spark, cfg, ds)
        day_cfg = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, model_version=before)) if before else cfg
        r = run_score(spark, day_cfg, ds)
        report.lines.append(f"score: model version {r.model_version}, {r.active_users:,} users, "
                            + ", ".join(f"{k} {v:,}" for k, v in r.rows.items()))

    def checks() -> None:
        report.lines.append("check_outputs: " + check_outputs(spark, cfg, ds))

    actions: dict[str, Callable[[], None]] = {
        "ingest": ingest, "build_features": features, "train": train, "evaluate": evaluate,
        "publish": publish, "score": score, "check_outputs": checks,
    }
    for step in STEPS[STEPS.index(start_at):]:
        log.info("ds %s: %s", ds, step)
        started = time.perf_counter()
        try:
            actions[step]()
        except Exception as exc:
            raise StepFailed(step, ds, exc) from exc
        report.seconds[step] = time.perf_counter() - started
    return report


def _metric_lines(rows) -> list[str]:
    """The headline of the evaluation: per task, the model's AUC (Recall@20 for retrieval) and the
    best baseline's."""
    wanted = {("recommendation", "recall", 20)} | {(r.task, "auc", None) for r in rows if r.metric == "auc"}
    out = []
    for task, metric, k in sorted(wanted, key=str):
        values = {r.model_kind: r.value for r in rows if (r.task, r.metric, r.k) == (task, metric, k) and r.value is not None}
        if "multi_task" not in values:
            continue
        others = {kind: v for kind, v in values.items() if kind != "multi_task"}
        best = max(others.items(), key=lambda kv: kv[1]) if others else None
        name = f"{metric}@{k}" if k else metric
        versus = f" (best other: {best[0]} {best[1]:.4f})" if best else ""
        out.append(f"{task} {name}: {values['multi_task']:.4f}{versus}")
    return out


def summarize(reports: list[DayReport], cfg: Config) -> str:
    from mtl.tables import warehouse_root

    lines = []
    for r in reports:
        lines.append(f"== ds {r.ds} ({sum(r.seconds.values()):.0f}s) ==")
        lines.extend(r.lines)
    lines.append(f"tables: {warehouse_root(cfg.storage)} (Delta; docs/tables.md); "
                 f"MLflow: {cfg.tracking.tracking_uri or 'sqlite under ' + warehouse_root(cfg.storage) + '/mlflow'}")
    return "\n".join(lines)


def days_to_run(args: argparse.Namespace) -> list[dt.date]:
    if args.ds:
        return [args.ds]
    if args.end < args.start:
        raise JobError(f"--end {args.end} is before --start {args.start}")
    return [args.start + dt.timedelta(days=i) for i in range((args.end - args.start).days + 1)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mtl-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daily chain for --ds (or each day of --start..--end)")
    run.add_argument("--conf", default=DEFAULT_CONF, help=f"config file (default {DEFAULT_CONF})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    run.add_argument("--ds", type=parse_ds)
    run.add_argument("--start", type=parse_ds)
    run.add_argument("--end", type=parse_ds)
    run.add_argument("--from", dest="start_at", choices=STEPS, default=STEPS[0],
                     help="resume at this step (the first day of a range only)")
    run.add_argument("--retrain", action="store_true",
                     help="train a new model even if the day already has one (a rerun reuses it by default)")
    args = parser.parse_args(argv)
    if bool(args.start) != bool(args.end) or bool(args.ds) == bool(args.start):
        parser.error("give either --ds, or both --start and --end")
    setup_logging()
    try:
        cfg = load_config(args.conf, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from mtl.spark import build_spark

    reports: list[DayReport] = []
    try:
        days = days_to_run(args)
        spark = build_spark(cfg.spark)
        for i, ds in enumerate(days):
            log.info("pipeline: ds %s (%d of %d)", ds, i + 1, len(days))
            reports.append(run_day(spark, cfg, ds, args.start_at if i == 0 else STEPS[0], args.retrain))
    except JobError as exc:
        if reports:
            print(summarize(reports, cfg))
        log.error("pipeline stopped: %s", exc)
        return 1
    print(summarize(reports, cfg))
    return 0
