"""``mtl-pipeline run``: the daily chain in one local process (one Spark session), in date order.

For ds D:

1. ingest: the configured input (``ingest.input``, ``{ds}`` filled in); idempotent;
2. build_features: D, the days of the training window that have no training examples yet, and
   the days whose repurchase label window has just closed (their labels are now observed);
3. train: incremental from the published model; full on ``pipeline.full_retrain_weekday`` or
   when nothing is published yet; a rerun of D keeps the version trained for D (``--retrain``
   trains a new one);
4. evaluate the version trained for D on D against the baselines and the champion;
5. publish: the quality gate; a refusal is reported and the chain goes on, scoring with the
   previous champion (there is none on the very first day: then the chain stops there). A
   version older than the champion (a rerun of an earlier day) is not published;
6. score D with the champion (a rerun: with the version D was scored with before);
7. check the output tables;
8. monitor D: drift and health against the days before (``monitoring_metrics``), with alerts; a
   fail bound crossed fails the day.

Every step is idempotent, so a rerun of a ds replaces what it wrote, and ``--from STEP`` resumes
a failed run at the step that failed. The decisions above live in ``mtl/pipeline/policy.py``; each step here calls
the same step function as its own command (``mtl/cli/<step>.py``), and Airflow runs those commands
as spark-submit tasks (airflow_dags/) with the flags in ``mtl/pipeline/steps.py``, so all three
take the same decisions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from mtl import registry
from mtl.cli.build_features import build_features_step
from mtl.cli.common import DEFAULT_CONF, executor_needs, load_job_config, parse_ds, setup_logging
from mtl.cli.evaluate import evaluate_step
from mtl.cli.publish import publish_step
from mtl.cli.score import score_step
from mtl.cli.train import train_step
from mtl.config import Config, ConfigError
from mtl.errors import JobError
from mtl.evaluate.model_metrics import RECOMMENDATIONS, RETRIEVAL
from mtl.evaluate.publish import GateRefused
from mtl.evaluate.publish import summarize as publish_summary
from mtl.features.job import date_range
from mtl.ingest.job import run_ingest
from mtl.monitor.job import run_monitor
from mtl.monitor.job import summarize as monitor_summary
from mtl.pipeline.check_outputs import check_outputs
from mtl.pipeline.policy import AUTO
from mtl.pipeline.steps import STEP_NAMES as STEPS
from mtl.tables import DAILY_RECOMMENDATIONS, MODEL_METRICS, PIPELINE_RUNS, REPURCHASE_PREDICTIONS, warehouse_root

log = logging.getLogger(__name__)


@dataclass
class DayReport:
    ds: dt.date
    lines: list[str] = field(default_factory=list)
    model_version: Optional[str] = None
    published: Optional[bool] = None
    seconds: dict[str, float] = field(default_factory=dict)


class StepFailed(JobError):
    def __init__(self, step: str, ds: dt.date, cause: BaseException):
        super().__init__(
            f"step {step!r} failed for ds {ds}: {type(cause).__name__}: {cause}\n"
            f"fix the cause, then resume with: mtl-pipeline run --ds {ds} --from {step}"
        )
        self.step = step


def run_day(spark, cfg: Config, ds: dt.date, start_at: str = STEPS[0], retrain: bool = False) -> DayReport:
    """Run the steps of one ds from ``start_at`` on; the first failure stops the chain."""
    report = DayReport(ds)

    def ingest() -> None:
        r = run_ingest(spark, cfg, ds=ds)
        report.lines.append(
            f"ingest: {r.rows_read:,} rows read, {r.accepted:,} new events, "
            f"{r.duplicates:,} duplicates, {r.quarantined:,} quarantined"
        )

    def features() -> None:
        days, results = build_features_step(spark, cfg, [ds], with_pending_days=True)
        report.lines.append(
            f"build_features: ds {', '.join(map(str, days))}; for {ds}: "
            + ", ".join(f"{k} {v:,}" for k, v in results[-1].rows.items())
        )

    def train() -> None:
        step = train_step(spark, cfg, ds, AUTO, retrain)
        report.model_version = step.model_version
        r = step.result
        if r is None:
            report.lines.append(f"train: {step.reason}")
            return
        report.lines.append(
            f"train ({r.mode}): version {r.model_version} on ds {r.train_days[0]}..{r.train_days[1]} "
            f"({r.train_rows:,} rows; {step.reason})"
        )

    def evaluate() -> None:
        r = evaluate_step(spark, cfg, ds, report.model_version, trained_for_ds=report.model_version is None)
        report.model_version = r.model_version
        report.lines.append(f"evaluate: version {r.model_version} on {ds}; report {r.report_uri}")
        report.lines.extend("  " + line for line in _metric_lines(r.rows))

    def publish() -> None:
        try:
            r = publish_step(spark, cfg, ds, report.model_version, trained_for_ds=report.model_version is None)
        except GateRefused as refused:
            report.published = False
            champion = registry.champion_version(cfg)
            report.lines.append(f"publish: refused ({refused}); scoring keeps the champion {champion or '(none)'}")
            if champion is None:
                raise JobError(
                    f"the gate refused the first model and there is no published model to score with: {refused}"
                ) from refused
            return
        report.published = r.published
        first, *checks = publish_summary(r).splitlines()
        report.lines.append("publish: " + first)
        report.lines.extend("  gate: " + line.strip() for line in checks)

    def score() -> None:
        r = score_step(spark, cfg, ds, keep_scored=True)
        report.lines.append(
            f"score: model version {r.model_version}, {r.active_users:,} users, "
            + ", ".join(f"{k} {v:,}" for k, v in r.rows.items())
        )

    def checks() -> None:
        report.lines.append("check_outputs: " + check_outputs(spark, cfg, ds))

    def monitor() -> None:
        report.lines.append("monitor: " + monitor_summary(run_monitor(spark, cfg, ds)))

    actions: dict[str, Callable[[], None]] = {
        "ingest": ingest,
        "build_features": features,
        "train": train,
        "evaluate": evaluate,
        "publish": publish,
        "score": score,
        "check_outputs": checks,
        "monitor": monitor,
    }
    for step in STEPS[STEPS.index(start_at) :]:
        log.info("ds %s: %s", ds, step)
        started = time.perf_counter()
        try:
            actions[step]()
        except Exception as exc:
            raise StepFailed(step, ds, exc) from exc
        report.seconds[step] = time.perf_counter() - started
        log.info("ds %s: %s done in %.1fs", ds, step, report.seconds[step])
    return report


def _metric_lines(rows) -> list[str]:
    """The headline of the evaluation: per task, the model's AUC (Recall@20 for retrieval) and the
    best baseline's."""
    wanted = {(RETRIEVAL, "recall", 20), (RECOMMENDATIONS, "recall", 20)} | {
        (r.task, "auc", None) for r in rows if r.metric == "auc"
    }
    out = []
    for task, metric, k in sorted(wanted, key=str):
        values = {
            r.model_kind: r.value for r in rows if (r.task, r.metric, r.k) == (task, metric, k) and r.value is not None
        }
        if "multi_task" not in values:
            continue
        others = {kind: v for kind, v in values.items() if kind != "multi_task"}
        best = max(others.items(), key=lambda kv: kv[1]) if others else None
        name = f"{metric}@{k}" if k else metric
        versus = f" (best other: {best[0]} {best[1]:.4f})" if best else ""
        out.append(f"{task} {name}: {values['multi_task']:.4f}{versus}")
    return out


