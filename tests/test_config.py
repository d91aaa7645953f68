from pathlib import Path

import pytest

from mtl.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["base.yaml", "local.yaml", "cluster.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "conf" / name)
    assert isinstance(cfg, Config)
    assert {"canonical", "taobao_user_behavior", "transactions"} <= set(cfg.formats)


def test_local_extends_base_and_sizes_spark_for_two_cores():
    cfg = load_config(ROOT / "conf" / "local.yaml")
    assert cfg.env == "local"
    assert cfg.spark.master == "local[2]"
    assert cfg.spark.shuffle_partitions == 4
    # inherited from base.yaml
    assert cfg.formats["taobao_user_behavior"].event_type_values["buy"] == "purchase"
    assert cfg.formats["taobao_user_behavior"].valid_from == "2017-11-25"


def test_cluster_leaves_master_to_spark_submit():
    cfg = load_config(ROOT / "conf" / "cluster.yaml")
    assert cfg.spark.master is None
    assert cfg.storage.warehouse.startswith("s3a://")


def test_dynamic_allocation_settings_come_from_config():
    from mtl.spark import dynamic_allocation_settings

    assert dynamic_allocation_settings(load_config(ROOT / "conf" / "local.yaml").spark.dynamic_allocation) == {}
    cfg = load_config(ROOT / "conf" / "cluster.yaml", ["spark.dynamic_allocation.initial_executors=2"])
    assert dynamic_allocation_settings(cfg.spark.dynamic_allocation) == {
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": "1",
        "spark.dynamicAllocation.maxExecutors": "50",
        "spark.dynamicAllocation.executorIdleTimeout": "60s",
        "spark.dynamicAllocation.initialExecutors": "2",
        "spark.dynamicAllocation.shuffleTracking.timeout": "1800s",
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("spark.dynamic_allocation.max_executors=0", "spark.dynamic_allocation.max_executors: must be at least 1"),
        ("spark.dynamic_allocation.initial_executors=99", "initial_executors: must lie between min_executors and max"),
        ("spark.dynamic_allocation.min_executors=-1", "min_executors: must be at least 0, got -1"),
        ("spark.dynamic_allocation.executor_idle_timeout_s=0", "executor_idle_timeout_s: must be at least 1"),
    ],
)
def test_dynamic_allocation_bounds_are_checked_on_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "conf" / "cluster.yaml", [override])


def test_overrides_are_typed():
    cfg = load_config(ROOT / "conf" / "local.yaml", ["spark.shuffle_partitions=8", "ingest.max_quarantine_share=0.05"])
    assert cfg.spark.shuffle_partitions == 8
    assert cfg.ingest.max_quarantine_share == 0.05


def test_override_can_remap_a_column():
    cfg = load_config(ROOT / "conf" / "local.yaml", ["formats.transactions.mapping.user_id=CustomerID"])
    assert cfg.formats["transactions"].mapping["user_id"] == "CustomerID"
    assert cfg.formats["transactions"].mapping["item_id"] == "product_id"


