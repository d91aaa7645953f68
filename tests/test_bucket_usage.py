"""The embedding rows training reaches (mtl.train.bucket_usage), on hand-made rows: the same
buckets as the model's own hashing, padding reaching none; and their record in the artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl.models.artifacts import decode_bucket_usage, encode_bucket_usage, merge_bucket_usage
from mtl.models.embedding import hash_to_bucket
from mtl.schema import Field
from mtl.train.bucket_usage import bucket_usage, collect_bucket_usage

FIELDS = (
    Field("user_hash", "categorical", "user", "user"),
    Field("hist_item_hashes", "sequence", "user", "item", 3),
    Field("item_hash", "categorical", "item", "item"),
    Field("category_hash", "categorical", "item", "category"),  # not a column of the rows below
    Field("u_price", "dense", "user"),
)
BUCKETS = {"user": 4, "item": 5, "category": 7}
ROWS = [
    # user_hash, hist_item_hashes, item_hash, u_price
    (5, [3, 0, 0], 4, 1.0),
    (-8, [-1, 3, 0], 9, 2.0),
    (0, [0, 0, 0], 4, 3.0),  # a missing user and an empty history reach nothing
    (5, [3, 0, 0], 9, 4.0),
]


def test_the_buckets_are_the_models_own_and_padding_reaches_none(spark):
    rows = spark.createDataFrame(ROWS, "user_hash long, hist_item_hashes array<long>, item_hash long, u_price double")
    used = collect_bucket_usage(bucket_usage(rows, FIELDS, BUCKETS), ["user", "item"])
    # By hand: 1 + hash mod (buckets - 1), the modulo floored (non-negative).
    #   user (mod 3): 5 -> 3, -8 -> 2; item (mod 4): 3 -> 4, -1 -> 4, 4 -> 1, 9 -> 2
    assert {v: rows.tolist() for v, rows in used.items()} == {"user": [2, 3], "item": [1, 2, 4]}
    # The model's mapping gives the same buckets.
    user_hashes = torch.tensor([r[0] for r in ROWS])
    item_hashes = torch.tensor([h for r in ROWS for h in (*r[1], r[2])])
    for vocab, hashes in (("user", user_hashes), ("item", item_hashes)):
        reached = torch.unique(hash_to_bucket(hashes, BUCKETS[vocab]))
        assert reached[reached > 0].tolist() == used[vocab].tolist()


def test_a_vocab_no_id_reached_has_no_rows_and_rows_without_ids_are_an_error(spark):
    rows = spark.createDataFrame([(0, 1.0)], "user_hash long, u_price double")
    assert collect_bucket_usage(bucket_usage(rows, FIELDS, BUCKETS), ["user"])["user"].tolist() == []
    with pytest.raises(ValueError, match="no id field"):
        bucket_usage(rows.select("u_price"), FIELDS, BUCKETS)


def test_the_record_round_trips_and_unions():
    used = {"user": np.array([0, 3, 9]), "item": np.array([], dtype=np.int64)}
    encoded = encode_bucket_usage(used, {"user": 10, "item": 17})
    assert encoded["user"]["used"] == 3 and encoded["item"] == {"buckets": 17, "used": 0, "bitmap": "AAAA"}
    decoded = decode_bucket_usage(encoded)
    assert decoded["user"].tolist() == [0, 3, 9] and decoded["item"].tolist() == []
    merged = merge_bucket_usage(decoded, {"user": np.array([1, 3]), "category": np.array([2])})
    assert {v: r.tolist() for v, r in merged.items()} == {"user": [0, 1, 3, 9], "item": [], "category": [2]}
