"""``from_onnx`` for a model made of one ONNX ``RotaryEmbedding`` or ``RMSNormalization`` node (opset 23):
the form of ONNX's own node test cases. Each becomes the IR's ``rotary`` or ``rms_norm`` op, with the
layout changes the operator's forms need (a 3-D hidden input split into heads, per-token 3-D cos/sin
caches read at their own index, normalisation over several trailing axes flattened into one).
"""

from __future__ import annotations

import math

import numpy as np

from attngraph.errors import UnsupportedModel
from attngraph.ir import DType, Graph, Op, Value
from attngraph.ir.builder import GraphBuilder

_ONNX_DTYPES = {1: DType.FLOAT32, 10: DType.FLOAT16, 11: DType.FLOAT64, 16: DType.BFLOAT16, 7: DType.INT64,
                6: DType.INT32}
POSITION_OPS = ("RotaryEmbedding", "RMSNormalization")


def _inputs(model, node) -> list[tuple[str, DType, tuple]]:
    declared = {vi.name: vi for vi in model.graph.input}
    out = []
    for name in node.input:
        if not name:
            out.append(None)
            continue
        vi = declared.get(name)
        if vi is None:
            raise UnsupportedModel(f"{node.op_type} input {name!r} is not a graph input: from_onnx needs its inputs "
                                   "declared with their types")
        t = vi.type.tensor_type
        if t.elem_type not in _ONNX_DTYPES:
            raise UnsupportedModel(f"{node.op_type} input {name!r} has ONNX element type {t.elem_type}; attngraph "
                                   f"takes {sorted(d.value for d in _ONNX_DTYPES.values())}")
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        if any(d is None for d in shape):
            raise UnsupportedModel(f"{node.op_type} input {name!r} has an unnamed dynamic dim: name it (dim_param)")
        out.append((name, _ONNX_DTYPES[t.elem_type], shape))
    return out


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def position_op_graph(model) -> Graph:
    """The IR graph of a model whose single node is ``RotaryEmbedding`` or ``RMSNormalization``."""
    node = model.graph.node[0]
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedModel(f"{node.op_type} in domain {node.domain!r}: from_onnx takes the standard operator")
    build = _rotary if node.op_type == "RotaryEmbedding" else _rms_norm
    return build(model, node, _inputs(model, node), _attrs(node))


def _rotary(model, node, ins, a) -> Graph:
    b = GraphBuilder(model.graph.name or "onnx_rotary")
    x_spec, cos_spec, sin_spec = ins[:3]
    pos_spec = ins[3] if len(ins) > 3 else None
    x = b.input(*x_spec)
    heads = int(a.get("num_heads", 0))
    if x.type.rank == 3:
        if heads <= 0 or not isinstance(x.type.shape[2], int) or x.type.shape[2] % heads:
            raise UnsupportedModel(f"RotaryEmbedding with a 3-D input needs num_heads dividing its hidden size "
                                   f"{x.type.shape[2]}, got num_heads={heads}")
        x4 = b.op(Op.SPLIT_HEADS, x, heads=heads, name="x_heads")
    elif x.type.rank == 4:
        x4 = x
    else:
        raise UnsupportedModel(f"RotaryEmbedding input {x.name!r} must be 3-D or 4-D, got {x.type}")
    size = int(x4.type.shape[3])
    rd = int(a.get("rotary_embedding_dim", 0)) or size
    cos, sin = b.input(*cos_spec), b.input(*sin_spec)
    if pos_spec is not None:
        positions = b.input(*pos_spec)
    else:  # per-token caches (B, S, rd/2): flatten them and read token (b, s) at index b * S + s
        batch, seq = cos.type.shape[:2]
        if not (isinstance(batch, int) and isinstance(seq, int)):
            raise UnsupportedModel("RotaryEmbedding without position_ids needs fixed (batch, seq) cache dims")
        cos, sin = (b.op(Op.RESHAPE, t, shape=(batch * seq, rd // 2), name=f"{t.name}_flat") for t in (cos, sin))
        positions = b.op(Op.RESHAPE, b.op(Op.IOTA, length=batch * seq), shape=(batch, seq), name="token_index")
    y = b.op(Op.ROTARY, x4, positions, cos, sin, layout="interleaved" if a.get("interleaved", 0) else "half",
             rotary_dim=rd, operands=("positions", "cos_sin"), name="rotated")
    if x.type.rank == 3:
        y = b.op(Op.MERGE_HEADS, y, name="rotated_merged")
    out = model.graph.output[0].name
    return _named(b, y, out)


def _rms_norm(model, node, ins, a) -> Graph:
    b = GraphBuilder(model.graph.name or "onnx_rms_normalization")
    x, w = b.input(*ins[0]), b.input(*ins[1])
    rank = x.type.rank
    axis = int(a.get("axis", -1)) % rank
    tail = x.type.shape[axis:]
    if tuple(w.type.shape) != tuple(tail) or not all(isinstance(d, int) for d in tail):
        raise UnsupportedModel(f"RMSNormalization scale {w.name!r} must have the normalised dims {list(tail)} (fixed), "
                               f"got {list(w.type.shape)}")
    n = math.prod(tail)
    eps = float(a.get("epsilon", 1e-5))
    flat_x = b.op(Op.RESHAPE, x, shape=tuple(x.type.shape[:axis]) + (n,), name="x_flat")
    flat_w = b.op(Op.RESHAPE, w, shape=(n,), name="scale_flat")
    y = b.op(Op.RMS_NORM, flat_x, flat_w, eps=float(np.float32(eps)), name="normed")
    y = b.op(Op.RESHAPE, y, shape=x.type.shape, name="normed_shaped")
    return _named(b, y, model.graph.output[0].name)


def _named(b: GraphBuilder, y: Value, name: str) -> Graph:
    from attngraph.ir.rename import rename_values

    graph = b.build([y])
    return rename_values(graph, {y.name: name})
