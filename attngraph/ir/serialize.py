"""Versioned JSON form of a graph. Loading parses plain data only (no pickle, no eval) and verifies.

Format (version 1)::

    {"format": "attngraph.graph", "version": 1,
     "graph": {"name": ..., "inputs": [[name, dtype, [dims]]], "params": [...],
               "nodes": [{"op": "matmul", "inputs": [names], "outputs": [[name, dtype, [dims]]],
                          "attrs": {"transpose_b": true}}],   # an infinite float: {"float": "-inf"}
               "outputs": [names]}}

Floats are written with ``repr`` precision by ``json``, so a round trip is exact.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from attngraph.errors import GraphError, SerializationError
from attngraph.fileio import atomic_write_text
from attngraph.ir import DType, Graph, Node, Op, TensorType, Value, dims
from attngraph.ir.verify import verify_graph

FORMAT = "attngraph.graph"
VERSION = 1


def _value(v: Value) -> list:
    return [v.name, v.type.dtype.value, list(v.type.shape)]


_INFINITIES = {"inf": float("inf"), "-inf": float("-inf")}


def _attr_out(value: Any) -> Any:
    """JSON has no infinities: a constant's -inf (a mask fill) is written as {"float": "-inf"}."""
    if isinstance(value, tuple):
        return [_attr_out(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return {"float": "inf" if value > 0 else "-inf"}
    return value


def graph_to_dict(graph: Graph) -> dict:
    """Plain-data form of ``graph``."""
    return {"format": FORMAT, "version": VERSION, "graph": {
        "name": graph.name,
        "inputs": [_value(v) for v in graph.inputs],
        "params": [_value(v) for v in graph.params],
        "nodes": [{"op": n.op.value, "inputs": [v.name for v in n.inputs],
                   "outputs": [_value(v) for v in n.outputs],
                   "attrs": {k: _attr_out(v) for k, v in n.attrs}} for n in graph.nodes],
        "outputs": [v.name for v in graph.outputs]}}


def to_json(graph: Graph) -> str:
    return json.dumps(graph_to_dict(graph), indent=1, sort_keys=False, allow_nan=False)


def save_graph(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` as JSON, atomically."""
    atomic_write_text(path, to_json(graph) + "\n")


def _fail(msg: str) -> None:
    raise SerializationError(msg)


def _parse_value(item: Any, where: str) -> Value:
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[2], list)):
        _fail(f"{where}: expected [name, dtype, [dims]], got {item!r}")
    try:
        shape = tuple(dims.canonical(d) for d in item[2])
        if any(not isinstance(d, int | str) or isinstance(d, bool) for d in item[2]):
            raise ValueError("dims must be ints or symbol strings")
        return Value(item[0], TensorType(DType.parse(item[1]), shape))
    except (ValueError, TypeError) as e:
        _fail(f"{where}: {e}")
        raise


def _attr_in(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_attr_in(v) for v in value)
    if isinstance(value, dict) and set(value) == {"float"} and value["float"] in _INFINITIES:
        return _INFINITIES[value["float"]]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    _fail(f"attribute value {value!r} is not a number, string, bool or list")


def graph_from_dict(data: Any) -> Graph:
    """Rebuild a graph from ``graph_to_dict`` output; raises ``SerializationError`` on any defect."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        _fail(f"not an attngraph graph file: expected a JSON object with format={FORMAT!r}")
    if data.get("version") != VERSION:
        _fail(f"graph file version {data.get('version')!r} is not supported; this attngraph reads version "
              f"{VERSION}. Re-export the graph with a matching attngraph version")
    g = data.get("graph")
    if not isinstance(g, dict) or not isinstance(g.get("name"), str):
        _fail("graph file has no 'graph' object with a 'name'")
    try:
        inputs = tuple(_parse_value(v, "input") for v in g["inputs"])
        params = tuple(_parse_value(v, "param") for v in g["params"])
        values = {v.name: v for v in inputs + params}
        nodes = []
        for i, nd in enumerate(g["nodes"]):
            try:
                op = Op(nd["op"])
            except ValueError:
                _fail(f"node {i}: unknown op {nd['op']!r}; known: {[o.value for o in Op]}")
            missing = [n for n in nd["inputs"] if n not in values]
            if missing:
                _fail(f"node {i} ({op.value}): input(s) {missing} are not defined before it")
            outs = tuple(_parse_value(v, f"node {i} output") for v in nd["outputs"])
            attrs = tuple(sorted((str(k), _attr_in(v)) for k, v in nd["attrs"].items()))
            nodes.append(Node(op, tuple(values[n] for n in nd["inputs"]), outs, attrs))
            values.update({v.name: v for v in outs})
        outputs = tuple(values[n] if n in values else _fail(f"output {n!r} is not defined") for n in g["outputs"])
    except (KeyError, TypeError, AttributeError) as e:
        _fail(f"malformed graph file: {type(e).__name__}: {e}")
    try:
        return verify_graph(Graph(g["name"], inputs, params, tuple(nodes), outputs))
    except GraphError as e:
        raise SerializationError(f"graph file describes an invalid graph: {e}") from None


def from_json(text: str) -> Graph:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SerializationError(f"graph file is not valid JSON: {e}") from None
    return graph_from_dict(data)


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a graph saved by ``save_graph``."""
    with open(path, encoding="utf-8") as f:
        return from_json(f.read())
