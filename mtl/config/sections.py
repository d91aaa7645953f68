"""The config's sections: one frozen dataclass per section of ``conf/*.yaml``, and the root ``Config``.

Each field's comment says what it does; ``mtl.config.checks`` holds the rules that span fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from mtl.config.loader import ConfigError

CANONICAL_EVENT_TYPES = ("impression", "view", "click", "fav", "cart", "purchase")
# Canonical fields a raw format can map its columns onto.
MAPPABLE_FIELDS = ("user_id", "item_id", "category_id", "event_type", "event_ts", "quantity", "price")
# Fields every source must have a column for (event_type may instead be a constant).
REQUIRED_FIELDS = ("user_id", "item_id", "event_type", "event_ts")


@dataclass(frozen=True)
class DynamicAllocationConfig:
    """Spark dynamic allocation on a cluster: executors are added while tasks wait and released
    when idle. Shuffle tracking keeps an executor while it holds shuffle data that a later stage
    may read, so no external shuffle service is needed (standalone, Kubernetes and YARN alike)."""

    enabled: bool = False
    min_executors: int = 0
    max_executors: int = 10
    # None: start with min_executors.
    initial_executors: Optional[int] = None
    executor_idle_timeout_s: int = 60
    # An executor holding shuffle data is released after this long idle; None: only when the
    # data is no longer referenced.
    shuffle_tracking_timeout_s: Optional[int] = None


@dataclass(frozen=True)
class SparkConfig:
    app_name: str = "mtl-recsys"
    # None leaves the master to spark-submit; set it only for the embedded (local) default.
    master: Optional[str] = None
    shuffle_partitions: int = 200
    driver_memory: Optional[str] = None
    # Delta reads its transaction log with this many partitions (its default of 50 is slow locally).
    delta_snapshot_partitions: Optional[int] = None
    # Spark's console progress bars, shown only when stderr is a terminal (never in log files).
    show_progress: bool = True
    log_level: str = "WARN"
    dynamic_allocation: DynamicAllocationConfig = field(default_factory=DynamicAllocationConfig)
    # Python modules every executor must import; on a cluster master each job checks them on its
    # executors before it reads anything (jobs add their own, e.g. torch for scoring), so a
    # missing package fails with its name instead of a Py4J stack trace deep into the job.
    executor_modules: list[str] = field(default_factory=lambda: ["mtl", "numpy", "pandas", "pyarrow"])
    check_executor_modules: bool = True
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StorageConfig:
    # Root of every Delta table: a local folder or an object-store URI (s3a://, abfss://, gs://).
    warehouse: str = "warehouse"
    # A partition replace that lost a commit race to another run (Delta's ConcurrentAppendException
    # and its siblings) is retried this many times; the replace is idempotent, so this is safe.
    conflict_retries: int = 2


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
    # user, item and category ids longer than this many characters are quarantined (ID_TOO_LONG)
    max_id_length: int = 256


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
    # canonical (every event, impressions included), taobao_user_behavior (no impressions) or
    # transactions (purchases only, no category: a retailer's order history)
    output_format: Literal["canonical", "taobao_user_behavior", "transactions"] = "taobao_user_behavior"
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
class TuningConfig:
    """Hyper-parameter search (mtl-tune, mtl/tune/): an Optuna study of training runs."""

    # The search space: a name under conf/tune/ (default -> conf/tune/default.yaml) or a YAML path.
    space: str = "default"
    # Optuna storage: null keeps a journal file per study under <warehouse>/<storage_dir>/ (a
    # local or shared folder); else an Optuna storage URL (sqlite:///..., postgresql://...) or a
    # journal file path ending in .log, which every parallel worker must reach.
    storage: Optional[str] = None
    storage_dir: str = "_tuning"
    # Trials of the study in all (finished ones counted across restarts) and wall-clock minutes
    # for this invocation (null: no limit).
    trials: int = 20
    timeout_min: Optional[float] = None
    # Workers, each running trials against the same storage: local processes (spawned on this
    # host; 1 runs in the job's own process) or Spark tasks on the job's executors.
    parallel: int = 1
    launcher: Literal["processes", "spark"] = "processes"
    # The TPE sampler's seed (each worker and restart derives its own from it).
    seed: int = 42
    # Median pruning: trials only compared after this many have finished, and not before this epoch.
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 1


@dataclass(frozen=True)
class PipelineConfig:
    """The daily chain (mtl-pipeline, the Airflow DAG)."""

    # Weekday (0 = Monday ... 6 = Sunday) of the weekly full retrain; null: incremental every day
    # once a model is published (the first run always trains in full).
    full_retrain_weekday: Optional[int] = 6
    # Every job's pipeline_runs row is written when it starts (status running) and its
    # heartbeat_at refreshed every heartbeat_s; a running row whose heartbeat is older than
    # abandoned_after_s (or whose process is gone from this host) is marked abandoned.
    heartbeat_s: float = 30.0
    abandoned_after_s: float = 300.0


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
        Literal[
            "popularity", "category_popularity", "als", "logistic_regression", "gbt", "single_task", "recency_frequency"
        ]
    ] = field(
        default_factory=lambda: [
            "popularity",
            "category_popularity",
            "als",
            "logistic_regression",
            "single_task",
            "recency_frequency",
        ]
    )
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
    # true: also no more than the tolerance worse than the best baseline's value on the same
    # rows (every model_kind of the evaluation that is not a model version).
    versus_baselines: bool = False


@dataclass(frozen=True)
class GateConfig:
    """What a model version must reach before it is published (the champion alias)."""

    tolerance: float = 0.01
    metrics: list[GatedMetric] = field(default_factory=list)


@dataclass(frozen=True)
class CoVisitationConfig:
    """item_neighbours: items one user interacted with close together in time, as of ds."""

    # Two interactions of a user at most this many hours apart co-visit.
    window_hours: float = 24.0
    # Only each user's latest distinct items count (bounds the per-user pairs at its square).
    max_items_per_user: int = 50
    # Neighbours kept per item in item_neighbours.
    neighbours_per_item: int = 20


@dataclass(frozen=True)
class CandidatesConfig:
    """The build_candidates job: per active user, items proposed by cheap sources as of ds
    (docs in conf/base.yaml and mtl/candidates/sources.py)."""

    # Interactions of this many days before ds feed every source.
    window_days: int = 30
    # An interaction's weight halves every this many days of age (1 = the day before ds).
    recency_half_life_days: float = 3.0
    # Weight of one interaction by event type; a type not listed does not count.
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0, "purchase": 3.0}
    )
    # Most candidates per user from each source.
    revisits: int = 50
    item_neighbours: int = 100
    popular: int = 50
    category_popular: int = 30
    # The user's latest items whose neighbours are proposed, and the user's categories whose
    # popular items are.
    recent_items: int = 10
    top_categories: int = 3
    co_visitation: CoVisitationConfig = field(default_factory=CoVisitationConfig)
    # The hand-made rule of the source_union baseline: score = sum over sources of
    # weight / (rank_offset + rank in that source).
    fusion_weights: dict[str, float] = field(
        default_factory=lambda: {
            "revisits": 1.0,
            "item_neighbours": 0.6,
            "two_tower": 0.4,
            "category_popular": 0.3,
            "popular": 0.2,
        }
    )
    fusion_rank_offset: float = 10.0
    # Training rows of row_kind candidate per day: every candidate the user interacted with on
    # the day, and about this many candidates without an interaction per such one (0: none).
    negatives_per_positive: int = 10


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
    # bought it on two or more days in the history window (None: the list only). An item without
    # a category is judged by the same rule over its own buyers.
    repurchasable_categories: list[str] = field(default_factory=list)
    repurchasable_min_rate: Optional[float] = 0.3
    repurchasable_min_buyers: int = 10
    # At most this many items of one category in a user's top K (None: no cap).
    max_per_category: Optional[int] = 10


# What scoring.runtime may name; mtl.export.runtime maps the ONNX ones to their exports.
ScoringRuntime = Literal["torch", "onnx", "onnx_int8", "onnx_pruned", "onnx_int8_pruned"]


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
    alpha: float = 0.0
    beta: float = 0.0
    min_price: float = 1.0
    filters: ScoringFiltersConfig = field(default_factory=ScoringFiltersConfig)
    items: ScoringItemsConfig = field(default_factory=ScoringItemsConfig)
    # Publish HMAC-SHA256(key, user_id) instead of user ids; the key comes from this
    # environment variable only (never from a config file).
    pseudonymize: bool = False
    pseudonym_key_env: str = "MTL_PSEUDONYM_KEY"
    # What runs the model on the executors: the torch model, or the version's ONNX export
    # (mtl-export) in ONNX Runtime, float or int8, with all embedding rows or only those
    # training reached (pruned); the output tables have the same schema either way.
    runtime: ScoringRuntime = "torch"


@dataclass(frozen=True)
class ExportConfig:
    """mtl-export: a registered version's ONNX graphs, stored with the version in MLflow."""

    # Also write the int8 variant (dynamic quantisation of the dense layers and embedding tables).
    int8: bool = True
    # Also write the pruned variants (onnx_pruned, and onnx_int8_pruned with int8): embedding
    # rows no training row reached map to the zero padding row.
    prune: bool = True
    # The float graphs must match the torch model within this on every output, or nothing is stored.
    parity_tolerance: float = 1e-5
    # mtl-publish exports the version it has just made the champion.
    on_publish: bool = False


