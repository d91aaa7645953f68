"""What the monitor measures, and how a measurement is judged against ``monitoring.thresholds``.

Pure Python: the Spark side (mtl.monitor.drift, mtl.monitor.health) produces ``Measurement``s,
this module turns them into judged rows of ``monitoring_metrics``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from mtl.config import Config, ConfigError, ThresholdRule

INPUT_DRIFT = "input_drift"
PREDICTION_DRIFT = "prediction_drift"
OUTPUT_HEALTH = "output_health"
MODEL_HEALTH = "model_health"

# metric -> (check group, what it is): the names monitoring.thresholds may use.
METRICS: dict[str, tuple[str, str]] = {
    "feature_psi": (INPUT_DRIFT, "PSI of a dense feature column, ds against the reference window"),
    "event_mix_psi": (INPUT_DRIFT, "PSI of the event-type mix of ds - 1 (the features' newest day) against before"),
    "event_volume_ratio": (INPUT_DRIFT, "events of ds - 1 over the mean events per day of the days before"),
    "prediction_psi": (PREDICTION_DRIFT, "PSI of a probability column of the outputs against the reference"),
    "users_scored_share": (OUTPUT_HEALTH, "users with a list over users active in scoring.active_days"),
    "catalogue_coverage": (OUTPUT_HEALTH, "distinct recommended items over the catalogue's items"),
    "new_item_share": (OUTPUT_HEALTH, "share of the list's rows that are new items (monitoring.new_item_days)"),
    "source_share": (OUTPUT_HEALTH, "share of the list's rows a candidate source proposed"),
    "metric_drop": (MODEL_HEALTH, "how much worse today's evaluation metric is than its trailing mean"),
}

OK, WARN, FAIL = "ok", "warn", "fail"
# The bounds of a ThresholdRule, as its fields and as monitoring_metrics' columns are named.
BOUNDS = ("warn_above", "fail_above", "warn_below", "fail_below")
SEVERITY_ORDER = (OK, WARN, FAIL)


@dataclass(frozen=True)
class Measurement:
    metric: str
    subject: str
    value: Optional[float]
    reference_value: Optional[float] = None
    reference_start: Optional[dt.date] = None
    reference_end: Optional[dt.date] = None
    note: Optional[str] = None

    @property
    def check_group(self) -> str:
        return METRICS[self.metric][0]


@dataclass(frozen=True)
class Judged:
    """A measurement, the rule that applied (None: no rule) and the severity it reached."""

    measurement: Measurement
    rule: Optional[ThresholdRule]
    severity: str
    breach: Optional[str] = None  # "value 0.31 above fail_above 0.25"

    def describe(self) -> str:
        m = self.measurement
        return f"{m.metric}[{m.subject}]: {self.breach}"


def check_monitoring_config(cfg: Config) -> None:
    """Every threshold rule names a metric the monitor measures (the rest is checked on load)."""
    for i, rule in enumerate(cfg.monitoring.thresholds):
        if rule.metric not in METRICS:
            close = difflib.get_close_matches(rule.metric, list(METRICS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (one of {', '.join(METRICS)})"
            raise ConfigError(f"monitoring.thresholds[{i}].metric: unknown metric {rule.metric!r}{hint}")


def rule_for(rules: Sequence[ThresholdRule], metric: str, subject: str) -> Optional[ThresholdRule]:
    """The first rule of ``metric`` one of whose patterns matches ``subject``."""
    for rule in rules:
        if rule.metric == metric and any(fnmatch.fnmatchcase(subject, p) for p in rule.subjects):
            return rule
    return None


def judge(measurement: Measurement, rules: Sequence[ThresholdRule]) -> Judged:
    """The worst bound ``measurement`` crosses; a null value crosses none. A value exactly on a
    bound is not a breach."""
    rule = rule_for(rules, measurement.metric, measurement.subject)
    value = measurement.value
    if rule is None or rule.exempt or value is None:
        return Judged(measurement, rule, OK)
    for severity in (FAIL, WARN):
        for side in ("above", "below"):
            bound = getattr(rule, f"{severity}_{side}")
            if bound is not None and (value > bound if side == "above" else value < bound):
                return Judged(measurement, rule, severity, f"value {value:.4g} {side} {severity}_{side} {bound:g}")
    return Judged(measurement, rule, OK)


def judge_all(measurements: Iterable[Measurement], rules: Sequence[ThresholdRule]) -> list[Judged]:
    return [judge(m, rules) for m in measurements]


def breaches(judged: Iterable[Judged], min_severity: str = WARN) -> list[Judged]:
    floor = SEVERITY_ORDER.index(min_severity)
    return [j for j in judged if SEVERITY_ORDER.index(j.severity) >= max(floor, 1)]
