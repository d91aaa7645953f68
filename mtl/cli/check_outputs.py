"""``mtl-check-outputs``: data-quality checks of the published output tables of ds."""

from __future__ import annotations

from typing import Optional

from mtl.cli.common import job_parser, run_job
from mtl.config import Config
from mtl.pipeline.check_outputs import JOB, check_outputs


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        JOB,
        "Data-quality checks of the published daily_recommendations and repurchase_predictions of --ds: "
        "exits 1 with the failed checks if a partition is missing or empty, an id is null, a user's ranks "
        "are not 1..n (n <= scoring.k), or a probability is outside [0, 1].",
        ds_required=True,
    )
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        return check_outputs(build_spark(cfg.spark), cfg, args.ds)

    return run_job(args, body)
