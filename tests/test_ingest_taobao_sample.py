"""The real public Taobao sample: every line accounted for, China-time dates."""

import csv
import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from pyspark.sql import functions as F

from mtl.ingest import normalize as N
from mtl.ingest.job import run_ingest
from tests.conftest import SHARED_DATA
from tests.support.tables import events, quarantine, runs

SAMPLE = SHARED_DATA / "taobao_user_behavior_sample.csv"
CHINA = ZoneInfo("Asia/Shanghai")
BEHAVIOUR = {"pv": "view", "fav": "fav", "cart": "cart", "buy": "purchase"}


def _reference():
    """What ingest must produce, computed line by line with the standard library."""
    lines = complete = 0
    dates, types = Counter(), Counter()
    out_of_range = 0
    with open(SAMPLE, newline="") as f:
        for row in csv.reader(f):
            lines += 1
            if len(row) != 5:
                continue
            complete += 1
            date = dt.datetime.fromtimestamp(int(row[4]), CHINA).date()
            if not dt.date(2017, 11, 25) <= date < dt.date(2017, 12, 4):
                out_of_range += 1
                continue
            dates[date] += 1
            types[BEHAVIOUR[row[3]]] += 1
    return lines, complete, out_of_range, dates, types


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared data not present")
def test_every_line_of_the_sample_is_accounted_for(spark, make_config):
    cfg = make_config()
    lines, complete, out_of_range, dates, types = _reference()
    result = run_ingest(spark, cfg, str(SAMPLE))

    # The facts documented in shared/data/README.md ...
    assert lines == 84476 and lines - complete == 1 and out_of_range == 35
    # ... and ingest's account of them.
    assert result.rows_read == lines
    assert result.reject_reasons == {N.MALFORMED_RECORD: 1, N.TIMESTAMP_OUT_OF_RANGE: 35}
    assert result.rows_read == result.accepted + result.quarantined + result.duplicates
    assert result.accepted == sum(dates.values()) == 84440

    table = events(spark, cfg)
    by_date = {r.event_date: r["count"] for r in table.groupBy("event_date").count().collect()}
    assert by_date == dict(dates)  # China-time dates: nothing on 2017-11-24
    assert {r.event_type: r["count"] for r in table.groupBy("event_type").count().collect()} == dict(types)

    truncated = quarantine(spark, cfg).filter(F.col("reason") == N.MALFORMED_RECORD).first()
    assert truncated.raw_record == "100370,1968385,1875258,pv"
    run = runs(spark, cfg).first()
    assert (run.input_rows, run.output_rows, run.rejected_rows, run.duplicate_rows) == (84476, 84440, 36, 0)
