"""The train job with real Horovod (Gloo on CPU): horovodrun -np 2, horovod.spark.run, and a
run killed mid-training that resumes from its checkpoint."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtl import registry
from mtl.config import load_config
from mtl.train.job import run_train
from tests.conftest import LOCAL_CONF, ROOT
from tests.generated import START, build_world, world_overrides
from tests.helpers import runs

D = START + dt.timedelta(days=8)
FEATURE_DAYS = [D - dt.timedelta(days=k) for k in (3, 2, 1)]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_world")
    overrides = world_overrides(root)
    cfg = build_world(spark, load_config(LOCAL_CONF, overrides), FEATURE_DAYS)
    single = run_train(spark, cfg, D, "full")
    return root, overrides, cfg, single


def _train_command(overrides, *extra, launcher="python"):
    args = [str(VENV_BIN / "python"), str(ROOT / "jobs" / "train.py"), "--conf", str(LOCAL_CONF), "--ds", D.isoformat()]
    for o in list(overrides) + list(extra):
        args += ["--set", o]
    if launcher == "horovodrun":
        args = [str(VENV_BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", "--start-timeout", "120"] + args
    return args


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "MTL_LOG_LEVEL": "INFO"}


def _last_train_run(spark, cfg):
    return runs(spark, cfg).where("job = 'train'").orderBy("started_at").collect()[-1]


def test_horovodrun_two_workers(spark, world):
    root, overrides, cfg, single = world
    done = subprocess.run(_train_command(overrides, launcher="horovodrun"), env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = _last_train_run(spark, cfg)
    details = json.loads(record.details)
    assert record.status == "succeeded" and details["workers"] == 2
    # check_workers failed the job unless both ranks ended with identical parameters
    two = details["metrics"]
    assert abs(two["click_auc"] - single.final_metrics["click_auc"]) < 0.05
    assert two["click_auc"] > 0.6


def test_horovod_spark_run_two_workers(spark, world):
    root, overrides, cfg, single = world
    spark_cfg = load_config(LOCAL_CONF, overrides + ["training.launcher=spark", "training.num_proc=2"])
    result = run_train(spark, spark_cfg, D, "full")
    assert result.workers == 2
    assert abs(result.final_metrics["click_auc"] - single.final_metrics["click_auc"]) < 0.05


def test_killed_run_resumes_to_the_same_weights(spark, world):
    root, overrides, cfg, _ = world
    # A clean reference with its own checkpoint folder, so it cannot resume anything.
    clean = run_train(spark, load_config(LOCAL_CONF, overrides + ["training.checkpoint_dir=_ck_clean"]), D, "full")

    killed_overrides = overrides + ["training.checkpoint_dir=_ck_killed"]
    proc = subprocess.Popen(_train_command(killed_overrides), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = Path(cfg.storage.warehouse) / "_ck_killed"
    deadline = time.time() + 300
    while not list(checkpoints.glob("*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = run_train(spark, load_config(LOCAL_CONF, killed_overrides), D, "full")
    assert resumed.resumed
    a = registry.load_version(cfg, version=clean.model_version).state_dict
    b = registry.load_version(cfg, version=resumed.model_version).state_dict
    # Same seed, same batch order, CPU: the resumed run is bit-for-bit the clean one.
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
