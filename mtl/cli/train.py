"""``mtl-train``: train the multi-task model and register a new version (never published here)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Optional

from mtl.cli.common import executor_needs, job_parser, run_job
from mtl.config import Config
from mtl.errors import InputError
from mtl.pipeline.policy import AUTO, choose_training, record_reuse
from mtl.pipeline.steps import TRAIN_MODES
from mtl.train.distributed import HOROVOD_ENV
from mtl.train.job import TrainResult, run_train, run_train_horovodrun, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainStep:
    """What the train step did for ds: trained ``result``, or reused ``model_version``."""

    model_version: str
    reason: str
    result: Optional[TrainResult]


def train_step(spark, cfg: Config, ds: dt.date, mode: str = AUTO, retrain: bool = False) -> TrainStep:
    """Train for ds as the chain's policy decides (``policy.choose_training``): in ``mode``, or,
    with ``auto``, keep the version a rerun of ds already has (recorded in ``pipeline_runs``)."""
    choice = choose_training(cfg, ds, mode, retrain)
    if choice.reuse:
        record_reuse(spark, cfg, ds, choice)
        return TrainStep(choice.reuse, choice.reason, None)
    log.info("train: %s", choice.reason)
    result = run_train(spark, cfg, ds, choice.mode)
    return TrainStep(result.model_version, choice.reason, result)


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "train",
        "Train the multi-task model on training_examples before --ds and register a new model version "
        "(never published here). Run under `horovodrun -np N` for N workers, or set "
        "training.launcher=spark to run on this job's Spark executors.",
        ds_required=True,
    )
    parser.add_argument(
        "--mode",
        choices=TRAIN_MODES,
        default="full",
        help="full: retrain on the window; incremental: warm-start from the published model on D-1; "
        f"{AUTO}: what the daily chain does (mtl/pipeline/policy.py): full when nothing is "
        "published yet or on pipeline.full_retrain_weekday, else incremental, and a rerun of a "
        "ds that already has a trained version keeps it and trains nothing (default: full)",
    )
    parser.add_argument(
        "--retrain", action="store_true", help=f"with --mode {AUTO}: train a new version even if --ds has one already"
    )
    args = parser.parse_args(argv)
    if args.retrain and args.mode != AUTO:
        parser.error(f"--retrain goes with --mode {AUTO} (--mode full or incremental always trains)")

    def body(cfg: Config) -> Optional[str]:
        os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(cfg.training.collective_timeout_s))
        horovod = cfg.training.launcher == "horovodrun" or HOROVOD_ENV in os.environ
        if horovod and args.mode == AUTO:
            # Every rank would have to reach the same decision before Horovod starts.
            raise InputError(
                f"--mode {AUTO} is for the local and spark launchers: under horovodrun give --mode full or incremental"
            )
        if horovod:
            result = run_train_horovodrun(cfg, args.ds, args.mode)
            return summarize(result) if result else None
        from mtl.spark import build_spark

        step = train_step(build_spark(cfg.spark, executor_needs(cfg, "train")), cfg, args.ds, args.mode, args.retrain)
        if step.result is None:
            return f"{step.reason}; trained nothing (--retrain trains a new version)"
        return summarize(step.result)

    return run_job(args, body)
