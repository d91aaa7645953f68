"""Training batches from Parquet files (a Delta snapshot, see mtl.data.snapshot), read by Petastorm.

The batches follow the contract of ``mtl.data.batch`` (``to_arrays``), whatever the files' row groups.

What ``petastorm.make_batch_reader`` (petastorm 0.12.1, pyarrow 12) returns, checked on a
training_examples table written by Delta:

- one batch per Parquet row group, a namedtuple of numpy arrays, so batch sizes follow the
  files: hence the re-batching to a fixed size, rows left over carried into the next batch;
- an array<bigint> column arrives as int64 [n, L]: Petastorm would convert the row group to pandas
  and ``np.vstack`` the per-row arrays; ``mtl.data.petastorm_reader`` builds the same reader with
  a worker that reshapes the column's flat values instead (same result, several times cheaper),
  and rows of different lengths are an error naming the column;
- a nullable int column (the labels) arrives as int32 when the row group has no null and as
  float64 with NaN when it has one: the dtype changes from batch to batch, so labels are cast to
  float32 and NaN becomes -1 whatever came;
- Delta writes the partition column (ds) only into folder names (``ds=2024-03-10/``). Given a
  list of files rather than a folder, Petastorm discovers no partitions: ds is neither read nor
  needed;
- ``schema_fields`` are regular expressions matched against whole column names (escaped here);
- sharding gives shard k the row groups whose index is k modulo the shard count, and fails
  when there are fewer row groups than shards.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import pyarrow.parquet as pq
from petastorm.errors import NoDataAvailableError
from petastorm.fs_utils import get_filesystem_and_path_or_paths
from torch import Tensor

from mtl.data.batch import MODEL_FIELDS, Arrays, input_columns, rebatch, to_arrays, to_tensors
from mtl.data.petastorm_reader import open_batch_reader
from mtl.errors import InputError
from mtl.schema import LABELS, Field
from mtl.seeds import epoch_seed

# Petastorm 0.12.1 drives pyarrow 12 through its deprecated legacy ParquetDataset API, and pyarrow
# says so on every reader, worker threads included. Nobody using this module can act on it.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")

# pyarrow 12 only has the JNI driver; Petastorm's default (libhdfs3) was removed from pyarrow.
HDFS_DRIVER = "libhdfs"
# Shuffling mixes rows within blocks of at least this many rows (several row groups): about 100 MB
# of training_examples rows, twice that while a block is being permuted.
DEFAULT_SHUFFLE_BUFFER_ROWS = 100_000

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ExampleBatches:
    """Fixed-size training batches of the batch contract from Parquet files (e.g. ``Snapshot.files``).

    Iterating yields ``epochs`` passes over the files; ``epoch(e)`` yields pass ``e`` alone, the
    shape of the trainer's ``BatchSource`` callable (``source=batches.epoch``). Each pass opens its
    own Petastorm reader so that a batch never straddles two epochs and the order of pass ``e``
    depends on ``(seed, e)`` only: row groups are shuffled with a seed derived from it, then rows
    within blocks of at least ``shuffle_buffer_rows`` rows. That order is exactly reproducible
    (what an exact mid-epoch resume needs) with one reader worker; with more, row groups arrive
    in the order the workers finish them.

    ``unknown_labels`` maps a file, named as in ``files``, to labels whose values there are read
    as unknown (MISSING_LABEL), e.g. repurchase outcomes not observable as of the ds being
    trained for; entries for other files are ignored, so one mapping can serve several readers.

    ``shard``/``num_shards`` (Horovod's rank/size) give each process a disjoint set of row groups
    that together cover every row once; ranks get about, not exactly, the same number of rows,
    so a distributed loop must agree on a common number of steps.

    A pass's reader stops when the pass ends, when its iterator is closed or dropped (a consumer
    breaking out of its loop), and at ``close()`` / the end of a ``with`` block at the latest.
    """

    def __init__(
        self,
        files: Sequence[str],
        batch_size: int,
        fields: Sequence[Field] = MODEL_FIELDS,
        *,
        labels: Sequence[str] = LABELS,
        shard: Optional[int] = None,
        num_shards: Optional[int] = None,
        epochs: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        shuffle_buffer_rows: int = DEFAULT_SHUFFLE_BUFFER_ROWS,
        workers_count: int = 1,
        storage_options: Optional[Mapping[str, Any]] = None,
        prepare_ahead: bool = True,
        unknown_labels: Optional[Mapping[str, Sequence[str]]] = None,
    ) -> None:
        if not files:
            raise InputError("no files to read batches from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if (shard is None) != (num_shards is None):
            raise ValueError("give both shard and num_shards (Horovod rank and size), or neither")
        if num_shards is not None and not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} is not in [0, {num_shards})")
        self.urls = _urls(files)
        self.batch_size = batch_size
        self.fields = tuple(fields)
        self.labels = tuple(labels)
        self.shard = shard
        self.num_shards = num_shards
        self.epochs = epochs
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.workers_count = workers_count
        self.storage_options = dict(storage_options) if storage_options else None
        self.prepare_ahead = prepare_ahead  # convert and shuffle on a background thread
        # file URI -> labels read as unknown (MISSING_LABEL) in that file
        unknown = unknown_labels or {}
        self.unknown_labels = {url: tuple(unknown[f]) for f, url in zip(files, self.urls) if unknown.get(f)}
        self._passes: weakref.WeakSet[Iterator[dict[str, Tensor]]] = weakref.WeakSet()

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for e in range(self.epochs):
            yield from self.epoch(e)

    def epoch(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        """The batches of one pass over the shard; its order is a function of (seed, epoch)."""
        batches = self._read(epoch)
        self._passes.add(batches)
        return batches

    def close(self) -> None:
        """Stop the readers of passes still open (a consumer that stopped early, or failed)."""
        for batches in list(self._passes):
            batches.close()

    def __enter__(self) -> ExampleBatches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        seed = epoch_seed(self.seed, epoch)
        rng = np.random.default_rng(seed) if self.shuffle else None
        columns = input_columns(self.fields, self.labels)
        try:
            reader = open_batch_reader(
                self.urls,
                schema_fields=[re.escape(c) for c in columns],
                workers_count=self.workers_count,
                # In row groups (~100 MB each for training_examples): enough to keep the consumer fed.
                results_queue_size=2 * self.workers_count,
                seed=seed % 2**32 if self.shuffle else None,  # numpy's RandomState takes 32 bits
                shuffle_row_groups=self.shuffle,
                cur_shard=self.shard,
                shard_count=self.num_shards,
                hdfs_driver=HDFS_DRIVER,
                storage_options=self.storage_options,
                null_columns=self.unknown_labels,
            )
        except NoDataAvailableError as e:
            raise InputError(
                f"{len(self.urls)} file(s) hold fewer row groups than the {self.num_shards} shards: "
                "write the table in more files, or train on fewer processes"
            ) from e
        with reader:
            absent = sorted(set(columns) - set(reader.schema.fields))
            if absent:
                raise InputError(f"the files lack the column(s) {', '.join(absent)} (first file: {self.urls[0]})")
            chunks = (to_arrays(chunk._asdict(), self.fields, self.labels) for chunk in reader)
            batches = rebatch(chunks, self.batch_size, self.drop_last, rng, self.shuffle_buffer_rows)
            # Room for two shuffle blocks of batches: the next block is converted and shuffled
            # while training consumes this one.
            ahead = 2 * (max(self.batch_size, self.shuffle_buffer_rows) // self.batch_size + 1)
            for batch in _in_background(batches, ahead) if self.prepare_ahead else batches:
                yield to_tensors(batch)


def row_count(files: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None) -> int:
    """Rows in ``files`` from their Parquet footers, without reading data: for progress bars and
    steps per epoch. The files are resolved the way the reader resolves them."""
    if not files:
        return 0
    fs, paths = get_filesystem_and_path_or_paths(
        _urls(files), hdfs_driver=HDFS_DRIVER, storage_options=dict(storage_options) if storage_options else None
    )
    total = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            total += pq.read_metadata(f).num_rows
    return total


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def _in_background(items: Iterator[Arrays], ahead: int) -> Iterator[Arrays]:
    """``items`` in the same order, produced by a background thread up to ``ahead`` items early.

    Converting Petastorm's row groups and shuffling them costs about half a second per 157k-row
    block; on the training thread that stalls a step every block (BENCHMARKS.md). numpy and torch
    release the GIL in their loops, so the two threads overlap. Closing the iterator stops the
    thread before the reader it pulls from is closed."""
    queue_: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    finished = object()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                queue_.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(finished)
        except BaseException as error:  # handed to the consumer, which raises it
            offer(_Raised(error))

    thread = threading.Thread(target=produce, name="mtl-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = queue_.get()
            if item is finished:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def _urls(files: Sequence[str]) -> list[str]:
    """URIs as given (``file:/``, ``s3a://``, ``hdfs://``...); a plain local path becomes a ``file://``
    URI, which Petastorm requires (not percent-encoded: Petastorm uses the URI's path as it is)."""
    return [f if _SCHEME.match(f) else "file://" + os.path.abspath(f) for f in files]
