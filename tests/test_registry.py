import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from mtl import registry
from mtl.config import ConfigError, load_config
from mtl.errors import InputError, JobError

ROOT = Path(__file__).resolve().parents[1]

# SQLAlchemy deprecation raised inside MLflow's own store module; nothing this project can change.


class TinyModel(torch.nn.Module):
    def __init__(self, items: int = 20, dim: int = 4):
        super().__init__()
        self.items = torch.nn.Embedding(items, dim)
        self.norm = torch.nn.BatchNorm1d(dim)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.items(item_ids)))


def _model(seed: int) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel()


def _save(folder: Path, model: torch.nn.Module, **metadata) -> Path:
    return registry.save_artifact(
        folder,
        model.state_dict(),
        model_config={"items": 20, "dim": 4, "tasks": ["click", "purchase"]},
        feature_stats={"price": {"mean": 12.5, "std": 3.0}},
        metadata={"ds": "2024-03-10", "mode": "daily", **metadata},
    )


def _assert_same_weights(state_dict: dict, model: torch.nn.Module) -> None:
    expected = model.state_dict()
    assert list(state_dict) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(state_dict[name], tensor), name


@pytest.fixture(scope="module")
def shared_warehouse(tmp_path_factory) -> Path:
    # One MLflow store for the module: creating (migrating) a SQLite store takes seconds.
    return tmp_path_factory.mktemp("shared") / "warehouse"


@pytest.fixture
def shared_config(shared_warehouse, request):
    """Config on the module's store, with a registered model of the test's own."""
    return load_config(
        ROOT / "conf" / "local.yaml",
        [f"storage.warehouse={shared_warehouse}", f"tracking.registered_model=model-{request.node.name}"],
    )


# ---------------------------------------------------------------------------------------------
# artifacts


def test_artifact_round_trip(tmp_path):
    model = _model(1)
    model(torch.tensor([1, 2, 3]))  # moves the BatchNorm running statistics off their defaults
    folder = _save(
        tmp_path / "artifact",
        model,
        git_commit="abc123",
        tables_read={"training_examples": 4},
        metrics={"click_auc": 0.71, "click_gauc": float("nan")},
    )

    assert sorted(os.listdir(folder)) == sorted(registry.ARTIFACT_FILES)
    artifact = registry.load_artifact(folder)

    _assert_same_weights(artifact.state_dict, model)
    assert artifact.model_config == {"items": 20, "dim": 4, "tasks": ["click", "purchase"]}
    assert artifact.feature_stats == {"price": {"mean": 12.5, "std": 3.0}}
    assert artifact.metadata == {
        "ds": "2024-03-10",
        "mode": "daily",
        "git_commit": "abc123",
        "tables_read": {"training_examples": 4},
        "metrics": {"click_auc": 0.71, "click_gauc": None},  # strict JSON: NaN is written as null
    }
    assert artifact.version is None
    rebuilt = TinyModel(**{k: artifact.model_config[k] for k in ("items", "dim")})
    rebuilt.load_state_dict(artifact.state_dict)
    rebuilt.eval()
    model.eval()
    ids = torch.tensor([0, 5, 19])
    assert torch.equal(rebuilt(ids), model(ids))


