"""``mtl-build-features``: point-in-time feature tables and training examples, one ds or a backfill."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from mtl.cli.common import job_parser, parse_ds, run_job
from mtl.config import Config
from mtl.features.job import FeatureResult, build_features_days, date_range, summarize
from mtl.pipeline.policy import feature_days


def build_features_step(
    spark, cfg: Config, days: list[dt.date], with_pending_days: bool = False
) -> tuple[list[dt.date], list[FeatureResult]]:
    """Build ``days`` in date order; ``with_pending_days`` (one ds): the days the chain's policy
    says that ds needs (``policy.feature_days``). Returns the days built and their results."""
    if with_pending_days:
        (ds,) = days
        days = feature_days(spark, cfg, ds)
    return days, build_features_days(spark, cfg, days)


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "build_features",
        "Build user/item/user-category features and training examples as of --ds (or each day of "
        "--start..--end) from the events table. Features use only events strictly before the day.",
    )
    parser.add_argument("--start", type=parse_ds, help="first ds of a backfill (with --end)")
    parser.add_argument("--end", type=parse_ds, help="last ds of a backfill, inclusive")
    parser.add_argument(
        "--with-pending-days",
        action="store_true",
        help="with --ds: also build the days of --ds's training window (training.window_days) that have no "
        "training_examples yet, and the window days whose repurchase label window has just closed (their "
        "labels are complete now), in date order: what train --ds needs. The daily DAG and mtl-pipeline "
        "pass it (mtl/pipeline/policy.py: feature_days)",
    )
    args = parser.parse_args(argv)
    if bool(args.start) != bool(args.end) or (args.start and args.ds):
        parser.error("give either --ds, or both --start and --end")
    if not (args.ds or args.start):
        parser.error("--ds (or --start and --end) is required")
    if args.with_pending_days and not args.ds:
        parser.error("--with-pending-days goes with --ds")

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        days = [args.ds] if args.ds else date_range(args.start, args.end)
        return summarize(build_features_step(build_spark(cfg.spark), cfg, days, args.with_pending_days)[1])

    return run_job(args, body)
