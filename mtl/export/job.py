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
from mtl.export.compress import quantise_int8
from mtl.export.graphs import SIGNATURE_FILE, example_inputs, export_graphs, graph_specs
from mtl.export.runtime import EXPORT_PATHS, ExportedGraphs, OnnxModel
from mtl.models.artifacts import load_model
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


def run_export(cfg: Config, version: Optional[str] = None) -> ExportResult:
    """Export ``version`` (default: the champion) and store it under ``onnx/`` (and
    ``onnx_int8/``) of the version's run. Fails, storing nothing, if the float graphs differ
    from the torch model by more than ``export.parity_tolerance`` on any output."""
    started = time.perf_counter()
    artifact = registry.load_version(cfg, version=version)
    version = str(artifact.version)
    model = load_model(artifact)
    result = ExportResult(version)
    result.seconds["load"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="mtl-export-") as tmp:
        folders = {"onnx": Path(tmp) / EXPORT_PATHS["onnx"]}
        started = time.perf_counter()
        export_graphs(model, folders["onnx"], {"model_version": version, "ds": artifact.metadata.get("ds")})
        result.seconds["export"] = time.perf_counter() - started
        if cfg.export.int8:
            started = time.perf_counter()
            folders["onnx_int8"] = quantise_int8(folders["onnx"], Path(tmp) / EXPORT_PATHS["onnx_int8"])
            result.seconds["quantise"] = time.perf_counter() - started
        started = time.perf_counter()
        for variant, folder in folders.items():
            exported = read_export(folder, variant)
            result.sizes[variant] = exported.size_bytes
            result.max_abs_diff[variant] = max_abs_diff(model, OnnxModel(exported))
        result.seconds["check"] = time.perf_counter() - started
        tolerance = cfg.export.parity_tolerance
        if result.max_abs_diff["onnx"] > tolerance:
            raise JobError(
                f"model version {version}: the ONNX graphs differ from the torch model by "
                f"{result.max_abs_diff['onnx']:.2e} (export.parity_tolerance {tolerance:g}); nothing was stored"
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
            raise JobError(
                f"scoring.runtime: {runtime}, but model version {version} has no {runtime} export: "
                f"run mtl-export --version {version}"
            )
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
    return f"model version {r.model_version} exported: {sizes}"
