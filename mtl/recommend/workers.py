"""What runs inside the executors' Python workers: the published model, rebuilt once per worker
process from one broadcast, and the ``mapInPandas`` / ``mapInArrow`` functions of the scoring
stages.

Every function here turns rows of ``model_inputs`` (the exact columns training reads) into the
model's batch with ``mtl.data.loader.to_arrays``, so scoring feeds the model like training did.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark import Accumulator, Broadcast, TaskContext
from pyspark.sql import types as T

from mtl.data.arrow_columns import numpy_columns
from mtl.data.batch import MODEL_FIELDS, input_columns, to_arrays
from mtl.errors import JobError
from mtl.export.runtime import ExportedGraphs, OnnxModel, ScoringModel
from mtl.models.artifacts import load_model
from mtl.recommend.top_m import blocked_top_m
from mtl.registry import Artifact
from mtl.schema import DENSE_KEY

PandasStage = Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]
ArrowStage = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

RETRIEVED_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("day_category_id", T.StringType(), True),
        T.StructField("retrieval_score", T.FloatType(), False),
    ]
)
RETRIEVED_ARROW_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), False),
        pa.field("item_id", pa.string(), False),
        pa.field("day_category_id", pa.string(), True),
        pa.field("retrieval_score", pa.float32(), False),
    ]
)
ITEM_VECTORS_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("fallback_category_id", T.StringType(), True),
        T.StructField("vector", T.ArrayType(T.FloatType(), False), False),
    ]
)


@dataclass(frozen=True)
class ModelShipment:
    """The artifact as it travels to the executors (one broadcast per run); ``key`` tells one
    run's model from another's in a long-lived worker. With ``export`` (scoring.runtime onnx or
    onnx_int8) the workers run those graphs in ONNX Runtime instead of the torch model."""

    artifact: Artifact
    export: Optional[ExportedGraphs] = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Catalogue:
    """Every item that may be recommended, with its two-tower vector (row i of ``vectors``)."""

    item_ids: np.ndarray  # object [N]
    # object [N]: the catalogue's category of an item that has none in item_features (a new
    # item), None for the others: ranking reads their category from item_features, so 20M
    # candidate rows need not carry it.
    fallback_category_ids: np.ndarray
    vectors: np.ndarray  # float32 [N, d]


_MODELS: dict[str, ScoringModel] = {}


def worker_model(shipment: Broadcast) -> ScoringModel:
    """The shipped model, built on the first call in this worker process and kept for the next
    tasks (Spark reuses Python workers); the previous run's model is dropped."""
    value: ModelShipment = shipment.value
    model = _MODELS.get(value.key)
    if model is None:
        _MODELS.clear()
        context = TaskContext.get()
        # one intra-op thread per CPU of the task: tasks must not oversubscribe cores
        threads = context.cpus() if context is not None else torch.get_num_threads()
        if value.export is None:
            model = load_model(value.artifact)
            torch.set_num_threads(threads)
        else:
            model = OnnxModel(value.export, threads)
        _MODELS[value.key] = model
    return model


def model_batch(rows: Union[pd.DataFrame, pa.RecordBatch]) -> dict[str, torch.Tensor]:
    """A pandas frame or an Arrow record batch of model_inputs columns as the model's batch (no
    labels). A record batch's history columns are reshaped from their Arrow buffers, skipping
    pandas' one small array per row."""
    if isinstance(rows, pa.RecordBatch):
        rows = numpy_columns(rows, input_columns(MODEL_FIELDS, labels=()))
    return {name: torch.from_numpy(array) for name, array in to_arrays(rows, MODEL_FIELDS, labels=()).items()}


# The user tower's inputs: the retrieval stage ships only these (and user_id) to Python. For a
# user row the item and pair dense columns are constants (their defaults) and the item fields
# are unused: sending them would double the bytes per user for nothing.
USER_FIELDS = tuple(f for f in MODEL_FIELDS if f.side == "user")
USER_TOWER_COLUMNS = input_columns(USER_FIELDS, labels=())
_DENSE_FIELDS = [f for f in MODEL_FIELDS if f.kind == "dense"]
_USER_DENSE_POSITIONS = np.array([i for i, f in enumerate(_DENSE_FIELDS) if f.side == "user"])


