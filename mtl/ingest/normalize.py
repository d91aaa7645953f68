"""Raw rows -> canonical events, each row either valid or carrying the reason it is rejected.

Pure DataFrame in / DataFrame out: no reading or writing here.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl.config import CANONICAL_EVENT_TYPES, FormatConfig, IngestConfig
from mtl.ingest.read import CORRUPT_COLUMN, INPUT_FILE_COLUMN
from mtl.tables import EVENTS

# Reject reasons, in the order they are checked (a row gets the first that applies).
MALFORMED_RECORD = "MALFORMED_RECORD"
BAD_ENCODING = "BAD_ENCODING"
MISSING_USER_ID = "MISSING_USER_ID"
MISSING_ITEM_ID = "MISSING_ITEM_ID"
ID_TOO_LONG = "ID_TOO_LONG"
MISSING_TIMESTAMP = "MISSING_TIMESTAMP"
BAD_TIMESTAMP = "BAD_TIMESTAMP"
TIMESTAMP_OUT_OF_RANGE = "TIMESTAMP_OUT_OF_RANGE"
UNKNOWN_EVENT_TYPE = "UNKNOWN_EVENT_TYPE"
BAD_QUANTITY = "BAD_QUANTITY"
NONPOSITIVE_PURCHASE_QUANTITY = "NONPOSITIVE_PURCHASE_QUANTITY"
BAD_PRICE = "BAD_PRICE"

REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
RAW_RECORD = "raw_record"
INPUT_FILE = "input_file"

_OFFSET_SUFFIX = r"(Z|[+-]\d{2}:?\d{2})$"
# What the CSV and JSON readers put where the source bytes were not valid UTF-8.
_REPLACEMENT_CHARACTER = "\ufffd"


def normalize(raw: DataFrame, fmt: FormatConfig, source: str, limits: IngestConfig) -> DataFrame:
    """Canonical ``events`` columns plus ``reject_reason`` (null for a valid row),
    ``reject_detail``, ``raw_record`` (set on rejected rows only) and ``input_file``.
    ``limits``: the future skew and the id length that a valid row stays within."""
    mapping = fmt.mapping

    def source_col(field: str) -> Column:
        return F.col(f"`{mapping[field]}`")

    def text(field: str) -> Column:
        """Trimmed text of a field's source column; null when blank or when the format lacks it."""
        return _clean_string(source_col(field)) if field in mapping else F.lit(None).cast("string")

    user_id = text("user_id")
    item_id = text("item_id")
    category_id = text("category_id")

    if fmt.constant_event_type:
        raw_type = F.lit(fmt.constant_event_type)
    else:
        raw_type = F.lower(text("event_type"))
    event_type = _map_event_type(raw_type, fmt.event_type_values)

    ts_col = source_col("event_ts")
    ts_dtype = raw.schema[mapping["event_ts"]].dataType
    raw_ts = ts_col if isinstance(ts_dtype, (T.TimestampType, T.TimestampNTZType)) else text("event_ts")
    event_ts = _parse_timestamp(ts_col, ts_dtype, fmt)
    event_date = F.to_date(F.from_utc_timestamp(event_ts, fmt.business_time_zone))

    raw_qty = text("quantity")
    qty_double = raw_qty.try_cast("double")
    quantity = F.when(qty_double == F.floor(qty_double), qty_double.try_cast("int"))
    raw_price = text("price")
    price = raw_price.try_cast("double")

    out_of_range = event_ts > F.current_timestamp() + F.expr(
        f"make_dt_interval(0, 0, 0, {limits.max_future_skew_hours * 3600})"
    )
    if fmt.valid_from:
        out_of_range = out_of_range | (event_date < F.lit(fmt.valid_from).cast("date"))
    if fmt.valid_until:
        out_of_range = out_of_range | (event_date >= F.lit(fmt.valid_until).cast("date"))

    text_columns = sorted({c for c in mapping.values() if isinstance(raw.schema[c].dataType, T.StringType)})
    badly_encoded = F.coalesce(
        *[F.when(F.instr(F.col(f"`{c}`"), _REPLACEMENT_CHARACTER) > 0, F.lit(c)) for c in text_columns],
        F.lit(None).cast("string"),
    )
    ids = {"user_id": user_id, "item_id": item_id, "category_id": category_id}
    too_long = F.coalesce(
        *[F.when(F.length(col) > limits.max_id_length, F.lit(name)) for name, col in ids.items()],
        F.lit(None).cast("string"),
    )

    checks: list[tuple[Column, str, Column]] = [
        (F.col(CORRUPT_COLUMN).isNotNull(), MALFORMED_RECORD, F.lit(None)),
        (badly_encoded.isNotNull(), BAD_ENCODING, badly_encoded),
        (user_id.isNull(), MISSING_USER_ID, F.lit(None)),
        (item_id.isNull(), MISSING_ITEM_ID, F.lit(None)),
        (too_long.isNotNull(), ID_TOO_LONG, too_long),
        (raw_ts.isNull(), MISSING_TIMESTAMP, F.lit(None)),
        (event_ts.isNull(), BAD_TIMESTAMP, raw_ts.cast("string")),
        (out_of_range, TIMESTAMP_OUT_OF_RANGE, raw_ts.cast("string")),
        (event_type.isNull(), UNKNOWN_EVENT_TYPE, raw_type),
        (raw_qty.isNotNull() & quantity.isNull(), BAD_QUANTITY, raw_qty),
        ((event_type == "purchase") & (quantity <= 0), NONPOSITIVE_PURCHASE_QUANTITY, raw_qty),
        (raw_price.isNotNull() & (price.isNull() | F.isnan(price) | (price < 0)), BAD_PRICE, raw_price),
    ]
    first_condition, first_code, first_offending = checks[0]
    reason = F.when(first_condition, F.lit(first_code))
    detail = F.when(first_condition, first_offending.cast("string"))
    for condition, code, offending in checks[1:]:
        reason = reason.when(condition, F.lit(code))
        detail = detail.when(condition, offending.cast("string"))

    source_columns = [c for c in raw.columns if c not in (CORRUPT_COLUMN, INPUT_FILE_COLUMN)]
    raw_record = F.coalesce(
        F.col(CORRUPT_COLUMN),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in source_columns]), {"ignoreNullFields": "false"}),
    )

    canonical = raw.select(
        user_id.alias("user_id"),
        item_id.alias("item_id"),
        category_id.alias("category_id"),
        event_type.alias("event_type"),
        event_ts.alias("event_ts"),
        event_date.alias("event_date"),
        quantity.alias("quantity"),
        price.alias("price"),
        F.lit(source).alias("source"),
        reason.alias(REJECT_REASON),
        detail.alias(REJECT_DETAIL),
        F.when(reason.isNotNull(), raw_record).alias(RAW_RECORD),
        F.col(INPUT_FILE_COLUMN).alias(INPUT_FILE),
    )
    return canonical.withColumn("event_id", event_id_column()).select(
        *EVENTS.column_names, REJECT_REASON, REJECT_DETAIL, RAW_RECORD, INPUT_FILE
    )


