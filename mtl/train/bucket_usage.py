"""Which embedding rows a training run reaches: per vocab, the hash buckets that some id of the
training rows lands in. The artifact records them (mtl.models.artifacts.encode_bucket_usage) and
mtl-export prunes every other row (mtl.export.compress.pruned): a row no id reached never
received a gradient and holds its random initialisation.

Computed by Spark from the Parquet files the run trains on, before training starts, so it is
the same for every launcher and costs no work in the workers. What reaches the driver is bounded
by the tables' sizes (``embedding.buckets``), never by the number of users or items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl.schema import PAD_HASH, Field


def bucket_usage(rows: DataFrame, fields: Sequence[Field], buckets: Mapping[str, int]) -> DataFrame:
    """(vocab, bucket), distinct, for every bucket an id of ``rows`` hashes into: the model's
    mapping (mtl.models.embedding.hash_to_bucket: 1 + hash mod (buckets - 1), the padding hash
    reaching no bucket). Id fields ``rows`` does not hold are skipped."""
    parts = []
    for f in fields:
        if f.kind == "dense" or f.name not in rows.columns:
            continue
        # Sequences repeat across a user's rows: distinct arrays first, then their elements.
        column = rows.select(F.col(f.name).alias("h"))
        hashes = column.distinct().select(F.explode("h").alias("h")) if f.kind == "sequence" else column
        n = buckets[f.vocab]
        parts.append(
            hashes.where(F.col("h") != F.lit(PAD_HASH)).select(
                F.lit(f.vocab).alias("vocab"), (F.pmod(F.col("h"), F.lit(n - 1)) + 1).cast("int").alias("bucket")
            )
        )
    if not parts:
        raise ValueError("no id field of the model is a column of the training rows")
    return reduce(DataFrame.unionByName, parts).distinct()


def collect_bucket_usage(usage: DataFrame, vocabs: Sequence[str]) -> dict[str, np.ndarray]:
    """vocab -> its used buckets, sorted (at most ``embedding.buckets`` of them per vocab), for
    each of ``vocabs``: one no id reached has none."""
    table = usage.toPandas()
    return {
        vocab: np.sort(table.loc[table["vocab"] == vocab, "bucket"].to_numpy(dtype=np.int64))
        for vocab in sorted(set(vocabs))
    }


def training_bucket_usage(
    spark: SparkSession, files: Sequence[str], fields: Sequence[Field], buckets: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """The used buckets of the rows in ``files`` (a training snapshot's Parquet files), for every
    vocab of an id field those files hold."""
    rows = spark.read.parquet(*files)
    vocabs = [f.vocab for f in fields if f.kind != "dense" and f.name in rows.columns]
    return collect_bucket_usage(bucket_usage(rows, fields, buckets), vocabs)
