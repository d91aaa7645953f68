"""The scoring runtimes: what the executors call to embed users and items and to rank pairs.

``ScoringModel`` is the three methods scoring needs; the torch model has them, and
``OnnxModel`` runs the exported graphs in ONNX Runtime (one session per graph) with the same
batch in and the same tensors out, so the scoring stages do not know which one they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, get_args

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from mtl.config.sections import ScoringRuntime
from mtl.export.graphs import ITEM_TOWER, RANKING, USER_TOWER

# Where each ONNX runtime's graphs live, under the version's MLflow run.
EXPORT_PATHS: dict[str, str] = {r: r for r in get_args(ScoringRuntime) if r != "torch"}
# The int8 variant of each float one.
INT8_VARIANTS: dict[str, str] = {"onnx": "onnx_int8", "onnx_pruned": "onnx_int8_pruned"}


class ScoringModel(Protocol):
    tasks: tuple[str, ...]

    def user_vectors(self, batch: Mapping[str, Tensor]) -> Tensor: ...

    def item_vectors(self, batch: Mapping[str, Tensor]) -> Tensor: ...

    def predict_proba(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class ExportedGraphs:
    """One variant of a version's export, as bytes: it travels in the scoring broadcast, so no
    executor needs access to the MLflow store."""

    variant: str
    graphs: dict[str, bytes]  # graph name -> serialised ONNX model
    signature: dict[str, Any]
    weights: bytes  # the graphs' shared external data (signature["weights_file"])

    @property
    def size_bytes(self) -> int:
        return sum(len(g) for g in self.graphs.values()) + len(self.weights)


class OnnxModel:
    """ScoringModel over the exported graphs; ``threads`` intra-op threads per session (the task's
    CPUs: tasks must not oversubscribe cores)."""

    def __init__(self, export: ExportedGraphs, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # the graphs' external data, from memory: sessions copy what they need while they are built
        weights = np.frombuffer(export.weights, dtype=np.uint8)
        options.add_external_initializers_from_files_in_memory(
            [export.signature["weights_file"]], [weights], [len(weights)]
        )
        self.variant = export.variant
        self.tasks = tuple(export.signature["tasks"])
        self._sessions = {
            name: ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            for name, graph in export.graphs.items()
        }
        self._inputs = {name: [i.name for i in s.get_inputs()] for name, s in self._sessions.items()}

    def user_vectors(self, batch: Mapping[str, Tensor]) -> Tensor:
        return torch.from_numpy(self.run_graph(USER_TOWER, batch)[0])

    def item_vectors(self, batch: Mapping[str, Tensor]) -> Tensor:
        return torch.from_numpy(self.run_graph(ITEM_TOWER, batch)[0])

    def predict_proba(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {t: torch.from_numpy(p) for t, p in zip(self.tasks, self.run_graph(RANKING, batch))}

    def run_graph(self, graph: str, batch: Mapping[str, Tensor]) -> list[np.ndarray]:
        """The graph's outputs, in its signature's order, for the batch (extra keys are ignored)."""
        session = self._sessions.get(graph)
        if session is None:
            raise RuntimeError(f"the {self.variant} export has no {graph} graph (the model has no retrieval head)")
        return session.run(None, {name: batch[name].numpy() for name in self._inputs[graph]})
