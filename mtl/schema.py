"""The feature contract: which columns the feature tables and ``training_examples`` carry.

Spark jobs (mtl.features) write these columns and the model (mtl.models) reads them, so both
sides take the names from here. Ids reach the model as 64-bit hashes (Spark's ``xxhash64`` of
the id string, 0 for a missing id): the model maps a hash to a bucket with a modulo, so an id
never seen in training still gets a valid embedding row and daily (incremental) training keeps
the same buckets.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

# Event types counted per window; the same list as the canonical events schema.
EVENT_TYPES: tuple[str, ...] = ("impression", "view", "click", "fav", "cart", "purchase")
# Every non-impression event is an interaction (engagement beyond being shown the item).
INTERACTION_TYPES: tuple[str, ...] = ("view", "click", "fav", "cart", "purchase")
WINDOWS_DAYS: tuple[int, ...] = (1, 3, 7, 30)
RATE_WINDOW_DAYS = 30
REPURCHASE_HORIZONS_DAYS: tuple[int, ...] = (7, 30)
HISTORY_LENGTH = 20  # last-M distinct items (and their categories) before D, newest first
TOP_CATEGORIES = 3  # a user's favourite categories over the rate window

PAD_HASH = 0  # value of a missing id and of sequence padding

# Where a recommendation candidate comes from (mtl.candidates.sources); the candidates table has
# a rank and a score column per model-free source, and two_tower joins them at scoring time.
TABLE_CANDIDATE_SOURCES: tuple[str, ...] = ("revisits", "item_neighbours", "popular", "category_popular")
CANDIDATE_SOURCES: tuple[str, ...] = (*TABLE_CANDIDATE_SOURCES, "two_tower")

ROW_KINDS: tuple[str, ...] = ("exposure", "repurchase_item", "repurchase_category", "candidate")
REPURCHASE_ROW_KINDS: tuple[str, ...] = ("repurchase_item", "repurchase_category")
# The model's input row_kind_code: a row kind's 1-based position in ROW_KINDS (0: none).
ROW_KIND_FIELD = "row_kind_code"


def row_kind_code(kind: str) -> int:
    return ROW_KINDS.index(kind) + 1


Side = Literal["user", "item", "pair"]
Kind = Literal["categorical", "sequence", "dense"]


@dataclass(frozen=True)
class Field:
    """One model input column of ``training_examples``.

    ``vocab`` names the embedding table a categorical or sequence field looks up (fields with the
    same vocab share the table: the history of item ids uses the item embeddings). ``side`` says
    which tower may see it: user fields feed the user tower, item fields the item tower, and pair
    fields (user x item/category facts) only the ranking part.
    """

    name: str
    kind: Kind
    side: Side
    vocab: str | None = None
    length: int = 1  # sequences: fixed length, padded with PAD_HASH


def window_counts(prefix: str, types: tuple[str, ...]) -> list[str]:
    return [f"{prefix}_{t}_{w}d" for t in types for w in WINDOWS_DAYS]


USER_DENSE: tuple[str, ...] = tuple(
    window_counts("u", EVENT_TYPES)
    + [
        "u_ctr_30d",  # smoothed interactions / impressions (the global rate where there are none)
        "u_cvr_30d",  # smoothed purchases / interactions
        "u_active_days_30d",
        "u_days_since_last_event",
        "u_days_since_last_purchase",
        "u_purchase_days",
        "u_mean_purchase_interval_days",
        "u_spend_30d",
        "u_avg_price_30d",
    ]
)

ITEM_DENSE: tuple[str, ...] = tuple(
    window_counts("i", EVENT_TYPES)
    + [
        "i_ctr_30d",
        "i_cvr_30d",
        "i_users_30d",
        "i_buyers_30d",
        "i_repurchase_rate",
        "i_price",
        "i_age_days",
        "i_days_since_last_event",
    ]
)

USER_CATEGORY_DENSE: tuple[str, ...] = tuple(
    [f"uc_interactions_{w}d" for w in WINDOWS_DAYS]
    + [f"uc_purchases_{w}d" for w in WINDOWS_DAYS]
    + [
        "uc_days_since_last_purchase",
        "uc_purchase_days",
        "uc_mean_purchase_interval_days",
        "uc_purchase_cycle_ratio",  # days since last purchase / mean interval: ~1 means "due"
        "uc_ctr_30d",  # smoothed clicks / impressions in the category: taste, apart from exposure
    ]
)

# (user, item) facts joined into training_examples only (no table of their own).
USER_ITEM_DENSE: tuple[str, ...] = (
    "ui_interactions_30d",
    "ui_purchase_days",
    "ui_days_since_last_purchase",
)

# The candidate sources' scores of a (user, item) row of kind candidate (0 where the source did
# not propose the item, and on every other row kind): what the ranker learns the sources' worth from.
CANDIDATE_DENSE: tuple[str, ...] = tuple(f"cand_{s}_score" for s in TABLE_CANDIDATE_SOURCES)

LABELS: tuple[str, ...] = ("click", "purchase") + tuple(f"repurchase_{n}d" for n in REPURCHASE_HORIZONS_DAYS)
MISSING_LABEL = -1  # what the data loader turns a null label into; losses mask it out
DENSE_KEY = "dense"  # the batch key of the dense fields, one float32 matrix in dense_columns() order


def unobserved_labels(day: dt.date, as_of: dt.date) -> tuple[str, ...]:
    """The labels of a training_examples row of ``day`` that a model trained for ds ``as_of`` must
    not learn: ``repurchase_<N>d`` looks at [day, day + N), which reaches ``as_of`` or later when
    day + N > as_of. On a backfill the features job saw the whole log and filled them; in the
    daily chain they are still null at that point. Either way training treats them as unknown."""
    return tuple(f"repurchase_{n}d" for n in REPURCHASE_HORIZONS_DAYS if day + dt.timedelta(days=n) > as_of)


def model_fields() -> tuple[Field, ...]:
    """Every model input column of training_examples, in a fixed order."""
    fields = [
        Field("user_hash", "categorical", "user", "user"),
        Field("hist_item_hashes", "sequence", "user", "item", HISTORY_LENGTH),
        Field("hist_category_hashes", "sequence", "user", "category", HISTORY_LENGTH),
        Field("u_top_category_hashes", "sequence", "user", "category", TOP_CATEGORIES),
        Field("item_hash", "categorical", "item", "item"),
        Field("category_hash", "categorical", "item", "category"),
        Field(ROW_KIND_FIELD, "categorical", "pair", "row_kind"),
    ]
    fields += [Field(c, "dense", "user") for c in USER_DENSE]
    fields += [Field(c, "dense", "item") for c in ITEM_DENSE]
    fields += [Field(c, "dense", "pair") for c in USER_CATEGORY_DENSE + USER_ITEM_DENSE + CANDIDATE_DENSE]
    return tuple(fields)


def dense_columns() -> tuple[str, ...]:
    return USER_DENSE + ITEM_DENSE + USER_CATEGORY_DENSE + USER_ITEM_DENSE + CANDIDATE_DENSE
