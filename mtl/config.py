"""Typed configuration loaded from ``conf/*.yaml`` plus ``--set key.path=value`` overrides.

A config file may name a parent with ``extends: <file>`` (relative to its own folder); the
child is deep-merged over the parent. Every key is checked against the dataclasses below, so a
misspelt key or a value of the wrong type fails with an error naming the dotted key path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

CANONICAL_EVENT_TYPES = ("impression", "view", "click", "fav", "cart", "purchase")
# Canonical fields a raw format can map its columns onto.
MAPPABLE_FIELDS = ("user_id", "item_id", "category_id", "event_type", "event_ts", "quantity", "price")
# Fields every source must have a column for (event_type may instead be a constant).
REQUIRED_FIELDS = ("user_id", "item_id", "event_type", "event_ts")


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names the key."""


@dataclass(frozen=True)
class SparkConfig:
    app_name: str = "mtl-recsys"
    # None leaves the master to spark-submit; set it only for the embedded (local) default.
    master: Optional[str] = None
    shuffle_partitions: int = 200
    driver_memory: Optional[str] = None
    # Delta reads its transaction log with this many partitions (its default of 50 is slow locally).
    delta_snapshot_partitions: Optional[int] = None
    show_progress: bool = True
    log_level: str = "WARN"
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StorageConfig:
    # Root of every Delta table: a local folder or an object-store URI (s3a://, abfss://, gs://).
    warehouse: str = "warehouse"


@dataclass(frozen=True)
class FormatConfig:
    """How one raw log format maps onto the canonical ``events`` schema."""

    reader: Literal["csv", "json", "parquet"] = "csv"
    header: bool = False
    delimiter: str = ","
    # Column names in file order, for CSV files without a header line.
    columns: Optional[list[str]] = None
    # canonical field -> source column name
    mapping: dict[str, str] = field(default_factory=dict)
    # raw event type value -> canonical event type; empty means the raw values are canonical
    event_type_values: dict[str, str] = field(default_factory=dict)
    # for logs where every row is the same kind of event (e.g. a purchase-only transactions log)
    constant_event_type: Optional[str] = None
    # unix_seconds | unix_millis | iso | a Spark datetime pattern such as "M/d/yyyy H:mm"
    timestamp_format: str = "unix_seconds"
    # zone of wall-clock timestamps that carry no offset (ignored for unix times)
    source_time_zone: str = "UTC"
    # event_date is the calendar date in this zone
    business_time_zone: str = "UTC"
    # valid event dates in the business time zone: [valid_from, valid_until)
    valid_from: Optional[str] = None
    valid_until: Optional[str] = None


