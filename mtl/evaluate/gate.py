"""The quality gate: may a model version become the published one (the champion)?

Every gated metric (``gate.metrics``) of the candidate's evaluation must be within its absolute
bound and no more than the tolerance worse than the champion's value on the same ds, scored on
the same rows by the same evaluate run. A pure decision over metric values; publishing (moving
the alias) is :mod:`mtl.evaluate.publish`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from mtl.config import Config, ConfigError, GateConfig, GatedMetric
from mtl.evaluate.model_metrics import (
    LIST_TASKS,
    PROBABILITY_METRICS,
    RANK_METRICS,
    RANKING_METRICS,
    TASK_NAMES,
)

MetricKey = tuple[str, str, Optional[int]]
LOWER_IS_BETTER = ("log_loss",)
BEST_AT_ONE = ("calibration",)


@dataclass(frozen=True)
class Check:
    metric: GatedMetric
    value: Optional[float]
    champion_value: Optional[float]
    passed: bool
    reason: str
    # versus_baselines: the best baseline and its value
    baseline: Optional[str] = None
    baseline_value: Optional[float] = None

    def as_dict(self) -> dict:
        m = self.metric
        return {
            "task": m.task,
            "metric": m.metric,
            "k": m.k,
            "value": self.value,
            "champion_value": self.champion_value,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "passed": self.passed,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GateDecision:
    checks: tuple[Check, ...]
    champion_version: Optional[str]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "champion_version": self.champion_version,
            "checks": [c.as_dict() for c in self.checks],
        }


def metric_name(m: GatedMetric) -> str:
    return f"{m.task} {m.metric}" + (f"@{m.k}" if m.k is not None else "")


def check_gate_config(gate: GateConfig, ks: list[int]) -> None:
    """Every gated metric names a metric evaluation writes, with the bounds its direction needs."""
    if gate.tolerance < 0:
        raise ConfigError("gate.tolerance: must not be negative")
    for i, m in enumerate(gate.metrics):
        where = f"gate.metrics[{i}]"
        if m.task not in TASK_NAMES:
            raise ConfigError(f"{where}.task: {m.task!r} is not one of {list(TASK_NAMES)}")
        if m.task in LIST_TASKS:
            allowed = RANKING_METRICS + ("mrr",)
            needs_k = m.metric != "mrr"
        else:
            allowed = RANK_METRICS + PROBABILITY_METRICS
            needs_k = False
        if m.metric not in allowed:
            raise ConfigError(
                f"{where}.metric: {m.metric!r} is not a metric of task {m.task}; use one of {list(allowed)}"
            )
        if needs_k and m.k not in ks:
            raise ConfigError(f"{where}.k: {m.task} {m.metric} needs a k from evaluation.ks {ks}, got {m.k}")
        if not needs_k and m.k is not None:
            raise ConfigError(f"{where}.k: {m.task} {m.metric} takes no k")
        if m.metric in LOWER_IS_BETTER:
            if m.ceiling is None or m.floor is not None:
                raise ConfigError(f"{where}: {m.metric} is lower-is-better: give a ceiling, not a floor")
        elif m.metric in BEST_AT_ONE:
            if m.floor is None and m.ceiling is None:
                raise ConfigError(f"{where}: {m.metric} needs a floor, a ceiling or both")
        elif m.floor is None or m.ceiling is not None:
            raise ConfigError(f"{where}: {m.metric} is higher-is-better: give a floor, not a ceiling")
        if m.tolerance is not None and m.tolerance < 0:
            raise ConfigError(f"{where}.tolerance: must not be negative")


def decide(
    candidate: Mapping[MetricKey, Optional[float]],
    champion: Optional[Mapping[MetricKey, Optional[float]]],
    gate: GateConfig,
    champion_version: Optional[str] = None,
    baselines: Optional[Mapping[str, Mapping[MetricKey, Optional[float]]]] = None,
) -> GateDecision:
    """Check each gated metric of ``candidate`` (values by (task, metric, k)) against its bound,
    against ``champion`` (None when nothing is published yet) and, where the metric says
    versus_baselines, against the best of ``baselines`` (model_kind -> values)."""
    checks = tuple(
        _check(m, candidate, champion, gate.tolerance, champion_version, baselines or {}) for m in gate.metrics
    )
    return GateDecision(checks, champion_version)


def _check(
    m: GatedMetric,
    candidate,
    champion,
    default_tolerance: float,
    champion_version: Optional[str],
    baselines: Mapping[str, Mapping[MetricKey, Optional[float]]],
) -> Check:
    key = (m.task, m.metric, m.k)
    name = metric_name(m)
    value = candidate.get(key)
    best = champion.get(key) if champion is not None else None
    rival, rival_value = _best_baseline(m.metric, key, baselines) if m.versus_baselines else (None, None)
    if value is None:
        if m.required:
            return Check(
                m,
                None,
                best,
                False,
                f"{name}: no value on this ds (no labelled rows?), and it is required",
                rival,
                rival_value,
            )
        return Check(m, None, best, True, f"{name}: no value on this ds; not required, skipped", rival, rival_value)
    problems = []
    if m.floor is not None and value < m.floor:
        problems.append(f"below the floor {m.floor:g}")
    if m.ceiling is not None and value > m.ceiling:
        problems.append(f"above the ceiling {m.ceiling:g}")
    tolerance = default_tolerance if m.tolerance is None else m.tolerance
    if best is not None and worse_by(m.metric, value, best) > tolerance:
        problems.append(f"worse than the champion (version {champion_version}: {best:.4f}) by more than {tolerance:g}")
    if m.versus_baselines and rival is None:
        problems.append("no baseline value to compare with (versus_baselines), so the model cannot be shown to win")
    elif rival is not None and worse_by(m.metric, value, rival_value) > tolerance:
        problems.append(f"worse than the baseline {rival} ({rival_value:.4f}) by more than {tolerance:g}")
    if problems:
        return Check(m, value, best, False, f"{name} = {value:.4f}: {'; '.join(problems)}", rival, rival_value)
    versus = f"; champion {best:.4f}" if best is not None else ""
    if rival is not None:
        versus += f"; best baseline {rival} {rival_value:.4f}"
    return Check(m, value, best, True, f"{name} = {value:.4f}: within bounds{versus}", rival, rival_value)


def _best_baseline(
    metric: str, key: MetricKey, baselines: Mapping[str, Mapping[MetricKey, Optional[float]]]
) -> tuple[Optional[str], Optional[float]]:
    """The baseline whose value of ``key`` is best (None, None when none has one)."""
    scored = [(kind, values[key]) for kind, values in sorted(baselines.items()) if values.get(key) is not None]
    if not scored:
        return None, None
    return min(scored, key=lambda kv: worse_by(metric, kv[1], 0.0))


def worse_by(metric: str, value: float, reference: float) -> float:
    """How much worse ``value`` is than ``reference`` (negative: better)."""
    if metric in LOWER_IS_BETTER:
        return value - reference
    if metric in BEST_AT_ONE:
        return abs(value - 1.0) - abs(reference - 1.0)
    return reference - value


def check_evaluation_config(cfg: Config) -> None:
    """The evaluation section's rules, the gate's included (its metrics need evaluation.ks)."""
    ev = cfg.evaluation
    if not ev.ks or min(ev.ks) < 1:
        raise ConfigError("evaluation.ks: list at least one K, each at least 1")
    for key in ("ranking_users", "score_batch_size", "calibration_bins"):
        if getattr(ev, key) < 1:
            raise ConfigError(f"evaluation.{key}: must be at least 1")
    if ev.history_days < 0:
        raise ConfigError("evaluation.history_days: must not be negative")
    if ev.twin_epochs is not None and ev.twin_epochs < 1:
        raise ConfigError("evaluation.twin_epochs: must be at least 1 (or null)")
    for key in ("rank", "max_iter", "window_days"):
        if getattr(ev.als, key) < 1:
            raise ConfigError(f"evaluation.als.{key}: must be at least 1")
    for key in ("lr_max_iter", "gbt_max_iter", "gbt_max_depth"):
        if getattr(ev.tabular, key) < 1:
            raise ConfigError(f"evaluation.tabular.{key}: must be at least 1")
    check_gate_config(cfg.gate, ev.ks)
