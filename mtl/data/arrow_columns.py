"""Arrow columns as numpy arrays without a per-row step: what both Petastorm's row groups
(``mtl.data.petastorm_reader``) and scoring's ``mapInArrow`` batches go through before
``mtl.data.loader.to_arrays``.

A list column of one fixed length per row becomes a matrix [rows, length] reshaped from its flat
values buffer. ``to_pandas()`` would instead make one small numpy array per row for
``np.vstack`` to stack: 0.3-0.6 s of a core per 157k-row row group of training_examples against
0.07 s (BENCHMARKS.md, issue #6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import pyarrow as pa

from mtl.errors import InputError

ArrowColumn = Union[pa.Array, pa.ChunkedArray]


def numpy_columns(
    data: Union[pa.Table, pa.RecordBatch], names: Optional[Sequence[str]] = None
) -> dict[str, np.ndarray]:
    """Columns ``names`` (default: all) of a Table or RecordBatch: list columns as matrices (see
    ``list_column_to_matrix``), the others as pandas converts them (a nullable integer column
    holding a null becomes float64 with NaN; strings become objects)."""
    out = {}
    for name in data.column_names if names is None else names:
        column = data.column(name)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            out[name] = list_column_to_matrix(name, column)
        else:
            out[name] = column.to_pandas().to_numpy()
    return out


def list_column_to_matrix(name: str, column: ArrowColumn) -> np.ndarray:
    """A list column of one length per row as a read-only matrix [rows, length] over its values.

    Zero rows give an empty object array (the length cannot be known); nulls or rows of
    different lengths are an ``InputError`` naming the column."""
    array = _one_array(column)
    rows = len(array)
    if rows == 0:
        return np.empty(0, dtype=object)
    if array.null_count:
        raise InputError(f"column {name}: {array.null_count} row(s) hold a null instead of a list")
    lengths = np.diff(array.offsets.to_numpy())
    if lengths.min() != lengths.max():
        raise InputError(
            f"column {name}: rows hold lists of different lengths ({lengths.min()} to {lengths.max()}), "
            "expected one fixed length"
        )
    values = array.flatten()
    if values.null_count:
        raise InputError(f"column {name}: {values.null_count} list element(s) are null")
    return values.to_numpy(zero_copy_only=False).reshape(rows, int(lengths[0]))


def _one_array(column: ArrowColumn) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column
