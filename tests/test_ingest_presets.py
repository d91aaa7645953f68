"""Each format preset on small hand-made inputs, with the exact rows expected in `events`."""

import datetime as dt

from mtl.ingest.job import run_ingest
from mtl.tables import EVENTS
from tests.support.tables import event_tuples, events

D = dt.date
T = dt.datetime


def test_taobao_preset_maps_behaviours_and_uses_china_dates(spark, make_config, write_file):
    cfg = make_config()
    path = write_file(
        "taobao.csv",
        "1,100,10,pv,1511544070\n"  # 2017-11-24 17:21 UTC is 2017-11-25 01:21 in China
        "1,101,10,buy,1511600000\n"
        "2,100,10,cart,1512230400\n"  # exactly 2017-12-03 00:00 China time
        "2,102,,fav,1511700000\n",  # no category
    )
    result = run_ingest(spark, cfg, path)

    assert (result.rows_read, result.accepted, result.quarantined, result.duplicates) == (4, 4, 0, 0)
    src = "taobao_user_behavior"
    assert event_tuples(spark, cfg) == [
        ("1", "100", "10", "view", T(2017, 11, 24, 17, 21, 10), D(2017, 11, 25), None, None, src),
        ("1", "101", "10", "purchase", T(2017, 11, 25, 8, 53, 20), D(2017, 11, 25), None, None, src),
        ("2", "100", "10", "cart", T(2017, 12, 2, 16, 0, 0), D(2017, 12, 3), None, None, src),
        ("2", "102", None, "fav", T(2017, 11, 26, 12, 40, 0), D(2017, 11, 26), None, None, src),
    ]
    ids = [r.event_id for r in events(spark, cfg).collect()]
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids)


