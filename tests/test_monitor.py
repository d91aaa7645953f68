"""The monitor on a hand-made world: a stationary log whose last day shifts its event mix (views
for impressions) and multiplies its prices by ten, real feature tables built from it, and
hand-made output tables and evaluation metrics whose last day moves p_click and click AUC.

A clean day flags nothing; the drifted day flags the planted metrics and no other; a fail bound
fails the job with the metric, value and bound in the message, and a local HTTP server receives
the alert; a webhook that never answers costs its timeout and nothing more.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
from pyspark.sql import functions as F

from mtl import delta_io
from mtl.cli.monitor import main
from mtl.config import AlertConfig, ConfigError, ThresholdRule, load_config
from mtl.features.job import build_features
from mtl.monitor import alerts
from mtl.monitor.drift import psi
from mtl.monitor.job import run_monitor
from mtl.monitor.metrics import Measurement, check_monitoring_config, judge
from mtl.schema import REPURCHASE_HORIZONS_DAYS
from mtl.tables import DAILY_RECOMMENDATIONS, MODEL_METRICS, MONITORING_METRICS, REPURCHASE_PREDICTIONS
from tests.conftest import LOCAL_CONF, TEST_OVERRIDES
from tests.support.tables import read_table, runs, write_events

START = dt.date(2024, 2, 10)
X = dt.date(2024, 3, 14)  # the drifted ds: the events of X - 1 are shifted
CLEAN = X - dt.timedelta(days=1)  # against X - 2
FEATURE_DAYS = [CLEAN - dt.timedelta(days=1), CLEAN, X]
USERS, ITEMS = 200, 120
MIX = {"impression": 0.5, "view": 0.25, "click": 0.12, "fav": 0.04, "cart": 0.05, "purchase": 0.04}
SHIFTED_MIX = {**MIX, "impression": 0.25, "view": 0.5}
PRICE_FACTOR = 10.0
# Features that the planted shift may move: impressions and views (and what counts them, rates
# over them) and prices (and what sums them).
SHIFTED_WORDS = ("impression", "view", "interactions", "ctr", "cvr", "price", "spend")
MONITOR = [
    # Every feature over the same 31 days: a stationary log then has stationary features.
    "features.history_days=31",
    "monitoring.reference_days=1",
    "monitoring.thresholds=["
    "{metric: feature_psi, subjects: ['*.i_age_days'], exempt: true},"
    # With ~8 buyers per item the smoothed rate is mostly its global prior, so every item moves
    # with the prior's day-to-day noise: deciles this close cannot tell that from a shift.
    "{metric: feature_psi, subjects: ['*.i_repurchase_rate'], exempt: true},"
    "{metric: feature_psi, warn_above: 0.25},"
    "{metric: event_mix_psi, warn_above: 0.1},"
    "{metric: event_volume_ratio, warn_below: 0.5, warn_above: 2.0},"
    "{metric: prediction_psi, warn_above: 0.25},"
    "{metric: users_scored_share, warn_below: 0.95, fail_below: 0.5},"
    "{metric: metric_drop, subjects: ['*.auc'], warn_above: 0.02, fail_above: 0.1}]",
]


def _events(rng: np.random.Generator) -> list[tuple]:
    prices = np.round(rng.lognormal(3.0, 0.6, ITEMS), 2)
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    popularity /= popularity.sum()
    rows = []
    day = START
    while day < X:
        shifted = day == X - dt.timedelta(days=1)
        mix = SHIFTED_MIX if shifted else MIX
        types, shares = list(mix), np.array(list(mix.values()))
        for u in range(USERS):
            n = rng.poisson(4)
            items = rng.choice(ITEMS, size=n, p=popularity)
            kinds = rng.choice(len(types), size=n, p=shares / shares.sum())
            for k, (item, kind) in enumerate(zip(items, kinds)):
                price = float(prices[item]) * (PRICE_FACTOR if shifted else 1.0)
                ts = f"{day} {k // 60:02d}:{k % 60:02d}"
                rows.append((f"u{u}", f"i{item}", f"c{item % 8}", types[kind], ts, price, 1))
        day += dt.timedelta(days=1)
    return rows


def _outputs(spark, cfg, rng: np.random.Generator, ds: dt.date, users: int = USERS) -> None:
    """Hand-made output partitions: 5 items per user; p_click ~ Beta(2, 8), Beta(6, 4) on X."""
    a, b = (6, 4) if ds == X else (2, 8)
    recs, reps = [], []
    for u in range(users):
        clicks = np.sort(rng.beta(a, b, 5))[::-1]
        for rank, (item, p) in enumerate(zip(rng.choice(ITEMS, 5, replace=False), clicks), start=1):
            purchase = float(rng.beta(1, 40))  # independent of p_click: only p_click drifts
            recs.append((ds, f"u{u}", rank, f"i{item}", f"c{item % 8}", float(p), float(p), purchase, "1"))
        probs = [float(rng.beta(2, 5)) for _ in REPURCHASE_HORIZONS_DAYS]
        reps.append((ds, f"u{u}", f"i{u % ITEMS}", f"c{u % 8}", *probs, 3, "1"))
    for spec, rows in ((DAILY_RECOMMENDATIONS, recs), (REPURCHASE_PREDICTIONS, reps)):
        df = spark.createDataFrame(rows, spec.schema)
        delta_io.replace_partition(spark, df, spec, spec.path(cfg.storage), ds)


def _model_metrics(spark, cfg, ds: dt.date, auc: float) -> None:
    now = dt.datetime(2024, 3, 20)
    rows = [
        ("r" + ds.isoformat(), "1", "multi_task", "1", task, "auc", None, value, 1000, now, ds)
        for task, value in (("click", auc), ("purchase", 0.7))
    ]
    df = spark.createDataFrame(rows, MODEL_METRICS.schema)
    delta_io.replace_partition(spark, df, MODEL_METRICS, MODEL_METRICS.path(cfg.storage), ds)


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    cfg = load_config(LOCAL_CONF, [*TEST_OVERRIDES, f"storage.warehouse={root / 'warehouse'}", *MONITOR])
    rng = np.random.default_rng(5)
    write_events(spark, cfg, _events(rng))
    for ds in FEATURE_DAYS:
        build_features(spark, cfg, ds)
        _outputs(spark, cfg, rng, ds)
        _model_metrics(spark, cfg, ds, auc=0.70 if ds == X else 0.75)
    return cfg


def _flagged(result) -> set[tuple[str, str]]:
    return {(j.measurement.metric, j.measurement.subject) for j in result.judged if j.severity != "ok"}


def test_psi_of_hand_made_histograms():
    assert psi({0: 50, 1: 50}, {0: 5, 1: 5}) == 0.0
    # (0.5 - 0.8) ln(0.5 / 0.8) + (0.5 - 0.2) ln(0.5 / 0.2)
    assert psi({0: 80, 1: 20}, {0: 50, 1: 50}) == pytest.approx(0.3 * np.log(1.6) + 0.3 * np.log(2.5))
    # A bin empty on one side counts as the share floor 1e-4, not as infinity.
    assert psi({0: 100}, {0: 50, 1: 50}) == pytest.approx((0.5 - 1) * np.log(0.5) + (0.5 - 1e-4) * np.log(0.5 / 1e-4))
    assert psi({}, {0: 1}) is None


def test_judge_takes_the_first_matching_rule_and_the_worst_bound():
    rules = [
        ThresholdRule("feature_psi", subjects=["item_features.*"], warn_above=0.5),
        ThresholdRule("feature_psi", warn_above=0.1, fail_above=0.25),
    ]
    item, user = "item_features.i_price", "user_features.u_view_1d"
    assert judge(Measurement("feature_psi", item, 0.3), rules).severity == "ok"  # the first rule applies
    assert judge(Measurement("feature_psi", user, 0.3), rules).severity == "fail"
    assert judge(Measurement("feature_psi", user, 0.25), rules).severity == "warn"  # on the bound: not a breach of it
    assert judge(Measurement("feature_psi", user, None), rules).severity == "ok"
    low = judge(Measurement("users_scored_share", "t", 0.4), [ThresholdRule("users_scored_share", fail_below=0.5)])
    assert (low.severity, low.breach) == ("fail", "value 0.4 below fail_below 0.5")


def test_bad_threshold_rules_fail_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"unknown metric 'feature_pis' \(did you mean 'feature_psi'\?\)"):
        typo = "monitoring.thresholds=[{metric: feature_pis, warn_above: 1}]"
        check_monitoring_config(load_config(LOCAL_CONF, [typo]))
    with pytest.raises(ConfigError, match=r"monitoring.thresholds\[0\] \(feature_psi\): warn_above 0.5 is above"):
        load_config(LOCAL_CONF, ["monitoring.thresholds=[{metric: feature_psi, warn_above: 0.5, fail_above: 0.2}]"])
    with pytest.raises(ConfigError, match="give at least one of warn_above"):
        load_config(LOCAL_CONF, ["monitoring.thresholds=[{metric: feature_psi}]"])


def test_a_clean_day_flags_nothing(spark, world):
    result = run_monitor(spark, world, CLEAN)
    assert _flagged(result) == set()
    rows = read_table(spark, world, MONITORING_METRICS).where(F.col("ds") == F.lit(CLEAN))
    assert rows.count() == len(result.judged) and rows.where(F.col("value").isNotNull()).count() > 60
    by_key = {(r.metric, r.subject): r for r in rows.collect()}
    assert by_key[("users_scored_share", "daily_recommendations")].value == 1.0  # every active user has a list
    assert by_key[("metric_drop", "click.auc")].value == pytest.approx(0.0, abs=1e-12)
    assert by_key[("event_volume_ratio", "events")].value == pytest.approx(1.0, abs=0.15)
    shares = {s: by_key[("source_share", s)].value for s in ("revisits", "popular", "two_tower_only")}
    assert all(0.0 <= v <= 1.0 for v in shares.values())


def test_the_drifted_day_flags_exactly_the_planted_metrics(spark, world):
    result = run_monitor(spark, world, X)
    flagged = _flagged(result)
    features = {subject for metric, subject in flagged if metric == "feature_psi"}
    others = flagged - {("feature_psi", s) for s in features}
    assert others == {
        ("event_mix_psi", "events"),
        ("prediction_psi", "daily_recommendations.p_click"),
        ("metric_drop", "click.auc"),
    }
    assert {"item_features.i_price", "user_features.u_view_1d", "user_features.u_impression_1d"} <= features
    unexpected = {s for s in features if not any(word in s for word in SHIFTED_WORDS)}
    assert unexpected == set()  # clicks, carts, purchases, ages kept their distribution
    drop = next(j for j in result.judged if j.measurement.subject == "click.auc")
    assert drop.severity == "warn" and drop.measurement.value == pytest.approx(0.05)
    assert result.alert.reason == "no webhook configured"


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_fail_bound_fails_the_job_and_the_webhook_gets_the_alert(spark, world, monkeypatch, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook?token=s3cret"
    monkeypatch.setenv("MTL_MONITOR_WEBHOOK_URL", url)
    _Recorder.received.clear()
    conf = ["--conf", str(LOCAL_CONF), *[f"--set={o}" for o in world_overrides(world)]]
    fail_psi = (
        "monitoring.thresholds=[{metric: prediction_psi, subjects: ['daily_recommendations.*'], "
        "warn_above: 0.1, fail_above: 0.25}]"
    )
    try:
        assert main([*conf, "--set", fail_psi, "--ds", str(X)]) == 1
        err = capsys.readouterr().err
    finally:  # the job pointed logging at pytest's captured stderr, which closes after the test
        server.shutdown()
        logging.getLogger().handlers.clear()
    assert "prediction_psi[daily_recommendations.p_click]: value" in err
    assert "above fail_above 0.25" in err
    assert "alert sent to the webhook" in err
    assert "s3cret" not in err and "127.0.0.1" not in err  # the URL (and its token) is never logged
    (alert,) = _Recorder.received
    assert alert["ds"] == str(X) and alert["severity"] == "fail"
    assert {(b["metric"], b["subject"], b["severity"]) for b in alert["breaches"]} == {
        ("prediction_psi", "daily_recommendations.p_click", "fail")
    }
    # The failed run still recorded what it measured, and pipeline_runs says it failed.
    fail = read_table(spark, world, MONITORING_METRICS).where((F.col("ds") == F.lit(X)) & (F.col("severity") == "fail"))
    assert [(r.metric, r.subject, r.fail_above) for r in fail.collect()] == [
        ("prediction_psi", "daily_recommendations.p_click", 0.25)
    ]
    last = runs(spark, world).where(F.col("job") == "monitor").orderBy(F.col("ended_at").desc()).first()
    assert last.status == "failed" and "crossed a fail bound" in last.error


def world_overrides(cfg) -> list[str]:
    return [*TEST_OVERRIDES, f"storage.warehouse={cfg.storage.warehouse}", *MONITOR[:2]]


def test_a_webhook_that_never_answers_costs_its_timeout_only(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections are queued by the kernel, never answered
    try:
        cfg = AlertConfig(webhook_url_env="MTL_TEST_SILENT_HOOK", timeout_seconds=0.5, retries=1)
        monkeypatch.setenv("MTL_TEST_SILENT_HOOK", f"http://127.0.0.1:{listener.getsockname()[1]}/")
        started = time.monotonic()
        delivery = alerts.send(cfg, {"ds": "2024-03-14"})
        took = time.monotonic() - started
    finally:
        listener.close()
    assert (delivery.sent, delivery.attempts) == (False, 2)
    assert "timeout" in delivery.reason.lower()
    assert took < 2 * 0.5 + 0.5 + 1.0  # two timeouts, one backoff, and slack