@dataclass(frozen=True)
class IngestConfig:
    format: str = "canonical"
    # file, folder or glob; "{ds}" is replaced by the job's --ds
    input: Optional[str] = None
    # value of events.source; defaults to the format name
    source: Optional[str] = None
    # the job fails (and writes nothing to events) above this share of quarantined rows
    max_quarantine_share: float = 0.01
    # events stamped later than the run time plus this many hours are out of range
    max_future_skew_hours: float = 24.0


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the synthetic behaviour log (see docs/generator.md for what each one does)."""

    seed: int = 7
    users: int = 2000
    items: int = 3000
    categories: int = 40
    days: int = 21
    start_date: str = "2024-03-01"
    # mean sessions per user and day; per-user activity is lognormal (many light, few heavy users)
    sessions_per_user_day: float = 0.6
    activity_sigma: float = 1.0
    impressions_per_session: int = 8
    latent_dim: int = 8
    popularity_exponent: float = 1.0
    # amplitude (logit) of each item's popularity swing over time, and the share of items
    # released during the window rather than before it: the drift daily training tracks
    popularity_drift: float = 0.5
    new_item_share: float = 0.2
    consumable_share: float = 0.4
    cycle_days_min: int = 7
    cycle_days_max: int = 30
    repurchase_prob_consumable: float = 0.7
    repurchase_prob_durable: float = 0.02
    repurchase_same_item: float = 0.8
    repurchase_horizon_days: int = 7
    output_format: Literal["canonical", "taobao_user_behavior"] = "taobao_user_behavior"
    # where the raw log, side tables and ground truth are written
    output: str = "raw/synthetic"
    users_per_block: int = 500
    partitions: int = 4


@dataclass(frozen=True)
class FeaturesConfig:
    """How build_features turns events into feature tables and training examples (docs/features.md)."""

    # Aggregates over "all history" (days since last purchase, purchase intervals, item age)
    # look back this many days; it also caps every days-since feature.
    history_days: int = 180
    # Rates are smoothed towards the global rate as (hits + k * prior) / (trials + k).
    smoothing_strength: float = 20.0
    # Logs without impressions: k sampled negatives per positive, drawn in proportion to
    # popularity ** exponent from the items seen in the last 30 days.
    negatives_per_positive: int = 4
    negative_sampling_exponent: float = 0.75
    # Size of the table the sampler draws from (one equi-join, no nested-loop join).
    sampling_slots: int = 262144
    seed: int = 11
    # Repurchase examples: (user, item) and (user, category) pairs bought in this many days before D.
    repurchase_lookback_days: int = 90


@dataclass(frozen=True)
class TrainingConfig:
    """The train job: which days it reads, how it launches workers (docs/training.md)."""

    # --mode full trains on ds [D - window_days, D - 2] and validates on D - 1 (temporal split);
    # D itself stays held out for evaluate --ds D.
    window_days: int = 7
    # --mode incremental warm-starts from the published model and trains on D - 1 only.
    incremental_epochs: int = 1
    # local: one process; horovodrun: this job was started by `horovodrun -np N`;
    # spark: horovod.spark.run with num_proc workers on this job's Spark executors.
    launcher: Literal["local", "horovodrun", "spark"] = "local"
    num_proc: int = 2
    # Multiply the learning rates by the number of workers (the effective batch grows with it).
    scale_lr_with_workers: bool = True
    sparse_as_dense: bool = False
    # Seconds to wait for workers to start, and for a collective operation, before failing.
    start_timeout_s: int = 120
    collective_timeout_s: int = 300
    reader_workers: int = 1
    # Checkpoints go under <warehouse>/<checkpoint_dir>/<run key>; a rerun of the same run resumes.
    checkpoint_dir: str = "_checkpoints"
    # Threads per worker process for torch. None: torch's default in a single process; under
    # Horovod, the host's cores shared out among its workers (each rank taking every core runs
    # 2 workers 8x slower on 2 cores: BENCHMARKS.md).
    torch_threads: Optional[int] = None


@dataclass(frozen=True)
class PipelineConfig:
    """The daily chain (mtl-pipeline, the Airflow DAG)."""

    # Weekday (0 = Monday ... 6 = Sunday) of the weekly full retrain; null: incremental every day
    # once a model is published (the first run always trains in full).
    full_retrain_weekday: Optional[int] = 6


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking store and model registry."""

    # None: the embedded default, a SQLite store and artifact folder under the warehouse.
    tracking_uri: Optional[str] = None
    artifact_root: Optional[str] = None
    experiment: str = "mtl-recsys"
    registered_model: str = "mtl-recsys"
    champion_alias: str = "champion"


@dataclass(frozen=True)
class AlsConfig:
    """The ALS baseline (Spark MLlib, implicit feedback) for item recommendation."""

    rank: int = 32
    max_iter: int = 10
    reg_param: float = 0.05
    # confidence of an observed pair = 1 + alpha * interactions
    alpha: float = 20.0
    # fitted on the interactions of this many days before the evaluated ds
    window_days: int = 30
    seed: int = 13


@dataclass(frozen=True)
class TabularConfig:
    """The per-task logistic regression / gradient-boosted trees baselines on the dense features."""

    lr_max_iter: int = 100
    lr_reg_param: float = 0.001
    gbt_max_iter: int = 30
    gbt_max_depth: int = 5
    seed: int = 13


@dataclass(frozen=True)
class EvaluationConfig:
    """The evaluate job: metrics of a model version and its baselines on a held-out ds."""

    # K of Recall@K, NDCG@K and HitRate@K
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    # Leave items the user interacted with before ds out of the ranked lists (and out of the
    # relevant items): measures discovery rather than re-finding.
    exclude_seen: bool = False
    baselines: list[
        Literal["popularity", "category_popularity", "als", "logistic_regression", "gbt", "single_task",
                "recency_frequency"]
    ] = field(default_factory=lambda: ["popularity", "category_popularity", "als", "logistic_regression",
                                       "single_task", "recency_frequency"])
    # Epochs of the single-task twins; None: the candidate's own trainer.epochs.
    twin_epochs: Optional[int] = None
    # Ranking over the full catalogue costs users x items: at most this many users (a fixed
    # hash sample of those with a click on ds) are ranked.
    ranking_users: int = 20000
    score_batch_size: int = 4096
    calibration_bins: int = 10
    # The report plots model_metrics of this many days before ds.
    history_days: int = 30
    als: AlsConfig = field(default_factory=AlsConfig)
    tabular: TabularConfig = field(default_factory=TabularConfig)


