"""One ONNX ``Attention`` node (opsets 23-25) as an attngraph graph (and a single ``RotaryEmbedding`` or
``RMSNormalization`` node, ``onnx_position_ops``): the single-node half of ``from_onnx``, below both
``onnx_import`` (the public entry point) and ``onnx_discovery`` (which lifts such nodes out of whole models),
so the imports between the two run one way.

Everything the IR expresses is mapped: 3D and 4D layouts, bool and float masks of any
broadcastable rank, ``is_causal``, ``scale``, ``softcap``, GQA/MQA, past/present KV cache,
``nonpad_kv_seqlen`` (as key lengths, when not causal), the opset-25 windows, the
``qk_matmul_output`` modes, and one tensor feeding Q, K and V (as torch exports self-attention).
The model is first checked against the operator's schema and its shapes (``onnx_validate``);
anything invalid or inexpressible is refused with a message naming the attribute or tensor.
Loading parses protobuf only; it never executes code.
"""

from __future__ import annotations

import os

from attngraph.errors import SerializationError, UnsupportedModel
from attngraph.frontends.constructors import SCORE_STAGES, AttentionConfig, build_attention
from attngraph.frontends.onnx_position_ops import POSITION_OPS, position_op_graph
from attngraph.frontends.onnx_validate import AttentionNode, check_attention_model
from attngraph.ir import Graph, Node, TensorType, Value, dims
from attngraph.ir.rename import rename_values
from attngraph.ir.verify import verify_graph

_STAGE_OF_MODE = {0: "scaled", 1: "softcapped", 2: "masked", 3: "weights"}