def event_id_column() -> Column:
    """Deterministic id of a canonical event: the same event from any file gets the same id."""
    null_marker = F.lit("\u0000")
    parts = [
        F.col("source"),
        F.col("user_id"),
        F.col("item_id"),
        F.coalesce(F.col("category_id"), null_marker),
        F.col("event_type"),
        F.unix_micros(F.col("event_ts")).cast("string"),
        F.coalesce(F.col("quantity").cast("string"), null_marker),
        F.coalesce(F.col("price").cast("string"), null_marker),
    ]
    return F.md5(F.concat_ws("\u001f", *parts))


def _clean_string(col: Column) -> Column:
    text = F.trim(col.cast("string"))
    return F.when(F.length(text) > 0, text)


def _map_event_type(raw_type: Column, values: dict[str, str]) -> Column:
    if values:
        pairs = [F.lit(x) for k, v in sorted(values.items()) for x in (k.lower(), v)]
        return F.create_map(*pairs)[raw_type]
    return F.when(raw_type.isin(*CANONICAL_EVENT_TYPES), raw_type)


def _parse_timestamp(col: Column, dtype: T.DataType, fmt: FormatConfig) -> Column:
    """UTC timestamp, or null when the value cannot be parsed."""
    if isinstance(dtype, T.TimestampType):
        return col
    if isinstance(dtype, T.TimestampNTZType):
        return F.to_utc_timestamp(col.cast("timestamp"), fmt.source_time_zone)
    text = _clean_string(col)
    if fmt.timestamp_format in ("unix_seconds", "unix_millis"):
        micros_per_unit = 1_000_000 if fmt.timestamp_format == "unix_seconds" else 1_000
        micros = (text.try_cast("double") * micros_per_unit).try_cast("long")
        return F.timestamp_micros(micros)
    if fmt.timestamp_format == "iso":
        wall_clock = F.to_utc_timestamp(F.try_to_timestamp(text), fmt.source_time_zone)
        return F.when(text.rlike(_OFFSET_SUFFIX), F.try_to_timestamp(text)).otherwise(wall_clock)
    return F.to_utc_timestamp(F.try_to_timestamp(text, F.lit(fmt.timestamp_format)), fmt.source_time_zone)
