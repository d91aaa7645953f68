"""``mtl-tune``: search the model's hyper-parameters with Optuna; writes the best model config,
never registers or publishes a model."""

from __future__ import annotations

from typing import Optional

from mtl.cli.common import executor_needs, job_parser, run_job
from mtl.config import Config


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "tune",
        "Run (or continue) an Optuna study over a search space (conf/tune/*.yaml): each trial trains on the "
        "window and validation day `mtl-train --mode full --ds D` would use, logged as an MLflow child run. "
        "Writes the best trial's model config for `mtl-train --set model_config=<file>`; registers nothing. "
        "Start it again after a kill to continue the same study.",
        ds_required=True,
    )
    parser.add_argument("--trials", type=int, help="trials of the study in all, across restarts (tuning.trials)")
    parser.add_argument("--timeout-min", type=float, help="stop starting trials after this many minutes")
    parser.add_argument("--parallel", type=int, help="worker processes sharing the study (tuning.parallel)")
    parser.add_argument("--space", help="search space: a name under conf/tune/ or a YAML path (tuning.space)")
    parser.add_argument("--study", help="study name (default: tune-<ds>-<space>); the same name continues it")
    parser.add_argument("--output", help="where to write the best model config (default: under the study's folder)")
    args = parser.parse_args(argv)

    def body(cfg: Config) -> Optional[str]:
        from mtl.spark import build_spark
        from mtl.tune.job import check_tune_inputs, run_tune, summarize

        check_tune_inputs(cfg, args.space)  # a bad search space fails before Spark starts
        result = run_tune(
            build_spark(cfg.spark, executor_needs(cfg, "train")),
            cfg,
            args.ds,
            trials=args.trials,
            timeout_min=args.timeout_min,
            parallel=args.parallel,
            space=args.space,
            study_name=args.study,
            output=args.output,
        )
        return summarize(result)

    return run_job(args, body)
