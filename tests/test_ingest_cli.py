"""The ingest job as a user runs it: the spark-submit entry point in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import LOCAL_CONF, ROOT, TEST_OVERRIDES

JOB = ROOT / "jobs" / "ingest.py"


def _run(*args, cwd=ROOT):
    cmd = [sys.executable, str(JOB), "--conf", str(LOCAL_CONF)]
    for override in TEST_OVERRIDES:
        cmd += ["--set", override]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=600)


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, str(JOB), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for option in ("--conf", "--set", "--ds", "--input", "--format"):
        assert option in out.stdout


def test_config_errors_exit_2_and_name_the_key():
    out = _run("--set", "ingest.max_quarantine_shar=0.5")
    assert out.returncode == 2
    assert "unknown config key 'ingest.max_quarantine_shar' (did you mean 'max_quarantine_share'?)" in out.stderr


def test_bad_ds_is_rejected_by_the_parser():
    out = _run("--ds", "2017-13-01")
    assert out.returncode == 2 and "expected a date YYYY-MM-DD" in out.stderr


def test_end_to_end_run_and_missing_input(tmp_path):
    warehouse = tmp_path / "wh"
    raw = tmp_path / "raw" / "2017-11-26"
    raw.mkdir(parents=True)
    (raw / "part-0.csv").write_text("1,100,10,pv,1511600000\n2,101,11,buy,1511650000\n3,102,12,fav\n")

    ok = _run(
        "--set",
        f"storage.warehouse={warehouse}",
        "--set",
        f"ingest.input={tmp_path}/raw/{{ds}}",
        "--set",
        "ingest.max_quarantine_share=0.5",
        "--ds",
        "2017-11-26",
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "rows read               3" in ok.stdout
    assert "accepted                2" in ok.stdout
    assert "quarantined             1  {'MALFORMED_RECORD': 1}" in ok.stdout
    assert "table events (version 1)" in ok.stdout
    # 1511650000 is 2017-11-25 22:46 UTC, already 2017-11-26 in China
    assert "in the 2 dates this input covers, 2017-11-25 .. 2017-11-26: 2 events, 2 users, 2 items" in ok.stdout
    assert "by type: purchase 1, view 1" in ok.stdout
    assert (warehouse / "events" / "_delta_log").is_dir()

    missing = _run("--set", f"storage.warehouse={warehouse}", "--input", str(tmp_path / "nowhere.csv"))
    assert missing.returncode == 1
    assert f"input not found: {tmp_path / 'nowhere.csv'}" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_under_spark_submit_the_master_comes_from_spark_submit(tmp_path):
    """The cluster path: spark-submit decides master and packages; the job still sets up Delta."""
    raw = tmp_path / "raw.csv"
    raw.write_text("1,100,10,pv,1511600000\n")
    spark_submit = ROOT / ".venv" / "bin" / "spark-submit"
    if not spark_submit.exists():
        spark_submit = Path(sys.executable).parent / "spark-submit"
    from mtl.spark import delta_package

    cmd = [
        str(spark_submit),
        "--master",
        "local[1]",
        "--packages",
        delta_package(),
        str(JOB),
        "--conf",
        str(LOCAL_CONF),
        "--input",
        str(raw),
        "--set",
        f"storage.warehouse={tmp_path / 'wh'}",
        "--set",
        "spark.master=local[2]",
    ]
    # spark-submit runs the job with this interpreter (the project's environment).
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # spark-submit merges the Python driver's stderr into its own stdout
    assert "master local[1] (from spark-submit)" in out.stdout
    assert "accepted                1" in out.stdout
