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
from typing import Any, NoReturn

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


MAX_TEXT = 32 * 2**20  # characters of JSON text: a real graph is a few hundred KiB
MAX_NODES = 100_000    # a whole transformer block decomposed into primitives is a few thousand

_FIX = "fix the file, or build the graph again and save it with attngraph.save_graph"


def _fail(msg: str) -> NoReturn:
    raise SerializationError(msg)


class _NonFinite:
    """What a JSON NaN, Infinity or overflowing number (1e999) parses to: never a value of the graph. The
    walk below reports it with the node and attribute it sits in."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _parse_float(text: str) -> float | _NonFinite:
    x = float(text)
    return x if math.isfinite(x) else _NonFinite(text)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_value(item: Any, where: str) -> Value:
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[2], list)):
        _fail(f"{where}: expected [name, dtype, [dims]], got {_short(item)}")
    if any(not isinstance(d, int | str) or isinstance(d, bool) for d in item[2]):
        _fail(f"{where} {item[0]!r}: dims must be ints or symbol strings, got {_short(item[2])}")
    try:
        return Value(item[0], TensorType(DType.parse(item[1]), tuple(dims.canonical(d) for d in item[2])))
    except (ValueError, TypeError) as e:
        _fail(f"{where} {item[0]!r}: {e}")


# What each attribute holds, by name (an op's type rule checks the values; this checks the JSON types, so a
# hostile file meets a SerializationError naming the node and attribute, never a TypeError deep inside).
_INT, _BOOL, _NUMBER, _STR, _DIM = "an int", "true or false", "a finite number", "a string", "an int or a dim name"
_ATTR_KINDS = {
    **dict.fromkeys(("heads", "axis", "window_left", "window_right", "rotary_dim", "num_buckets", "max_distance",
                     "rel_buckets", "rel_max_distance"), _INT),
    **dict.fromkeys(("transpose_b", "causal", "return_weights", "keepdims", "add_one", "bidirectional",
                     "rel_bidirectional", "alibi_before_scale"), _BOOL),
    **dict.fromkeys(("cap", "low", "high", "scale", "softcap", "attention_scaling", "eps"), _NUMBER),
    **dict.fromkeys(("align", "dtype", "layout"), _STR),
    **dict.fromkeys(("offset", "length", "start", "stop"), _DIM),
    **{name: ("list", kind) for name, kind in (("sizes", _INT), ("perm", _INT), ("operands", _STR), ("shape", _DIM),
                                               ("inv_freq", _NUMBER), ("slopes", _NUMBER), ("alibi_slopes", _NUMBER))},
}
_OP_ATTR_KINDS = {(Op.SCALE, "value"): _NUMBER}  # a const's value may also be a dim name or a list
_CHECKS = {
    _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    _BOOL: lambda v: isinstance(v, bool),
    _NUMBER: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    _STR: lambda v: isinstance(v, str),
    _DIM: lambda v: isinstance(v, int | str) and not isinstance(v, bool),
}


def _attr_in(value: Any, where: str) -> Any:
    """One attribute value from JSON: a scalar, {"float": "-inf"}, or a flat list of those."""
    if isinstance(value, _NonFinite):
        _fail(f"{where} is the JSON literal {value.text}: graph files hold finite numbers only (an infinite "
              f'const is written {{"float": "-inf"}}); {_FIX}')
    if isinstance(value, dict) and set(value) == {"float"} and isinstance(value["float"], str) \
            and value["float"] in _INFINITIES:
        return _INFINITIES[value["float"]]
    if isinstance(value, list) and not any(isinstance(v, list) for v in value):
        return tuple(_attr_in(v, where) for v in value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    _fail(f"{where}: {_short(value)} is not a number, string, bool or list of those; {_FIX}")


def _parse_attrs(op: Op, attrs: Any, where: str) -> tuple:
    if not isinstance(attrs, dict):
        _fail(f"{where}: 'attrs' must be an object, got {_short(attrs)}")
    out = []
    for name, raw in attrs.items():
        value = _attr_in(raw, f"{where} attribute {name!r}")
        kind = _OP_ATTR_KINDS.get((op, name), _ATTR_KINDS.get(name))
        if kind and not _has_kind(value, kind):
            want = f"a list, each {kind[1]}" if isinstance(kind, tuple) else kind
            _fail(f"{where}: attribute {name!r} must be {want}, got {_short(raw)}; {_FIX}")
        out.append((name, value))
    return tuple(sorted(out))


def _has_kind(value: Any, kind: str | tuple[str, str]) -> bool:
    if isinstance(kind, tuple):
        return isinstance(value, tuple) and all(map(_CHECKS[kind[1]], value))
    return _CHECKS[kind](value)


def _parse_node(i: int, nd: Any, values: dict[str, Value]) -> Node:
    if not isinstance(nd, dict) or not isinstance(nd.get("inputs"), list) or not isinstance(nd.get("outputs"), list):
        _fail(f"node {i}: expected an object with 'op', 'inputs', 'outputs' and 'attrs', got {_short(nd)}")
    try:
        op = Op(nd.get("op"))
    except ValueError:
        _fail(f"node {i}: unknown op {_short(nd.get('op'))}; known: {[o.value for o in Op]}")
    missing = [n for n in nd["inputs"] if not isinstance(n, str) or n not in values]
    if missing:
        _fail(f"node {i} ({op.value}): input(s) {_short(missing)} are not defined before it")
    outs = tuple(_parse_value(v, f"node {i} ({op.value}) output") for v in nd["outputs"])
    attrs = _parse_attrs(op, nd.get("attrs", {}), f"node {i} ({op.value})")
    return Node(op, tuple(values[n] for n in nd["inputs"]), outs, attrs)


def _check_header(data: Any) -> dict:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        _fail(f"not an attngraph graph file: expected a JSON object with format={FORMAT!r}")
    if data.get("version") != VERSION:
        _fail(f"graph file version {_short(data.get('version'))} is not supported; this attngraph reads version "
              f"{VERSION}. Re-export the graph with a matching attngraph version")
    g = data.get("graph")
    if not isinstance(g, dict) or not isinstance(g.get("name"), str):
        _fail("graph file has no 'graph' object with a 'name'")
    for key in ("inputs", "params", "nodes", "outputs"):
        if not isinstance(g.get(key), list):
            _fail(f"malformed graph file: 'graph.{key}' must be a list, got {_short(g.get(key))}")
    if len(g["nodes"]) > MAX_NODES:
        _fail(f"graph file has {len(g['nodes'])} nodes, more than the {MAX_NODES} attngraph reads; "
              "a real attention graph has at most a few thousand")
    return g


def graph_from_dict(data: Any) -> Graph:
    """Rebuild a graph from ``graph_to_dict`` output; raises ``SerializationError`` on any defect."""
    try:
        return _graph_from_dict(data)
    except RecursionError:  # from repr() of a value nested thousands of levels deep, in a message
        _fail(_TOO_DEEP)


def _graph_from_dict(data: Any) -> Graph:
    g = _check_header(data)
    inputs = tuple(_parse_value(v, "input") for v in g["inputs"])
    params = tuple(_parse_value(v, "param") for v in g["params"])
    values = {v.name: v for v in inputs + params}
    nodes = []
    for i, nd in enumerate(g["nodes"]):
        nodes.append(_parse_node(i, nd, values))
        values.update({v.name: v for v in nodes[-1].outputs})
    outputs = tuple(values[n] if isinstance(n, str) and n in values else _fail(f"output {_short(n)} is not defined")
                    for n in g["outputs"])
    try:
        return verify_graph(Graph(g["name"], inputs, params, tuple(nodes), outputs))
    except GraphError as e:
        raise SerializationError(f"graph file describes an invalid graph: {e}") from None


_TOO_DEEP = "graph file is nested too deeply to be a graph (lists or objects thousands of levels deep); " + _FIX
_TOO_BIG = f"more than the {MAX_TEXT // 2**20} MiB attngraph reads; a real attention graph is well under 1 MiB"


def from_json(text: str) -> Graph:
    """Parse a graph from JSON text (``to_json``'s form); raises ``SerializationError`` on any defect."""
    if len(text) > MAX_TEXT:
        _fail(f"graph file is {len(text) / 2**20:.0f} MiB of text, {_TOO_BIG}")
    try:
        data = json.loads(text, parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        _fail(_TOO_DEEP)
    except json.JSONDecodeError as e:
        _fail(f"graph file is not valid JSON: {e}")
    except ValueError as e:  # json's own limit: an integer of more than 4300 digits
        _fail(f"graph file holds a number attngraph cannot read ({e}); {_FIX}")
    return graph_from_dict(data)


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a graph saved by ``save_graph``; a file over ``MAX_TEXT`` bytes is refused before it is read."""
    size = os.stat(path).st_size
    if size > MAX_TEXT:  # save_graph writes ASCII: bytes and characters are the same count
        _fail(f"graph file {str(path)!r} is {size / 2**20:.0f} MiB, {_TOO_BIG}")
    with open(path, encoding="utf-8") as f:
        try:
            text = f.read(MAX_TEXT + 1)  # bounded: a device or a file still growing has no useful size
        except UnicodeDecodeError as e:
            _fail(f"graph file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); is it a graph?")
    return from_json(text)
