"""What the daily chain decides by itself, in one place.

The local runner (``mtl-pipeline run``) calls these functions, and the jobs that the Airflow DAG
submits call the same ones through their flags (``mtl/pipeline/steps.py`` passes them), so both
make the same decisions:

- which days build_features builds: ``feature_days`` (``build_features --with-pending-days``);
- full or incremental training: ``train_mode`` (``train --mode auto``);
- a rerun of a ds keeps the version trained for it: ``choose_training`` (``train --mode auto``,
  unless ``--retrain``; an explicit ``--mode full|incremental`` always trains);
- the version evaluate and publish take: the one trained for ds, ``require_trained_version``
  (``evaluate/publish --trained-for-ds``);
- publish never rolls the champion back to an older version: ``is_superseded`` (in mtl.registry; ``publish``,
  unless ``--allow-older``);
- a rerun scores with the version the ds was scored with before: ``keep_scored_model``
  (``score --keep-scored-model``).

Each decision reads only durable state: the Delta tables (``training_examples``,
``pipeline_runs``) and the MLflow registry (versions and their ``ds`` tag, the champion alias).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Optional

from mtl import registry
from mtl.config import Config
from mtl.errors import InputError
from mtl.registry import is_superseded  # noqa: F401  (publish applies it; listed here with the others)
from mtl.schema import REPURCHASE_HORIZONS_DAYS

log = logging.getLogger(__name__)

AUTO = "auto"  # train --mode auto: the mode comes from train_mode, and a rerun reuses the day's version


# ------------------------------------------------------------------------------------------------
# build_features


def feature_days(spark, cfg: Config, ds: dt.date) -> list[dt.date]:
    """The days ``build_features --ds D --with-pending-days`` builds, in date order: D; the days
    of D's training window (``training.window_days`` before D) that have no ``training_examples``
    yet; and the window days whose repurchase label window (``REPURCHASE_HORIZONS_DAYS``) has
    just closed, whose labels are complete now."""
    from delta.tables import DeltaTable

    from mtl.tables import TRAINING_EXAMPLES

    window = [ds - dt.timedelta(days=k) for k in range(cfg.training.window_days, 0, -1)]
    path = TRAINING_EXAMPLES.path(cfg.storage)
    have: set[dt.date] = set()
    if DeltaTable.isDeltaTable(spark, path):
        have = {r[0] for r in spark.read.format("delta").load(path).select("ds").distinct().collect()}
    matured = {ds - dt.timedelta(days=n) for n in REPURCHASE_HORIZONS_DAYS}
    return sorted({d for d in window if d not in have or d in matured} | {ds})


# ------------------------------------------------------------------------------------------------
# train


def train_mode(cfg: Config, ds: dt.date) -> str:
    """full when nothing is published yet or ds falls on ``pipeline.full_retrain_weekday``;
    incremental (from the champion) otherwise."""
    return _train_mode(cfg, ds)[0]


def _train_mode(cfg: Config, ds: dt.date) -> tuple[str, str]:
    if registry.champion_version(cfg) is None:
        return "full", "nothing is published yet"
    weekday = cfg.pipeline.full_retrain_weekday
    if weekday is not None and ds.weekday() == weekday:
        return "full", f"{ds} is the weekly full-retrain day (pipeline.full_retrain_weekday={weekday})"
    return "incremental", "from the champion"


def trained_version(cfg: Config, ds: dt.date) -> Optional[str]:
    """The newest registered version trained for ds (its ``ds`` tag); None if there is none."""
    versions = registry.versions_for_ds(cfg, ds.isoformat())
    return versions[-1] if versions else None


def require_trained_version(cfg: Config, ds: dt.date) -> str:
    """``trained_version``, which must exist: what evaluate and publish take with --trained-for-ds."""
    version = trained_version(cfg, ds)
    if version is None:
        raise InputError(
            f"registered model {cfg.tracking.registered_model!r} has no version trained for ds {ds}: "
            f"run train --ds {ds} first"
        )
    return version


@dataclass(frozen=True)
class TrainChoice:
    """What train does for ds: train in ``mode``, or keep ``reuse``, a version trained for ds before."""

    mode: Optional[str]  # full or incremental; None when reusing
    reuse: Optional[str]
    reason: str


def choose_training(cfg: Config, ds: dt.date, mode: str = AUTO, retrain: bool = False) -> TrainChoice:
    """``mode`` full or incremental: train in that mode. ``auto``: a rerun of a ds that already has
    a trained version keeps it (retraining would change what the day published and scored),
    unless ``retrain``; otherwise ``train_mode`` picks the mode."""
    if mode != AUTO:
        return TrainChoice(mode, None, f"--mode {mode}")
    if not retrain:
        version = trained_version(cfg, ds)
        if version is not None:
            return TrainChoice(None, version, f"version {version} was trained for {ds} already (rerun: reused)")
    chosen, why = _train_mode(cfg, ds)
    return TrainChoice(chosen, None, f"auto: {chosen} ({why})")


def record_reuse(spark, cfg: Config, ds: dt.date, choice: TrainChoice) -> None:
    """The ``pipeline_runs`` row of a train run that reused the day's version (trained nothing)."""
    from mtl.run_record import RunRecorder

    with RunRecorder(spark, cfg, "train", ds) as run:
        run.model_version = choice.reuse
        run.details.update(mode=AUTO, outcome="reused", reason=choice.reason)
    log.info("train: %s", choice.reason)


# ------------------------------------------------------------------------------------------------
# score


def scored_version(spark, cfg: Config, ds: dt.date) -> Optional[str]:
    """The model version of the last successful score run for ds (``pipeline_runs``), if any."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from mtl.tables import PIPELINE_RUNS

    path = PIPELINE_RUNS.path(cfg.storage)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    last = (
        spark.read.format("delta")
        .load(path)
        .where((F.col("job") == "score") & (F.col("status") == "succeeded") & (F.col("ds") == F.lit(ds)))
        .orderBy(F.col("started_at").desc())
        .select("model_version")
        .first()
    )
    return last[0] if last else None


def keep_scored_model(spark, cfg: Config, ds: dt.date) -> Config:
    """``cfg`` set to score with the version ds was scored with before, so that a rerun changes
    nothing; ``cfg`` as it is when ds was never scored (then the champion, or ``scoring.*``)."""
    before = scored_version(spark, cfg, ds)
    if before is None:
        return cfg
    log.info("ds %s was scored with model version %s before: scoring with it again", ds, before)
    return dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, model_version=before, model_alias=None))