def test_events_table_has_the_canonical_schema_and_partitioning(spark, make_config, write_file):
    cfg = make_config()
    run_ingest(spark, cfg, write_file("t.csv", "1,100,10,pv,1511544070\n"))
    table = events(spark, cfg)
    assert [(f.name, f.dataType.simpleString()) for f in table.schema] == [
        (c.name, c.dtype.simpleString()) for c in EVENTS.columns
    ]
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{EVENTS.path(cfg.storage)}`").first()
    assert detail.partitionColumns == ["event_date"]


def test_transactions_preset_every_row_is_a_purchase(spark, make_config, write_file):
    cfg = make_config()
    path = write_file(
        "tx.csv",
        "customer_id,product_id,invoice_ts,quantity,unit_price\n"
        "c1,p1,2021-03-01 10:15:00,2,3.5\n"
        "c1,p2,2021-03-01 23:59:59,1,10\n"
        "c2,p1,2021-03-02 00:00:00,6,3.25\n",
    )
    result = run_ingest(spark, cfg, path, format_name="transactions")
    assert (result.rows_read, result.accepted, result.quarantined) == (3, 3, 0)
    src = "transactions"
    assert event_tuples(spark, cfg) == [
        ("c1", "p1", None, "purchase", T(2021, 3, 1, 10, 15), D(2021, 3, 1), 2, 3.5, src),
        ("c1", "p2", None, "purchase", T(2021, 3, 1, 23, 59, 59), D(2021, 3, 1), 1, 10.0, src),
        ("c2", "p1", None, "purchase", T(2021, 3, 2), D(2021, 3, 2), 6, 3.25, src),
    ]


def test_transactions_with_other_column_names_and_zones_through_config_only(spark, make_config, write_file):
    cfg = make_config(
        "formats.transactions.mapping.user_id=CustomerID",
        "formats.transactions.mapping.item_id=StockCode",
        "formats.transactions.mapping.event_ts=InvoiceDate",
        "formats.transactions.mapping.quantity=Quantity",
        "formats.transactions.mapping.price=UnitPrice",
        "formats.transactions.timestamp_format=M/d/yyyy H:mm",
        "formats.transactions.source_time_zone=Europe/London",
        "formats.transactions.business_time_zone=Europe/London",
        "ingest.source=online_retail",
    )
    path = write_file(
        "retail.csv",
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
        '536365,85123A,"WHITE HANGING HEART, T-LIGHT HOLDER",6,12/1/2010 8:26,2.55,17850\n'
        "536366,22633,HAND WARMER,6,7/1/2011 23:30,1.85,17850\n",  # British summer time: 22:30 UTC
    )
    result = run_ingest(spark, cfg, path, format_name="transactions")
    assert (result.rows_read, result.accepted, result.quarantined) == (2, 2, 0)
    assert event_tuples(spark, cfg) == [
        ("17850", "22633", None, "purchase", T(2011, 7, 1, 22, 30), D(2011, 7, 1), 6, 1.85, "online_retail"),
        ("17850", "85123A", None, "purchase", T(2010, 12, 1, 8, 26), D(2010, 12, 1), 6, 2.55, "online_retail"),
    ]


def test_canonical_preset_csv_with_offsets(spark, make_config, write_file):
    cfg = make_config()
    path = write_file(
        "canonical.csv",
        "user_id,item_id,category_id,event_type,event_ts,quantity,price\n"
        "u1,i1,c1,impression,2024-05-01T10:00:00Z,,\n"
        "u1,i1,c1,click,2024-05-01T12:00:01+02:00,,\n"
        "u1,i1,c1,purchase,2024-05-01 23:30:00,3,9.99\n",  # no offset: UTC
    )
    result = run_ingest(spark, cfg, path, format_name="canonical")
    assert (result.rows_read, result.accepted) == (3, 3)
    assert event_tuples(spark, cfg) == [
        ("u1", "i1", "c1", "click", T(2024, 5, 1, 10, 0, 1), D(2024, 5, 1), None, None, "canonical"),
        ("u1", "i1", "c1", "impression", T(2024, 5, 1, 10), D(2024, 5, 1), None, None, "canonical"),
        ("u1", "i1", "c1", "purchase", T(2024, 5, 1, 23, 30), D(2024, 5, 1), 3, 9.99, "canonical"),
    ]


def test_json_lines_and_parquet_readers(spark, make_config, write_file, tmp_path):
    cfg = make_config(
        "formats.canonical.reader=json",
        "formats.canonical.timestamp_format=unix_millis",
        "ingest.max_quarantine_share=0.5",
    )
    path = write_file(
        "events.jsonl",
        '{"user_id": "u1", "item_id": 7, "category_id": "c", "event_type": "view", "event_ts": 1714557600000}\n'
        '{"user_id": "u2", "item_id": 8, "event_type": "cart", "event_ts": 1714557601500, "quantity": 1}\n'
        '{"user_id": "u3", "item_id": \n',  # broken JSON
    )
    result = run_ingest(spark, cfg, path, format_name="canonical")
    assert (result.rows_read, result.accepted, result.quarantined) == (3, 2, 1)
    assert result.reject_reasons == {"MALFORMED_RECORD": 1}
    assert event_tuples(spark, cfg)[:2] == [
        ("u1", "7", "c", "view", T(2024, 5, 1, 10), D(2024, 5, 1), None, None, "canonical"),
        ("u2", "8", None, "cart", T(2024, 5, 1, 10, 0, 1, 500000), D(2024, 5, 1), 1, None, "canonical"),
    ]

    parquet_dir = str(tmp_path / "pq")
    spark.createDataFrame(
        [("u9", 5, "fav", T(2024, 5, 2, 1, 2, 3))],
        "user_id string, item_id long, event_type string, event_ts timestamp",
    ).write.parquet(parquet_dir)
    cfg_pq = make_config("formats.canonical.reader=parquet")
    result = run_ingest(spark, cfg_pq, parquet_dir, format_name="canonical")
    assert (result.rows_read, result.accepted, result.quarantined) == (1, 1, 0)
    assert ("u9", "5", None, "fav", T(2024, 5, 2, 1, 2, 3), D(2024, 5, 2), None, None, "canonical") in event_tuples(
        spark, cfg_pq
    )


def test_parquet_from_pandas_with_nanosecond_timestamps(spark, make_config, tmp_path):
    """pandas with pyarrow 13 or later writes INT64 TIMESTAMP(NANOS) by default (Parquet format
    2.6; the pinned pyarrow 12 needs it asked for), which Spark refuses to read as timestamps:
    ingest reads them anyway, naive ones as wall clock in the source time zone."""
    import pandas as pd

    naive = tmp_path / "naive"
    naive.mkdir()
    pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["7", "8"],
            "event_type": ["view", "purchase"],
            "event_ts": pd.to_datetime(["2024-05-02 09:02:03.000001789", "2024-05-02 23:30:00.000000000"]),
            "quantity": [None, 2],
        }
    ).to_parquet(naive / "part-0.parquet", version="2.6")
    cfg = make_config("formats.canonical.reader=parquet", "formats.canonical.source_time_zone=Asia/Shanghai")
    result = run_ingest(spark, cfg, str(naive), format_name="canonical")
    assert (result.rows_read, result.accepted, result.quarantined) == (2, 2, 0)
    assert event_tuples(spark, cfg) == [
        ("u1", "7", None, "view", T(2024, 5, 2, 1, 2, 3, 1), D(2024, 5, 2), None, None, "canonical"),
        ("u2", "8", None, "purchase", T(2024, 5, 2, 15, 30), D(2024, 5, 2), 2, None, "canonical"),
    ]

    aware = tmp_path / "aware"
    aware.mkdir()
    pd.DataFrame(
        {
            "user_id": ["u3"],
            "item_id": ["9"],
            "event_type": ["cart"],
            "event_ts": pd.to_datetime(["2024-05-03T04:05:06Z"]),
        }
    ).to_parquet(aware / "part-0.parquet", version="2.6")
    cfg = make_config("formats.canonical.reader=parquet", "formats.canonical.source_time_zone=Asia/Shanghai")
    run_ingest(spark, cfg, str(aware), format_name="canonical")
    assert ("u3", "9", None, "cart", T(2024, 5, 3, 4, 5, 6), D(2024, 5, 3), None, None, "canonical") in event_tuples(
        spark, cfg
    )