@dataclass(frozen=True)
class GatedMetric:
    """One metric the quality gate checks: task and metric as in model_metrics (k for ranking)."""

    task: str
    metric: str
    k: Optional[int] = None
    # Absolute bound: floor for higher-is-better metrics, ceiling for log_loss; calibration
    # (mean prediction / mean label) may have both.
    floor: Optional[float] = None
    ceiling: Optional[float] = None
    # Largest allowed step back from the champion's value; None: gate.tolerance.
    tolerance: Optional[float] = None
    # false: a metric without a value (its labels are not observed yet) is skipped, not failed.
    required: bool = True


@dataclass(frozen=True)
class GateConfig:
    """What a model version must reach before it is published (the champion alias)."""

    tolerance: float = 0.01
    metrics: list[GatedMetric] = field(default_factory=list)


@dataclass(frozen=True)
class ScoringItemsConfig:
    """An optional items side table (item_id, category_id, ...): the catalogue to recommend from."""

    # Delta or Parquet folder; None: the catalogue is the items of item_features of ds.
    path: Optional[str] = None
    format: Literal["delta", "parquet"] = "delta"
    # A boolean column: false drops the item (null keeps it).
    available_column: Optional[str] = None
    # A date column: items available only from that date on (null keeps it).
    available_from_column: Optional[str] = None


@dataclass(frozen=True)
class ScoringFiltersConfig:
    """Business rules applied to the ranked candidates (docs in conf/base.yaml)."""

    # Drop items the user bought in this many days before ds (0: keep them)...
    recent_purchase_days: int = 30
    # ...unless their category is repurchasable: listed here, or one where at least
    # repurchasable_min_rate of the category's buyers (at least repurchasable_min_buyers of them)
    # bought it on two or more days in the history window (None: the list only).
    repurchasable_categories: list[str] = field(default_factory=list)
    repurchasable_min_rate: Optional[float] = 0.3
    repurchasable_min_buyers: int = 10
    # At most this many items of one category in a user's top K (None: no cap).
    max_per_category: Optional[int] = 10


@dataclass(frozen=True)
class ScoringConfig:
    """The score job: the published model's top-K items per active user, and repurchase predictions."""

    # The registered version to score with; None: the version model_alias points at, and
    # without an alias the published one (tracking.champion_alias).
    model_version: Optional[str] = None
    model_alias: Optional[str] = None
    # Users with any event in this many days before ds get recommendations.
    active_days: int = 30
    k: int = 50
    # M: candidates per user from the two-tower head (exact top-M by inner product).
    candidates: int = 200
    # Items per score tile of the retrieval scan, and users per retrieval batch: memory per
    # task is about users_per_batch x item_block_size floats, whatever the catalogue size.
    item_block_size: int = 4096
    users_per_batch: int = 512
    # score = pCTR x pCVR^alpha x price^beta, pCVR = min(p_purchase / p_click, 1); prices below
    # min_price (0 is unknown) count as min_price.
    alpha: float = 1.0
    beta: float = 0.0
    min_price: float = 1.0
    filters: ScoringFiltersConfig = field(default_factory=ScoringFiltersConfig)
    items: ScoringItemsConfig = field(default_factory=ScoringItemsConfig)
    # Publish HMAC-SHA256(key, user_id) instead of user ids; the key comes from this
    # environment variable only (never from a config file).
    pseudonymize: bool = False
    pseudonym_key_env: str = "MTL_PSEUDONYM_KEY"


