"""The real Spark standalone cluster the cluster tests run on (scripts/standalone_cluster.py), the
packed environments of `make package`, and spark-submit against them as a user runs it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_SCRIPT = ROOT / "scripts" / "package.sh"


def _load_cluster_module():
    spec = importlib.util.spec_from_file_location("standalone_cluster", ROOT / "scripts" / "standalone_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


standalone_cluster = _load_cluster_module()
StandaloneCluster = standalone_cluster.StandaloneCluster


@dataclass(frozen=True)
class Shipment:
    """What `make package` builds: the mtl archive for --py-files, a packed env for --archives
    (or, ``unpacked``, that env unpacked once on the nodes, as an image or a node bootstrap
    provides it: each executor then starts without unpacking gigabytes of torch first)."""

    mtl_zip: Path
    env_archive: Path
    unpacked: Optional[Path] = None

    def unpack_once(self, folder: Path) -> "Shipment":
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(self.env_archive), "-C", str(folder)], check=True, timeout=1800)
        return Shipment(self.mtl_zip, self.env_archive, folder)


def package(profile: str, out: Path) -> Shipment:
    done = subprocess.run(
        ["bash", str(PACKAGE_SCRIPT), "--profile", profile, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (zip_path,) = out.glob("mtl-*.zip")
    return Shipment(zip_path, Path(done.stdout.strip().splitlines()[-1]))


def spark_submit(
    cluster, shipment: Optional[Shipment], script: Path, *args: str, conf: Optional[dict] = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """spark-submit ``script`` to ``cluster`` (a StandaloneCluster, or a master URL such as
    local[2]) in client mode: the driver in this project's environment, the executors in the
    shipment's packed one with mtl shipped by --py-files (no shipment: this environment)."""
    from mtl.spark import delta_package

    master = cluster if isinstance(cluster, str) else cluster.master_url
    if shipment is None:
        executor_python = sys.executable
    elif shipment.unpacked:
        executor_python = str(shipment.unpacked / "bin" / "python")
    else:  # relative to the executor's working folder, where --archives unpacks the environment
        executor_python = "./environment/bin/python"
    settings = {
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        "spark.pyspark.python": executor_python,
        "spark.pyspark.driver.python": sys.executable,
        **(conf or {}),
    }
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", master, "--packages", delta_package()]
    if shipment is not None:
        cmd += ["--py-files", str(shipment.mtl_zip)]
        if not shipment.unpacked:
            cmd += ["--archives", f"{shipment.env_archive}#environment"]
    for key, value in settings.items():
        cmd += ["--conf", f"{key}={value}"]
    # No PYSPARK_PYTHON of this process's: the executors' Python is the packed one.
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}
    env |= {"SPARK_HOME": str(standalone_cluster.spark_home()), "PYSPARK_DRIVER_PYTHON": sys.executable}
    return subprocess.run(
        cmd + [str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@dataclass(frozen=True)
class SubmittedStep:
    name: str
    seconds: float
    returncode: int
    output: str


def submit_chain(
    cluster, shipment: Optional[Shipment], conf: Path, overrides: list[str], ds: str
) -> list[SubmittedStep]:
    """The daily chain for ``ds`` as the DAG runs it: each step of mtl/pipeline/steps.py its own
    spark-submit, with the step's flags; stops at the first step that fails."""
    from mtl.pipeline.steps import DS, STEPS, TRAIN_MODE

    done = []
    for step in STEPS:
        args = ["--conf", str(conf)]
        for override in overrides:
            args += ["--set", override]
        args += [a.replace(DS, ds).replace(TRAIN_MODE, "auto") for a in step.args]
        start = time.monotonic()
        job = spark_submit(cluster, shipment, ROOT / step.script, *args, timeout=step.timeout_minutes * 60)
        done.append(SubmittedStep(step.name, time.monotonic() - start, job.returncode, job.stdout + job.stderr))
        if job.returncode != 0:
            break
    return done
