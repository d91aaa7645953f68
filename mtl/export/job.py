"""The export job: a registered version -> its ONNX graphs (float and int8), checked against the
torch model and stored with the version in MLflow; and the way back for scoring."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mtl import registry
from mtl.config import Config
from mtl.errors import JobError
from mtl.export.compress import pruned, quantise_int8
from mtl.export.graphs import SIGNATURE_FILE, example_inputs, export_graphs, graph_specs
from mtl.export.runtime import EXPORT_PATHS, INT8_VARIANTS, ExportedGraphs, OnnxModel
from mtl.models.artifacts import artifact_bucket_usage, load_model
from mtl.models.model import MultiTaskRecModel

log = logging.getLogger(__name__)

# Rows of the parity batches: one row (the smallest dynamic batch) and a batch of many.
PARITY_ROWS = (1, 257)


@dataclass
class ExportResult:
    model_version: str
    sizes: dict[str, int] = field(default_factory=dict)  # variant -> bytes of its graphs and weights
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # variant -> worst output vs torch
    seconds: dict[str, float] = field(default_factory=dict)
    pruned_rows: dict[str, int] = field(default_factory=dict)  # vocab -> embedding rows the pruned variants keep


def run_export(cfg: Config, version: Optional[str] = None) -> ExportResult:
    """Export ``version`` (default: the champion) and store it under ``onnx/`` of the version's
    run, with ``onnx_int8/`` (export.int8) and the pruned variants ``onnx_pruned/`` and
    ``onnx_int8_pruned/`` (export.prune, for a version that records the embedding rows its
    training reached). Fails, storing nothing, if a float variant's graphs differ from the torch
    model they came from by more than ``export.parity_tolerance`` on any output."""
    started = time.perf_counter()
    artifact = registry.load_version(cfg, version=version)
    version = str(artifact.version)
    model = load_model(artifact)
    result = ExportResult(version)
    result.seconds["load"] = time.perf_counter() - started
    # variant -> the torch model its graphs must reproduce
    sources: dict[str, MultiTaskRecModel] = {"onnx": model}
    if cfg.export.prune:
        usage = artifact_bucket_usage(artifact)
        if usage is None:
            log.warning(
                "model version %s does not record which embedding rows its training reached (it was trained "
                "before they were recorded): no pruned variants",
                version,
            )
        else:
            tables = model.features.tables
            for vocab, rows in usage.items():
                if vocab not in tables or (len(rows) and rows[-1] >= tables[vocab].num_embeddings):
                    raise JobError(
                        f"model version {version}: its metadata records embedding rows of vocab {vocab!r} that its "
                        "model does not have: the artifact is inconsistent, retrain it"
                    )
            sources["onnx_pruned"] = pruned(model, {v: torch.from_numpy(rows) for v, rows in usage.items()})
            result.pruned_rows = {v: len(rows) for v, rows in usage.items()}
    with tempfile.TemporaryDirectory(prefix="mtl-export-") as tmp:
        folders: dict[str, Path] = {}
        started = time.perf_counter()
        for variant, source in list(sources.items()):
            folders[variant] = Path(tmp) / EXPORT_PATHS[variant]
            facts = {"model_version": version, "ds": artifact.metadata.get("ds"), "variant": variant}
            if variant == "onnx_pruned":
                facts["pruned_rows_kept"] = result.pruned_rows
            export_graphs(source, folders[variant], facts)
        result.seconds["export"] = time.perf_counter() - started
        if cfg.export.int8:
            started = time.perf_counter()
            for variant in list(folders):
                int8 = INT8_VARIANTS[variant]
                folders[int8] = quantise_int8(folders[variant], Path(tmp) / EXPORT_PATHS[int8])
                sources[int8] = sources[variant]
            result.seconds["quantise"] = time.perf_counter() - started
        started = time.perf_counter()
        for variant, folder in folders.items():
            exported = read_export(folder, variant)
            result.sizes[variant] = exported.size_bytes
            result.max_abs_diff[variant] = max_abs_diff(sources[variant], OnnxModel(exported))
        result.seconds["check"] = time.perf_counter() - started
        tolerance = cfg.export.parity_tolerance
        for variant in INT8_VARIANTS:  # the float ones; int8 is judged by its metrics (benchmarks/export.py)
            if variant in result.max_abs_diff and result.max_abs_diff[variant] > tolerance:
                raise JobError(
                    f"model version {version}: the {variant} graphs differ from the torch model by "
                    f"{result.max_abs_diff[variant]:.2e} (export.parity_tolerance {tolerance:g}); nothing was stored"
                )
        started = time.perf_counter()
        for variant, folder in folders.items():
            registry.log_version_folder(cfg, version, folder, EXPORT_PATHS[variant])
        result.seconds["store"] = time.perf_counter() - started
    return result


def read_export(folder: str | Path, variant: str) -> ExportedGraphs:
    folder = Path(folder)
    signature = json.loads((folder / SIGNATURE_FILE).read_text())
    graphs = {name: (folder / spec["file"]).read_bytes() for name, spec in signature["graphs"].items()}
    return ExportedGraphs(variant, graphs, signature, (folder / signature["weights_file"]).read_bytes())


def load_export(cfg: Config, version: str, runtime: str) -> ExportedGraphs:
    """The ``runtime`` variant of the version's export, as stored by run_export."""
    with tempfile.TemporaryDirectory(prefix="mtl-export-") as tmp:
        folder = registry.download_version_folder(cfg, version, EXPORT_PATHS[runtime], tmp)
        if folder is None:
            hint = f"run mtl-export --version {version}"
            if "pruned" in runtime:
                hint += " (a version trained before the embedding rows it reaches were recorded has no pruned variants)"
            raise JobError(f"scoring.runtime: {runtime}, but model version {version} has no {runtime} export: {hint}")
        exported = read_export(folder, runtime)
    if str(exported.signature.get("model_version")) != str(version):
        raise JobError(
            f"the {runtime} export stored with version {version} says it is of version "
            f"{exported.signature.get('model_version')}: export the version again"
        )
    return exported


def max_abs_diff(model: MultiTaskRecModel, onnx: OnnxModel, rows: tuple[int, ...] = PARITY_ROWS) -> float:
    """The largest absolute difference, over every output of every graph, between the torch
    model and the graphs on random batches of ``rows`` rows."""
    worst = 0.0
    model = model.eval()
    for spec in graph_specs(model):
        for n in rows:
            args = example_inputs(model, spec.module.input_names, rows=n, seed=n)
            batch = spec.module.batch(args)
            with torch.no_grad():
                expected = spec.module(*args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            actual = onnx.run_graph(spec.name, batch)
            for e, a in zip(expected, actual):
                worst = max(worst, float(np.max(np.abs(e.numpy() - a))))
    return worst


def summarize(r: ExportResult) -> str:
    sizes = ", ".join(f"{v} {n / 1e6:.2f} MB (max |diff| vs torch {r.max_abs_diff[v]:.1e})" for v, n in r.sizes.items())
    kept = ", ".join(f"{v} {n:,}" for v, n in r.pruned_rows.items())
    return f"model version {r.model_version} exported: {sizes}" + (f"; pruned tables keep rows: {kept}" if kept else "")