def test_fingerprint_changes_with_config():
    a = load_config(ROOT / "conf" / "local.yaml")
    b = load_config(ROOT / "conf" / "local.yaml", ["spark.shuffle_partitions=8"])
    assert a.fingerprint() == load_config(ROOT / "conf" / "local.yaml").fingerprint()
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "spark.shufle_partitions=4",
            "unknown config key 'spark.shufle_partitions' (did you mean 'shuffle_partitions'?)",
        ),
        ("nonsense.key=1", "unknown config key 'nonsense'"),
        ("spark.shuffle_partitions=many", "spark.shuffle_partitions: expected an integer, got str 'many'"),
        ("spark.show_progress=maybe", "spark.show_progress: expected true or false"),
        ("ingest.max_quarantine_share=lots", "ingest.max_quarantine_share: expected a number"),
        ("ingest.max_quarantine_share=2", "ingest.max_quarantine_share: must be between 0 and 1"),
        ("formats.transactions.reader=xml", "formats.transactions.reader: must be one of ['csv', 'json', 'parquet']"),
        ("formats.transactions.mapping.colour=c", "formats.transactions.mapping.colour: not a canonical field"),
        ("formats.taobao_user_behavior.event_type_values.pv=look", "'look' is not one of"),
        ("formats.taobao_user_behavior.business_time_zone=Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("formats.taobao_user_behavior.valid_from=soon", "formats.taobao_user_behavior.valid_from: expected a date"),
        ("spark=3", "spark: expected a section"),
        ("no_equals_sign", "must look like key.path=value"),
        ("scoring.runtime=tensorrt", "scoring.runtime: must be one of ['torch', 'onnx', 'onnx_int8', 'onnx_pruned'"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "conf" / "local.yaml", [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("runtime", "off", "message"),
    [
        ("onnx_int8", "export.int8=false", "scoring.runtime: onnx_int8 needs export.int8: true"),
        ("onnx_int8_pruned", "export.int8=false", "scoring.runtime: onnx_int8_pruned needs export.int8: true"),
        ("onnx_pruned", "export.prune=false", "scoring.runtime: onnx_pruned needs export.prune: true"),
    ],
)
def test_a_runtime_needs_the_export_that_writes_it(runtime, off, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "conf" / "local.yaml", [f"scoring.runtime={runtime}", off])


def test_missing_required_mapping_is_named(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "formats:\n  mine:\n    reader: csv\n    header: true\n    mapping: {user_id: u, item_id: i, event_type: t}\n"
    )
    with pytest.raises(ConfigError, match=r"formats.mine.mapping.event_ts: required"):
        load_config(conf)


def test_extends_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_unknown_format_is_named():
    cfg = load_config(ROOT / "conf" / "local.yaml", ["ingest.format=nope"])
    with pytest.raises(ConfigError, match="unknown format 'nope'"):
        cfg.format_config()


def test_table_docs_are_up_to_date():
    from mtl.tables import markdown_docs

    assert (ROOT / "docs" / "tables.md").read_text() == markdown_docs(), "run: python -m mtl.tables > docs/tables.md"


def test_override_of_a_dotted_spark_setting():
    cfg = load_config(ROOT / "conf" / "local.yaml", ["spark.extra.spark.sql.files.maxPartitionBytes=64m"])
    assert cfg.spark.extra["spark.sql.files.maxPartitionBytes"] == "64m"
    assert cfg.spark.extra["spark.ui.enabled"] == "false"  # the file's other entries stay


# ---------------------------------------------------------------------------------------------
# a user's own config, kept outside the project, and checks that run when the config loads


def test_a_config_in_another_folder_finds_the_model_config_the_project_names(tmp_path, monkeypatch):
    own = tmp_path / "shop" / "shop.yaml"
    own.parent.mkdir()
    own.write_text(f"extends: {ROOT / 'conf' / 'local.yaml'}\nstorage: {{warehouse: {tmp_path / 'wh'}}}\n")
    monkeypatch.chdir(tmp_path)  # not the project folder
    cfg = load_config(own)
    assert cfg.model_config == str(ROOT / "conf" / "models" / "esmm.yaml")
    from mtl.cli.common import load_job_config

    assert load_job_config(str(own), []).model_config == cfg.model_config
    # A path given in the user's own file is relative to that file; on the command line, to the working folder.
    (own.parent / "models").mkdir()
    (own.parent / "models" / "mine.yaml").write_text(f"extends: {ROOT / 'conf' / 'models' / 'mmoe.yaml'}\n")
    own.write_text(own.read_text() + "model_config: models/mine.yaml\n")
    assert load_config(own).model_config == str(own.parent / "models" / "mine.yaml")
    assert load_config(own, ["model_config=elsewhere.yaml"]).model_config == "elsewhere.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model_config=no/such/model.yaml", "config file not found"),
        ("model_config=" + str(ROOT / "conf" / "base.yaml"), "unknown config key"),
        ("evaluation.ks=[]", "evaluation.ks"),
        ("gate.metrics=[{task: click, metric: recall, k: 20, floor: 0.1}]", "gate.metrics[0].metric"),
    ],
)
def test_the_model_evaluation_and_gate_sections_are_checked_when_a_job_loads_its_config(override, message):
    from mtl.cli.common import load_job_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_job_config(str(ROOT / "conf" / "local.yaml"), [override])


def test_the_pipeline_fails_on_a_bad_evaluation_key_before_its_first_step(tmp_path, capsys):
    from mtl.cli.pipeline import main

    warehouse = tmp_path / "warehouse"
    code = main(
        [
            "run",
            "--conf",
            str(ROOT / "conf" / "local.yaml"),
            "--ds",
            "2017-11-27",
            "--set",
            f"storage.warehouse={warehouse}",
            "--set",
            "evaluation.ks=[]",
        ]
    )
    assert code == 2
    assert "config error: evaluation.ks" in capsys.readouterr().err
    assert not warehouse.exists()  # nothing was ingested
