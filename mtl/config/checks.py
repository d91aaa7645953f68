"""The rules of a config that span fields or need more than a type: run on every load."""

from __future__ import annotations

import datetime as dt

from mtl.config.loader import ConfigError
from mtl.config.sections import (
    CANONICAL_EVENT_TYPES,
    MAPPABLE_FIELDS,
    REQUIRED_FIELDS,
    Config,
    DynamicAllocationConfig,
)
from mtl.schema import CANDIDATE_SOURCES, INTERACTION_TYPES


def check_config(cfg: Config) -> None:
    """Raise ConfigError naming the first key that breaks a rule."""
    if not 0.0 <= cfg.ingest.max_quarantine_share <= 1.0:
        raise ConfigError("ingest.max_quarantine_share: must be between 0 and 1")
    if cfg.storage.conflict_retries < 0:
        raise ConfigError(f"storage.conflict_retries: must be at least 0, got {cfg.storage.conflict_retries}")
    if cfg.ingest.max_id_length < 1:
        raise ConfigError(f"ingest.max_id_length: must be at least 1, got {cfg.ingest.max_id_length}")
    if cfg.spark.shuffle_partitions < 1:
        raise ConfigError("spark.shuffle_partitions: must be at least 1")
    _check_dynamic_allocation(cfg.spark.dynamic_allocation)
    weekday = cfg.pipeline.full_retrain_weekday
    if weekday is not None and not 0 <= weekday <= 6:
        raise ConfigError("pipeline.full_retrain_weekday: 0 (Monday) to 6 (Sunday), or null")
    if cfg.pipeline.heartbeat_s <= 0:
        raise ConfigError("pipeline.heartbeat_s: must be positive")
    if cfg.pipeline.abandoned_after_s < 2 * cfg.pipeline.heartbeat_s:
        raise ConfigError(
            "pipeline.abandoned_after_s: must be at least twice pipeline.heartbeat_s, or a live run looks abandoned"
        )
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
    for key in (
        "users",
        "items",
        "categories",
        "days",
        "impressions_per_session",
        "latent_dim",
        "users_per_block",
        "partitions",
        "cycle_days_min",
        "repurchase_horizon_days",
    ):
        if getattr(gen, key) < 1:
            raise ConfigError(f"generator.{key}: must be at least 1")
    if gen.cycle_days_max < gen.cycle_days_min:
        raise ConfigError("generator.cycle_days_max: must not be below generator.cycle_days_min")
    if gen.categories > gen.items:
        raise ConfigError("generator.categories: must not exceed generator.items")
    for key in (
        "new_item_share",
        "consumable_share",
        "repurchase_prob_consumable",
        "repurchase_prob_durable",
        "repurchase_same_item",
    ):
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
                raise ConfigError(
                    f"{base}.mapping.{canonical}: not a canonical field; use one of {list(MAPPABLE_FIELDS)}"
                )
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
    _check_candidates(cfg)
    _check_monitoring(cfg)
    _check_tuning(cfg)


def _check_time_zone(name: str, key: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)") from None


def _check_scoring(cfg: Config) -> None:
    sc, filters = cfg.scoring, cfg.scoring.filters
    if "int8" in sc.runtime and not cfg.export.int8:
        raise ConfigError(f"scoring.runtime: {sc.runtime} needs export.int8: true (the export writes no int8 graphs)")
    if "pruned" in sc.runtime and not cfg.export.prune:
        raise ConfigError(
            f"scoring.runtime: {sc.runtime} needs export.prune: true (the export writes no pruned graphs)"
        )
    if not 0.0 < cfg.export.parity_tolerance < 1.0:
        raise ConfigError("export.parity_tolerance: must be in (0, 1)")
    for key in ("active_days", "k", "candidates", "item_block_size", "users_per_batch"):
        if getattr(sc, key) < 1:
            raise ConfigError(f"scoring.{key}: must be at least 1")
    if sc.candidates < sc.k:
        raise ConfigError("scoring.candidates: must be at least scoring.k")
    if sc.active_days > cfg.features.history_days:
        raise ConfigError(
            "scoring.active_days: must not exceed features.history_days (user_features looks no further back)"
        )
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
        raise ConfigError(
            "scoring.items.path: required when scoring.items.available_column or available_from_column is set"
        )