class _RunsCode:
    """Unpickling this creates a folder: a stand-in for arbitrary code in a weights file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_loading_refuses_weights_that_run_code(tmp_path):
    folder = _save(tmp_path / "artifact", _model(2))
    marker = tmp_path / "code-ran"
    torch.save({"weight": torch.ones(2), "payload": _RunsCode(marker)}, folder / registry.WEIGHTS_FILE)

    with pytest.raises(InputError, match="refusing to load objects other than tensors.*posix.mkdir"):
        registry.load_artifact(folder)
    assert not marker.exists()

    # the payload is real: an unsafe load runs it
    torch.load(folder / registry.WEIGHTS_FILE, weights_only=False)
    assert marker.is_dir()


def test_loading_names_missing_files(tmp_path):
    folder = _save(tmp_path / "artifact", _model(3))
    (folder / registry.FEATURE_STATS_FILE).unlink()
    with pytest.raises(InputError, match="not a model artifact: missing feature_stats.json"):
        registry.load_artifact(folder)


# ---------------------------------------------------------------------------------------------
# tracking


def test_embedded_default_store_lives_under_the_warehouse(make_config):
    cfg = make_config()
    warehouse = Path(cfg.storage.warehouse)
    assert registry.tracking_uri(cfg) == f"sqlite:///{warehouse}/mlflow/mlflow.db"

    with registry.MlflowRun(cfg) as run:
        folder = _save(warehouse.parent / "staging", _model(4))
        run.log_artifact_folder(folder, "model")

    assert (warehouse / "mlflow" / "mlflow.db").is_file()
    assert run.artifact_uri.startswith((warehouse / "mlflow" / "artifacts").as_uri() + "/")
    logged = Path(run.artifact_uri.removeprefix("file://")) / "model"
    assert sorted(os.listdir(logged)) == sorted(registry.ARTIFACT_FILES)
    experiment = MlflowClient(registry.tracking_uri(cfg)).get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.artifact_location == (warehouse / "mlflow" / "artifacts").as_uri()


def test_embedded_default_accepts_a_file_uri_warehouse(make_config, tmp_path):
    cfg = make_config(f"storage.warehouse={(tmp_path / 'wh').as_uri()}")
    assert registry.tracking_uri(cfg) == f"sqlite:///{tmp_path}/wh/mlflow/mlflow.db"


def test_configured_tracking_uri_wins(make_config):
    cfg = make_config("tracking.tracking_uri=http://mlflow.internal:5000")
    assert registry.tracking_uri(cfg) == "http://mlflow.internal:5000"


def test_remote_warehouse_needs_a_configured_tracking_uri(make_config):
    cfg = make_config("storage.warehouse=s3a://bucket/warehouse")
    with pytest.raises(ConfigError, match="tracking.tracking_uri: required when storage.warehouse"):
        registry.tracking_uri(cfg)


def test_run_logs_params_metrics_and_finishes(shared_config):
    with registry.MlflowRun(shared_config, run_name="train 2024-03-10", tags={"ds": "2024-03-10"}) as run:
        run.log_params({"epochs": 2, "optimizer": {"lr": 0.01, "name": "adam"}})
        run.log_metrics({"loss": 0.9, "click_auc": 0.6}, step=0)
        run.log_metrics({"loss": 0.5, "click_auc": 0.7}, step=1)

    client = MlflowClient(registry.tracking_uri(shared_config))
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "train 2024-03-10"
    assert logged.data.tags["ds"] == "2024-03-10"
    assert logged.data.params == {"epochs": "2", "optimizer.lr": "0.01", "optimizer.name": "adam"}
    assert logged.data.metrics == {"loss": 0.5, "click_auc": 0.7}
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5)]


def test_run_that_raises_is_marked_failed(shared_config):
    with pytest.raises(ZeroDivisionError):
        with registry.MlflowRun(shared_config) as run:
            run.log_metrics({"loss": 1.0}, step=0)
            1 / 0  # noqa: B018  (the failure under test)
    assert MlflowClient(registry.tracking_uri(shared_config)).get_run(run.run_id).info.status == "FAILED"


# ---------------------------------------------------------------------------------------------
# registry


def _register(cfg, folder: Path) -> str:
    with registry.MlflowRun(cfg) as run:
        return registry.register_artifact(cfg, run, folder)


def test_register_versions_and_move_the_champion(shared_config, tmp_path):
    cfg = shared_config
    first, second = _model(5), _model(6)
    assert registry.latest_version(cfg) is None
    assert registry.champion_version(cfg) is None

    v1 = _register(cfg, _save(tmp_path / "v1", first, git_commit="aaa"))
    v2 = _register(cfg, _save(tmp_path / "v2", second, git_commit="bbb", metrics={"auc": 0.7}))

    assert (v1, v2) == ("1", "2")
    assert registry.latest_version(cfg) == "2"
    assert registry.champion_version(cfg) is None
    client = MlflowClient(registry.tracking_uri(cfg))
    tags = client.get_model_version(cfg.tracking.registered_model, "2").tags
    assert tags == {"ds": "2024-03-10", "mode": "daily", "git_commit": "bbb"}  # scalars only

    registry.set_champion(cfg, v1)
    assert registry.champion_version(cfg) == "1"
    assert str(client.get_model_version_by_alias(cfg.tracking.registered_model, "champion").version) == "1"
    champion = registry.load_version(cfg, alias="champion")
    _assert_same_weights(champion.state_dict, first)
    assert champion.version == "1"
    assert champion.metadata["git_commit"] == "aaa"

    registry.set_champion(cfg, v2)
    assert registry.champion_version(cfg) == "2"
    _assert_same_weights(registry.load_version(cfg).state_dict, second)  # default: the champion
    by_number = registry.load_version(cfg, version="1")
    _assert_same_weights(by_number.state_dict, first)
    assert by_number.model_config == {"items": 20, "dim": 4, "tasks": ["click", "purchase"]}


def test_registry_errors_name_the_model(shared_config, tmp_path):
    cfg = shared_config
    name = cfg.tracking.registered_model
    with pytest.raises(JobError, match=f"registered model '{name}' has no version with alias 'champion'"):
        registry.load_version(cfg)
    with pytest.raises(ValueError, match="not both"):
        registry.load_version(cfg, version="1", alias="champion")

    _register(cfg, _save(tmp_path / "v1", _model(7)))
    with pytest.raises(JobError, match=f"registered model '{name}' has no version 5"):
        registry.set_champion(cfg, "5")
    with pytest.raises(JobError, match=f"registered model '{name}' has no version 5"):
        registry.load_version(cfg, version="5")
    assert registry.champion_version(cfg) is None


def test_register_refuses_an_incomplete_folder(shared_config, tmp_path):
    folder = _save(tmp_path / "artifact", _model(8))
    (folder / registry.WEIGHTS_FILE).unlink()
    with registry.MlflowRun(shared_config) as run:
        with pytest.raises(InputError, match="missing weights.pt"):
            registry.register_artifact(shared_config, run, folder)
    assert registry.latest_version(shared_config) is None


def test_metadata_json_is_strict(tmp_path):
    folder = _save(
        tmp_path / "artifact",
        _model(9),
        rows=np.int64(7),
        loss=np.float32(0.5),
        day=dt.date(2024, 3, 9),
        bad=float("inf"),
    )
    metadata = json.loads((folder / registry.METADATA_FILE).read_text())
    assert metadata == {"ds": "2024-03-10", "mode": "daily", "rows": 7, "loss": 0.5, "day": "2024-03-09", "bad": None}
