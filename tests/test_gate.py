"""The quality gate's decision (pure) and the checks on its configuration."""

from __future__ import annotations

import pytest

from mtl.config import ConfigError, GateConfig, GatedMetric
from mtl.evaluate.gate import check_evaluation_config, check_gate_config, decide

KS = [10, 20, 50]
GATE = GateConfig(
    tolerance=0.01,
    metrics=[
        GatedMetric("click", "auc", floor=0.6),
        GatedMetric("retrieval", "recall", k=20, floor=0.05),
        GatedMetric("purchase", "log_loss", ceiling=0.2),
        GatedMetric("repurchase_7d", "auc", floor=0.6, required=False),
    ],
)
GOOD = {
    ("click", "auc", None): 0.72,
    ("retrieval", "recall", 20): 0.30,
    ("purchase", "log_loss", None): 0.10,
    ("repurchase_7d", "auc", None): 0.80,
}


def test_a_first_version_needs_only_its_floors():
    decision = decide(GOOD, None, GATE)
    assert decision.passed and decision.failures == []
    assert [c.value for c in decision.checks] == [0.72, 0.30, 0.10, 0.80]


def test_each_bound_is_checked_in_its_direction():
    bad = GOOD | {("click", "auc", None): 0.55, ("purchase", "log_loss", None): 0.25}
    decision = decide(bad, None, GATE)
    assert not decision.passed
    assert decision.failures == [
        "click auc = 0.5500: below the floor 0.6",
        "purchase log_loss = 0.2500: above the ceiling 0.2",
    ]


def test_not_worse_than_the_champion_by_more_than_the_tolerance():
    champion = dict(GOOD)
    slightly_worse = GOOD | {("click", "auc", None): 0.715, ("purchase", "log_loss", None): 0.105}
    assert decide(slightly_worse, champion, GATE, "3").passed
    worse = GOOD | {("click", "auc", None): 0.70, ("purchase", "log_loss", None): 0.12}
    decision = decide(worse, champion, GATE, "3")
    assert decision.failures == [
        "click auc = 0.7000: worse than the champion (version 3: 0.7200) by more than 0.01",
        "purchase log_loss = 0.1200: worse than the champion (version 3: 0.1000) by more than 0.01",
    ]
    # a per-metric tolerance overrides the gate's
    lenient = GateConfig(tolerance=0.01, metrics=[GatedMetric("click", "auc", floor=0.6, tolerance=0.05)])
    assert decide(worse, champion, lenient, "3").passed


def test_calibration_is_best_at_one():
    gate = GateConfig(tolerance=0.05, metrics=[GatedMetric("click", "calibration", floor=0.8, ceiling=1.25)])
    key = ("click", "calibration", None)
    assert decide({key: 1.1}, {key: 0.9}, gate).passed  # 0.1 from 1 either way
    assert not decide({key: 1.2}, {key: 0.95}, gate).passed  # 0.2 from 1 against 0.05
    assert not decide({key: 1.3}, None, gate).passed


def test_missing_values_fail_when_required_and_are_skipped_otherwise():
    decision = decide({("retrieval", "recall", 20): 0.3, ("purchase", "log_loss", None): 0.1}, None, GATE)
    assert decision.failures == ["click auc: no value on this ds (no labelled rows?), and it is required"]
    skipped = [c for c in decision.checks if c.metric.task == "repurchase_7d"]
    assert skipped[0].passed and "skipped" in skipped[0].reason
    assert decision.as_dict()["checks"][0] == {
        "task": "click",
        "metric": "auc",
        "k": None,
        "value": None,
        "champion_value": None,
        "baseline": None,
        "baseline_value": None,
        "passed": False,
        "reason": "click auc: no value on this ds (no labelled rows?), and it is required",
    }


@pytest.mark.parametrize(
    "metric, message",
    [
        (GatedMetric("clicks", "auc", floor=0.6), "task: 'clicks' is not one of"),
        (GatedMetric("click", "recall", k=20, floor=0.1), "metric: 'recall' is not a metric of task click"),
        (GatedMetric("retrieval", "recall", floor=0.1), "needs a k from evaluation.ks"),
        (GatedMetric("retrieval", "recall", k=30, floor=0.1), "needs a k from evaluation.ks"),
        (GatedMetric("click", "auc", k=20, floor=0.6), "takes no k"),
        (GatedMetric("click", "log_loss", floor=0.6), "lower-is-better: give a ceiling"),
        (GatedMetric("click", "auc", ceiling=0.9), "higher-is-better: give a floor"),
        (GatedMetric("click", "calibration"), "needs a floor, a ceiling or both"),
        (GatedMetric("click", "auc", floor=0.6, tolerance=-0.1), "tolerance: must not be negative"),
    ],
)
def test_gate_config_errors_name_the_metric(metric, message):
    with pytest.raises(ConfigError, match=message):
        check_gate_config(GateConfig(metrics=[metric]), KS)


def test_shipped_config_is_valid_and_gates_every_headline_task(make_config):
    cfg = make_config()
    check_evaluation_config(cfg)
    gated = {(m.task, m.metric, m.k) for m in cfg.gate.metrics}
    assert {("click", "auc", None), ("purchase", "auc", None), ("retrieval", "recall", 20)} <= gated
    assert {(m.task, m.metric, m.k) for m in cfg.gate.metrics if m.versus_baselines} == {
        ("recommendations", "recall", 20),
        ("recommendations", "ndcg", 20),
    }
    with pytest.raises(ConfigError, match="evaluation.ks"):
        check_evaluation_config(make_config("evaluation.ks=[]"))
    with pytest.raises(ConfigError, match=r"unknown config key 'gate.metrics\[0\].flor' \(did you mean 'floor'"):
        make_config("gate.metrics=[{task: click, metric: auc, flor: 0.6}]")


def test_the_published_list_must_not_lose_to_the_best_baseline():
    key = ("recommendations", "recall", 20)
    gate = GateConfig(tolerance=0.01, metrics=[GatedMetric(*key, floor=0.01, versus_baselines=True)])
    baselines = {"popularity": {key: 0.40}, "als": {key: 0.30}, "revisits": {key: None}}
    assert decide({key: 0.395}, None, gate, None, baselines).passed  # within the tolerance of the best
    decision = decide({key: 0.35}, None, gate, None, baselines)
    assert not decision.passed
    (check,) = decision.checks
    assert (check.baseline, check.baseline_value) == ("popularity", 0.40)
    assert "worse than the baseline popularity (0.4000) by more than 0.01" in decision.failures[0]
    # without a baseline value the model cannot be shown to win
    assert not decide({key: 0.9}, None, gate, None, {"als": {key: None}}).passed
    # a metric that does not ask for it ignores the baselines
    plain = GateConfig(metrics=[GatedMetric(*key, floor=0.01)])
    assert decide({key: 0.35}, None, plain, None, baselines).passed
