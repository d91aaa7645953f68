"""The one place that names the pipeline's Delta tables, their schemas and their locations."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyspark.sql import types as T

from mtl import schema as fs
from mtl.config import StorageConfig


@dataclass(frozen=True)
class Column:
    name: str
    dtype: T.DataType
    nullable: bool
    comment: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...]
    comment: str

    @property
    def schema(self) -> T.StructType:
        return T.StructType(
            [T.StructField(c.name, c.dtype, c.nullable, metadata={"comment": c.comment}) for c in self.columns]
        )

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def path(self, storage: StorageConfig) -> str:
        return f"{warehouse_root(storage)}/{self.name}"


def resolve_path(path: str) -> str:
    """A URI as given; a relative local folder is taken from the working directory."""
    path = path.rstrip("/")
    if "://" in path or path.startswith("file:"):
        return path
    return os.path.abspath(path)


def warehouse_root(storage: StorageConfig) -> str:
    return resolve_path(storage.warehouse)


EVENTS = TableSpec(
    name="events",
    comment="Canonical behaviour events, one row per distinct source event, written by ingest.",
    partition_by=("event_date",),
    columns=(
        Column("event_id", T.StringType(), False, "Deterministic hash of the normalised source row; the dedup key."),
        Column("user_id", T.StringType(), False, "User id as in the source."),
        Column("item_id", T.StringType(), False, "Item id as in the source."),
        Column("category_id", T.StringType(), True, "Item category id, when the source has one."),
        Column("event_type", T.StringType(), False, "One of impression, view, click, fav, cart, purchase."),
        Column("event_ts", T.TimestampType(), False, "When the event happened (UTC)."),
        Column("event_date", T.DateType(), False, "Calendar date of event_ts in the business time zone."),
        Column("quantity", T.IntegerType(), True, "Units bought, for purchases whose source records it."),
        Column("price", T.DoubleType(), True, "Unit price, when the source records it."),
        Column("source", T.StringType(), False, "Name of the source the event came from."),
    ),
)

EVENTS_QUARANTINE = TableSpec(
    name="events_quarantine",
    comment="Raw rows that ingest rejected, with the reason; nothing read is ever dropped silently.",
    partition_by=("ingest_date",),
    columns=(
        Column("run_id", T.StringType(), False, "The ingest run that read the row (see pipeline_runs)."),
        Column("source", T.StringType(), False, "Source name the run was ingesting."),
        Column("input_file", T.StringType(), True, "File the row was read from."),
        Column("raw_record", T.StringType(), True, "The raw line, or the raw row as JSON."),
        Column("reason", T.StringType(), False, "Reason code, e.g. MALFORMED_RECORD, TIMESTAMP_OUT_OF_RANGE."),
        Column(
            "detail",
            T.StringType(),
            True,
            "The offending value, where there is one; for BAD_ENCODING and ID_TOO_LONG the source column or field.",
        ),
        Column(
            "run_rejected", T.BooleanType(), False, "True when the run failed its quarantine limit and wrote no events."
        ),
        Column("quarantined_at", T.TimestampType(), False, "When the run wrote the row (UTC)."),
        Column("ingest_date", T.DateType(), False, "UTC date of quarantined_at."),
    ),
)

PIPELINE_RUNS = TableSpec(
    name="pipeline_runs",
    comment="One row per job run: what it read and wrote, counts, status.",
    partition_by=(),
    columns=(
        Column("run_id", T.StringType(), False, "Unique id of the run."),
        Column("job", T.StringType(), False, "Job name, e.g. ingest."),
        Column("ds", T.DateType(), True, "Logical date the run was for, if any."),
        Column(
            "status",
            T.StringType(),
            False,
            "running (written when the run starts), succeeded, failed, or abandoned: the run stopped "
            "without ending (killed, machine lost), found by a later run of the job and ds or by "
            "mtl-check-outputs from its stale heartbeat_at.",
        ),
        Column("started_at", T.TimestampType(), False, "Run start (UTC)."),
        Column(
            "ended_at", T.TimestampType(), True, "Run end (UTC); null while running; the last heartbeat if abandoned."
        ),
        Column("input_rows", T.LongType(), True, "Rows read."),
        Column("output_rows", T.LongType(), True, "Rows written to the main output table."),
        Column("rejected_rows", T.LongType(), True, "Rows quarantined."),
        Column("duplicate_rows", T.LongType(), True, "Rows dropped as duplicates of existing or other input rows."),
        Column("tables_read", T.MapType(T.StringType(), T.LongType()), True, "Table name -> Delta version read."),
        Column("tables_written", T.MapType(T.StringType(), T.LongType()), True, "Table name -> Delta version written."),
        Column("model_version", T.StringType(), True, "Model version used or produced, if any."),
        Column("config_hash", T.StringType(), False, "Fingerprint of the resolved config."),
        Column("details", T.StringType(), True, "JSON with job-specific facts (e.g. counts per reject reason)."),
        Column("error", T.StringType(), True, "Error message of a failed run, or why it counts as abandoned."),
        Column("host", T.StringType(), True, "Host name of the process that ran the job."),
        Column("pid", T.LongType(), True, "Process id of the job on that host."),
        Column("heartbeat_at", T.TimestampType(), True, "Last sign of life of a running job (UTC)."),
    ),
)


# ---------------------------------------------------------------------------------------------
# feature tables (column names come from mtl/schema.py)

_DESCRIPTIONS = {
    "ctr_30d": "Smoothed clicks / impressions over 30 days (0 when the log has no impressions).",
    "cvr_30d": "Smoothed purchases / (views + clicks) over 30 days.",
    "active_days_30d": "Days with any event in the last 30 days.",
    "days_since_last_event": "Days from the last event to D (1 = the day before D; capped at features.history_days).",
    "days_since_last_purchase": "Days from the last purchase to D (capped at features.history_days).",
    "purchase_days": "Distinct days with a purchase in the history window.",
    "mean_purchase_interval_days": "Mean days between purchase days (features.history_days with fewer than two).",
    "spend_30d": "Sum of price x quantity of purchases over 30 days.",
    "avg_price_30d": "Mean price of the items the user had events with over 30 days (0 if unknown).",
    "users_30d": "Distinct users who interacted with the item in the last 30 days.",
    "buyers_30d": "Distinct users who bought the item in the last 30 days.",
    "repurchase_rate": "Smoothed share of the item's buyers who bought it on two or more days.",
    "price": "Mean recorded price (0 if unknown).",
    "age_days": "Days since the item was first seen.",
    "purchase_cycle_ratio": (
        "Days since last purchase / mean purchase interval (about 1: due to rebuy; 0 with fewer than two purchases)."
    ),
    "interactions_30d": "Interactions (views, clicks, favs, carts, purchases) over 30 days.",
}
_SIDE = {
    "u": "The user's",
    "i": "The item's",
    "uc": "The user's, in this category,",
    "ui": "The user's, with this item,",
}


def _describe(name: str) -> str:
    """Analyst-facing meaning of a generated feature column such as u_click_7d or i_ctr_30d."""
    if name in fs.CANDIDATE_DENSE:
        source = name.removeprefix("cand_").removesuffix("_score")
        return f"Candidate rows: the {source} source's score of the item for the user (0: not proposed, other rows)."
    prefix, _, rest = name.partition("_")
    if rest in _DESCRIPTIONS:
        return _DESCRIPTIONS[rest]
    what, _, window = rest.rpartition("_")
    noun = f"{what} events" if what in fs.EVENT_TYPES else what
    days = window.rstrip("d")
    return f"{_SIDE[prefix]} {noun} in the {days} day{'s' if days != '1' else ''} before D."


def _dense(names: tuple[str, ...]) -> tuple[Column, ...]:
    return tuple(Column(n, T.DoubleType(), False, _describe(n)) for n in names)


DS = Column("ds", T.DateType(), False, "The as-of date D: features use only events strictly before D.")
_ID_ARRAY = T.ArrayType(T.StringType())
_HASH_ARRAY = T.ArrayType(T.LongType())

USER_FEATURES = TableSpec(
    name="user_features",
    comment="One row per user with any event in the history window before ds, computed from events strictly before ds.",
    partition_by=("ds",),
    columns=(
        Column("user_id", T.StringType(), False, "User id."),
        *_dense(fs.USER_DENSE),
        Column(
            "hist_item_ids",
            _ID_ARRAY,
            True,
            f"The last {fs.HISTORY_LENGTH} distinct items the user interacted with, newest first.",
        ),
        Column("hist_category_ids", _ID_ARRAY, True, "Categories of hist_item_ids, in the same order."),
        Column(
            "u_top_category_ids",
            _ID_ARRAY,
            True,
            f"The user's top {fs.TOP_CATEGORIES} categories by interactions over 30 days.",
        ),
        DS,
    ),
)

ITEM_FEATURES = TableSpec(
    name="item_features",
    comment="One row per item with any event in the history window before ds, computed from events strictly before ds.",
    partition_by=("ds",),
    columns=(
        Column("item_id", T.StringType(), False, "Item id."),
        Column("category_id", T.StringType(), True, "The item's category (its latest recorded one)."),
        *_dense(fs.ITEM_DENSE),
        Column("first_seen_ts", T.TimestampType(), False, "First event of the item in the history window (UTC)."),
        DS,
    ),
)

USER_CATEGORY_FEATURES = TableSpec(
    name="user_category_features",
    comment="One row per (user, category) with events in the history window before ds: the repurchase signals.",
    partition_by=("ds",),
    columns=(
        Column("user_id", T.StringType(), False, "User id."),
        Column("category_id", T.StringType(), False, "Category id."),
        *_dense(fs.USER_CATEGORY_DENSE),
        Column(
            "uc_last_purchase_ts", T.TimestampType(), True, "Time of the user's last purchase in the category (UTC)."
        ),
        DS,
    ),
)

USER_ITEM_FEATURES = TableSpec(
    name="user_item_features",
    comment="One row per (user, item) pair with events in the history window before ds.",
    partition_by=("ds",),
    columns=(
        Column("user_id", T.StringType(), False, "User id."),
        Column("item_id", T.StringType(), False, "Item id."),
        Column("category_id", T.StringType(), True, "The item's category as recorded on the pair's events."),
        *_dense(fs.USER_ITEM_DENSE),
        Column("ui_last_interaction_ts", T.TimestampType(), True, "The user's last interaction with the item (UTC)."),
        Column("ui_last_purchase_ts", T.TimestampType(), True, "The user's last purchase of the item (UTC)."),
        DS,
    ),
)

TRAINING_EXAMPLES = TableSpec(
    name="training_examples",
    comment=(
        "Model rows for ds: features as of ds (events strictly before ds), labels from ds on. "
        "row_kind exposure carries click/purchase; candidate (the day's candidates, mtl/candidates/pool.py) "
        "click/purchase from the day's interactions; repurchase_item/repurchase_category carry repurchase_<N>d."
    ),
    partition_by=("ds",),
    columns=(
        Column("user_id", T.StringType(), False, "User id."),
        Column("item_id", T.StringType(), True, "Item id (null on repurchase_category rows)."),
        Column("category_id", T.StringType(), True, "Category id (the item's, or the row's category)."),
        Column("row_kind", T.StringType(), False, "exposure, repurchase_item, repurchase_category or candidate."),
        Column(
            "is_sampled_negative", T.BooleanType(), False, "True for negatives sampled for a log without impressions."
        ),
        Column("user_hash", T.LongType(), False, "xxhash64 of user_id (0 if missing): the model's id input."),
        Column("item_hash", T.LongType(), False, "xxhash64 of item_id (0 if missing)."),
        Column("category_hash", T.LongType(), False, "xxhash64 of category_id (0 if missing)."),
        Column(
            "row_kind_code",
            T.LongType(),
            False,
            "1, 2, 3, 4 for exposure, repurchase_item, repurchase_category, candidate.",
        ),
        Column(
            "hist_item_hashes",
            _HASH_ARRAY,
            False,
            f"Hashes of the user's last {fs.HISTORY_LENGTH} items before ds, padded with 0.",
        ),
        Column("hist_category_hashes", _HASH_ARRAY, False, "Hashes of their categories, padded with 0."),
        Column("hist_length", T.IntegerType(), False, "How many entries of the history are real (not padding)."),
        Column("u_top_category_hashes", _HASH_ARRAY, False, "Hashes of the user's top categories, padded with 0."),
        *_dense(fs.dense_columns()),
        Column(
            "click",
            T.IntegerType(),
            True,
            "Exposure rows: 1 if the user interacted with the item on ds (null on other rows).",
        ),
        Column(
            "purchase",
            T.IntegerType(),
            True,
            "Exposure rows: 1 if the user clicked and bought the item on ds (CTCVR label).",
        ),
        *(
            Column(
                f"repurchase_{n}d",
                T.IntegerType(),
                True,
                f"Repurchase rows: 1 if bought again in [ds, ds+{n}d); null if that window is not fully observed yet.",
            )
            for n in fs.REPURCHASE_HORIZONS_DAYS
        ),
        DS,
    ),
)

FEATURE_STATS = TableSpec(
    name="feature_stats",
    comment="Statistics of the model inputs over training_examples of ds; the model normalises with them.",
    partition_by=("ds",),
    columns=(
        Column("column", T.StringType(), False, "Column of training_examples."),
        Column("kind", T.StringType(), False, "dense or categorical."),
        Column("count", T.LongType(), False, "Rows."),
        Column("mean", T.DoubleType(), True, "Dense: mean."),
        Column("stddev", T.DoubleType(), True, "Dense: standard deviation."),
        Column("min", T.DoubleType(), True, "Dense: minimum."),
        Column("max", T.DoubleType(), True, "Dense: maximum."),
        Column("log_mean", T.DoubleType(), True, "Dense: mean of log1p(max(x, 0)), what the model standardises."),
        Column("log_stddev", T.DoubleType(), True, "Dense: standard deviation of log1p(max(x, 0))."),
        Column("approx_distinct", T.LongType(), True, "Categorical: approximate number of distinct ids."),
        Column("default_value", T.DoubleType(), True, "Dense: the value a user, item or pair without history gets."),
        DS,
    ),
)

FEATURE_TABLES = (
    USER_FEATURES,
    ITEM_FEATURES,
    USER_CATEGORY_FEATURES,
    USER_ITEM_FEATURES,
    TRAINING_EXAMPLES,
    FEATURE_STATS,
)

ITEM_NEIGHBOURS = TableSpec(
    name="item_neighbours",
    comment=(
        "Customers who interacted with this item also interacted with: the top neighbours per item by "
        "co-visitation in the candidates.window_days before ds (mtl/candidates/sources.py), written by "
        "build_features. A rerun for a ds replaces its partition."
    ),
    partition_by=("ds",),
    columns=(
        DS,
        Column("item_id", T.StringType(), False, "The item."),
        Column("neighbour_id", T.StringType(), False, "An item co-visited with it (never the item itself)."),
        Column("rank", T.IntegerType(), False, "1 is the closest neighbour; 1..n without gaps per item."),
        Column(
            "score",
            T.DoubleType(),
            False,
            "Co-visitation strength: per co-visiting user sqrt(w_item x w_neighbour) / ln(2 + the user's items), "
            "summed, over sqrt(users of the item x users of the neighbour).",
        ),
        Column("co_users", T.IntegerType(), False, "Users who interacted with both within the co-visitation window."),
    ),
)

CANDIDATES = TableSpec(
    name="candidates",
    comment=(
        "Per active user, the items the model-free sources propose for ds (as of ds), one row per (user, item) "
        "with each source's rank and score, written by build_features. The score job adds the model's two-tower "
        "top-M and ranks the union with the multi-task heads."
    ),
    partition_by=("ds",),
    columns=(
        DS,
        Column("user_id", T.StringType(), False, "User id."),
        Column("item_id", T.StringType(), False, "Proposed item."),
        Column(
            "sources",
            _ID_ARRAY,
            False,
            f"The sources that proposed the item, of {', '.join(fs.TABLE_CANDIDATE_SOURCES)}.",
        ),
        *(
            column
            for source in fs.TABLE_CANDIDATE_SOURCES
            for column in (
                Column(
                    f"{source}_rank", T.IntegerType(), True, f"Rank of the item in the {source} source; null if absent."
                ),
                Column(
                    f"{source}_score",
                    T.DoubleType(),
                    True,
                    f"Score of the item in the {source} source; null if absent.",
                ),
            )
        ),
    ),
)

MODEL_METRICS = TableSpec(
    name="model_metrics",
    comment=(
        "Offline metrics of a model version and of its baselines on a held-out ds, one row per "
        "(model_kind, task, metric, k), written by evaluate. A rerun for the same ds and version replaces its rows."
    ),
    partition_by=("ds",),
    columns=(
        Column("run_id", T.StringType(), False, "The evaluate run (see pipeline_runs)."),
        Column("model_version", T.StringType(), False, "Registered version the run evaluated (the candidate)."),
        Column(
            "model_kind",
            T.StringType(),
            False,
            "Whose predictions: multi_task (the candidate), champion (the published version on the same rows), "
            "popularity, category_popularity, als, logistic_regression, gbt, single_task, recency_frequency.",
        ),
        Column(
            "scored_version",
            T.StringType(),
            True,
            "Registered version that made the predictions (multi_task, champion); null for baselines.",
        ),
        Column(
            "task",
            T.StringType(),
            False,
            "click, purchase (CTCVR over exposures), purchase_cvr (clicked exposures), repurchase_<N>d, "
            "or retrieval (next items over the whole catalogue).",
        ),
        Column(
            "metric",
            T.StringType(),
            False,
            "auc, gauc (per-user AUC, weighted by rows), log_loss, calibration (mean prediction / mean label); "
            "retrieval: recall, ndcg, hit_rate (at k), mrr.",
        ),
        Column("k", T.IntegerType(), True, "K of a ranking metric; null otherwise."),
        Column("value", T.DoubleType(), True, "The metric; null when undefined (e.g. AUC without positives)."),
        Column("n_examples", T.LongType(), False, "Labelled rows (binary tasks) or users ranked (retrieval)."),
        Column("evaluated_at", T.TimestampType(), False, "When the evaluate run started (UTC)."),
        Column("ds", T.DateType(), False, "The held-out day evaluated: training_examples of ds, features as of ds."),
    ),
)

DAILY_RECOMMENDATIONS = TableSpec(
    name="daily_recommendations",
    comment=(
        "The top-K items to show each user active in the look-back window before ds, best first, written by score "
        "with the published model: exact two-tower candidates over the whole catalogue, ranked by the multi-task "
        "heads, after the business filters (recent purchases, per-category cap, availability)."
    ),
    partition_by=("ds",),
    columns=(
        Column("ds", T.DateType(), False, "The day the list is for: features as of ds (events strictly before ds)."),
        Column("user_id", T.StringType(), False, "User id (an HMAC-SHA256 pseudonym when scoring.pseudonymize is on)."),
        Column("rank", T.IntegerType(), False, "Position in the user's list: 1 is the best; 1..n without gaps."),
        Column("item_id", T.StringType(), False, "Recommended item."),
        Column("category_id", T.StringType(), True, "The item's category (null if unknown)."),
        Column(
            "score",
            T.DoubleType(),
            False,
            "Ranking score pCTR x pCVR^alpha x price^beta (scoring.alpha, scoring.beta); the list is ordered by it.",
        ),
        Column("p_click", T.DoubleType(), False, "Predicted probability that the user clicks the item when shown it."),
        Column(
            "p_purchase",
            T.DoubleType(),
            False,
            "Predicted probability that the user clicks and buys the item when shown it (CTCVR).",
        ),
        Column("model_version", T.StringType(), False, "Registered model version that scored the row."),
    ),
)

REPURCHASE_PREDICTIONS = TableSpec(
    name="repurchase_predictions",
    comment=(
        "For each (user, item) and (user, category) the user bought in the features.repurchase_lookback_days before "
        "ds: the probability of buying it again within N days from ds, written by score with the published model. "
        "Item rows have item_id set; category rows (any item of the category) have item_id null."
    ),
    partition_by=("ds",),
    columns=(
        Column("ds", T.DateType(), False, "The day the predictions are made on: features as of ds."),
        Column("user_id", T.StringType(), False, "User id (an HMAC-SHA256 pseudonym when scoring.pseudonymize is on)."),
        Column("item_id", T.StringType(), True, "The item bought before; null on a category row."),
        Column("category_id", T.StringType(), True, "The item's category, or the category of a category row."),
        *(
            Column(
                f"p_repurchase_{n}d",
                T.DoubleType(),
                True,
                f"Predicted probability of buying it again in [ds, ds+{n}d); null if the model has no such task.",
            )
            for n in fs.REPURCHASE_HORIZONS_DAYS
        ),
        Column(
            "days_since_last_purchase",
            T.IntegerType(),
            False,
            "Days from the last purchase to ds (1 = the day before).",
        ),
        Column("model_version", T.StringType(), False, "Registered model version that scored the row."),
    ),
)

SCORE_TABLES = (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS)

MONITORING_METRICS = TableSpec(
    name="monitoring_metrics",
    comment=(
        "What the monitor measured on ds, one row per (metric, subject): input drift (PSI of each dense feature and "
        "of the event mix against the reference window), prediction drift, output health and model health, each "
        "with the threshold it was held to and the severity it reached. A rerun for a ds replaces its partition."
    ),
    partition_by=("ds",),
    columns=(
        Column("ds", T.DateType(), False, "The day monitored."),
        Column("run_id", T.StringType(), False, "The monitor run (see pipeline_runs)."),
        Column("check_group", T.StringType(), False, "input_drift, prediction_drift, output_health or model_health."),
        Column(
            "metric",
            T.StringType(),
            False,
            "feature_psi, event_mix_psi, event_volume_ratio, prediction_psi, users_scored_share, "
            "catalogue_coverage, new_item_share, source_share or metric_drop (docs/monitoring.md).",
        ),
        Column(
            "subject",
            T.StringType(),
            False,
            "What was measured: table.column of a feature, a probability column, a candidate source, "
            "task.metric@k of an evaluation metric, or the table.",
        ),
        Column("value", T.DoubleType(), True, "The measurement; null when it is undefined (e.g. no reference yet)."),
        Column(
            "reference_value",
            T.DoubleType(),
            True,
            "What it is compared with, where the metric is a comparison of two values (e.g. the trailing mean).",
        ),
        Column("severity", T.StringType(), False, "ok, warn or fail: the worst bound the value crossed."),
        *(
            Column(bound, T.DoubleType(), True, f"The {bound.replace('_', ' ')} bound of the rule applied; null: none.")
            for bound in ("warn_above", "fail_above", "warn_below", "fail_below")
        ),
        Column("reference_start", T.DateType(), True, "First day of the reference window, where there is one."),
        Column("reference_end", T.DateType(), True, "Last day of the reference window, where there is one."),
        Column("note", T.StringType(), True, "Why a value is null, or what the reference was."),
        Column("computed_at", T.TimestampType(), False, "When the monitor run started (UTC)."),
    ),
)

CANDIDATE_TABLES = (ITEM_NEIGHBOURS, CANDIDATES)

ALL_TABLES = (
    EVENTS,
    EVENTS_QUARANTINE,
    PIPELINE_RUNS,
    *FEATURE_TABLES,
    *CANDIDATE_TABLES,
    MODEL_METRICS,
    *SCORE_TABLES,
    MONITORING_METRICS,
)


def markdown_docs() -> str:
    """Analyst-facing description of every table, generated from the specs above."""
    out = ["# Tables", "", "Generated from `mtl/tables.py` by `python -m mtl.tables`; do not edit by hand.", ""]
    for spec in ALL_TABLES:
        partitioning = ", ".join(spec.partition_by) or "none"
        out += [f"## `{spec.name}`", "", spec.comment, "", f"Partitioned by: {partitioning}.", ""]
        out += ["| column | type | nullable | meaning |", "|---|---|---|---|"]
        out += [
            f"| `{c.name}` | {c.dtype.simpleString()} | {'yes' if c.nullable else 'no'} | {c.comment} |"
            for c in spec.columns
        ]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown_docs(), end="")
