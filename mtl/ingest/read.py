"""Reading raw logs (CSV, JSON lines, Parquet) into one shape: the mapped source columns,
the raw record of rows the reader could not parse, and the input file name."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl.config import REQUIRED_FIELDS, FormatConfig
from mtl.errors import InputError

CORRUPT_COLUMN = "_corrupt_record"
INPUT_FILE_COLUMN = "_input_file"


def read_raw(spark: SparkSession, fmt: FormatConfig, path: str) -> DataFrame:
    """Rows of the raw log with every mapped source column, plus ``_corrupt_record`` (the raw
    text of a row the reader could not split into the expected fields, else null) and
    ``_input_file``. CSV and JSON columns are read as strings; Parquet keeps its types."""
    try:
        if fmt.reader == "csv":
            df = _read_csv(spark, fmt, path)
        elif fmt.reader == "json":
            df = _read_json(spark, fmt, path)
        else:
            df = _read_parquet(spark, fmt, path)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise InputError(f"input not found: {path}") from None
        raise
    return df.withColumn(INPUT_FILE_COLUMN, F.input_file_name())


def _string_schema(names: list[str]) -> T.StructType:
    fields = [T.StructField(n, T.StringType(), True) for n in names]
    return T.StructType(fields + [T.StructField(CORRUPT_COLUMN, T.StringType(), True)])


def _read_csv(spark: SparkSession, fmt: FormatConfig, path: str) -> DataFrame:
    options = {
        "sep": fmt.delimiter,
        "header": str(fmt.header).lower(),
        # A row with too few or too many fields is kept whole in _corrupt_record.
        "mode": "PERMISSIVE",
        "columnNameOfCorruptRecord": CORRUPT_COLUMN,
        "enforceSchema": "false",
    }
    if fmt.header:
        names = spark.read.options(sep=fmt.delimiter, header="true").csv(path).columns
        _require_columns(fmt, names, path)
    else:
        names = list(fmt.columns or [])
    df = spark.read.options(**options).schema(_string_schema(names)).csv(path)
    return _add_absent_optional_columns(fmt, df)


def _read_json(spark: SparkSession, fmt: FormatConfig, path: str) -> DataFrame:
    names = sorted(set(fmt.mapping.values()))
    return (
        spark.read.options(mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT_COLUMN)
        .schema(_string_schema(names))
        .json(path)
    )


_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"


def _read_parquet(spark: SparkSession, fmt: FormatConfig, path: str) -> DataFrame:
    nanos_as_long = spark.conf.get(_NANOS_AS_LONG, "false") == "true"
    if not nanos_as_long:
        try:
            df = spark.read.parquet(path)
        except AnalysisException as exc:
            if "TIMESTAMP(NANOS" not in str(exc):
                raise
            # Spark reads the files when the plan runs, not here: the setting stays on for the
            # session. It changes only columns Spark would refuse to read at all.
            spark.conf.set(_NANOS_AS_LONG, "true")
            nanos_as_long = True
    if nanos_as_long:
        df = _nanosecond_timestamps(spark.read.parquet(path))
    _require_columns(fmt, df.columns, path)
    present = [f"`{c}`" for c in sorted(set(fmt.mapping.values())) if c in df.columns]
    df = df.select(*present).withColumn(CORRUPT_COLUMN, F.lit(None).cast("string"))
    return _add_absent_optional_columns(fmt, df)


def _nanosecond_timestamps(df: DataFrame) -> DataFrame:
    """Parquet as pandas and pyarrow 13+ write it by default (INT64 TIMESTAMP(NANOS)), which Spark
    reads only as longs (with ``nanosAsLong`` on): those columns as Spark's microsecond timestamps,
    wall-clock ones (not adjusted to UTC) as TIMESTAMP_NTZ so that the format's
    ``source_time_zone`` applies. Sub-microsecond digits are dropped. The first file's schema
    tells which long columns are such timestamps."""
    longs = {f.name for f in df.schema.fields if isinstance(f.dataType, T.LongType)}
    files = df.inputFiles()
    if not longs or not files:
        return df
    converted = {}
    for field in _arrow_schema(files[0]):
        if field.name in longs and pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            instant = F.timestamp_micros(F.floor(F.col(f"`{field.name}`") / 1000).cast("long"))
            # Spark's session time zone is UTC (mtl.spark): the cast keeps the stored wall clock.
            converted[field.name] = instant if field.type.tz is not None else instant.cast("timestamp_ntz")
    return df.withColumns(converted)


def _arrow_schema(uri: str) -> pa.Schema:
    try:
        filesystem, file_path = pafs.FileSystem.from_uri(uri)
        return pq.read_schema(file_path, filesystem=filesystem)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"input {uri}: its Parquet schema could not be read to find nanosecond timestamps ({exc}); "
            "rewrite the file with microsecond timestamps (pandas: df.to_parquet(..., coerce_timestamps='us'))"
        ) from None


def _require_columns(fmt: FormatConfig, available: list[str], path: str) -> None:
    """A file may lack the columns of optional fields (category, quantity, price), not others."""
    missing = sorted(
        column for field, column in fmt.mapping.items() if field in REQUIRED_FIELDS and column not in available
    )
    if missing:
        raise InputError(f"input {path} lacks the source columns {missing} that the format maps; it has {available}")


def _add_absent_optional_columns(fmt: FormatConfig, df: DataFrame) -> DataFrame:
    for column in sorted(set(fmt.mapping.values()) - set(df.columns)):
        df = df.withColumn(column, F.lit(None).cast("string"))
    return df
