"""Typed configuration loaded from ``conf/*.yaml`` plus ``--set key.path=value`` overrides.

- ``sections``: the dataclasses, one per section, and the root ``Config``;
- ``loader``: YAML with ``extends`` and overrides into dataclasses, type-checked key by key;
- ``checks``: the rules that span fields, run on every ``load_config``.

The stages check the parts only they understand (the model's YAML, evaluation metrics and the
gate) with functions of their own; the command-line layer runs those too when it loads a config
(``mtl.cli.common.load_job_config``), so a bad key anywhere fails before the first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mtl.config.checks import check_config
from mtl.config.loader import ConfigError, load_typed, parse_typed
from mtl.config.sections import (
    CANONICAL_EVENT_TYPES,
    FILE_RELATIVE_KEYS,
    MAPPABLE_FIELDS,
    REQUIRED_FIELDS,
    AlertConfig,
    AlsConfig,
    CandidatesConfig,
    Config,
    CoVisitationConfig,
    EvaluationConfig,
    ExportConfig,
    FeaturesConfig,
    FormatConfig,
    GateConfig,
    GatedMetric,
    GeneratorConfig,
    IngestConfig,
    MonitoringConfig,
    PipelineConfig,
    ScoringConfig,
    ScoringFiltersConfig,
    ScoringItemsConfig,
    SparkConfig,
    StorageConfig,
    TabularConfig,
    ThresholdRule,
    TrackingConfig,
    TrainingConfig,
    TuningConfig,
)

__all__ = [
    "CANONICAL_EVENT_TYPES",
    "MAPPABLE_FIELDS",
    "REQUIRED_FIELDS",
    "AlertConfig",
    "AlsConfig",
    "CandidatesConfig",
    "CoVisitationConfig",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "ExportConfig",
    "FeaturesConfig",
    "FormatConfig",
    "GateConfig",
    "GatedMetric",
    "GeneratorConfig",
    "IngestConfig",
    "MonitoringConfig",
    "PipelineConfig",
    "ScoringConfig",
    "ScoringFiltersConfig",
    "ScoringItemsConfig",
    "SparkConfig",
    "StorageConfig",
    "TabularConfig",
    "ThresholdRule",
    "TrackingConfig",
    "TrainingConfig",
    "TuningConfig",
    "load_config",
    "load_typed",
    "parse_typed",
]


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load ``path`` (following ``extends``), apply ``key.path=value`` overrides, type-check and
    check the cross-field rules."""
    cfg = load_typed(Config, path, overrides, file_relative=FILE_RELATIVE_KEYS)
    check_config(cfg)
    return cfg
