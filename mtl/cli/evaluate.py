"""``mtl-evaluate``: a registered version and its baselines on a held-out ds (publishes nothing)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Optional

from mtl.cli.common import executor_needs, job_parser, run_job
from mtl.config import Config
from mtl.evaluate.job import EvaluationResult, run_evaluate, summarize
from mtl.pipeline.policy import require_trained_version


def chosen_version(cfg: Config, ds: dt.date, version: Optional[str], trained_for_ds: bool) -> Optional[str]:
    """The version evaluate and publish take: ``--model``, or with ``--trained-for-ds`` the one
    trained for ds (the chain's choice), or None (the latest registered)."""
    return require_trained_version(cfg, ds) if trained_for_ds else version


def add_version_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """--model VERSION or --trained-for-ds: how evaluate and publish choose the version (``chosen_version``)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="VERSION", help=f"registered version to {verb} (default: the latest)")
    which.add_argument(
        "--trained-for-ds",
        action="store_true",
        help=f"{verb} the newest version trained for --ds (what train --ds registered or reused), "
        "not the latest registered; the daily DAG passes it",
    )


def evaluate_step(
    spark, cfg: Config, ds: dt.date, version: Optional[str] = None, trained_for_ds: bool = False
) -> EvaluationResult:
    return run_evaluate(spark, cfg, ds, chosen_version(cfg, ds, version, trained_for_ds))


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "evaluate",
        "Evaluate a registered model version and its baselines on the held-out --ds: model_metrics, "
        "an HTML report next to the artifact, the version's MLflow run. Publishes nothing (see mtl-publish).",
        ds_required=True,
    )
    add_version_arguments(parser, "evaluate")
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        return summarize(
            evaluate_step(
                build_spark(cfg.spark, executor_needs(cfg, "evaluate")), cfg, args.ds, args.model, args.trained_for_ds
            )
        )

    return run_job(args, body)
