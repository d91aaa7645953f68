"""Gemm -> MatMul + Add, so that ONNX Runtime's dynamic quantisation quantises the dense layers:
it turns MatMul with a constant weight into an int8 MatMul, while it fails on the exporter's
Gemm nodes (transB=1) in its shape inference."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


def gemm_as_matmul(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every Gemm of the form ``x @ W.T + b`` (alpha = beta = 1, transA = 0)
    whose W is an initializer into MatMul with W transposed once, plus Add; returns how many."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(weight.copy(), name))
        product = f"{node.output[0]}__product" if len(node.input) > 2 else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}__matmul"))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}__add"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return rewritten
