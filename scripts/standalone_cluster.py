"""A Spark standalone cluster on this machine: one master and N workers from the pinned PySpark,
bound to 127.0.0.1, one core and a memory cap per worker. For trying the cluster path by hand
(`make cluster-up` / `make cluster-down`) and for the tests (tests/support/cluster.py).

    python scripts/standalone_cluster.py up [--workers 2] [--dir .cluster]
    python scripts/standalone_cluster.py down [--dir .cluster]

`up` returns once every worker has registered with the master and prints the master URL; the
process ids and URLs are kept in <dir>/cluster.json, from which `down` stops them (and every
executor and Python worker they started, which live in the same process groups).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

STATE_FILE = "cluster.json"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StandaloneCluster:
    """A running cluster: its folder, master URL, web UI, and the process ids of its daemons."""

    root: str
    master_url: str
    web_ui: str
    pids: list[int] = field(default_factory=list)

    @classmethod
    def start(
        cls, root: Path, workers: int = 2, cores: int = 1, memory: str = "2g", timeout_s: float = 120.0
    ) -> "StandaloneCluster":
        root = root.resolve()
        (root / "logs").mkdir(parents=True, exist_ok=True)
        port, ui_port = free_port(), free_port()
        cluster = cls(str(root), f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}")
        try:
            cluster._launch(
                "master",
                "org.apache.spark.deploy.master.Master",
                ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
            )
            for i in range(workers):
                work_dir = root / f"worker-{i}"
                work_dir.mkdir(exist_ok=True)
                cluster._launch(
                    f"worker-{i}",
                    "org.apache.spark.deploy.worker.Worker",
                    ["--host", "127.0.0.1", "--cores", str(cores), "--memory", memory]
                    + ["--work-dir", str(work_dir), "--webui-port", str(free_port()), cluster.master_url],
                )
            cluster.save()
            cluster.wait_for_workers(workers, timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _launch(self, name: str, main_class: str, args: list[str]) -> None:
        env = {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(Path(self.root) / "logs"),
        }
        log = open(Path(self.root) / "logs" / f"{name}.log", "ab")
        cmd = [str(spark_home() / "bin" / "spark-class"), main_class, *args]
        # A session of its own: stop() signals the whole group, executors and Python workers included.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.pids.append(proc.pid)

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.web_ui}/json/", timeout=5) as response:
            return json.load(response)

    def wait_for_workers(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        alive = 0
        while time.monotonic() < deadline:
            dead = [pid for pid in self.pids if not _alive(pid)]
            if dead:
                raise RuntimeError(f"a cluster daemon exited while starting; see {self.root}/logs:\n{self.log_tail()}")
            try:
                alive = self.status().get("aliveworkers", 0)
            except OSError:
                alive = 0
            if alive >= count:
                return
            time.sleep(1)
        raise TimeoutError(
            f"{alive} of {count} workers registered with {self.master_url} in {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for path in sorted((Path(self.root) / "logs").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def processes(self) -> list[int]:
        """Every live process of the cluster's groups: daemons, executors, Python workers."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) in self.pids:
                        found.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    pass
        return found

    def stop(self, timeout_s: float = 30.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids:
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                _reap(self.pids)  # a daemon that exited stays a zombie of ours until reaped
                if not self.processes():
                    break
                time.sleep(0.2)
            if not self.processes():
                break
        state = Path(self.root) / STATE_FILE
        state.unlink(missing_ok=True)

    def save(self) -> None:
        (Path(self.root) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> Optional["StandaloneCluster"]:
        state = root.resolve() / STATE_FILE
        return cls(**json.loads(state.read_text())) if state.exists() else None


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # not our child (cluster-down from another shell)
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=".cluster", help="the cluster's folder: logs, work dirs, state (.cluster)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    running = StandaloneCluster.load(root)
    if args.action == "up":
        if running and running.processes():
            print(f"already running: {running.master_url} (web UI {running.web_ui})")
            return 0
        cluster = StandaloneCluster.start(root, args.workers, args.cores, args.memory)
        print(f"master {cluster.master_url}, web UI {cluster.web_ui}, {args.workers} workers; logs in {root}/logs")
        return 0
    if running is None:
        print(f"no cluster recorded in {root}/{STATE_FILE}")
        return 0 if args.action == "down" else 1
    if args.action == "status":
        info = running.status()
        print(
            f"{running.master_url}: {info.get('aliveworkers')} workers, {len(info.get('activeapps', []))} apps running"
        )
        return 0
    running.stop()
    print(f"stopped {running.master_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
