"""The batch contract: what the model reads, from any source of training_examples columns.

For the fields and labels given (default: the whole feature contract of mtl.schema):

- a categorical field -> int64 [B], raw hashes (0 = missing);
- a sequence field -> int64 [B, L];
- ``dense`` -> float32 [B, D], the dense fields in their order (raw values: the model normalises);
- a label -> float32 [B], null -> MISSING_LABEL (-1), which the losses mask out.

One function, ``to_arrays``, turns columns into that contract: Petastorm's batches (mtl.data.loader),
a pandas DataFrame (evaluation) and scoring's Arrow batches all go through it. This module does not
import Petastorm, so scoring and evaluation read batches without the training reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtl.errors import InputError
from mtl.schema import DENSE_KEY, LABELS, MISSING_LABEL, Field, model_fields

MODEL_FIELDS: tuple[Field, ...] = model_fields()

# Column name -> one value per row: numpy arrays (Petastorm), or a pandas DataFrame's columns.
Columns = Union[Mapping[str, Any], pd.DataFrame]
Arrays = dict[str, np.ndarray]


def input_columns(fields: Sequence[Field] = MODEL_FIELDS, labels: Sequence[str] = LABELS) -> list[str]:
    """The columns of training_examples the batches are made of (all the reader reads)."""
    return [f.name for f in fields] + list(labels)


def to_arrays(columns: Columns, fields: Sequence[Field] = MODEL_FIELDS, labels: Sequence[str] = LABELS) -> Arrays:
    """The batch contract, as numpy arrays in the row order of ``columns``.

    Vectorised per column, never per row. The arrays are freshly allocated (owned, writable,
    C-contiguous), so tensors can share their memory without aliasing the source.
    """
    names = input_columns(fields, labels)
    if not names:
        raise ValueError("no fields and no labels: nothing to convert")
    missing = [c for c in names if c not in columns]
    if missing:
        raise InputError(f"the examples lack the column(s) {', '.join(missing)}")
    rows = len(columns[names[0]])
    uneven = [c for c in names if len(columns[c]) != rows]
    if uneven:
        raise InputError(f"column(s) {', '.join(uneven)} do not have {rows} rows like {names[0]}")

    out: Arrays = {}
    for f in fields:
        if f.kind == "categorical":
            out[f.name] = _hashes(f.name, columns[f.name])
        elif f.kind == "sequence":
            out[f.name] = _sequences(f, columns[f.name], rows)
    dense = [f.name for f in fields if f.kind == "dense"]
    if dense:
        matrix = np.empty((rows, len(dense)), dtype=np.float32)
        for j, name in enumerate(dense):
            matrix[:, j] = np.asarray(columns[name])
        out[DENSE_KEY] = matrix
    for label in labels:
        out[label] = _label(columns[label])
    return out


def in_memory_batches(
    frame: pd.DataFrame,
    batch_size: int,
    fields: Sequence[Field] = MODEL_FIELDS,
    *,
    labels: Sequence[str] = LABELS,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Batches of the contract from a DataFrame already in memory (e.g. ``toPandas()`` of a small
    validation set), converted exactly as the files are. Array columns may hold lists or arrays;
    labels may be float with NaN, object with None, or a pandas nullable integer type."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    arrays = to_arrays(frame, fields, labels)
    rng = np.random.default_rng(seed) if shuffle else None
    for batch in rebatch([arrays], batch_size, drop_last, rng, len(frame)):
        yield to_tensors(batch)


# ---------------------------------------------------------------------------------------------
# conversion


def _hashes(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InputError(f"column {name}: expected one integer hash per row, got {array.dtype} of shape {array.shape}")
    return _owned(array, np.int64)


def _sequences(field: Field, values: Any, rows: int) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object:  # pandas: one list or array per row
        if rows == 0:
            array = np.empty((0, field.length), dtype=np.int64)
        else:
            try:
                array = np.stack(array)
            except ValueError as e:
                raise InputError(f"column {field.name}: rows hold sequences of different lengths (or nulls)") from e
    if array.ndim != 2 or array.shape[1] != field.length or array.dtype.kind not in "iu":
        raise InputError(
            f"column {field.name}: expected {field.length} integer hashes per row, "
            f"got {array.dtype} of shape {array.shape}"
        )
    return _owned(array, np.int64)


def _label(values: Any) -> np.ndarray:
    # pandas resolves every null flavour (NaN, None, pd.NA) to NaN in one vectorised cast.
    as_float = pd.Series(values).to_numpy(dtype=np.float32, na_value=np.nan)
    return np.where(np.isnan(as_float), np.float32(MISSING_LABEL), as_float)


def _owned(array: np.ndarray, dtype: type) -> np.ndarray:
    """``array`` as ``dtype``, copied unless it already owns writable contiguous memory (Arrow's
    zero-copy arrays are read-only, and torch must not alias a caller's DataFrame)."""
    return np.require(array, dtype, ["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])


def to_tensors(batch: Arrays) -> dict[str, Tensor]:
    return {name: torch.from_numpy(array) for name, array in batch.items()}


# ---------------------------------------------------------------------------------------------
# re-batching


def rebatch(
    chunks: Iterable[Arrays],
    batch_size: int,
    drop_last: bool,
    rng: Optional[np.random.Generator],
    buffer_rows: int,
) -> Iterator[Arrays]:
    """Batches of exactly ``batch_size`` rows out of chunks of any size; the rows a chunk leaves
    over open the next batch, and only the very last batch may be short (dropped with
    ``drop_last``). With ``rng``, rows are shuffled within blocks of at least ``buffer_rows`` rows,
    the carried-over ones included, so a batch mixes rows of several row groups."""
    threshold = max(batch_size, buffer_rows) if rng is not None else batch_size
    pending: list[Arrays] = []
    pending_rows = 0
    for chunk in chunks:
        size = _length(chunk)
        if size == 0:
            continue
        pending.append(chunk)
        pending_rows += size
        if pending_rows >= threshold:
            block = _join(pending, rng)
            full = pending_rows - pending_rows % batch_size
            yield from _split(block, full, batch_size)
            # A copy: a view would keep the whole block alive until the next one is made.
            pending = [{k: v[full:].copy() for k, v in block.items()}] if full < pending_rows else []
            pending_rows -= full
    if pending_rows:
        end = pending_rows - pending_rows % batch_size if drop_last else pending_rows
        yield from _split(_join(pending, rng), end, batch_size)


def _length(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))


def _join(chunks: list[Arrays], rng: Optional[np.random.Generator]) -> Arrays:
    block = chunks[0] if len(chunks) == 1 else {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    if rng is None:
        return block
    order = rng.permutation(_length(block))
    return {k: v[order] for k, v in block.items()}


def _split(block: Arrays, end: int, batch_size: int) -> Iterator[Arrays]:
    for start in range(0, end, batch_size):
        yield {k: v[start : min(start + batch_size, end)] for k, v in block.items()}