def summarize(reports: list[DayReport], cfg: Config) -> str:
    """Per day: the seconds of each step and what it did; then where every output is."""
    lines = []
    for r in reports:
        steps = ", ".join(f"{step} {seconds:.0f}s" for step, seconds in r.seconds.items())
        lines.append(f"== ds {r.ds} ({sum(r.seconds.values()):.0f}s: {steps}) ==")
        lines.extend(r.lines)
    try:
        champion = registry.champion_version(cfg) or "none"
    except Exception as exc:  # the summary must not hide the run's own outcome
        champion = f"unknown ({type(exc).__name__})"
    lines.append("outputs (Delta tables; their columns: docs/tables.md):")
    for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS, MODEL_METRICS, PIPELINE_RUNS):
        lines.append(f"  {spec.name:<24}{spec.path(cfg.storage)}")
    lines.append(f"  {'other tables':<24}{warehouse_root(cfg.storage)} (events, features, training_examples, ...)")
    lines.append(
        f"  {'MLflow store':<24}{registry.tracking_uri(cfg)} (registered model "
        f"{cfg.tracking.registered_model!r}, {cfg.tracking.champion_alias} version {champion})"
    )
    return "\n".join(lines)


def days_to_run(args: argparse.Namespace) -> list[dt.date]:
    if args.ds:
        return [args.ds]
    if args.end < args.start:
        raise JobError(f"--end {args.end} is before --start {args.start}")
    return date_range(args.start, args.end)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtl-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daily chain for --ds (or each day of --start..--end)")
    run.add_argument("--conf", default=DEFAULT_CONF, help=f"config file (default {DEFAULT_CONF})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    run.add_argument("--ds", type=parse_ds)
    run.add_argument("--start", type=parse_ds)
    run.add_argument("--end", type=parse_ds)
    run.add_argument(
        "--from",
        dest="start_at",
        choices=STEPS,
        default=STEPS[0],
        help="resume at this step (the first day of a range only)",
    )
    run.add_argument(
        "--retrain",
        action="store_true",
        help="train a new model even if the day already has one (a rerun reuses it by default)",
    )
    args = parser.parse_args(argv)
    if bool(args.start) != bool(args.end) or bool(args.ds) == bool(args.start):
        parser.error("give either --ds, or both --start and --end")
    setup_logging()
    try:
        cfg = load_job_config(args.conf, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from mtl.spark import build_spark

    reports: list[DayReport] = []
    try:
        days = days_to_run(args)
        spark = build_spark(cfg.spark, executor_needs(cfg, *STEPS))
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
