"""Exact duplicates are written once: within a file, across reruns and across overlapping inputs."""

from mtl.ingest.job import run_ingest
from tests.support.tables import event_tuples, events

ROWS = [f"{u},{100 + u},10,pv,{1511600000 + u}\n" for u in range(1, 6)]


def _all_events(spark, cfg):
    return sorted(tuple(r) for r in events(spark, cfg).collect())


def test_reingesting_the_same_file_leaves_events_unchanged(spark, make_config, write_file):
    cfg = make_config()
    path = write_file("a.csv", "".join(ROWS))
    first = run_ingest(spark, cfg, path)
    snapshot = _all_events(spark, cfg)
    second = run_ingest(spark, cfg, path)

    assert (first.accepted, first.duplicates) == (5, 0)
    assert (second.rows_read, second.accepted, second.duplicates, second.quarantined) == (5, 0, 5, 0)
    assert _all_events(spark, cfg) == snapshot


def test_overlapping_inputs_and_in_file_duplicates(spark, make_config, write_file):
    cfg = make_config()
    a = run_ingest(spark, cfg, write_file("a.csv", "".join(ROWS[:3])))
    b = run_ingest(spark, cfg, write_file("b.csv", "".join(ROWS[1:]) + ROWS[4]))  # rows 2..5, row 5 twice

    assert (a.accepted, a.duplicates) == (3, 0)
    assert (b.rows_read, b.accepted, b.duplicates) == (5, 2, 3)
    assert b.rows_read == b.accepted + b.quarantined + b.duplicates
    assert [t[0] for t in event_tuples(spark, cfg)] == ["1", "2", "3", "4", "5"]
    assert events(spark, cfg).select("event_id").distinct().count() == 5


def test_folder_and_glob_inputs(spark, make_config, write_file):
    cfg = make_config()
    first = write_file("day1.csv", "".join(ROWS[:2]))
    write_file("day2.csv", "".join(ROWS[2:]))
    folder = first.rsplit("/", 1)[0]
    result = run_ingest(spark, cfg, folder)
    assert (result.rows_read, result.accepted) == (5, 5)
    again = run_ingest(spark, cfg, folder + "/day*.csv")
    assert (again.rows_read, again.accepted, again.duplicates) == (5, 0, 5)


def test_same_event_from_another_source_is_not_a_duplicate(spark, make_config, write_file):
    path = write_file("a.csv", ROWS[0])
    cfg = make_config()
    run_ingest(spark, cfg, path)
    other = run_ingest(spark, make_config("ingest.source=mirror"), path)
    assert other.accepted == 1
    assert sorted(r.source for r in events(spark, cfg).collect()) == ["mirror", "taobao_user_behavior"]
