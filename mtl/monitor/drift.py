"""Input and prediction drift: the population stability index of ds against a reference window.

PSI = sum over bins of (q - p) * ln(q / p), p the reference's share of a bin and q today's.
Numeric columns are cut at the reference's quantiles (repeated quantiles merge, so a point mass
such as "no clicks" keeps a bin of its own) plus one bin for nulls; categorical ones (the event
type) use their values as bins. Below 0.1 is the usual "stable", above 0.25 "shifted".
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# A bin empty on one side would make ln(q / p) infinite: shares are floored at this.
SHARE_FLOOR = 1e-4
NULL_BIN = -1
_QUANTILE_ACCURACY = 10_000


def psi(reference: Mapping, current: Mapping) -> Optional[float]:
    """PSI of two count histograms (bin -> count; a bin missing on one side counts 0). None
    when either side has no rows."""
    ref_total, cur_total = sum(reference.values()), sum(current.values())
    if ref_total <= 0 or cur_total <= 0:
        return None
    total = 0.0
    for b in set(reference) | set(current):
        p = max(reference.get(b, 0) / ref_total, SHARE_FLOOR)
        q = max(current.get(b, 0) / cur_total, SHARE_FLOOR)
        total += (q - p) * math.log(q / p)
    return total


@dataclass(frozen=True)
class Window:
    """The reference days [start, end] and today's ds."""

    ds: dt.date
    start: dt.date
    end: dt.date

    @classmethod
    def before(cls, ds: dt.date, days: int) -> Window:
        return cls(ds, ds - dt.timedelta(days=days), ds - dt.timedelta(days=1))

    def reference(self, column: str = "ds") -> Column:
        return F.col(column).between(F.lit(self.start), F.lit(self.end))

    def today(self, column: str = "ds") -> Column:
        return F.col(column) == F.lit(self.ds)


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    psi: Optional[float]
    reference_rows: int
    current_rows: int
    current_nulls: int


@dataclass(frozen=True)
class Reference:
    """What one pass over the reference tells: the days it holds and each column's bin edges
    (its distinct inner quantiles, bins - 1 at most)."""

    days: list[dt.date]
    edges: dict[str, list[float]]


def reference_edges(reference: DataFrame, columns: Sequence[str], bins: int, day_column: str = "ds") -> Reference:
    probs = [i / bins for i in range(1, bins)]
    row = reference.agg(
        F.collect_set(day_column).alias("_days"),
        *[F.percentile_approx(F.col(c).cast("double"), probs, _QUANTILE_ACCURACY).alias(c) for c in columns],
    ).first()
    edges = {c: sorted({float(e) for e in (row[c] or []) if e is not None and not math.isnan(e)}) for c in columns}
    return Reference(sorted(row["_days"]), edges)


def _bin(column: str, edges: Sequence[float]) -> Column:
    """The bin of a value: how many edges lie below it (0..len(edges)); NULL_BIN for a null."""
    value = F.col(column).cast("double")
    below = F.size(F.filter(F.array(*[F.lit(e) for e in edges]), lambda e: value > e)) if edges else F.lit(0)
    return F.when(value.isNull(), F.lit(NULL_BIN)).otherwise(below)


def numeric_drift(
    reference: DataFrame, current: DataFrame, columns: Sequence[str], ref: Reference
) -> list[ColumnDrift]:
    """PSI of each of ``columns`` between two frames, in one pass over both, cut at ``ref``'s edges."""
    if not columns:
        return []
    edges = ref.edges
    both = reference.select(*columns, F.lit(True).alias("_ref")).unionByName(
        current.select(*columns, F.lit(False).alias("_ref"))
    )
    pairs = F.array(*[F.struct(F.lit(i).alias("c"), _bin(c, edges[c]).alias("b")) for i, c in enumerate(columns)])
    counts = (
        both.select("_ref", F.explode(pairs).alias("p"))
        .groupBy("_ref", F.col("p.c").alias("c"), F.col("p.b").alias("b"))
        .count()
        .collect()
    )
    hist: dict[tuple[bool, int], dict[int, int]] = {}
    for r in counts:
        hist.setdefault((r["_ref"], r["c"]), {})[r["b"]] = r["count"]
    out = []
    for i, c in enumerate(columns):
        ref, cur = hist.get((True, i), {}), hist.get((False, i), {})
        out.append(ColumnDrift(c, psi(ref, cur), sum(ref.values()), sum(cur.values()), cur.get(NULL_BIN, 0)))
    return out


def categorical_counts(frame: DataFrame, column: str, flag: Column) -> tuple[dict, dict]:
    """(reference counts, today's counts) per value of ``column``; ``flag`` is true on reference rows."""
    ref: dict = {}
    cur: dict = {}
    for r in frame.groupBy(flag.alias("_ref"), F.col(column).alias("v")).count().collect():
        (ref if r["_ref"] else cur)[r["v"]] = r["count"]
    return ref, cur
