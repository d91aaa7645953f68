"""What every job's command line shares: --conf, --set, --ds, logging, exit codes."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from typing import Optional

from mtl.config import Config, ConfigError, load_config
from mtl.errors import JobError
from mtl.evaluate.gate import check_evaluation_config
from mtl.models.model_config import load_model_config
from mtl.monitor.metrics import check_monitoring_config

DEFAULT_CONF = "conf/local.yaml"

log = logging.getLogger("mtl")


def parse_ds(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def job_parser(prog: str, description: str, ds_required: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--conf",
        default=os.environ.get("MTL_CONF", DEFAULT_CONF),
        help=f"config file (default: $MTL_CONF or {DEFAULT_CONF})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config value, e.g. --set spark.shuffle_partitions=8 (repeatable)",
    )
    parser.add_argument("--ds", type=parse_ds, required=ds_required, help="logical date YYYY-MM-DD")
    parser.set_defaults(prog_name=prog)
    return parser


# Loggers that chatter at INFO about their own internals on every reader or epoch (Petastorm:
# "Failed loading Unischema", "Recovering rowgroup information"); quieted unless MTL_LOG_LEVEL=DEBUG.
CHATTY_LOGGERS = ("petastorm",)


def setup_logging() -> None:
    level = os.environ.get("MTL_LOG_LEVEL", "INFO")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,  # spark-submit's Python runner may have configured the root logger already
    )


def load_job_config(path: str, overrides: list[str]) -> Config:
    """``load_config`` plus the checks the stages own (the model's YAML, evaluation and the gate):
    every command loads its config here, so a bad key anywhere fails before the first step, with
    the key's name (a ConfigError)."""
    cfg = load_config(path, overrides)
    try:
        load_model_config(cfg.model_config)
    except ConfigError as exc:
        raise ConfigError(f"model_config ({cfg.model_config}): {exc}") from exc
    check_evaluation_config(cfg)
    check_monitoring_config(cfg)
    return cfg


def executor_needs(cfg: Config, *steps: str) -> tuple[str, ...]:
    """Python modules the executors import in these steps, beyond ``spark.executor_modules``:
    the model runs in executor tasks when evaluating and scoring, and is trained there with
    ``training.launcher: spark``."""
    needs: list[str] = []
    if "train" in steps and cfg.training.launcher == "spark":
        needs += ["torch", "horovod", "petastorm"]
    if "evaluate" in steps or "score" in steps:
        needs.append("torch")
    if "score" in steps and cfg.scoring.runtime != "torch":
        needs.append("onnxruntime")
    return tuple(dict.fromkeys(needs))


def run_job(args: argparse.Namespace, body: Callable[[Config], Optional[str]]) -> int:
    """Load the config and run ``body``; print its summary. Exit code 0 on success, 2 for a
    config error, 1 for any other failure (with the reason on stderr)."""
    setup_logging()
    try:
        cfg = load_job_config(args.conf, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = body(cfg)
    except (JobError, ConfigError) as exc:
        log.error("%s failed: %s", args.prog_name, exc)
        return 1
    except Exception as exc:
        from mtl.spark import SHIP_HINT, missing_executor_module

        missing = missing_executor_module(exc)
        if missing:
            log.debug("%s failed on the executors", args.prog_name, exc_info=True)
            log.error("%s failed: the executors' Python has no module %r; %s", args.prog_name, missing, SHIP_HINT)
            return 1
        log.exception("%s failed with an unexpected error", args.prog_name)
        return 1
    if summary:
        print(summary)
    return 0
