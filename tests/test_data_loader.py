"""The training data path end to end, on a real Delta table: snapshot -> Parquet files ->
Petastorm -> the batch contract the model reads.

One small training_examples table serves every test. Its history: version 1 writes day A,
version 2 day B, version 3 overwrites day A with other rows. Every value of a row derives from
its id, so the expected batches are rebuilt independently of the loader.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from petastorm.workers_pool.thread_pool import WorkerThread

from mtl import delta_io
from mtl.data.arrow_columns import list_column_to_matrix
from mtl.data.batch import in_memory_batches, input_columns
from mtl.data.loader import ExampleBatches, row_count
from mtl.data.snapshot import describe_days, snapshot_files
from mtl.errors import InputError
from mtl.schema import (
    HISTORY_LENGTH,
    LABELS,
    MISSING_LABEL,
    PAD_HASH,
    TOP_CATEGORIES,
    Field,
    dense_columns,
    model_fields,
    unobserved_labels,
)
from mtl.tables import TRAINING_EXAMPLES

A = dt.date(2024, 3, 10)
B = dt.date(2024, 3, 11)
FILES_PER_DAY = 3
OLD_A = range(1, 61)
DAY_B = range(101, 151)
NEW_A = range(201, 246)
FIELDS = model_fields()
DENSE = dense_columns()

# mtl.data.loader silences these for jobs, but pytest resets warning filters around every test.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:petastorm")


def signed_hash(i: int, salt: int) -> int:
    """A distinct, non-zero int64 spread over the whole range (negative ones included), as xxhash64 is."""
    return (i * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) % 2**64 - 2**63


def example(i: int, ds: dt.date) -> dict:
    """Row ``i`` of training_examples. Labels have nulls in varied patterns; repurchase_30d has
    none on day B, so Petastorm hands it over as int32 there and as float64 with NaN on day A."""
    history = i % (HISTORY_LENGTH + 1)
    padding = [PAD_HASH] * (HISTORY_LENGTH - history)
    row = {
        "user_id": f"u{i}",
        "item_id": f"i{i}",
        "category_id": None if i % 7 == 0 else f"c{i % 7}",
        "row_kind": "exposure",
        "is_sampled_negative": False,
        "user_hash": signed_hash(i, 1),
        "item_hash": signed_hash(i, 2),
        "category_hash": PAD_HASH if i % 7 == 0 else signed_hash(i % 7, 3),
        "row_kind_code": i % 3 + 1,
        "hist_item_hashes": [signed_hash(i * 100 + k, 4) for k in range(history)] + padding,
        "hist_category_hashes": [signed_hash(k, 3) for k in range(history)] + padding,
        "hist_length": history,
        "u_top_category_hashes": [signed_hash(i % 5 + k, 3) for k in range(TOP_CATEGORIES)],
        "click": [None, 0, 1][i % 3],
        "purchase": None if i % 100 < 10 else i % 2,
        "repurchase_7d": None if i % 2 else int(i % 4 == 0),
        "repurchase_30d": i % 2 if ds == B else (None if i % 5 == 0 else i % 2),
        "ds": ds,
    }
    # Multiples of 1/8 are exact in float32, so values can be compared exactly.
    row.update({c: i + j / 8 for j, c in enumerate(DENSE)})
    return row


def expected(*days: tuple[dt.date, range]) -> dict[str, np.ndarray]:
    """The batch contract of the given rows, built row by row (independently of the loader), sorted by user_hash."""
    rows = [example(i, ds) for ds, ids in days for i in ids]
    out = {f.name: np.array([r[f.name] for r in rows], dtype=np.int64) for f in FIELDS if f.kind != "dense"}
    out["dense"] = np.array([[r[c] for c in DENSE] for r in rows], dtype=np.float32)
    for label in LABELS:
        out[label] = np.array([MISSING_LABEL if r[label] is None else r[label] for r in rows], dtype=np.float32)
    return by_user(out)


def by_user(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(arrays["user_hash"], kind="stable")
    return {k: v[order] for k, v in arrays.items()}


def collect(batches) -> dict[str, np.ndarray]:
    """Every batch concatenated, as numpy, in delivery order."""
    batches = list(batches)
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def user_hashes(batches) -> np.ndarray:
    return np.concatenate([b["user_hash"].numpy() for b in batches])


def assert_same(actual: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> None:
    assert actual.keys() == wanted.keys()
    for key in wanted:
        np.testing.assert_array_equal(actual[key], wanted[key], err_msg=key)


def write_day(spark, path: str, ds: dt.date, ids: range) -> int:
    rows = [tuple(example(i, ds)[c] for c in TRAINING_EXAMPLES.column_names) for i in ids]
    df = spark.createDataFrame(rows, TRAINING_EXAMPLES.schema).repartition(FILES_PER_DAY)
    return delta_io.replace_partition(spark, df, TRAINING_EXAMPLES, path, ds).version


@dataclass(frozen=True)
class Table:
    path: str
    first_version: int  # day A with OLD_A only
    version: int  # day A overwritten with NEW_A, day B with DAY_B


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory) -> Table:
    path = str(tmp_path_factory.mktemp("data_loader") / "training_examples")
    first = write_day(spark, path, A, OLD_A)
    write_day(spark, path, B, DAY_B)
    return Table(path, first, write_day(spark, path, A, NEW_A))


@pytest.fixture(scope="module")
def current(spark, table):
    return snapshot_files(spark, table.path, A, B)


def petastorm_threads() -> int:
    return sum(isinstance(t, WorkerThread) for t in threading.enumerate())


# ---------------------------------------------------------------------------------------------


def test_batches_follow_the_contract(current):
    batches = list(ExampleBatches(current.files, 32, shuffle=False))
    first = batches[0]
    assert list(first) == [f.name for f in FIELDS if f.kind != "dense"] + ["dense", *LABELS]
    for f in FIELDS:
        if f.kind == "categorical":
            assert (first[f.name].dtype, first[f.name].shape) == (torch.int64, (32,)), f.name
        elif f.kind == "sequence":
            assert (first[f.name].dtype, first[f.name].shape) == (torch.int64, (32, f.length)), f.name
    assert (first["dense"].dtype, first["dense"].shape) == (torch.float32, (32, len(DENSE)))
    for label in LABELS:
        assert (first[label].dtype, first[label].shape) == (torch.float32, (32,)), label

    got = by_user(collect(batches))
    assert_same(got, expected((A, NEW_A), (B, DAY_B)))
    for label in LABELS:
        assert set(np.unique(got[label])) == {MISSING_LABEL, 0.0, 1.0}, label


def test_in_memory_batches_convert_like_the_files():
    rows = [example(i, A) for i in NEW_A]
    frame = pd.DataFrame(rows)[input_columns()]
    # The null flavours a DataFrame may carry: object with None, float with NaN, pandas' nullable ints.
    frame["purchase"] = frame["purchase"].astype(object)
    frame["repurchase_7d"] = frame["repurchase_7d"].astype("float64")
    frame["repurchase_30d"] = frame["repurchase_30d"].astype("Int32")
    frame["hist_item_hashes"] = [np.array(h) for h in frame["hist_item_hashes"]]  # arrays, as toPandas gives

    batches = list(in_memory_batches(frame, 10))
    assert [len(b["user_hash"]) for b in batches] == [10, 10, 10, 10, 5]
    assert_same(by_user(collect(batches)), expected((A, NEW_A)))

    shuffled = collect(in_memory_batches(frame, 10, shuffle=True, seed=1))
    assert not np.array_equal(shuffled["user_hash"], collect(batches)["user_hash"])
    assert_same(by_user(shuffled), expected((A, NEW_A)))


def test_misshapen_columns_are_rejected_with_their_name():
    frame = pd.DataFrame([example(i, A) for i in NEW_A])[input_columns()]
    ragged = frame.copy()
    ragged.at[3, "hist_item_hashes"] = [1, 2]
    with pytest.raises(InputError, match="hist_item_hashes: rows hold sequences of different lengths"):
        next(in_memory_batches(ragged, 8))
    short = frame.copy()
    short["u_top_category_hashes"] = [h[:2] for h in short["u_top_category_hashes"]]
    with pytest.raises(
        InputError, match=r"u_top_category_hashes: expected 3 integer hashes per row, got int64 of shape \(45, 2\)"
    ):
        next(in_memory_batches(short, 8))
    nulls = frame.copy()
    nulls.loc[0, "item_hash"] = None  # a null turns the column into float
    with pytest.raises(InputError, match="item_hash: expected one integer hash per row, got float64"):
        next(in_memory_batches(nulls, 8))
    with pytest.raises(InputError, match="lack the column.* click"):
        next(in_memory_batches(frame.drop(columns="click"), 8))


def test_list_columns_become_matrices_from_their_flat_values():
    lists = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    # Two chunks, the second a slice (its values buffer starts before its first row).
    column = pa.chunked_array([pa.array(lists[:1]), pa.array(lists).slice(1)])
    matrix = list_column_to_matrix("h", column)
    np.testing.assert_array_equal(matrix, np.vstack(lists))
    assert matrix.dtype == np.int64
    assert list_column_to_matrix("h", pa.chunked_array([pa.array([[1]])]).slice(0, 0)).shape == (0,)


def test_ragged_or_null_lists_in_files_are_rejected_with_their_name(current, tmp_path):
    """Rows of a file that break the fixed-length contract fail the read, naming the column."""
    good = pq.read_table(current.files[0].removeprefix("file:"))
    history = good.column("hist_item_hashes").to_pylist()
    for case, bad_row, message in (
        ("ragged", [1, 2], r"hist_item_hashes: rows hold lists of different lengths \(2 to 20\)"),
        ("null", None, r"hist_item_hashes: 1 row\(s\) hold a null"),
    ):
        rows = [bad_row, *history[1:]]
        broken = good.set_column(
            good.schema.get_field_index("hist_item_hashes"),
            "hist_item_hashes",
            pa.array(rows, type=good.schema.field("hist_item_hashes").type),
        )
        path = tmp_path / f"{case}.parquet"
        pq.write_table(broken, path)
        with pytest.raises(InputError, match=message):
            list(ExampleBatches([str(path)], 8))
    assert petastorm_threads() == 0


def test_unobserved_labels_are_read_as_unknown_per_file(current):
    """A model trained for ds B + 1 must not learn day B's repurchase outcomes (their windows reach
    past B): the reader nulls them in B's files, and leaves day A's 30-day ones alone."""
    as_of = B + dt.timedelta(days=1)
    assert unobserved_labels(A, as_of) == ("repurchase_7d", "repurchase_30d")  # A + 7 > B + 1
    assert unobserved_labels(A, A + dt.timedelta(days=7)) == ("repurchase_30d",)  # [A, A + 7) observed
    assert unobserved_labels(A, A + dt.timedelta(days=30)) == ()
    assert {day for day in current.file_days.values()} == {A, B}
    assert sorted(current.file_days) == current.files
    day_b = [f for f, day in current.file_days.items() if day == B]
    assert len(day_b) == FILES_PER_DAY

    masked = by_user(
        collect(
            ExampleBatches(current.files, 32, unknown_labels={f: ["repurchase_7d", "repurchase_30d"] for f in day_b})
        )
    )
    wanted = expected((A, NEW_A), (B, DAY_B))
    on_b = np.isin(wanted["user_hash"], expected((B, DAY_B))["user_hash"])
    for label in ("repurchase_7d", "repurchase_30d"):
        wanted[label] = np.where(on_b, np.float32(MISSING_LABEL), wanted[label])
    assert_same(masked, wanted)


def test_two_shards_are_disjoint_and_cover_every_row(current):
    shards = [
        user_hashes(ExampleBatches(current.files, 16, shard=k, num_shards=2, seed=5, shuffle_buffer_rows=20))
        for k in (0, 1)
    ]
    assert all(len(s) for s in shards)
    assert not set(shards[0]) & set(shards[1])
    both = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(both, expected((A, NEW_A), (B, DAY_B))["user_hash"])


def test_reader_sees_only_the_snapshot(spark, table, current):
    assert current.version == table.version
    assert current.rows == len(NEW_A) + len(DAY_B) == row_count(current.files)
    assert len(current.files) == 2 * FILES_PER_DAY

    day_a = snapshot_files(spark, table.path, A, A)
    before = snapshot_files(spark, table.path, A, A, version=table.first_version)
    assert (before.version, before.rows) == (table.first_version, len(OLD_A))
    assert not set(before.files) & set(current.files)
    # The overwritten files are still on disk (time travel needs them): a glob would read them too.
    on_disk = {str(p) for p in Path(table.path, f"ds={A}").glob("*.parquet")}
    local = {f.removeprefix("file:") for f in before.files + day_a.files}
    assert local == on_disk and all(os.path.exists(f) for f in local)

    now = by_user(collect(ExampleBatches(day_a.files, 64)))
    assert_same(now, expected((A, NEW_A)))
    # Plain local paths work as well as the file: URIs Delta lists.
    old_paths = [f.removeprefix("file:") for f in before.files]
    assert row_count(old_paths) == len(OLD_A)
    then = by_user(collect(ExampleBatches(old_paths, 64)))
    assert_same(then, expected((A, OLD_A)))


def test_remainder_is_carried_over(current):
    rows = current.rows
    for batch_size, shuffle in ((7, False), (13, True), (1000, True)):
        batches = ExampleBatches(current.files, batch_size, shuffle=shuffle, shuffle_buffer_rows=20)
        sizes = [len(b["user_hash"]) for b in batches]
        assert sum(sizes) == rows and set(sizes[:-1]) <= {batch_size}, (batch_size, sizes)
    kept = ExampleBatches(current.files, 13, drop_last=True, shuffle_buffer_rows=20)
    sizes = [len(b["user_hash"]) for b in kept]
    assert sizes == [13] * (rows // 13)
    assert len(set(user_hashes(kept.epoch(0)))) == rows // 13 * 13


def test_order_depends_on_seed_and_epoch_only(current):
    batches = ExampleBatches(current.files, 16, seed=3, epochs=2, shuffle_buffer_rows=20)
    first, again, second = (user_hashes(batches.epoch(e)) for e in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))
    np.testing.assert_array_equal(user_hashes(batches), np.concatenate([first, second]))
    other_seed = user_hashes(ExampleBatches(current.files, 16, seed=4, shuffle_buffer_rows=20))
    assert not np.array_equal(first, other_seed)


def test_readers_stop_when_the_consumer_stops_early(current):
    assert petastorm_threads() == 0
    batches = ExampleBatches(current.files, 8, epochs=3)
    for _ in batches:
        assert petastorm_threads() == 1
        break
    assert petastorm_threads() == 0

    with ExampleBatches(current.files, 8) as batches:
        running = batches.epoch(0)
        next(running)
        assert petastorm_threads() == 1
    assert petastorm_threads() == 0
    assert next(running, None) is None


def test_clear_errors(spark, table, current, tmp_path):
    with pytest.raises(InputError, match="no Delta table at"):
        snapshot_files(spark, str(tmp_path / "nothing"), A, B)
    with pytest.raises(
        InputError, match=r"no rows for ds 2024-02-01\.\.2024-02-03; it has ds 2024-03-10\.\.2024-03-11"
    ):
        snapshot_files(spark, table.path, dt.date(2024, 2, 1), dt.date(2024, 2, 3))
    with pytest.raises(
        InputError, match=r"no rows for ds 2024-03-12\.\.2024-03-13 \(asked for 2024-03-10\.\.2024-03-13"
    ):
        snapshot_files(spark, table.path, A, dt.date(2024, 3, 13))
    with pytest.raises(InputError, match="ends before it starts"):
        snapshot_files(spark, table.path, B, A)
    with pytest.raises(InputError, match=f"cannot read version {table.version + 1}"):
        snapshot_files(spark, table.path, A, B, version=table.version + 1)

    with pytest.raises(InputError, match="no files"):
        ExampleBatches([], 8)
    with pytest.raises(InputError, match="fewer row groups than the 10 shards"):
        next(iter(ExampleBatches(current.files, 8, shard=0, num_shards=10)))
    with pytest.raises(InputError, match="lack the column.* u_mood"):
        next(iter(ExampleBatches(current.files, 8, [*FIELDS, Field("u_mood", "dense", "user")])))
    assert petastorm_threads() == 0


def test_describe_days():
    days = [dt.date(2024, 3, d) for d in (1, 2, 3, 5, 7, 8)]
    assert describe_days(days) == "2024-03-01..2024-03-03, 2024-03-05, 2024-03-07..2024-03-08"
