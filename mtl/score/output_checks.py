"""Checks of the score job's output, run on the written (staged) rows before they are published:
a violation fails the job and the published partition stays as it was."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mtl.errors import JobError


class OutputCheckError(JobError):
    """The scored output broke one of its guarantees; nothing was published."""


@dataclass(frozen=True)
class CheckResult:
    table: str
    rows: int
    users: int
    violations: tuple[str, ...]


def _is_probability(col: Column) -> Column:
    return col.isNotNull() & ~F.isnan(col) & col.between(0.0, 1.0)


def _count_if(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def check_recommendations(df: DataFrame, k: int) -> CheckResult:
    """No user with more than k rows, ranks 1..n without gaps or repeats, no item twice for a
    user, probabilities in [0, 1], a finite non-negative score, no null ids."""
    score = F.col("score")
    bad_score = score.isNull() | F.isnan(score) | (score < 0) | (score == float("inf"))
    bad_row = ~_is_probability(F.col("p_click")) | ~_is_probability(F.col("p_purchase")) | bad_score
    per_user = df.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.min("rank").alias("first"),
        F.max("rank").alias("last"),
        F.countDistinct("rank").alias("ranks"),
        F.countDistinct("item_id").alias("items"),
        _count_if(F.col("item_id").isNull()).alias("null_items"),
        _count_if(bad_row).alias("bad_rows"),
    )
    t = per_user.agg(
        F.count(F.lit(1)).alias("users"),
        F.coalesce(F.sum("n"), F.lit(0)).alias("rows"),
        F.coalesce(F.sum(F.when(F.col("user_id").isNull(), F.col("n"))), F.lit(0)).alias("null_users"),
        _count_if(F.col("n") > k).alias("over_k"),
        _count_if((F.col("first") != 1) | (F.col("last") != F.col("n")) | (F.col("ranks") != F.col("n"))).alias("gaps"),
        _count_if(F.col("items") + F.col("null_items") != F.col("n")).alias("repeats"),
        F.coalesce(F.sum("null_items"), F.lit(0)).alias("null_items"),
        F.coalesce(F.sum("bad_rows"), F.lit(0)).alias("bad_rows"),
    ).first()
    violations = _report(
        [
            (t["null_users"], "rows with a null user_id"),
            (t["null_items"], "rows with a null item_id"),
            (t["over_k"], f"users with more than {k} rows"),
            (t["gaps"], "users whose ranks are not 1..n without gaps or repeats"),
            (t["repeats"], "users with an item listed twice"),
            (
                t["bad_rows"],
                "rows with a probability that is not in [0, 1] or a score that is not a finite number >= 0 "
                "(null and NaN count)",
            ),
        ]
    )
    return CheckResult("daily_recommendations", t["rows"], t["users"] - (1 if t["null_users"] else 0), violations)


def check_repurchase(df: DataFrame, probabilities: Sequence[str]) -> CheckResult:
    """No null user id, an item or a category on every row, each (user, item, category) once,
    the ``probabilities`` columns in [0, 1] (not null), days since the last purchase at least 1."""
    bad_row = F.col("days_since_last_purchase").isNull() | (F.col("days_since_last_purchase") < 1)
    for column in probabilities:
        bad_row = bad_row | ~_is_probability(F.col(column))
    t = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("user_id").alias("users"),
        _count_if(F.col("user_id").isNull()).alias("null_users"),
        _count_if(F.col("item_id").isNull() & F.col("category_id").isNull()).alias("no_target"),
        _count_if(bad_row).alias("bad_rows"),
    ).first()
    keys = df.select("user_id", "item_id", "category_id").distinct().count()
    violations = _report(
        [
            (t["null_users"], "rows with a null user_id"),
            (t["no_target"], "rows with neither an item nor a category"),
            (t["rows"] - keys, "repeated (user, item, category) rows"),
            (
                t["bad_rows"],
                f"rows with {', '.join(probabilities)} not in [0, 1] (null and NaN count) "
                "or days_since_last_purchase below 1",
            ),
        ]
    )
    return CheckResult("repurchase_predictions", t["rows"], t["users"], violations)


def _report(counts: list[tuple[int, str]]) -> tuple[str, ...]:
    return tuple(f"{n} {what}" for n, what in counts if n)


def raise_on_violations(results: Sequence[CheckResult]) -> None:
    failed = [f"{r.table}: {'; '.join(r.violations)}" for r in results if r.violations]
    if failed:
        raise OutputCheckError("output checks failed, nothing published: " + " | ".join(failed))
