"""Bad rows never crash ingest and never vanish: each lands in events_quarantine with its reason."""

import json

import pytest
from pyspark.sql import functions as F

from mtl.ingest import normalize as N
from mtl.ingest.job import QuarantineLimitExceeded, run_ingest
from mtl.tables import EVENTS
from tests.support.tables import event_tuples, events, quarantine, runs

GOOD = "1,100,10,pv,1511600000\n"


def _reasons_by_raw(spark, cfg, run_id):
    rows = quarantine(spark, cfg).filter(F.col("run_id") == run_id).collect()
    return {r.raw_record: (r.reason, r.detail) for r in rows}


def test_every_bad_row_kind_is_quarantined_with_its_reason(spark, make_config, write_file):
    cfg = make_config("ingest.max_quarantine_share=1.0")
    lines = {
        "1,100,10,pv": N.MALFORMED_RECORD,  # too few fields
        "1,100,10,pv,1511600000,extra": N.MALFORMED_RECORD,  # too many
        ",100,10,pv,1511600000": N.MISSING_USER_ID,
        "1,  ,10,pv,1511600000": N.MISSING_ITEM_ID,
        "1,100,10,pv,": N.MISSING_TIMESTAMP,
        "1,100,10,pv,yesterday": N.BAD_TIMESTAMP,
        "1,100,10,pv,1505000000": N.TIMESTAMP_OUT_OF_RANGE,  # September 2017, before the documented range
        "1,100,10,pv,1512316800": N.TIMESTAMP_OUT_OF_RANGE,  # 2017-12-04 00:00 China time: range end is exclusive
        "1,100,10,like,1511600000": N.UNKNOWN_EVENT_TYPE,
    }
    path = write_file("bad.csv", GOOD + "\n".join(lines) + "\n")
    result = run_ingest(spark, cfg, path)

    assert result.rows_read == 1 + len(lines)
    assert (result.accepted, result.quarantined, result.duplicates) == (1, len(lines), 0)
    assert result.rows_read == result.accepted + result.quarantined + result.duplicates
    assert result.reject_reasons == {
        N.MALFORMED_RECORD: 2,
        N.MISSING_USER_ID: 1,
        N.MISSING_ITEM_ID: 1,
        N.MISSING_TIMESTAMP: 1,
        N.BAD_TIMESTAMP: 1,
        N.TIMESTAMP_OUT_OF_RANGE: 2,
        N.UNKNOWN_EVENT_TYPE: 1,
    }

    # Malformed lines are kept verbatim; other rows as JSON of all their fields (blank -> null).
    columns = ["user", "item", "category", "behavior", "ts"]

    def raw_json(line):
        return json.dumps({c: v or None for c, v in zip(columns, line.split(","))}, separators=(",", ":"))

    expected = {line if reason == N.MALFORMED_RECORD else raw_json(line): reason for line, reason in lines.items()}
    found = _reasons_by_raw(spark, cfg, result.run_id)
    assert {raw: reason for raw, (reason, _) in found.items()} == expected
    assert found[raw_json("1,100,10,like,1511600000")] == (N.UNKNOWN_EVENT_TYPE, "like")
    assert found[raw_json("1,100,10,pv,yesterday")] == (N.BAD_TIMESTAMP, "yesterday")
    assert found[raw_json("1,100,10,pv,1505000000")] == (N.TIMESTAMP_OUT_OF_RANGE, "1505000000")
    assert quarantine(spark, cfg).filter("run_rejected").count() == 0
    assert events(spark, cfg).count() == 1


def test_ids_over_the_length_bound_and_text_that_was_not_utf8_are_quarantined(spark, make_config, tmp_path):
    """ingest.max_id_length bounds user, item and category ids; bytes that were not UTF-8 (which the
    reader turns into U+FFFD) never reach events as if they were text."""
    cfg = make_config("ingest.max_quarantine_share=1.0", "ingest.max_id_length=8")
    lines = [
        b"12345678,100,10,pv,1511600000",  # at the bound: accepted
        b"123456789,100,10,pv,1511600000",  # user id one over
        b"1,100,123456789,pv,1511600000",  # category id one over
        b"1," + b"9" * 200_000 + b",10,pv,1511600000",  # 200,000-character item id
        b"1,10\xff0,10,pv,1511600000",  # invalid UTF-8 in the item id
        b"1,100,\xc3,buy,1511600000",  # a truncated two-byte sequence in the category
    ]
    path = tmp_path / "input" / "limits.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_ingest(spark, cfg, str(path))

    assert (result.rows_read, result.accepted, result.quarantined, result.duplicates) == (6, 1, 5, 0)
    assert result.reject_reasons == {N.ID_TOO_LONG: 3, N.BAD_ENCODING: 2}
    rows = quarantine(spark, cfg).filter(F.col("run_id") == result.run_id).collect()
    assert sorted((r.reason, r.detail) for r in rows) == [
        (N.BAD_ENCODING, "category"),
        (N.BAD_ENCODING, "item"),
        (N.ID_TOO_LONG, "category_id"),
        (N.ID_TOO_LONG, "item_id"),
        (N.ID_TOO_LONG, "user_id"),
    ]
    assert max(len(r.raw_record) for r in rows) > 200_000  # the raw row is kept whole
    assert [r.user_id for r in events(spark, cfg).collect()] == ["12345678"]


