"""``export_onnx``: write a graph as a checked ONNX file, atomically and byte-for-byte reproducibly."""

from __future__ import annotations

import os
from pathlib import Path

from attngraph.fileio import EXTERNAL_DATA_BYTES, atomic_save_onnx
from attngraph.ir import Graph


def export_onnx(graph: Graph, path: str | os.PathLike, weights=None, *, style: str = "auto",
                opset: int | None = None, external_data: bool | None = None) -> Path:
    """Export ``graph`` with ``weights`` to ``path`` and return the path.

    ``style``: "decomposed", "attention", "contrib" or "auto"; ``opset`` defaults per style. The model
    passes ``onnx.checker.check_model(full_check=True)`` before it replaces ``path``; batch and
    sequence axes are dynamic; metadata records the attngraph version, the semantics and the graph.
    ``external_data`` (default: when the weights pass 1 GiB) writes weights to ``<path>.data``.
    """
    from attngraph.lowering.registry import get_backend

    backend = get_backend("onnx")  # a missing onnx/onnxruntime gives the one-line install hint
    import onnx

    model = backend.to_model(graph, weights, style=style, opset=opset)
    if external_data is None:
        external_data = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    return atomic_save_onnx(model, path, external_data=external_data, keep_model=False,
                            check=lambda tmp: onnx.checker.check_model(tmp, full_check=True))


def model_nodes(graph) -> list:
    """Every node of an ONNX GraphProto, subgraphs (``If`` branches) included, in order."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.g.node:
                nodes += model_nodes(attr.g)
            for sub in attr.graphs:
                nodes += model_nodes(sub)
    return nodes
