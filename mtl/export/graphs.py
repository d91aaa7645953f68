"""The three ONNX graphs of a model: user tower, item tower and ranking heads.

Each graph takes the raw batch contract (mtl.data.batch): int64 hashes as Spark's xxhash64 gives
them and raw dense values. Hashing to buckets and the dense normalisation are inside the graphs,
exactly as in the torch model, so a caller needs nothing but the signature (``signature.json``)
to feed them. The batch dimension is dynamic.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtl.export.shared_weights import WEIGHTS_FILE, share_weights
from mtl.models.embedding import MIN_STD
from mtl.models.model import MultiTaskRecModel
from mtl.schema import DENSE_KEY, PAD_HASH, ROW_KINDS, dense_columns, row_kind_code

log = logging.getLogger(__name__)

OPSET = 18
SIGNATURE_FILE = "signature.json"
SIGNATURE_FORMAT = 1
USER_TOWER, ITEM_TOWER, RANKING = "user_tower", "item_tower", "ranking"
GRAPHS = (USER_TOWER, ITEM_TOWER, RANKING)
USER_VECTOR, ITEM_VECTOR = "user_vector", "item_vector"


class _Graph(nn.Module):
    """A model entry point with positional inputs (ONNX graphs have no dict inputs)."""

    def __init__(self, model: MultiTaskRecModel, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def batch(self, inputs: Sequence[Tensor]) -> dict[str, Tensor]:
        return dict(zip(self.input_names, inputs))


class _UserTower(_Graph):
    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model.user_vectors(self.batch(inputs))


class _ItemTower(_Graph):
    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model.item_vectors(self.batch(inputs))


class _Ranking(_Graph):
    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        probs = self.model.probabilities(self.batch(inputs), traceable=True)
        return tuple(probs[t] for t in self.model.tasks)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: _Graph
    outputs: tuple[str, ...]


def graph_specs(model: MultiTaskRecModel) -> list[GraphSpec]:
    """The graphs of ``model``: the towers only when it has a retrieval head."""
    id_fields = model.features.id_fields

    def inputs(sides: Sequence[str]) -> list[str]:
        return [f.name for f in id_fields if f.side in sides] + [DENSE_KEY]

    specs = [GraphSpec(RANKING, _Ranking(model, inputs(model.input_sides)), model.tasks)]
    if model.retrieval is not None:
        specs.insert(0, GraphSpec(ITEM_TOWER, _ItemTower(model, inputs(("item",))), (ITEM_VECTOR,)))
        specs.insert(0, GraphSpec(USER_TOWER, _UserTower(model, inputs(("user",))), (USER_VECTOR,)))
    return specs


def example_inputs(model: MultiTaskRecModel, names: Sequence[str], rows: int = 3, seed: int = 0) -> tuple[Tensor, ...]:
    """A batch for tracing (and parity checks): hashes over the whole int64 range (negative and
    missing ones included), valid row kind codes, dense values of any sign with a NaN."""
    rng = np.random.default_rng(seed)
    fields = {f.name: f for f in model.features.id_fields}
    n_dense = model.features.dense_mean.numel()
    out = []
    for name in names:
        if name == DENSE_KEY:
            sign = rng.choice([-1.0, 1.0, 1.0], (rows, n_dense))
            dense = (rng.lognormal(0.0, 2.0, (rows, n_dense)) * sign).astype(np.float32)
            dense[0, 0] = np.nan
            out.append(torch.from_numpy(dense))
            continue
        f = fields[name]
        shape = (rows,) if f.kind == "categorical" else (rows, f.length)
        if f.vocab == "row_kind":
            values = rng.integers(0, len(ROW_KINDS) + 1, shape)
        else:
            values = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, shape, dtype=np.int64)
            values.flat[0] = PAD_HASH
        out.append(torch.from_numpy(values.astype(np.int64)))
    return tuple(out)


def export_graphs(model: MultiTaskRecModel, folder: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``<graph>.onnx`` for every graph of ``model`` and ``signature.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    graphs = {}
    for spec in graph_specs(model):
        args = example_inputs(model, spec.module.input_names)
        batch = torch.export.Dim("batch", min=1)
        # forward(*inputs): torch.export sees one argument, the tuple of inputs
        dynamic = (tuple({0: batch} for _ in args),)
        path = folder / f"{spec.name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            program = torch.onnx.export(
                spec.module,
                args,
                input_names=list(spec.module.input_names),
                output_names=list(spec.outputs),
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        program.save(str(path), external_data=False)
        graphs[spec.name] = _graph_signature(path.name, spec, args, model)
    share_weights(folder)
    (folder / SIGNATURE_FILE).write_text(json.dumps(signature(model, graphs, metadata), indent=2) + "\n")
    return folder


def _graph_signature(file: str, spec: GraphSpec, args: Sequence[Tensor], model: MultiTaskRecModel) -> dict[str, Any]:
    def shape(t: Tensor) -> list[Any]:
        return ["batch", *t.shape[1:]]

    with torch.no_grad():
        outputs = spec.module(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {
        "file": file,
        "inputs": [
            {"name": n, "dtype": str(a.dtype).removeprefix("torch."), "shape": shape(a)}
            for n, a in zip(spec.module.input_names, args)
        ],
        "outputs": [
            {"name": n, "dtype": str(o.dtype).removeprefix("torch."), "shape": shape(o)}
            for n, o in zip(spec.outputs, outputs)
        ],
    }


def signature(model: MultiTaskRecModel, graphs: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """What another service needs to call the graphs: inputs, outputs, hashing and normalisation."""
    features = model.features
    return {
        "format": SIGNATURE_FORMAT,
        **metadata,
        "opset": OPSET,
        "tasks": list(model.tasks),
        "graphs": graphs,
        # the graphs' large tensors, each once (ONNX external data; load the graphs from this folder)
        "weights_file": WEIGHTS_FILE,
        "hashing": {
            "id_input": "int64: Spark's xxhash64 of the id string (seed 42); 0: a missing id, sequence padding",
            "bucket": "0 if hash == 0 else (hash mod (buckets - 1)) + 1, mod taken non-negative (floor modulo)",
            "missing_hash": PAD_HASH,
            "buckets": {vocab: table.num_embeddings for vocab, table in features.tables.items()},
            "field_vocab": {f.name: f.vocab for f in features.id_fields},
            "sequence_lengths": {f.name: f.length for f in features.id_fields if f.kind == "sequence"},
            "row_kind_codes": {kind: row_kind_code(kind) for kind in ROW_KINDS},
        },
        "normalisation": {
            "dense_input": f"float32 [batch, {len(dense_columns())}]: the raw values of dense_columns, in that order",
            "formula": "(log1p(max(nan_to_0(x), 0)) - mean) / std, per column",
            "dense_columns": list(dense_columns()),
            "mean": features.dense_mean.tolist(),
            # the std the graphs divide by: columns below MIN_STD are only centred
            "std": features.dense_std.tolist(),
            "min_std": MIN_STD,
        },
    }
