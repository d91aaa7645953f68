"""``mtl-score``: daily_recommendations and repurchase_predictions of ds from the published model."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from mtl.cli.common import executor_needs, job_parser, run_job
from mtl.config import Config
from mtl.pipeline.policy import keep_scored_model
from mtl.score.job import ScoreResult, run_score, summarize


def score_step(spark, cfg: Config, ds: dt.date, keep_scored: bool = False) -> ScoreResult:
    """Score ds; ``keep_scored``: with the version ds was scored with before, if it was
    (``policy.keep_scored_model``), so that a rerun changes nothing."""
    return run_score(spark, keep_scored_model(spark, cfg, ds) if keep_scored else cfg, ds)


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "score",
        "Score ds with the published model: daily_recommendations (top-K items per active user) and "
        "repurchase_predictions, each ds partition replaced in one transaction after the output checks.",
        ds_required=True,
    )
    parser.add_argument(
        "--keep-scored-model",
        action="store_true",
        help="if --ds was scored before, score it again with the same model version (the last successful score "
        "run's, from pipeline_runs), so a rerun changes nothing; else the champion as usual. The daily DAG "
        "and mtl-pipeline pass it",
    )
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        return summarize(
            score_step(build_spark(cfg.spark, executor_needs(cfg, "score")), cfg, args.ds, args.keep_scored_model)
        )

    return run_job(args, body)