@dataclass(frozen=True)
class ThresholdRule:
    """When a monitored metric is a breach: above or below a bound, at warn or fail severity.

    ``metric`` is a name of mtl.monitor.metrics.METRICS; ``subjects`` are fnmatch patterns of the
    metric's subject (a feature column as ``table.column``, a probability column, a candidate
    source, ``task.metric@k``); the first rule that matches a (metric, subject) decides.
    """

    metric: str
    subjects: list[str] = field(default_factory=lambda: ["*"])
    warn_above: Optional[float] = None
    fail_above: Optional[float] = None
    warn_below: Optional[float] = None
    fail_below: Optional[float] = None
    # true: the matching subjects are measured and recorded but never judged (e.g. item ages,
    # which grow by a day every day while the log is younger than features.history_days).
    exempt: bool = False


@dataclass(frozen=True)
class AlertConfig:
    # The webhook's URL is read from this environment variable only (it often carries a token):
    # never from a config file, never written to a log. Unset: breaches are logged only.
    webhook_url_env: str = "MTL_MONITOR_WEBHOOK_URL"
    timeout_seconds: float = 5.0
    retries: int = 2
    # "warn": every breach is sent; "fail": only fail breaches.
    min_severity: Literal["warn", "fail"] = "warn"


@dataclass(frozen=True)
class MonitoringConfig:
    """The monitor job (mtl/monitor/): drift and health of ds against a reference window."""

    # Reference window: the days [ds - reference_days, ds) for input and prediction drift.
    reference_days: int = 7
    # Population stability index over this many quantile bins of the reference (plus one for nulls).
    psi_bins: int = 10
    # An item first seen this many days before ds or later (or without features) is new.
    new_item_days: int = 7
    # Model health: today's evaluation against the mean of the evaluated days in this window.
    model_history_days: int = 7
    # The monitoring report's history looks back this far.
    history_days: int = 30
    thresholds: list[ThresholdRule] = field(default_factory=list)
    alert: AlertConfig = field(default_factory=AlertConfig)


# Keys of Config holding a path that a config file gives relative to its own folder.
FILE_RELATIVE_KEYS: tuple[str, ...] = ("model_config",)


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
    tuning: TuningConfig = field(default_factory=TuningConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    # The model's own YAML (architecture, embeddings, optimiser, trainer): in a file, relative to
    # that file's folder; in --set, to the working folder.
    model_config: str = "conf/models/esmm.yaml"

    def format_config(self, name: Optional[str] = None) -> FormatConfig:
        name = name or self.ingest.format
        if name not in self.formats:
            raise ConfigError(f"ingest.format: unknown format {name!r}; configured formats: {sorted(self.formats)}")
        return self.formats[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Short stable hash of the resolved config, recorded with every run."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
