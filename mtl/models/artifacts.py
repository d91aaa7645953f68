"""The model's side of an artifact: feature statistics in, a ready model out.

``mtl.registry`` stores and versions the four files; this module decides what goes into
``feature_stats.json`` and ``model_config.json`` and rebuilds the exact model from them, so
training, evaluation and scoring cannot disagree on normalisation or architecture.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mtl import registry
from mtl.config import Config, parse_typed
from mtl.errors import InputError
from mtl.models.model import MultiTaskRecModel, build_model
from mtl.models.model_config import ModelConfig, check_model_config
from mtl.registry import Artifact, save_artifact
from mtl.schema import dense_columns, model_fields
from mtl.tables import FEATURE_STATS


def read_feature_stats(spark: SparkSession, cfg: Config, ds: dt.date) -> dict[str, Any]:
    """The model's normalisation (log1p space) and fill values, from feature_stats of ``ds``."""
    rows = {
        r["column"]: r
        for r in spark.read.format("delta")
        .load(FEATURE_STATS.path(cfg.storage))
        .where((F.col("ds") == F.lit(ds)) & (F.col("kind") == "dense"))
        .collect()
    }
    missing = [c for c in dense_columns() if c not in rows]
    if missing:
        raise InputError(f"feature_stats has no statistics for ds {ds} (missing {missing[:3]}...): run build_features")
    cols = dense_columns()
    return {
        "ds": ds.isoformat(),
        "dense_columns": list(cols),
        "dense_mean": [float(rows[c]["log_mean"] or 0.0) for c in cols],
        "dense_std": [float(rows[c]["log_stddev"] or 0.0) for c in cols],
        "defaults": {c: float(rows[c]["default_value"]) for c in cols},
    }


# metadata.json: per vocab, the embedding rows training reached (mtl.train.bucket_usage).
BUCKET_USAGE_KEY = "bucket_usage"


def encode_bucket_usage(used: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """vocab -> {"buckets": table rows, "used": how many training reached, "bitmap": one bit per
    row, base64}: 25 kB per 200k-row table, so it fits in metadata.json."""
    out = {}
    for vocab, rows in sorted(used.items()):
        mask = np.zeros(sizes[vocab], dtype=bool)
        mask[np.asarray(rows, dtype=np.int64)] = True
        out[vocab] = {
            "buckets": int(sizes[vocab]),
            "used": int(mask.sum()),
            "bitmap": base64.b64encode(np.packbits(mask).tobytes()).decode("ascii"),
        }
    return out


def decode_bucket_usage(encoded: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """encode_bucket_usage's inverse: vocab -> the used buckets, sorted."""
    out = {}
    for vocab, doc in encoded.items():
        bits = np.unpackbits(np.frombuffer(base64.b64decode(doc["bitmap"]), dtype=np.uint8))[: doc["buckets"]]
        out[vocab] = np.flatnonzero(bits).astype(np.int64)
    return out


def merge_bucket_usage(*usages: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The union, vocab by vocab (an incremental run reaches its day's rows and its parent's)."""
    out: dict[str, np.ndarray] = {}
    for usage in usages:
        for vocab, rows in usage.items():
            out[vocab] = np.union1d(out[vocab], rows) if vocab in out else np.asarray(rows, dtype=np.int64)
    return out


def artifact_bucket_usage(artifact: Artifact) -> Optional[dict[str, np.ndarray]]:
    """The version's used buckets, or None for a version trained before they were recorded."""
    encoded = artifact.metadata.get(BUCKET_USAGE_KEY)
    return decode_bucket_usage(encoded) if encoded else None


def save_model(
    folder: str | Path,
    model: MultiTaskRecModel,
    model_cfg: ModelConfig,
    feature_stats: dict[str, Any],
    metadata: dict[str, Any],
) -> Path:
    return save_artifact(folder, model.state_dict(), dataclasses.asdict(model_cfg), feature_stats, metadata)


def register_model(
    cfg: Config,
    model: MultiTaskRecModel,
    model_cfg: ModelConfig,
    feature_stats: dict[str, Any],
    metadata: dict[str, Any],
    *,
    folder: Optional[str | Path] = None,
    run_name: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None,
    log_run: Optional[Callable[[registry.MlflowRun], None]] = None,
) -> tuple[str, str, Path]:
    """Save ``model`` as an artifact (in ``folder``, default a new temporary folder), log it in a
    new MLflow run (``log_run`` adds params and metrics to that run first) and register it as a
    new version: (version, run id, folder). Training, the tests and the benchmarks all register
    models this way."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="mtl-artifact-"))
    save_model(folder, model, model_cfg, feature_stats, metadata)
    with registry.MlflowRun(cfg, run_name=run_name, tags=dict(tags or {})) as run:
        if log_run is not None:
            log_run(run)
        return registry.register_artifact(cfg, run, folder), run.run_id, folder


def load_model(artifact: Artifact) -> MultiTaskRecModel:
    """Rebuild the model of an artifact and load its weights (strict: every tensor must match)."""
    stats = artifact.feature_stats
    if list(stats.get("dense_columns", [])) != list(dense_columns()):
        raise InputError("the artifact was trained on other dense columns than this code's feature schema")
    model_cfg = parse_typed(ModelConfig, artifact.model_config)
    check_model_config(model_cfg)
    model = build_model(model_cfg, model_fields(), stats)
    model.load_state_dict(artifact.state_dict, strict=True)
    return model.eval()
