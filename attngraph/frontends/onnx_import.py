"""``from_onnx``: an ONNX ``Attention`` node (opsets 23-25) as an attngraph graph.

Everything the IR expresses is mapped: 3D and 4D layouts, bool and float masks of any
broadcastable rank, ``is_causal``, ``scale``, ``softcap``, GQA/MQA, past/present KV cache,
``nonpad_kv_seqlen`` (as key lengths, when not causal), the opset-25 windows, and the
``qk_matmul_output`` modes. Anything else is refused with a message naming the attribute.
Loading parses protobuf only; it never executes code.
"""

from __future__ import annotations

import os

from attngraph.errors import SerializationError, UnsupportedModel
from attngraph.frontends.constructors import AttentionConfig, build_attention
from attngraph.ir import DType, Graph
from attngraph.ir.rename import rename_values

_STAGE_OF_MODE = {0: "scaled", 1: "softcapped", 2: "masked", 3: "weights"}


def load_model(source):
    """An ``onnx.ModelProto`` from a path or bytes, with clear errors for missing or broken files."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes):
            data = source
        else:
            with open(os.fspath(source), "rb") as f:
                data = f.read()
    except OSError as e:
        raise SerializationError(f"cannot read ONNX file {str(source)!r}: {e.strerror or e}") from None
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except DecodeError as e:
        raise SerializationError(f"{str(source)[:80]!r} is not a valid ONNX file (truncated or corrupt?): {e}") from None
    if not model.graph.node:
        raise SerializationError(f"{str(source)[:80]!r} holds no ONNX graph (empty or not an ONNX model)")
    return model


def _shape(model, name: str) -> tuple:
    for vi in list(model.graph.input) + list(model.graph.value_info):
        if vi.name == name:
            return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                         for d in vi.type.tensor_type.shape.dim)
    raise UnsupportedModel(f"input {name!r} has no declared shape; from_onnx needs typed graph inputs")


def _dtype(model, name: str) -> DType:
    import onnx

    for vi in model.graph.input:
        if vi.name == name:
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            try:
                return DType(str(np_dtype) if str(np_dtype) != "bfloat16" else "bfloat16")
            except ValueError:
                raise UnsupportedModel(f"input {name!r} has element type {np_dtype}, which attngraph "
                                       "does not support") from None
    raise UnsupportedModel(f"{name!r} is not a graph input; from_onnx needs Q/K/V and masks as graph inputs")


def from_onnx(source) -> Graph:
    """The attngraph graph equal to the model's single ``Attention`` node, named as in the model."""
    from onnx import helper

    model = load_model(source)
    nodes = list(model.graph.node)
    others = sorted({n.op_type for n in nodes if n.op_type != "Attention"})
    if others or len(nodes) != 1 or nodes[0].domain not in ("", "ai.onnx"):
        raise UnsupportedModel(f"unsupported op(s) {others or [n.op_type for n in nodes]} in the imported model: "
                               "from_onnx imports graphs made of one ONNX Attention node")
    node = nodes[0]
    a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
    ins = list(node.input) + [""] * (7 - len(node.input))
    q, k, v, mask, past_k, past_v, nonpad = ins[:7]
    outs = list(node.output) + [""] * (4 - len(node.output))
    qs, ks, vs = _shape(model, q), _shape(model, k), _shape(model, v)
    if not len(qs) == len(ks) == len(vs) or len(qs) not in (3, 4):
        raise UnsupportedModel(f"Q/K/V must all be 3D or all 4D, got {qs}, {ks}, {vs}")
    if len(qs) == 4:
        heads, kv_heads, head_dim, v_head_dim = int(qs[1]), int(ks[1]), int(qs[3]), int(vs[3])
        layout = "4d"
    else:
        if "q_num_heads" not in a or "kv_num_heads" not in a:
            raise UnsupportedModel("3D Q/K/V need the attributes q_num_heads and kv_num_heads")
        heads, kv_heads = int(a["q_num_heads"]), int(a["kv_num_heads"])
        head_dim, v_head_dim, layout = int(qs[2]) // heads, int(vs[2]) // kv_heads, "3d"
    causal = bool(a.get("is_causal", 0))
    if bool(past_k) != bool(past_v):
        raise UnsupportedModel("past_key and past_value must come together")
    window = None
    if a.get("left_window_size", -1) != -1 or a.get("right_window_size", -1) != -1:
        window = (int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1)))
    mask_kind = mask_shape = None
    total = "kv_len+past_len" if past_k else "kv_len"
    if mask:
        mdt = _dtype(model, mask)
        if mdt in (DType.INT32, DType.INT64):
            raise UnsupportedModel(f"attn_mask {mask!r} has an integer type: ONNX adds it as a bias, which "
                                   "masks nothing; attngraph rejects integer masks (use bool, True = attend)")
        mask_kind = "bool" if mdt is DType.BOOL else "additive"
        mask_shape = _mask_shape(_shape(model, mask), _shape(model, q), ks, layout, heads, past_k and _shape(model, past_k))
        mask_shape = tuple(total if d == "total" else d for d in mask_shape)
    mode = int(a.get("qk_matmul_output_mode", 0))
    stage = _STAGE_OF_MODE.get(mode)
    if stage is None:
        raise UnsupportedModel(f"attribute qk_matmul_output_mode={mode} is not one of 0..3")
    softcap = float(a.get("softcap", 0.0)) or None
    if stage == "softcapped" and not softcap:
        stage = "scaled"  # without softcap, mode 1 equals mode 0
    has_mask = bool(mask or causal or window or nonpad)
    if stage == "masked" and not has_mask:
        stage = "softcapped" if softcap else "scaled"
    # with nonpad_kv_seqlen (and no past), ONNX aligns causal/window per batch row: offset = nonpad[b] - q_len
    config = AttentionConfig(kind="core", num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                             v_head_dim=v_head_dim, causal=causal, window=window, key_padding=bool(nonpad),
                             align_to_lengths=bool(nonpad) and not past_k,
                             mask=mask_kind, mask_shape=mask_shape, scale=a.get("scale"), softcap=softcap,
                             kv_cache=bool(past_k), score_outputs=(stage,) if outs[3] else (), layout=layout,
                             dtype=_dtype(model, q).value, name=model.graph.name or "onnx_attention")
    graph = build_attention(config)
    names = {"q": q, "k": k, "v": v, "attn_mask": mask, "past_key": past_k, "past_value": past_v,
             "key_lengths": nonpad, "y": outs[0], "present_key": outs[1], "present_value": outs[2]}
    from attngraph.frontends.constructors import SCORE_STAGES

    names[SCORE_STAGES[stage]] = outs[3]
    graph = _drop_unused_outputs(graph, {n for n, m in names.items() if m == "" and n in
                                         ("present_key", "present_value")})
    return rename_values(graph, {ir: onnx_name for ir, onnx_name in names.items() if onnx_name})


def _mask_shape(ms, qs, ks, layout, heads, past_shape):
    """Map the ONNX mask dims onto the IR's symbols, right-aligned to (batch, heads, q_len, total)."""
    q_len = qs[2] if layout == "4d" else qs[1]
    kv_len = ks[2] if layout == "4d" else ks[1]
    past = past_shape[2] if past_shape else 0
    total = kv_len + past if isinstance(kv_len, int) and isinstance(past, int) else None
    target = ("batch", heads, "q_len", "total")
    sizes = (qs[0], heads, q_len, total)
    out = []
    for d, sym, size in zip(reversed(ms), reversed(target), reversed(sizes)):
        if d == 1 and size != 1:
            out.append(1)
        elif sym == "total" and isinstance(d, int) and size is not None and d < size:
            raise UnsupportedModel(f"attn_mask's last dim ({d}) is shorter than total_sequence_length ({size}); "
                                   "opset 24 pads it with -inf, which the IR cannot express yet")
        else:
            out.append(sym)
    return tuple(reversed(out))


def _drop_unused_outputs(graph: Graph, names: set[str]) -> Graph:
    return graph.replace(outputs=tuple(v for v in graph.outputs if v.name not in names)) if names else graph
