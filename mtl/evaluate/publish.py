"""The publish job: the quality gate in front of the champion alias.

    mtl-publish --ds D [--model VERSION | --trained-for-ds] [--allow-older]
                                                (default: the latest registered version)

Reads the version's evaluation on ds D from ``model_metrics`` (written by ``mtl-evaluate --ds D``),
checks every gated metric against its floor and against the current champion's value on the
same rows, and only then points the champion alias at the version. A refusal changes nothing,
so scoring keeps using the previous champion, and the job exits non-zero with the reasons.
Either way the decision is recorded in ``pipeline_runs`` and as a tag of the model version.

A version older than the champion is not published (a rerun of an earlier ds must not roll the
published model back): the job says so and exits 0, changing nothing. ``--allow-older`` gates and
publishes it anyway, for a deliberate rollback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Optional

import pandas as pd
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from mtl import registry
from mtl.config import Config
from mtl.errors import InputError, JobError
from mtl.evaluate.gate import GateDecision, MetricKey, check_gate_config, decide
from mtl.evaluate.model_metrics import MODEL_KINDS, read_metrics
from mtl.run_record import RunRecorder
from mtl.tables import MODEL_METRICS

log = logging.getLogger(__name__)

GATE_TAG = "quality_gate"


class GateRefused(JobError):
    """The version failed the quality gate; the message lists every failed check."""

    def __init__(self, version: str, ds: dt.date, decision: GateDecision):
        self.decision = decision
        reasons = "\n  ".join(decision.failures)
        super().__init__(f"version {version} is not published (evaluated on {ds}):\n  {reasons}")


@dataclass
class PublishResult:
    ds: dt.date
    model_version: str
    previous_champion: Optional[str]
    published: bool  # False when the version already was the champion, or an older one than it
    decision: Optional[GateDecision]
    outcome: str = "published"  # or ALREADY_CHAMPION or SUPERSEDED


ALREADY_CHAMPION = "already champion"
SUPERSEDED = "a newer version is the champion"


def run_publish(
    spark: SparkSession, cfg: Config, ds: dt.date, model_version: Optional[str] = None, allow_older: bool = False
) -> PublishResult:
    """Gate ``model_version`` (default: the latest registered) on its evaluation of ds and publish
    it if it passes. Skipped, changing nothing, when it already is the champion, or when the
    champion is a newer version (unless ``allow_older``); raises GateRefused when it fails."""
    check_gate_config(cfg.gate, cfg.evaluation.ks)
    with RunRecorder(spark, cfg, "publish", ds) as run:
        version = model_version or registry.latest_version(cfg)
        if version is None:
            raise InputError(f"registered model {cfg.tracking.registered_model!r} has no version: run train first")
        run.model_version = version
        current = registry.champion_version(cfg)
        run.details["previous_champion"] = current
        if current == version:
            log.info("version %s already is the champion: nothing to do", version)
            run.details["outcome"] = ALREADY_CHAMPION
            return PublishResult(ds, version, current, False, None, ALREADY_CHAMPION)
        if not allow_older and registry.is_superseded(version, current):
            log.info("version %s is older than the champion (version %s): not published", version, current)
            run.details["outcome"] = SUPERSEDED
            return PublishResult(ds, version, current, False, None, SUPERSEDED)

        rows = read_metrics(spark, cfg, ds, ds, model_version=version)
        if rows.empty:
            raise InputError(
                f"{MODEL_METRICS.name} has no evaluation of version {version} on {ds}: "
                f"run mtl-evaluate --ds {ds} --model {version} first"
            )
        champion = None
        if current is not None:
            champion_rows = rows[(rows["model_kind"] == "champion") & (rows["scored_version"] == current)]
            if champion_rows.empty:
                raise JobError(
                    f"the evaluation of version {version} on {ds} has no scores of the current champion "
                    f"(version {current}): the champion changed since, or could not be scored (see the "
                    f"evaluate run's notes). Re-run mtl-evaluate --ds {ds} --model {version}"
                )
            champion = _values(champion_rows)
        baselines = {
            kind: _values(part) for kind, part in rows[~rows["model_kind"].isin(MODEL_KINDS)].groupby("model_kind")
        }
        decision = decide(_values(rows[rows["model_kind"] == "multi_task"]), champion, cfg.gate, current, baselines)
        run.details["gate"] = decision.as_dict()
        _tag(cfg, version, ds, decision)
        if not decision.passed:
            raise GateRefused(version, ds, decision)
        registry.set_champion(cfg, version)
        run.details["outcome"] = "published"
    return PublishResult(ds, version, current, True, decision)


def _values(rows: pd.DataFrame) -> dict[MetricKey, Optional[float]]:
    return {
        (r.task, r.metric, None if pd.isna(r.k) else int(r.k)): None if pd.isna(r.value) else float(r.value)
        for r in rows.itertuples()
    }


def _tag(cfg: Config, version: str, ds: dt.date, decision: GateDecision) -> None:
    """The decision as a tag of the model version, for whoever browses the registry."""
    uri = registry.tracking_uri(cfg)
    outcome = {"ds": ds.isoformat(), "passed": decision.passed, "failures": decision.failures}
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_model_version_tag(
        cfg.tracking.registered_model, version, GATE_TAG, json.dumps(outcome)
    )


def summarize(result: PublishResult) -> str:
    if result.outcome == ALREADY_CHAMPION:
        return f"version {result.model_version} already is the champion"
    if result.outcome == SUPERSEDED:
        return (
            f"skipped: a newer version ({result.previous_champion}) is already the champion; version "
            f"{result.model_version} is not published (--allow-older publishes it, for a rollback)"
        )
    lines = [f"version {result.model_version} published as the champion (before: {result.previous_champion or 'none'})"]
    lines += [f"  {c.reason}" for c in result.decision.checks]
    return "\n".join(lines)