def dense_defaults(defaults: dict[str, float]) -> np.ndarray:
    """float32 [1, dense columns]: the fill values in the dense matrix's column order."""
    return np.array([[defaults[f.name] for f in _DENSE_FIELDS]], dtype=np.float32)


def user_batch(rows: pa.RecordBatch, dense_fill: np.ndarray) -> dict[str, torch.Tensor]:
    """The model's batch for ``user_vectors`` from a record batch of USER_TOWER_COLUMNS. The
    dense matrix keeps the full schema's width (the normalisation is per schema column); its
    non-user columns hold ``dense_fill`` (``dense_defaults``), which is what model_inputs gives
    a user row, and the user tower reads none of them anyway."""
    arrays = to_arrays(numpy_columns(rows, USER_TOWER_COLUMNS), USER_FIELDS, labels=())
    dense = np.repeat(dense_fill, rows.num_rows, axis=0)
    dense[:, _USER_DENSE_POSITIONS] = arrays[DENSE_KEY]
    arrays[DENSE_KEY] = dense
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _finite(vectors: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(vectors).all():
        raise JobError(f"the model produced non-finite {what} vectors: its weights are broken")
    return vectors


def item_vectors_stage(shipment: Broadcast) -> PandasStage:
    """Rows of model_inputs for catalogue items (with ``fallback_category_id``) -> (item_id,
    fallback_category_id, two-tower vector)."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = worker_model(shipment)
        for frame in frames:
            with torch.inference_mode():
                vectors = _finite(model.item_vectors(model_batch(frame)), "item").numpy()
            yield pd.DataFrame(
                {
                    "item_id": frame["item_id"],
                    "fallback_category_id": frame["fallback_category_id"],
                    "vector": list(vectors),
                }
            )

    return run


def retrieval_stage(
    shipment: Broadcast, catalogue: Broadcast, m: int, block_size: int, users_per_batch: int, scan_seconds: Accumulator
) -> ArrowStage:
    """Record batches of user_id and USER_TOWER_COLUMNS -> each user's exact top-m catalogue
    items by inner product (``mapInArrow``: m rows per user leave as Arrow ``take``s of the
    catalogue's id columns, never as Python strings). ``scan_seconds`` sums the task time spent
    in the scan."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = worker_model(shipment)
        dense_fill = dense_defaults(shipment.value.artifact.feature_stats["defaults"])
        items: Catalogue = catalogue.value
        item_vecs = torch.from_numpy(items.vectors)
        item_ids = pa.array(items.item_ids, pa.string())
        category_ids = pa.array(items.fallback_category_ids, pa.string())
        for batch in batches:
            user_ids = batch.column("user_id")
            for start in range(0, batch.num_rows, users_per_batch):
                part = batch.slice(start, users_per_batch)
                with torch.inference_mode():
                    user_vecs = _finite(model.user_vectors(user_batch(part, dense_fill)), "user")
                started = time.perf_counter()
                scores, rows = blocked_top_m(user_vecs, item_vecs, m, block_size)
                scan_seconds.add(time.perf_counter() - started)
                rows = pa.array(rows.numpy().ravel())
                owner = pa.array(np.repeat(np.arange(start, start + part.num_rows), scores.shape[1]))
                yield pa.RecordBatch.from_arrays(
                    [
                        user_ids.take(owner),
                        item_ids.take(rows),
                        category_ids.take(rows),
                        pa.array(scores.numpy().ravel()),
                    ],
                    schema=RETRIEVED_ARROW_SCHEMA,
                )

    return run


def prediction_stage(shipment: Broadcast, keep: Sequence[str], outputs: dict[str, str]) -> PandasStage:
    """Rows of model_inputs -> the ``keep`` columns plus one probability column per task
    (``outputs``: task -> column name)."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = worker_model(shipment)
        for frame in frames:
            probs = model.predict_proba(model_batch(frame))
            out = frame[list(keep)].copy()
            for task, column in outputs.items():
                out[column] = probs[task].numpy().astype(np.float64)
            yield out

    return run