def load_model(source):
    """An ``onnx.ModelProto`` from a path or bytes, with clear errors for missing or broken files."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
        else:
            with open(os.fspath(source), "rb") as f:
                data = f.read()
    except TypeError:
        raise SerializationError(f"an ONNX model is a path, bytes or an onnx.ModelProto, got "
                                 f"{type(source).__name__}: pass one of those") from None
    except OSError as e:
        raise SerializationError(f"cannot read ONNX file {str(source)!r}: {e.strerror or e}") from None
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise SerializationError(f"{str(source)[:80]!r} is not a valid ONNX file (truncated or corrupt?): "
                                 f"{e}") from None
    if not model.graph.node:
        raise SerializationError(f"{str(source)[:80]!r} holds no ONNX graph (empty or not an ONNX model)")
    return model


def import_node_model(source) -> Graph:
    """The attngraph graph equal to the model's single ``Attention`` (or position-op) node, named as in the
    model; see ``attngraph.from_onnx``."""
    model = load_model(source)
    if len(model.graph.node) == 1 and model.graph.node[0].op_type in POSITION_OPS:
        return position_op_graph(model)
    # the refusal most models from other exporters meet, made first and here, where it is cheapest
    others = sorted({n.op_type for n in model.graph.node if n.op_type != "Attention"})
    if others or len(model.graph.node) != 1:
        raise UnsupportedModel(f"unsupported op(s) {others or [n.op_type for n in model.graph.node]} in the imported "
                               "model: from_onnx imports graphs made of one ONNX Attention, RotaryEmbedding or "
                               "RMSNormalization node; for attention inside a whole model use "
                               "from_onnx(path, subgraph=N) (see attngraph inspect)")
    node = check_attention_model(model)
    stage = _stage(node)
    graph = build_attention(_config(node, stage, model.graph.name or "onnx_attention"))
    graph = _pad_short_mask(graph, node)
    graph = _drop_unused_outputs(graph, node)
    shared = _shared_roles(node)
    graph = share_inputs(graph, shared)
    names = {role: t.name for role, t in node.inputs.items() if role not in shared}
    names.update({"y": node.outputs["y"], "present_key": node.outputs.get("present_key"),
                  "present_value": node.outputs.get("present_value")})
    if stage is not None:
        names[SCORE_STAGES[stage]] = node.outputs["qk_matmul_output"]
    return rename_values(graph, {ir: onnx_name for ir, onnx_name in names.items() if onnx_name})


def _stage(node: AttentionNode) -> str | None:
    """The IR score stage the 4th output returns (None when the graph does not return it)."""
    if "qk_matmul_output" not in node.outputs:
        return None
    a = node.attrs
    stage = _STAGE_OF_MODE[a["qk_matmul_output_mode"]]
    if stage == "softcapped" and not a["softcap"]:
        stage = "scaled"  # without softcap, mode 1 equals mode 0
    windowed = a.get("left_window_size", -1) != -1 or a.get("right_window_size", -1) != -1
    has_mask = bool({"attn_mask", "key_lengths"} & set(node.inputs)) or a["is_causal"] or windowed
    if stage == "masked" and not has_mask:
        stage = "softcapped" if a["softcap"] else "scaled"
    return stage


def _config(node: AttentionNode, stage: str | None, name: str) -> AttentionConfig:
    a, ins = node.attrs, node.inputs
    window = None
    if a.get("left_window_size", -1) != -1 or a.get("right_window_size", -1) != -1:
        window = (a["left_window_size"], a["right_window_size"])
    past, lengths, mask = "past_key" in ins, "key_lengths" in ins, ins.get("attn_mask")
    mask_kind = mask_shape = None
    if mask:
        mask_kind = "bool" if mask.dtype.value == "bool" else "additive"
        mask_shape = _mask_shape(node)
    # with nonpad_kv_seqlen (and no past), ONNX aligns causal/window per batch row: offset = nonpad[b] - q_len
    return AttentionConfig(kind="core", num_heads=node.heads, num_kv_heads=node.kv_heads, head_dim=node.head_dim,
                           v_head_dim=node.v_head_dim, causal=bool(a["is_causal"]), window=window,
                           key_padding=lengths, align_to_lengths=lengths and not past, mask=mask_kind,
                           mask_shape=mask_shape, scale=a["scale"], softcap=a["softcap"] or None, kv_cache=past,
                           score_outputs=(stage,) if stage else (), layout=node.layout,
                           dtype=ins["q"].dtype.value, name=name)


def _mask_shape(node: AttentionNode) -> tuple:
    """Map the ONNX mask dims onto the IR's symbols, right-aligned to (batch, heads, q_len, total)."""
    ins = node.inputs
    m, q, k = ins["attn_mask"], ins["q"], ins["k"]
    q_len, kv_len = (q.shape[2], k.shape[2]) if node.layout == "4d" else (q.shape[1], k.shape[1])
    past = ins["past_key"].shape[2] if "past_key" in ins else 0
    total = kv_len + past if isinstance(kv_len, int) and isinstance(past, int) else None
    ir_total = "kv_len+past_len" if "past_key" in ins else "kv_len"
    target = ("batch", node.heads, "q_len", ir_total)
    sizes = (q.shape[0], node.heads, q_len, total)
    what = ("batch size", "q_num_heads", "q_sequence_length", "total_sequence_length")
    out = []
    for d, sym, size, name in zip(reversed(m.shape), reversed(target), reversed(sizes), reversed(what)):
        if d == 1 and size != 1:
            out.append(1)
            continue
        if name == "total_sequence_length" and isinstance(d, int) and size is not None and d < size:
            out.append(sym)  # shorter than the keys: padded in the graph (``_pad_short_mask``), as opset 24 says
            continue
        if isinstance(d, int) and isinstance(size, int) and d != size:
            raise SerializationError(f"attn_mask {m.name!r} dim {d} does not broadcast to the {name} {size} "
                                     f"(mask shape {list(m.shape)}): make it 1 or {size}")
        out.append(sym)
    return tuple(reversed(out))