def test_purchase_quantity_and_price_checks(spark, make_config, write_file):
    cfg = make_config("ingest.max_quarantine_share=1.0")
    path = write_file(
        "tx.csv",
        "customer_id,product_id,invoice_ts,quantity,unit_price\n"
        "c1,p1,2021-03-01 10:00:00,2,1.5\n"
        "c1,p2,2021-03-01 10:00:00,0,1.5\n"
        "c1,p3,2021-03-01 10:00:00,-3,1.5\n"
        "c1,p4,2021-03-01 10:00:00,two,1.5\n"
        "c1,p5,2021-03-01 10:00:00,1,cheap\n"
        "c1,p6,2021-03-01 10:00:00,1,-1\n"
        "c1,p7,01/03/2021,1,1\n"
        "c1,p8,2199-01-01 00:00:00,1,1\n",  # beyond the allowed clock skew
    )
    result = run_ingest(spark, cfg, path, format_name="transactions")
    by_item = {
        r.raw_record and json.loads(r.raw_record)["product_id"]: (r.reason, r.detail)
        for r in quarantine(spark, cfg).collect()
    }
    assert by_item == {
        "p2": (N.NONPOSITIVE_PURCHASE_QUANTITY, "0"),
        "p3": (N.NONPOSITIVE_PURCHASE_QUANTITY, "-3"),
        "p4": (N.BAD_QUANTITY, "two"),
        "p5": (N.BAD_PRICE, "cheap"),
        "p6": (N.BAD_PRICE, "-1"),
        "p7": (N.BAD_TIMESTAMP, "01/03/2021"),
        "p8": (N.TIMESTAMP_OUT_OF_RANGE, "2199-01-01 00:00:00"),
    }
    assert (result.rows_read, result.accepted, result.quarantined) == (8, 1, 7)


def test_counts_are_recorded_in_pipeline_runs(spark, make_config, write_file):
    cfg = make_config("ingest.max_quarantine_share=0.5")
    path = write_file("t.csv", GOOD + GOOD + "2,200,20,buy,1511600001\n" + "3,300,30,pv\n")
    result = run_ingest(spark, cfg, path)
    run = runs(spark, cfg).filter(F.col("run_id") == result.run_id).first()
    assert run.job == "ingest" and run.status == "succeeded"
    assert (run.input_rows, run.output_rows, run.rejected_rows, run.duplicate_rows) == (4, 2, 1, 1)
    assert run.input_rows == run.output_rows + run.rejected_rows + run.duplicate_rows
    assert run.tables_written[EVENTS.name] >= 1
    assert run.config_hash == cfg.fingerprint()
    assert json.loads(run.details)["reject_reasons"] == {N.MALFORMED_RECORD: 1}
    assert run.ended_at >= run.started_at


def test_quarantine_share_above_limit_fails_and_writes_no_events(spark, make_config, write_file):
    cfg = make_config()  # default limit: 1%
    run_ingest(spark, cfg, write_file("good.csv", GOOD))
    before = event_tuples(spark, cfg)
    version_before = spark.sql(f"DESCRIBE HISTORY delta.`{EVENTS.path(cfg.storage)}`").count()

    path = write_file("mostly_good.csv", "".join(f"{u},100,10,pv,1511600000\n" for u in range(2, 50)) + "9,9,9,pv\n")
    with pytest.raises(QuarantineLimitExceeded) as err:
        run_ingest(spark, cfg, path)
    message = str(err.value)
    assert "1 of 49 rows (2.04%)" in message and "max_quarantine_share=1.00%" in message
    assert "nothing was written to events" in message

    assert event_tuples(spark, cfg) == before
    assert spark.sql(f"DESCRIBE HISTORY delta.`{EVENTS.path(cfg.storage)}`").count() == version_before
    marked = quarantine(spark, cfg).filter("run_rejected").collect()
    assert [r.raw_record for r in marked] == ["9,9,9,pv"]
    failed = runs(spark, cfg).filter("status = 'failed'").first()
    assert failed.run_id == marked[0].run_id
    assert "QuarantineLimitExceeded" in failed.error and failed.rejected_rows == 1 and failed.output_rows == 0


def test_a_write_that_fails_half_way_leaves_events_as_they_were(spark, make_config, write_file):
    cfg = make_config()
    run_ingest(spark, cfg, write_file("first.csv", GOOD))
    before = event_tuples(spark, cfg)
    path = EVENTS.path(cfg.storage)
    # A table constraint that one row of the next batch breaks makes Delta abort the write
    # after other tasks have already written their files.
    spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT no_poison CHECK (item_id <> 'poison')")
    version = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count()
    batch = "".join(f"{u},{u},1,pv,{1511600000 + u}\n" for u in range(200, 400)) + "7,poison,1,pv,1511600000\n"

    with pytest.raises(Exception, match="no_poison"):
        run_ingest(spark, cfg, write_file("second.csv", batch))

    assert spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count() == version
    assert event_tuples(spark, cfg) == before
    failed = runs(spark, cfg).filter("status = 'failed'").first()
    assert failed is not None and "no_poison" in failed.error


def test_empty_or_missing_input_fails_clearly_and_is_recorded(spark, make_config, write_file, tmp_path):
    from mtl.errors import InputError

    cfg = make_config()
    with pytest.raises(InputError, match="has no rows"):
        run_ingest(spark, cfg, write_file("empty.csv", ""))
    with pytest.raises(InputError, match=f"input not found: {tmp_path}/nope.csv"):
        run_ingest(spark, cfg, str(tmp_path / "nope.csv"))
    failed = runs(spark, cfg).filter("status = 'failed'").collect()
    assert len(failed) == 2 and all("InputError" in r.error for r in failed)