def _check_candidates(cfg: Config) -> None:
    cc = cfg.candidates
    for key in ("window_days", "recent_items", "top_categories"):
        if getattr(cc, key) < 1:
            raise ConfigError(f"candidates.{key}: must be at least 1")
    for key in ("revisits", "item_neighbours", "popular", "category_popular", "negatives_per_positive"):
        if getattr(cc, key) < 0:
            raise ConfigError(f"candidates.{key}: must not be negative (0 turns the source off)")
    if not any(getattr(cc, key) for key in ("revisits", "item_neighbours", "popular", "category_popular")):
        raise ConfigError("candidates: every source is off (revisits, item_neighbours, popular, category_popular: 0)")
    if cc.window_days > cfg.features.history_days:
        raise ConfigError("candidates.window_days: must not exceed features.history_days")
    if cc.recency_half_life_days <= 0:
        raise ConfigError("candidates.recency_half_life_days: must be positive")
    unknown = sorted(set(cc.event_weights) - set(INTERACTION_TYPES))
    if unknown:
        raise ConfigError(f"candidates.event_weights: {unknown} are not interaction types {list(INTERACTION_TYPES)}")
    if not cc.event_weights or min(cc.event_weights.values()) <= 0:
        raise ConfigError("candidates.event_weights: give at least one event type, each with a positive weight")
    unknown = sorted(set(cc.fusion_weights) - set(CANDIDATE_SOURCES))
    if unknown:
        raise ConfigError(f"candidates.fusion_weights: {unknown} are not sources {list(CANDIDATE_SOURCES)}")
    if min(cc.fusion_weights.values(), default=0.0) < 0 or cc.fusion_rank_offset < 0:
        raise ConfigError("candidates.fusion_weights and fusion_rank_offset: must not be negative")
    cv = cc.co_visitation
    if cv.window_hours <= 0:
        raise ConfigError("candidates.co_visitation.window_hours: must be positive")
    for key in ("max_items_per_user", "neighbours_per_item"):
        if getattr(cv, key) < 1:
            raise ConfigError(f"candidates.co_visitation.{key}: must be at least 1")


def _check_monitoring(cfg: Config) -> None:
    """The numbers and the shape of each threshold rule; its metric names are checked by the
    monitor itself (mtl.monitor.metrics.check_monitoring_config), which owns them."""
    mon = cfg.monitoring
    for key in ("reference_days", "new_item_days", "model_history_days", "history_days"):
        if getattr(mon, key) < 1:
            raise ConfigError(f"monitoring.{key}: must be at least 1")
    if mon.psi_bins < 2:
        raise ConfigError(f"monitoring.psi_bins: must be at least 2, got {mon.psi_bins}")
    alert = mon.alert
    if not alert.webhook_url_env:
        raise ConfigError("monitoring.alert.webhook_url_env: must name an environment variable")
    if alert.timeout_seconds <= 0:
        raise ConfigError("monitoring.alert.timeout_seconds: must be positive")
    if alert.retries < 0:
        raise ConfigError("monitoring.alert.retries: must not be negative")
    for i, rule in enumerate(mon.thresholds):
        where = f"monitoring.thresholds[{i}] ({rule.metric})"
        bounds = (rule.warn_above, rule.fail_above, rule.warn_below, rule.fail_below)
        if rule.exempt and any(b is not None for b in bounds):
            raise ConfigError(f"{where}: an exempt rule has no bounds")
        if not rule.exempt and all(b is None for b in bounds):
            raise ConfigError(
                f"{where}: give at least one of warn_above, fail_above, warn_below, fail_below (or exempt: true)"
            )
        if not rule.subjects:
            raise ConfigError(f'{where}.subjects: give at least one pattern ("*" matches every subject)')
        if rule.warn_above is not None and rule.fail_above is not None and rule.warn_above > rule.fail_above:
            raise ConfigError(f"{where}: warn_above {rule.warn_above} is above fail_above {rule.fail_above}")
        if rule.warn_below is not None and rule.fail_below is not None and rule.warn_below < rule.fail_below:
            raise ConfigError(f"{where}: warn_below {rule.warn_below} is below fail_below {rule.fail_below}")


def _check_tuning(cfg: Config) -> None:
    """The numbers of the tuning section; the search space itself is checked by mtl.tune.space
    when mtl-tune loads it (before any trial starts)."""
    tu = cfg.tuning
    for key in ("trials", "parallel", "pruner_startup_trials"):
        if getattr(tu, key) < 1:
            raise ConfigError(f"tuning.{key}: must be at least 1, got {getattr(tu, key)}")
    if tu.pruner_warmup_epochs < 0:
        raise ConfigError(f"tuning.pruner_warmup_epochs: must not be negative, got {tu.pruner_warmup_epochs}")
    if tu.timeout_min is not None and tu.timeout_min <= 0:
        raise ConfigError("tuning.timeout_min: must be positive (or null for no limit)")
    if not tu.space:
        raise ConfigError("tuning.space: name a search space under conf/tune/ or a YAML file")
    if not tu.storage_dir:
        raise ConfigError("tuning.storage_dir: must name a folder under the warehouse")


def _check_dynamic_allocation(da: DynamicAllocationConfig) -> None:
    key = "spark.dynamic_allocation"
    if da.min_executors < 0:
        raise ConfigError(f"{key}.min_executors: must be at least 0, got {da.min_executors}")
    if da.max_executors < max(da.min_executors, 1):
        raise ConfigError(
            f"{key}.max_executors: must be at least 1 and at least min_executors ({da.min_executors}),"
            f" got {da.max_executors}"
        )
    initial = da.initial_executors
    if initial is not None and not da.min_executors <= initial <= da.max_executors:
        raise ConfigError(f"{key}.initial_executors: must lie between min_executors and max_executors, got {initial}")
    if da.executor_idle_timeout_s < 1:
        raise ConfigError(f"{key}.executor_idle_timeout_s: must be at least 1")
    if da.shuffle_tracking_timeout_s is not None and da.shuffle_tracking_timeout_s < 1:
        raise ConfigError(f"{key}.shuffle_tracking_timeout_s: must be at least 1, or null")
