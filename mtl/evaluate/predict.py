"""Model predictions for evaluation: probabilities of examples and retrieval vectors, computed on
the executors (``mapInPandas``), and exact top-K lists over the whole catalogue.

Rows reach the model through :func:`mtl.data.loader.in_memory_batches`, the conversion training
uses, so evaluation feeds a model exactly what it was trained on. Models travel to the executors
as their artifacts (tensors and JSON) and are rebuilt there with :func:`load_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from mtl.data.batch import MODEL_FIELDS, in_memory_batches, input_columns
from mtl.models.artifacts import load_model
from mtl.registry import Artifact

# Scores of one tile of users x items stay below this many floats (about 256 MB).
TILE_FLOATS = 1 << 26


@dataclass(frozen=True)
class ModelOutputs:
    """A model and where its predictions go: model task -> output column."""

    artifact: Artifact
    columns: Mapping[str, str]


def collect_model_scores(
    df: DataFrame, models: Sequence[ModelOutputs], keep: Sequence[str], batch_size: int
) -> pd.DataFrame:
    """The ``keep`` columns of ``df`` plus one column per model output, the probability the model
    gives each row (``predict_proba``, eval mode), collected to the driver."""
    spark = df.sparkSession
    shipped = spark.sparkContext.broadcast([(m.artifact, dict(m.columns)) for m in models])
    out_columns = [c for m in models for c in m.columns.values()]
    schema = T.StructType([df.schema[c] for c in keep] + [T.StructField(c, T.DoubleType(), False) for c in out_columns])

    def score(frames):
        # A Spark task is one core's work: more torch threads would fight the other tasks for cores.
        torch.set_num_threads(1)
        loaded = [(load_model(artifact), columns) for artifact, columns in shipped.value]
        for frame in frames:
            out = frame[list(keep)].copy()
            for model, columns in loaded:
                parts: dict[str, list[np.ndarray]] = {task: [] for task in columns}
                for batch in in_memory_batches(frame, batch_size, labels=()):
                    probs = model.predict_proba(batch)
                    for task in columns:
                        parts[task].append(probs[task].double().numpy())
                for task, column in columns.items():
                    out[column] = np.concatenate(parts[task]) if parts[task] else np.empty(0)
            yield out

    inputs = [c for c in input_columns(MODEL_FIELDS, labels=()) if c not in keep]
    try:
        return df.select(*keep, *inputs).mapInPandas(score, schema).toPandas()
    finally:
        shipped.destroy()


def model_vectors(
    df: DataFrame, models: Mapping[str, Artifact], side: Literal["user", "item"], key: str, batch_size: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Retrieval vectors of the rows of ``df`` (model inputs, e.g. from ``model_inputs``) for each
    model: (the rows' ``key`` values, name -> float32 [rows, d]), in the same row order."""
    spark = df.sparkSession
    shipped = spark.sparkContext.broadcast(dict(models))
    schema = T.StructType(
        [df.schema[key]] + [T.StructField(name, T.ArrayType(T.FloatType(), False), False) for name in models]
    )

    def embed(frames):
        torch.set_num_threads(1)
        loaded = {name: load_model(artifact) for name, artifact in shipped.value.items()}
        for frame in frames:
            out = frame[[key]].copy()
            for name, model in loaded.items():
                vectors = model.user_vectors if side == "user" else model.item_vectors
                with torch.no_grad():
                    parts = [vectors(batch).numpy() for batch in in_memory_batches(frame, batch_size, labels=())]
                out[name] = list(np.concatenate(parts)) if parts else []
            yield out

    inputs = [c for c in input_columns(MODEL_FIELDS, labels=()) if c != key]
    try:
        collected = df.select(key, *inputs).mapInPandas(embed, schema).toPandas()
    finally:
        shipped.destroy()
    return collected[key].to_numpy(), {name: _stack(collected[name]) for name in models}


def _stack(column: pd.Series) -> np.ndarray:
    return np.stack(column.to_numpy()).astype(np.float32) if len(column) else np.empty((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------
# top-K over the whole catalogue

# Scores of a block of users (rows of the ranking task) against every catalogue item; -inf
# marks an item the scorer cannot rank for that user.
ScoreTile = Callable[[np.ndarray], torch.Tensor]


def inner_product(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    known_users: Optional[np.ndarray] = None,
    known_items: Optional[np.ndarray] = None,
) -> ScoreTile:
    """Scores u . v; users or items outside ``known_*`` (e.g. absent from ALS's training data)
    get -inf, so they are ranked nowhere and rank nothing."""
    users = torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32))
    items_t = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32)).T.contiguous()
    item_mask = None if known_items is None else torch.from_numpy(~known_items)

    def tile(rows: np.ndarray) -> torch.Tensor:
        scores = users[torch.from_numpy(rows)] @ items_t
        if item_mask is not None:
            scores[:, item_mask] = float("-inf")
        if known_users is not None:
            scores[torch.from_numpy(~known_users[rows])] = float("-inf")
        return scores

    return tile


def top_k(
    score_tile: ScoreTile, n_users: int, n_items: int, k: int, exclude: Optional[tuple[np.ndarray, np.ndarray]] = None
) -> np.ndarray:
    """[n_users, k] catalogue indices, best first; -1 pads a list shorter than k (fewer rankable
    items). ``exclude`` (user rows, item indices) are never ranked for that user."""
    ranked = np.full((n_users, min(k, n_items)), -1, dtype=np.int64)
    if n_users == 0 or n_items == 0:
        return np.full((n_users, k), -1, dtype=np.int64)
    block = max(1, TILE_FLOATS // n_items)
    if exclude is not None:
        order = np.argsort(exclude[0], kind="stable")
        ex_rows, ex_items = exclude[0][order], exclude[1][order]
    for start in range(0, n_users, block):
        rows = np.arange(start, min(start + block, n_users))
        scores = score_tile(rows)
        if exclude is not None:
            lo, hi = np.searchsorted(ex_rows, [rows[0], rows[-1] + 1])
            scores[torch.from_numpy(ex_rows[lo:hi] - start), torch.from_numpy(ex_items[lo:hi])] = float("-inf")
        values, index = torch.topk(scores, ranked.shape[1], dim=1)
        index[torch.isinf(values) & (values < 0)] = -1
        ranked[rows] = index.numpy()
    if ranked.shape[1] < k:
        ranked = np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)
    return ranked
