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
the row group with ``mtl.data.arrow_columns.numpy_columns``: a list column is reshaped from its
flat values buffer; other columns come out as Petastorm makes them.
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

from mtl.data.arrow_columns import numpy_columns


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
    null_columns: Optional[Mapping[str, Sequence[str]]] = None,
) -> Reader:
    """``make_batch_reader(urls, reader_pool_type="thread", num_epochs=1, ...)`` with the
    vectorised conversion of array columns; batches are namedtuples of numpy arrays as there.

    ``null_columns`` maps some of ``urls`` to columns whose values in that file are read as all
    null (labels a run must not learn from, see mtl.schema.unobserved_labels)."""
    filesystem, paths = get_filesystem_and_path_or_paths(
        list(urls), hdfs_driver, storage_options=dict(storage_options) if storage_options else None
    )
    worker = _ArrowColumnsWorker
    if null_columns:
        by_path = {path: tuple(null_columns[url]) for url, path in zip(urls, paths) if null_columns.get(url)}
        worker = type("_NullingArrowColumnsWorker", (_NullingWorker,), {"null_columns": by_path})
    return Reader(
        filesystem,
        paths,
        schema_fields=list(schema_fields),
        worker_class=worker,
        reader_pool=ThreadPool(workers_count, results_queue_size),
        seed=seed,
        shuffle_row_groups=shuffle_row_groups,
        num_epochs=1,
        cur_shard=cur_shard,
        shard_count=shard_count,
        cache=NullCache(),
        is_batched_reader=True,
    )


class _ArrowColumnsResultsReader(ArrowReaderWorkerResultsQueueReader):
    def read_next(self, workers_pool, schema, ngram):
        assert not ngram, "no ngrams in batch readers"
        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None
        columns = numpy_columns(table)
        for name in table.column_names:
            if pa.types.is_string(table.column(name).type):
                columns[name] = columns[name].astype(np.str_)  # as Petastorm
        return schema.make_namedtuple(**columns)


class _ArrowColumnsWorker(ArrowReaderWorker):
    @staticmethod
    def new_results_queue_reader():
        return _ArrowColumnsResultsReader()


class _NullingWorker(_ArrowColumnsWorker):
    """Reads ``null_columns[path]`` of each file as nulls (the subclass made per reader sets it)."""

    null_columns: dict[str, tuple[str, ...]] = {}

    def _load_rows(self, pq_file, piece, shuffle_row_drop_range):
        table = super()._load_rows(pq_file, piece, shuffle_row_drop_range)
        for name in self.null_columns.get(piece.path, ()):
            at = table.schema.get_field_index(name)
            if at >= 0:
                column_type = table.schema.field(at).type
                table = table.set_column(at, pa.field(name, column_type), pa.nulls(table.num_rows, column_type))
        return table
