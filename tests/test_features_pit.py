"""Point-in-time correctness and idempotence of build_features on a random log."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from pyspark.sql import functions as F

from mtl.cli.build_features import main
from mtl.config import load_config
from mtl.features.job import build_features
from mtl.schema import LABELS, dense_columns
from mtl.tables import (
    FEATURE_STATS,
    ITEM_FEATURES,
    TRAINING_EXAMPLES,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
)
from tests.conftest import LOCAL_CONF, TEST_OVERRIDES
from tests.support.tables import read_table, write_events

D = dt.date(2024, 3, 15)
FEATURE_TABLES = (USER_FEATURES, ITEM_FEATURES, USER_CATEGORY_FEATURES, USER_ITEM_FEATURES)
TYPES = ("impression", "view", "click", "fav", "cart", "purchase")


def random_log(rng: random.Random, start: dt.date, days: int, n: int, users=12, items=10) -> list[tuple]:
    rows = []
    for _ in range(n):
        day = start + dt.timedelta(days=rng.randrange(days))
        item = rng.randrange(items)
        kind = rng.choices(TYPES, weights=(0, 5, 2, 1, 1, 2))[0]
        ts = f"{day.isoformat()} {rng.randrange(24):02d}:{rng.randrange(60):02d}"
        rows.append(
            (
                f"u{rng.randrange(users)}",
                f"i{item}",
                f"c{item % 4}",
                kind,
                ts,
                float(1 + item),
                1 if kind == "purchase" else None,
            )
        )
    return rows


def edit_future(rng: random.Random, log: list[tuple]) -> list[tuple]:
    """Delete, change and add events on or after D; never touch the past."""
    past = [r for r in log if r[4][:10] < D.isoformat()]
    future = [r for r in log if r[4][:10] >= D.isoformat()]
    kept = [r for r in future if rng.random() > 0.3]
    changed = [
        (u, i, c, rng.choice(TYPES[1:]), ts, p * 2, q) if rng.random() < 0.5 else (u, i, c, k, ts, p, q)
        for u, i, c, k, ts, p, q in kept
    ]
    added = random_log(rng, D, 10, 40, users=15, items=13)  # new users and items too
    return past + changed + added


def new_config(tmp_path_factory, name):
    return load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={tmp_path_factory.mktemp(name)}/wh"])


def table_rows(spark, cfg, spec, ds=None, columns=None):
    """The table's rows (of ``ds``, or of every ds with the ds column first), sorted, floats rounded."""
    df = read_table(spark, cfg, spec)
    if ds is not None:
        df = df.where(F.col("ds") == F.lit(ds))
    elif not columns:
        columns = ["ds", *[c for c in df.columns if c != "ds"]]
    df = df.select(*(columns or df.columns))
    rows = [
        tuple(round(v, 9) if isinstance(v, float) else (tuple(v) if isinstance(v, list) else v) for v in r)
        for r in df.collect()
    ]
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def base_log():
    rng = random.Random(5)
    return random_log(rng, D - dt.timedelta(days=20), 30, 220)


def test_future_edits_change_labels_not_features(spark, tmp_path_factory, base_log):
    base = new_config(tmp_path_factory, "base")
    write_events(spark, base, base_log)
    build_features(spark, base, D)
    key = ["user_id", "item_id", "category_id", "row_kind", "is_sampled_negative"]
    features = key + list(dense_columns()) + ["hist_item_hashes", "u_top_category_hashes"]
    tables_before = {spec.name: table_rows(spark, base, spec, D) for spec in FEATURE_TABLES}
    before = {r[:5]: r for r in table_rows(spark, base, TRAINING_EXAMPLES, D, features)}
    labels_before = table_rows(spark, base, TRAINING_EXAMPLES, D, key + list(LABELS))
    rng = random.Random(17)
    for trial in range(2):
        edited = new_config(tmp_path_factory, f"edited{trial}")
        write_events(spark, edited, edit_future(rng, base_log))
        build_features(spark, edited, D)
        for spec in FEATURE_TABLES:
            assert tables_before[spec.name] == table_rows(spark, edited, spec, D), spec.name
        # Rows present in both runs carry the same features; the labels moved.
        after = {r[:5]: r for r in table_rows(spark, edited, TRAINING_EXAMPLES, D, features)}
        common = before.keys() & after.keys()
        assert len(common) >= 5
        assert all(before[k] == after[k] for k in common)
        assert labels_before != table_rows(spark, edited, TRAINING_EXAMPLES, D, key + list(LABELS))


def test_rerun_replaces_and_backfill_equals_single_days(spark, tmp_path_factory, base_log):
    days = [D - dt.timedelta(days=1), D, D + dt.timedelta(days=1)]
    backfill = new_config(tmp_path_factory, "backfill")
    write_events(spark, backfill, base_log)
    code = main(
        [
            "--start",
            days[0].isoformat(),
            "--end",
            days[-1].isoformat(),
            *[a for o in TEST_OVERRIDES for a in ("--set", o)],
            "--set",
            f"storage.warehouse={backfill.storage.warehouse}",
        ]
    )
    assert code == 0
    first = table_rows(spark, backfill, TRAINING_EXAMPLES, D)
    build_features(spark, backfill, D)  # rerun one day
    assert table_rows(spark, backfill, TRAINING_EXAMPLES, D) == first

    single = new_config(tmp_path_factory, "single")
    write_events(spark, single, base_log)
    for ds in days:
        build_features(spark, single, ds)
    # Whole tables, ds included: equal rows on every day and no day more or less.
    for spec in FEATURE_TABLES + (TRAINING_EXAMPLES, FEATURE_STATS):
        backfilled = table_rows(spark, backfill, spec)
        assert {r[0] for r in backfilled} == set(days), spec.name
        assert backfilled == table_rows(spark, single, spec), spec.name
