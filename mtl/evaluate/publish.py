"""The publish job: the quality gate in front of the champion alias.

    mtl-publish --ds D [--model VERSION]        (default: the latest registered version)

Reads the version's evaluation on ds D from ``model_metrics`` (written by ``mtl-evaluate --ds D``),
checks every gated metric against its floor and against the current champion's value on the
same rows, and only then points the champion alias at the version. A refusal changes nothing,
so scoring keeps using the previous champion, and the job exits non-zero with the reasons.
Either way the decision is recorded in ``pipeline_runs`` and as a tag of the model version.
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
from mtl.cli import job_parser, run_job
from mtl.config import Config
from mtl.errors import InputError, JobError
from mtl.evaluate.gate import GateDecision, MetricKey, check_gate_config, decide
from mtl.evaluate.metrics_table import read_metrics
from mtl.runs import RunRecorder
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
    published: bool  # False when the version already was the champion
    decision: Optional[GateDecision]


def run_publish(spark: SparkSession, cfg: Config, ds: dt.date, model_version: Optional[str] = None) -> PublishResult:
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
            run.details["outcome"] = "already champion"
            return PublishResult(ds, version, current, False, None)

        rows = read_metrics(spark, cfg, ds, ds, model_version=version)
        if rows.empty:
            raise InputError(f"{MODEL_METRICS.name} has no evaluation of version {version} on {ds}: "
                             f"run mtl-evaluate --ds {ds} --model {version} first")
        champion = None
        if current is not None:
            champion_rows = rows[(rows["model_kind"] == "champion") & (rows["scored_version"] == current)]
            if champion_rows.empty:
                raise JobError(f"the evaluation of version {version} on {ds} has no scores of the current champion "
                               f"(version {current}): the champion changed since, or could not be scored (see the "
                               f"evaluate run's notes). Re-run mtl-evaluate --ds {ds} --model {version}")
            champion = _values(champion_rows)
        decision = decide(_values(rows[rows["model_kind"] == "multi_task"]), champion, cfg.gate, current)
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
    if not result.published:
        return f"version {result.model_version} already is the champion"
    lines = [f"version {result.model_version} published as the champion (before: {result.previous_champion or 'none'})"]
    lines += [f"  {c.reason}" for c in result.decision.checks]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "publish",
        "Quality gate: make the evaluated model version the champion only if its metrics on --ds pass every "
        "gated floor and are not worse than the champion's by more than the tolerance; exit 1 otherwise.",
        ds_required=True,
    )
    parser.add_argument("--model", metavar="VERSION", help="registered version to publish (default: the latest)")
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        return summarize(run_publish(build_spark(cfg.spark), cfg, args.ds, args.model))

    return run_job(args, body)