@dataclass(frozen=True)
class Config:
    env: str = "local"
    storage: StorageConfig = field(default_factory=StorageConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    formats: dict[str, FormatConfig] = field(default_factory=dict)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    # The model's own YAML (architecture, embeddings, optimiser, trainer), relative to the working folder.
    model_config: str = "conf/models/mmoe.yaml"

    def format_config(self, name: Optional[str] = None) -> FormatConfig:
        name = name or self.ingest.format
        if name not in self.formats:
            raise ConfigError(
                f"ingest.format: unknown format {name!r}; configured formats: {sorted(self.formats)}"
            )
        return self.formats[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Short stable hash of the resolved config, recorded with every run."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# loading


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load ``path`` (following ``extends``), apply ``key.path=value`` overrides, type-check."""
    cfg = load_typed(Config, path, overrides)
    _check_semantics(cfg)
    return cfg


def parse_typed(cls: Any, raw: dict[str, Any]) -> Any:
    """Build the dataclass ``cls`` from a plain mapping (e.g. read back from JSON), with the same checks."""
    return _convert(cls, raw, "")


def load_typed(cls: Any, path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Any:
    """Load a YAML file (following ``extends``) into the dataclass ``cls``, with overrides.

    The same rules as the main config: unknown keys and wrong types fail naming the key.
    """
    raw: dict[str, Any] = _read_with_parents(Path(path), seen=()) if path else {}
    for override in overrides or []:
        _apply_override(raw, override, cls)
    return _convert(cls, raw, "")


def _read_with_parents(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files extend each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _deep_merge(_read_with_parents(path.parent / parent, seen + (path,)), data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], override: str, root: Any) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value")
    parts = _split_key(key.strip(), root)
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def _split_key(key: str, root: Any) -> list[str]:
    """Split a dotted key by the config's structure: below a string-to-scalar mapping (such as
    spark.extra) the rest of the key is one mapping key, dots and all."""
    parts = key.split(".")
    tp: Any = root
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return parts  # unknown key: reported with its full path when converting
            tp = hints[part]
            continue
        if typing.get_origin(tp) is dict:
            value_type = typing.get_args(tp)[1]
            if not dataclasses.is_dataclass(value_type):
                return parts[:i] + [".".join(parts[i:])]
            tp = value_type
            continue
        return parts
    return parts


def _convert(tp: Any, value: Any, path: str) -> Any:
    where = path or "<top level>"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if value is None:
        raise ConfigError(f"{where}: a value is required (got null)")
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if tp is str:
        # YAML reads unquoted 2017-11-25 as a date; it is meant as text here.
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _convert_dataclass(cls: Any, value: Any, path: str) -> Any:
    where = path or "<top level>"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__} {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{_join(path, key)}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{_join(path, name)}'")
    return cls(**kwargs)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_semantics(cfg: Config) -> None:
    if not 0.0 <= cfg.ingest.max_quarantine_share <= 1.0:
        raise ConfigError("ingest.max_quarantine_share: must be between 0 and 1")
    if cfg.spark.shuffle_partitions < 1:
        raise ConfigError("spark.shuffle_partitions: must be at least 1")
    weekday = cfg.pipeline.full_retrain_weekday
    if weekday is not None and not 0 <= weekday <= 6:
        raise ConfigError("pipeline.full_retrain_weekday: 0 (Monday) to 6 (Sunday), or null")
    tr = cfg.training
    for key in ("window_days", "num_proc", "start_timeout_s", "collective_timeout_s", "reader_workers"):
        if getattr(tr, key) < 1:
            raise ConfigError(f"training.{key}: must be at least 1")
    if tr.window_days < 2:
        raise ConfigError("training.window_days: must be at least 2 (training days plus the validation day)")
    feats = cfg.features
    for key in ("history_days", "sampling_slots", "repurchase_lookback_days"):
        if getattr(feats, key) < 1:
            raise ConfigError(f"features.{key}: must be at least 1")
    if feats.history_days < 30:
        raise ConfigError("features.history_days: must be at least 30 (the longest feature window)")
    if feats.negatives_per_positive < 0 or feats.smoothing_strength < 0:
        raise ConfigError("features.negatives_per_positive and features.smoothing_strength must not be negative")
    gen = cfg.generator
    for key in ("users", "items", "categories", "days", "impressions_per_session", "latent_dim",
                "users_per_block", "partitions", "cycle_days_min", "repurchase_horizon_days"):
        if getattr(gen, key) < 1:
            raise ConfigError(f"generator.{key}: must be at least 1")
    if gen.cycle_days_max < gen.cycle_days_min:
        raise ConfigError("generator.cycle_days_max: must not be below generator.cycle_days_min")
    if gen.categories > gen.items:
        raise ConfigError("generator.categories: must not exceed generator.items")
    for key in ("new_item_share", "consumable_share", "repurchase_prob_consumable",
                "repurchase_prob_durable", "repurchase_same_item"):
        if not 0.0 <= getattr(gen, key) <= 1.0:
            raise ConfigError(f"generator.{key}: must be between 0 and 1")
    try:
        dt.date.fromisoformat(gen.start_date)
    except ValueError:
        raise ConfigError(f"generator.start_date: expected a date YYYY-MM-DD, got {gen.start_date!r}") from None
    for name, fmt in cfg.formats.items():
        base = f"formats.{name}"
        for canonical in fmt.mapping:
            if canonical not in MAPPABLE_FIELDS:
                raise ConfigError(f"{base}.mapping.{canonical}: not a canonical field; use one of {list(MAPPABLE_FIELDS)}")
        for canonical in REQUIRED_FIELDS:
            if canonical == "event_type" and fmt.constant_event_type:
                continue
            if canonical not in fmt.mapping:
                raise ConfigError(f"{base}.mapping.{canonical}: required (the source column holding {canonical})")
        for raw_value, canonical in fmt.event_type_values.items():
            if canonical not in CANONICAL_EVENT_TYPES:
                raise ConfigError(
                    f"{base}.event_type_values.{raw_value}: {canonical!r} is not one of {list(CANONICAL_EVENT_TYPES)}"
                )
        if fmt.constant_event_type and fmt.constant_event_type not in CANONICAL_EVENT_TYPES:
            raise ConfigError(f"{base}.constant_event_type: must be one of {list(CANONICAL_EVENT_TYPES)}")
        if fmt.reader == "csv" and not fmt.header and not fmt.columns:
            raise ConfigError(f"{base}.columns: a CSV format without a header line must list its columns")
        if fmt.columns:
            missing = sorted(set(fmt.mapping.values()) - set(fmt.columns))
            if missing:
                raise ConfigError(f"{base}.mapping: source columns {missing} are not in {base}.columns")
        for key in ("valid_from", "valid_until"):
            text = getattr(fmt, key)
            if text is not None:
                try:
                    dt.date.fromisoformat(text)
                except ValueError:
                    raise ConfigError(f"{base}.{key}: expected a date YYYY-MM-DD, got {text!r}") from None
        for key in ("source_time_zone", "business_time_zone"):
            _check_time_zone(getattr(fmt, key), f"{base}.{key}")
    _check_scoring(cfg)


def _check_time_zone(name: str, key: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)") from None


def _check_scoring(cfg: Config) -> None:
    sc, filters = cfg.scoring, cfg.scoring.filters
    for key in ("active_days", "k", "candidates", "item_block_size", "users_per_batch"):
        if getattr(sc, key) < 1:
            raise ConfigError(f"scoring.{key}: must be at least 1")
    if sc.candidates < sc.k:
        raise ConfigError("scoring.candidates: must be at least scoring.k")
    if sc.active_days > cfg.features.history_days:
        raise ConfigError("scoring.active_days: must not exceed features.history_days (user_features looks no further back)")
    if sc.model_version is not None and sc.model_alias is not None:
        raise ConfigError("scoring.model_version and scoring.model_alias: give one of them, not both")
    if sc.alpha < 0:
        raise ConfigError("scoring.alpha: must not be negative")
    if sc.min_price <= 0:
        raise ConfigError("scoring.min_price: must be positive")
    if not sc.pseudonym_key_env:
        raise ConfigError("scoring.pseudonym_key_env: must name an environment variable")
    if not 0 <= filters.recent_purchase_days < cfg.features.history_days:
        raise ConfigError("scoring.filters.recent_purchase_days: must be in [0, features.history_days)")
    if filters.repurchasable_min_rate is not None and not 0.0 <= filters.repurchasable_min_rate <= 1.0:
        raise ConfigError("scoring.filters.repurchasable_min_rate: must be between 0 and 1")
    if filters.repurchasable_min_buyers < 1:
        raise ConfigError("scoring.filters.repurchasable_min_buyers: must be at least 1")
    if filters.max_per_category is not None and filters.max_per_category < 1:
        raise ConfigError("scoring.filters.max_per_category: must be at least 1 (or null for no cap)")
    items = sc.items
    if items.path is None and (items.available_column or items.available_from_column):
        raise ConfigError("scoring.items.path: required when scoring.items.available_column or available_from_column is set")
