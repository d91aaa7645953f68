"""A Petastorm batch reader whose array columns arrive as 2-D numpy arrays without a per-row step.

Petastorm 0.12.1's ``make_batch_reader`` turns each row group (a pyarrow Table) into numpy on the
consumer's thread, and for a list column it does so row by row: ``to_pandas()`` makes one small
numpy array per row, then ``np.vstack`` stacks them. On training_examples (three history columns of
20, 20 and 3 hashes) that costs 0.3-0.6 s of a core per 157k-row row group, against 0.07 s for the
whole row group read from the Arrow buffers directly (BENCHMARKS.md, issue #6): on a 2-core machine
it was most of what the reader took from training.

So this module builds the same ``petastorm.reader.Reader`` that ``make_batch_reader`` builds (same
row-group selection, sharding, shuffling and thread pool; Petastorm's ``worker_class`` parameter is
the documented way to choose the worker), with a worker class whose results-queue reader converts
a list column from its flat values buffer, reshaped to [rows, length]. Other columns are converted
exactly as Petastorm converts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from petastorm.arrow_reader_worker import ArrowReaderWorker, ArrowReaderWorkerResultsQueueReader
from petastorm.cache import NullCache
from petastorm.fs_utils import get_filesystem_and_path_or_paths
from petastorm.reader import Reader
from petastorm.workers_pool import EmptyResultError
from petastorm.workers_pool.thread_pool import ThreadPool

from mtl.errors import InputError


def open_batch_reader(
    urls: Sequence[str],
    schema_fields: Sequence[str],
    *,
    workers_count: int,
    results_queue_size: int,
    seed: Optional[int],
    shuffle_row_groups: bool,
    cur_shard: Optional[int],
    shard_count: Optional[int],
    hdfs_driver: str,
    storage_options: Optional[Mapping[str, Any]],
) -> Reader:
    """``make_batch_reader(urls, reader_pool_type="thread", num_epochs=1, ...)`` with the
    vectorised conversion of array columns; batches are namedtuples of numpy arrays as there."""
    filesystem, paths = get_filesystem_and_path_or_paths(
        list(urls), hdfs_driver, storage_options=dict(storage_options) if storage_options else None
    )
    return Reader(
        filesystem,
        paths,
        schema_fields=list(schema_fields),
        worker_class=_ArrowColumnsWorker,
        reader_pool=ThreadPool(workers_count, results_queue_size),
        seed=seed,
        shuffle_row_groups=shuffle_row_groups,
        num_epochs=1,
        cur_shard=cur_shard,
        shard_count=shard_count,
        cache=NullCache(),
        is_batched_reader=True,
    )


def list_column_to_matrix(name: str, column: pa.ChunkedArray) -> np.ndarray:
    """A list column of one length per row as a read-only int/float matrix [rows, length].

    Zero rows give an empty object array (the length cannot be known); nulls or rows of
    different lengths are an ``InputError`` naming the column."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    rows = len(array)
    if rows == 0:
        return np.empty(0, dtype=object)
    if array.null_count:
        raise InputError(f"column {name}: {array.null_count} row(s) hold a null instead of a list")
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    if lengths.min() != lengths.max():
        raise InputError(
            f"column {name}: rows hold lists of different lengths ({lengths.min()} to {lengths.max()}), "
            "expected one fixed length"
        )
    values = array.flatten()
    if values.null_count:
        raise InputError(f"column {name}: {values.null_count} list element(s) are null")
    return values.to_numpy(zero_copy_only=False).reshape(rows, int(lengths[0]))


class _ArrowColumnsResultsReader(ArrowReaderWorkerResultsQueueReader):
    def read_next(self, workers_pool, schema, ngram):
        assert not ngram, "no ngrams in batch readers"
        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration
        columns = {}
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                columns[name] = list_column_to_matrix(name, column)
            elif pa.types.is_string(column.type):
                columns[name] = column.to_pandas().to_numpy().astype(np.str_)
            else:  # as Petastorm: a nullable integer column with a null becomes float64 with NaN
                columns[name] = column.to_pandas().to_numpy()
        return schema.make_namedtuple(**columns)


class _ArrowColumnsWorker(ArrowReaderWorker):
    @staticmethod
    def new_results_queue_reader():
        return _ArrowColumnsResultsReader()
