"""``export_onnx``: write a graph as a checked ONNX file, atomically and byte-for-byte reproducibly."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from attngraph.errors import AttnGraphError
from attngraph.fileio import remove_stale_temps
from attngraph.ir import Graph

EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to a side file (protobuf caps a file at 2 GiB)


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
    path = Path(path)
    if external_data is None:
        external_data = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)  # what killed exports left here (a temp folder may hold 1 GB of weights)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise AttnGraphError(f"cannot write the ONNX file {str(path)!r}: {e.strerror or e}; "
                             "choose a writable folder") from None
    try:
        tmp = tmpdir / path.name
        if external_data:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=1024)
        else:
            tmp.write_bytes(model.SerializeToString(deterministic=True))
        onnx.checker.check_model(str(tmp), full_check=True)
        if external_data:
            os.replace(tmpdir / f"{path.name}.data", path.parent / f"{path.name}.data")
        os.replace(tmp, path)
    except OSError as e:
        raise AttnGraphError(f"cannot write the ONNX file {str(path)!r}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


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
