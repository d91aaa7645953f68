"""Model artifacts, MLflow run tracking and the model registry.

Artifact: a folder of four files, logged to its MLflow run under ``model/``.

    weights.pt          the model's state_dict (torch.save); read back with weights_only=True,
                        so loading an artifact never runs pickled code
    model_config.json   what rebuilds the module before its weights are loaded
    feature_stats.json  vocabularies and statistics the scorer must apply exactly as in training
    metadata.json       training facts: ds, mode, Delta table versions read, git commit, metrics,
                        the embedding rows its training rows reach (export prunes the others)...

The JSON files are strict JSON: NaN and infinities are written as null.

Registry contract:

- The store is ``tracking.tracking_uri``, or the embedded default
  ``sqlite:///<warehouse>/mlflow/mlflow.db`` with artifacts under ``<warehouse>/mlflow/artifacts``.
  Runs go to the experiment ``tracking.experiment``; the registry lives in the same store.
- ``register_artifact`` makes each trained artifact a new version (1, 2, ...) of
  ``tracking.registered_model``, sourced from its run's ``model/`` artifacts and tagged with the
  metadata's scalar entries (ds, mode, git commit...). Versions are never changed afterwards.
- The published model is the version the alias ``tracking.champion_alias`` ("champion") points
  at. Only ``set_champion`` moves it (the quality gate's call); scoring loads the champion.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import pickle
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from mtl.config import Config, ConfigError
from mtl.errors import InputError, JobError
from mtl.faults import pause_point
from mtl.tables import warehouse_root

log = logging.getLogger(__name__)

# MLflow reads this on every transfer; without it, artifact uploads and downloads draw tqdm bars
# into job logs. setdefault leaves an explicit choice in the environment alone.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

WEIGHTS_FILE = "weights.pt"
MODEL_CONFIG_FILE = "model_config.json"
FEATURE_STATS_FILE = "feature_stats.json"
METADATA_FILE = "metadata.json"
ARTIFACT_FILES = (WEIGHTS_FILE, MODEL_CONFIG_FILE, FEATURE_STATS_FILE, METADATA_FILE)
# Where a run keeps the artifact folder, and what registered versions point at.
ARTIFACT_PATH = "model"

_ALREADY_EXISTS = ErrorCode.Name(RESOURCE_ALREADY_EXISTS)
_DOES_NOT_EXIST = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


# ---------------------------------------------------------------------------------------------
# artifacts


@dataclass(frozen=True)
class Artifact:
    state_dict: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    feature_stats: dict[str, Any]
    metadata: dict[str, Any]
    # the registry version it was loaded from; None for a local folder
    version: Optional[str] = None


def save_artifact(
    folder: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    feature_stats: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> Path:
    """Write the artifact's four files into ``folder`` (created if needed); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / WEIGHTS_FILE)
    documents = {MODEL_CONFIG_FILE: model_config, FEATURE_STATS_FILE: feature_stats, METADATA_FILE: metadata}
    for name, content in documents.items():
        (folder / name).write_text(json.dumps(_jsonable(content), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return folder


def load_artifact(folder: str | Path) -> Artifact:
    """Read an artifact folder; the weights land on the CPU. Refuses weights that hold code."""
    folder = _check_artifact_folder(folder)
    weights = folder / WEIGHTS_FILE
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is mostly advice to load unsafely; keep only the line naming the object
        culprit = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
        message = f"{weights}: refusing to load objects other than tensors, which could run code. {culprit}"
        raise InputError(message.strip()) from exc
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InputError(f"{weights}: expected a state_dict (names to tensors), got {type(state_dict).__name__}")
    return Artifact(
        state_dict=state_dict,
        model_config=_read_json(folder / MODEL_CONFIG_FILE),
        feature_stats=_read_json(folder / FEATURE_STATS_FILE),
        metadata=_read_json(folder / METADATA_FILE),
    )


def _check_artifact_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    missing = [name for name in ARTIFACT_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} is not a model artifact: missing {', '.join(missing)}")
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def _jsonable(value: Any) -> Any:
    """Strict-JSON form: numpy scalars as Python numbers, dates as ISO text, NaN/inf as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# tracking


def tracking_uri(cfg: Config) -> str:
    """The configured tracking URI, or the embedded default: a SQLite store under the warehouse."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    return f"sqlite:///{_embedded_root(cfg) / 'mlflow.db'}"


def _artifact_root(cfg: Config) -> Optional[str]:
    """Artifact location of a new experiment; None leaves it to the tracking server."""
    if cfg.tracking.artifact_root:
        return cfg.tracking.artifact_root
    if cfg.tracking.tracking_uri:
        return None
    return (_embedded_root(cfg) / "artifacts").as_uri()


def _embedded_root(cfg: Config) -> Path:
    """<warehouse>/mlflow, for a warehouse on the local disk."""
    root = warehouse_root(cfg.storage)
    parsed = urllib.parse.urlparse(root)
    if parsed.scheme not in ("", "file"):
        raise ConfigError(
            f"tracking.tracking_uri: required when storage.warehouse ({root}) is not a local folder;"
            " the embedded SQLite tracking store needs a local disk"
        )
    return Path(urllib.parse.unquote(parsed.path) if parsed.scheme else root) / "mlflow"


def tracking_client(cfg: Config) -> MlflowClient:
    uri = tracking_uri(cfg)
    if not cfg.tracking.tracking_uri:
        _embedded_root(cfg).mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id_of(client: MlflowClient, cfg: Config) -> str:
    name = cfg.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_root(cfg))
        except MlflowException as exc:
            if exc.error_code != _ALREADY_EXISTS:
                raise
            experiment = client.get_experiment_by_name(name)  # another job created it meanwhile
    if experiment.lifecycle_stage == "deleted":
        raise JobError(f"MLflow experiment {name!r} is deleted: restore it or set tracking.experiment to another name")
    return experiment.experiment_id


class MlflowRun:
    """One MLflow run in the configured experiment, as a context manager.

    The run starts on entry and ends FINISHED, or FAILED when the block raises (the error is
    re-raised). Uses its own client, not MLflow's process-wide active run.
    """

    def __init__(self, cfg: Config, run_name: Optional[str] = None, tags: Optional[Mapping[str, str]] = None):
        self._cfg = cfg
        self._client = tracking_client(cfg)
        self._run_name = run_name
        self._tags = dict(tags or {})
        self._run: Optional[Run] = None

    def __enter__(self) -> MlflowRun:
        experiment_id = experiment_id_of(self._client, self._cfg)
        self._run = self._client.create_run(experiment_id, run_name=self._run_name, tags=self._tags)
        log.info("MLflow run %s started in experiment %r", self.run_id, self._cfg.tracking.experiment)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = RunStatus.to_string(RunStatus.FINISHED if exc is None else RunStatus.FAILED)
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception:  # never hide the block's own error behind a bookkeeping one
            if exc is None:
                raise
            log.exception("could not mark MLflow run %s as %s", self.run_id, status)
        return False

    @property
    def run_id(self) -> str:
        return self._active.info.run_id

    @property
    def artifact_uri(self) -> str:
        return self._active.info.artifact_uri

    @property
    def _active(self) -> Run:
        if self._run is None:
            raise RuntimeError("the MLflow run has not started: use MlflowRun as a context manager")
        return self._run

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested mappings become dotted keys (``optimizer.lr``)."""
        flat = _flatten(params)
        self._client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in flat.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), now_ms, step) for key, value in metrics.items()]
        )

    def log_artifact_folder(self, folder: str | Path, artifact_path: Optional[str] = None) -> None:
        """Copy the folder's contents into the run's artifacts (under ``artifact_path`` if given)."""
        self._client.log_artifacts(self.run_id, str(folder), artifact_path)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------------------
# registry


def register_artifact(cfg: Config, run: MlflowRun, folder: str | Path) -> str:
    """Log the artifact folder to ``run`` and make it a new version of the registered model."""
    folder = _check_artifact_folder(folder)
    metadata = _read_json(folder / METADATA_FILE)
    run.log_artifact_folder(folder, ARTIFACT_PATH)
    client = tracking_client(cfg)
    name = cfg.tracking.registered_model
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != _ALREADY_EXISTS:
            raise
    pause_point(f"register:{name}")
    # mlflow.register_model("runs:/<id>/model") wants an MLmodel file or, since MLflow 3, a
    # LoggedModel under that path, and fails for a plain folder. A version whose source is the
    # run's artifact location needs neither and downloads like any artifact folder.
    version = client.create_model_version(
        name,
        source=f"{run.artifact_uri}/{ARTIFACT_PATH}",
        run_id=run.run_id,
        tags={key: str(value) for key, value in metadata.items() if isinstance(value, (str, int, float, bool))},
    )
    log.info("registered %r version %s from run %s", name, version.version, run.run_id)
    return str(version.version)


def load_version(cfg: Config, version: Optional[str] = None, alias: Optional[str] = None) -> Artifact:
    """Download a registered version and load it. Without a version or an alias: the champion."""
    if version is not None and alias is not None:
        raise ValueError("load_version takes a version or an alias, not both")
    client = tracking_client(cfg)
    name = cfg.tracking.registered_model
    if version is None:
        alias = alias or cfg.tracking.champion_alias
        version = _alias_version(client, name, alias)
        if version is None:
            raise JobError(f"registered model {name!r} has no version with alias {alias!r}")
    _check_version(client, name, version)
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="mtl-model-") as tmp:
        local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri(cfg))
        artifact = load_artifact(local)
    return dataclasses.replace(artifact, version=str(version))


def version_run_id(cfg: Config, version: str) -> str:
    """The MLflow run a registered version was logged in."""
    client = tracking_client(cfg)
    name = cfg.tracking.registered_model
    _check_version(client, name, version)
    return client.get_model_version(name, str(version)).run_id


def log_version_folder(cfg: Config, version: str, folder: str | Path, artifact_path: str) -> None:
    """Store a folder with a registered version: under ``artifact_path`` of the version's run
    (e.g. its ONNX export), next to the ``model/`` folder the version points at."""
    if artifact_path == ARTIFACT_PATH:
        raise ValueError(f"{ARTIFACT_PATH}/ holds the version itself, which is never changed")
    tracking_client(cfg).log_artifacts(version_run_id(cfg, version), str(folder), artifact_path)


def download_version_folder(cfg: Config, version: str, artifact_path: str, dst: str | Path) -> Optional[Path]:
    """Download ``artifact_path`` of the version's run into ``dst``; None if the run has none."""
    client = tracking_client(cfg)
    run_id = version_run_id(cfg, version)
    if not client.list_artifacts(run_id, artifact_path):
        return None
    local = download_artifacts(
        run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=tracking_uri(cfg)
    )
    return Path(local)


def champion_version(cfg: Config) -> Optional[str]:
    """The version the champion alias points at; None if none does (or nothing is registered)."""
    return _alias_version(tracking_client(cfg), cfg.tracking.registered_model, cfg.tracking.champion_alias)


def set_champion(cfg: Config, version: str) -> None:
    """Point the champion alias at ``version``: it becomes the published model."""
    client = tracking_client(cfg)
    name, alias = cfg.tracking.registered_model, cfg.tracking.champion_alias
    _check_version(client, name, version)
    previous = _alias_version(client, name, alias)
    pause_point(f"publish:{alias}")
    client.set_registered_model_alias(name, alias, str(version))
    log.info("%r alias %r now points at version %s (before: %s)", name, alias, version, previous or "none")


def latest_version(cfg: Config) -> Optional[str]:
    """The most recently registered version; None if there is none."""
    name = cfg.tracking.registered_model
    versions = tracking_client(cfg).search_model_versions(
        f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
    )
    return str(versions[0].version) if versions else None


def versions_for_ds(cfg: Config, ds: str) -> list[str]:
    """Registered versions trained for ``ds`` (their ``ds`` tag), oldest first."""
    name = cfg.tracking.registered_model
    try:
        versions = tracking_client(cfg).search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == _DOES_NOT_EXIST:
            return []
        raise
    return sorted((str(v.version) for v in versions if (v.tags or {}).get("ds") == ds), key=int)


def _alias_version(client: MlflowClient, name: str, alias: str) -> Optional[str]:
    # The registered model's alias map answers "no such alias" without an error to tell apart.
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == _DOES_NOT_EXIST:
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def _check_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == _DOES_NOT_EXIST:
            raise JobError(f"registered model {name!r} has no version {version}") from None
        raise


def is_superseded(version: str, champion: Optional[str]) -> bool:
    """True when the champion is a newer registered version than ``version``: publishing
    ``version`` would roll the published model back (a rerun of an older ds)."""
    return champion is not None and int(champion) > int(version)
