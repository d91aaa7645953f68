"""``mtl-publish``: the quality gate; the champion alias moves only for a version that passes it."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Optional

from mtl.cli.common import job_parser, run_job
from mtl.cli.evaluate import add_version_arguments, chosen_version
from mtl.config import Config
from mtl.evaluate.publish import PublishResult, run_publish, summarize
from mtl.export.job import run_export
from mtl.export.job import summarize as export_summary

log = logging.getLogger(__name__)


def publish_step(
    spark,
    cfg: Config,
    ds: dt.date,
    version: Optional[str] = None,
    trained_for_ds: bool = False,
    allow_older: bool = False,
) -> PublishResult:
    """Gate and publish the chosen version; a version older than the champion is skipped unless
    ``allow_older`` (``policy.is_superseded``). A refusal raises ``GateRefused``. With
    ``export.on_publish`` a newly published version is exported (mtl-export) before this returns,
    so that scoring with an ONNX runtime finds its graphs."""
    result = run_publish(spark, cfg, ds, chosen_version(cfg, ds, version, trained_for_ds), allow_older)
    if cfg.export.on_publish and result.published:
        log.info(export_summary(run_export(cfg, result.model_version)))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "publish",
        "Quality gate: make the evaluated model version the champion only if its metrics on --ds pass every "
        "gated floor and are not worse than the champion's by more than the tolerance; exit 1 otherwise. "
        "A version older than the champion (a rerun of an earlier ds) is skipped: exit 0, nothing changed.",
        ds_required=True,
    )
    add_version_arguments(parser, "publish")
    parser.add_argument(
        "--allow-older",
        action="store_true",
        help="gate and publish the version even if the champion is a newer one (a rollback); "
        "without it that case is skipped: exit 0, nothing changed",
    )
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        return summarize(
            publish_step(build_spark(cfg.spark), cfg, args.ds, args.model, args.trained_for_ds, args.allow_older)
        )

    return run_job(args, body)
