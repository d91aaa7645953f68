"""One weights file for the graphs of an export: the embedding tables are read by all three
graphs (the user tower reads the item table through the history, the ranking heads read every
table), and stored inside each graph they would be stored three times. ONNX external data lets
each graph point into one shared ``weights.bin`` instead, each distinct tensor stored once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import set_external_data

WEIGHTS_FILE = "weights.bin"
# Smaller tensors (biases, scales, shapes) stay inside the graph: not worth an indirection.
MIN_EXTERNAL_BYTES = 1024
ALIGNMENT = 4096  # offsets on page boundaries, so a runtime may map the file


def share_weights(folder: str | Path) -> Path:
    """Rewrite every ``*.onnx`` of ``folder`` to read its large initializers from one
    ``weights.bin`` in that folder, with each distinct tensor in it once."""
    folder = Path(folder)
    graphs = {path: onnx.load(path) for path in sorted(folder.glob("*.onnx"))}
    offsets: dict[str, tuple[int, int]] = {}
    with open(folder / WEIGHTS_FILE, "wb") as out:
        for model in graphs.values():
            for tensor in model.graph.initializer:
                data = numpy_helper.to_array(tensor)
                if data.nbytes < MIN_EXTERNAL_BYTES:
                    continue
                raw = np.ascontiguousarray(data).tobytes()
                key = hashlib.sha256(raw + str((tensor.data_type, tuple(tensor.dims))).encode()).hexdigest()
                if key not in offsets:
                    out.write(b"\0" * (-out.tell() % ALIGNMENT))
                    offsets[key] = (out.tell(), len(raw))
                    out.write(raw)
                _point_at(tensor, raw, *offsets[key])
    for path, model in graphs.items():
        for node in model.graph.node:  # the exporter's provenance of each node (source lines, module paths)
            node.ClearField("metadata_props")
            node.ClearField("doc_string")
        onnx.save(model, path)
    return folder / WEIGHTS_FILE


def _point_at(tensor: TensorProto, raw: bytes, offset: int, length: int) -> None:
    for field in ("float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(field)
    tensor.raw_data = raw  # onnx wants the data in raw form before it moves it out
    set_external_data(tensor, WEIGHTS_FILE, offset, length)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