def _pad_short_mask(graph: Graph, node: AttentionNode) -> Graph:
    """Opset 24: an attn_mask shorter than the keys is padded with -inf (False for a bool mask). The graph
    then takes the short mask and pads it itself: each key column j reads mask column min(j, d - 1), and
    the columns past the mask's d take the fill."""
    mask = node.inputs.get("attn_mask")
    if mask is None or not isinstance(mask.shape[-1], int):
        return graph
    full = next(v for v in graph.inputs if v.name == "attn_mask")
    total = full.type.shape[-1]
    sizes = [_static_size(node, sym) for sym in dims.symbols(total)]
    if None in sizes or dims.evaluate(total, dict(zip(dims.symbols(total), sizes))) <= mask.shape[-1]:
        return graph
    from attngraph.ir import DType, Op
    from attngraph.passes.rewrite import Emitter, taken_names

    d, rank = mask.shape[-1], full.type.rank
    short = Value(full.name, TensorType(full.type.dtype, full.type.shape[:-1] + (d,)))
    em = Emitter(taken_names(graph))
    columns = em.emit(Op.IOTA, length=total)
    keys_first = em.emit(Op.TRANSPOSE, short, perm=(rank - 1, *range(rank - 1)))
    read = em.emit(Op.GATHER, keys_first, em.emit(Op.MINIMUM, columns, em.const(d - 1, DType.INT64)))
    back = em.emit(Op.TRANSPOSE, read, perm=(*range(1, rank), 0))
    fill = em.const(False if full.type.dtype is DType.BOOL else float("-inf"), full.type.dtype)
    padded = em.emit(Op.WHERE, em.emit(Op.LESS, columns, em.const(d, DType.INT64)), back, fill, name="attn_mask_padded")
    body = tuple(Node(n.op, tuple(padded if v == full else v for v in n.inputs), n.outputs, n.attrs)
                 for n in graph.nodes)
    inputs = tuple(short if v == full else v for v in graph.inputs)
    return verify_graph(graph.replace(inputs=inputs, nodes=tuple(em.nodes) + body))


def _static_size(node: AttentionNode, symbol: str) -> int | None:
    """The fixed size a symbol of the IR graph has in this node's declared shapes (None if dynamic)."""
    ins = node.inputs
    q_len = 2 if node.layout == "4d" else 1
    found = {"kv_len": ins["k"].shape[q_len], "past_len": ins["past_key"].shape[2] if "past_key" in ins else 0}
    value = found.get(symbol)
    return value if isinstance(value, int) else None


def _drop_unused_outputs(graph: Graph, node: AttentionNode) -> Graph:
    """The IR builds present_key/present_value with a cache; keep them only where the model returns them."""
    names = {n for n in ("present_key", "present_value") if n not in node.outputs}
    return graph.replace(outputs=tuple(v for v in graph.outputs if v.name not in names)) if names else graph


# ---- one ONNX tensor in several of the Q/K/V roles -------------------------------------------------

def _shared_roles(node: AttentionNode) -> dict[str, str]:
    """``{role: earlier role}`` for K or V fed by the same ONNX tensor as Q (or V as K)."""
    shared: dict[str, str] = {}
    for i, role in enumerate(("k", "v"), start=1):
        for first in ("q", "k")[:i]:
            if node.inputs[role].name == node.inputs[first].name:
                shared[role] = shared.get(first, first)
                break
    return shared


def share_inputs(graph: Graph, shared: dict[str, str]) -> Graph:
    """Feed each input named in ``shared`` from the input it maps to, and drop it from the inputs.

    When Q's tensor also feeds K or V, the key length is the query length: the symbol ``kv_len``
    becomes ``q_len`` in every type, so the types the IR infers downstream still agree. Verified.
    """
    if not shared:
        return graph
    from attngraph.ir.specs import DIM_ATTRS

    syms = {"kv_len": "q_len"} if "q" in shared.values() else {}
    new: dict[str, Value] = {}
    for v in list(graph.inputs) + list(graph.params) + [o for n in graph.nodes for o in n.outputs]:
        new[v.name] = Value(v.name, TensorType(v.type.dtype, tuple(_subst(d, syms) for d in v.type.shape)))
    for dup, keep in shared.items():
        if new[dup].type != new[keep].type:
            raise UnsupportedModel(f"one ONNX tensor feeds Attention inputs {keep!r} and {dup!r}, but their "
                                   f"shapes differ ({new[keep].type} vs {new[dup].type}): check the head counts")
        new[dup] = new[keep]
    nodes = tuple(Node(n.op, tuple(new[v.name] for v in n.inputs), tuple(new[v.name] for v in n.outputs),
                       tuple((k, _subst(a, syms) if k in DIM_ATTRS else a) for k, a in n.attrs))
                  for n in graph.nodes)
    inputs = tuple(new[v.name] for v in graph.inputs if v.name not in shared)
    return verify_graph(graph.replace(inputs=inputs, params=tuple(new[v.name] for v in graph.params),
                                      nodes=nodes, outputs=tuple(new[v.name] for v in graph.outputs)))


def _subst(d, syms: dict[str, str]):
    """``d`` with its symbols renamed by ``syms``, canonical."""
    if not syms or not isinstance(d, str):
        return d
    return dims.canonical("+".join(syms.get(p.strip(), p.strip()) for p in d.split("+")))
