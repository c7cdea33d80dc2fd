"""Rules lowering the fused ``attention`` op to a single ONNX node, per export style.

``attention`` style: the standard ``Attention`` operator (opset 23). It is exact for everything
the IR's attention carries, given onnxruntime >= 1.28 (top-left causal, zero rows): a causal offset
or window it cannot express natively is built as a bool mask in the graph and passed as
``attn_mask``; a bias and a bool mask are merged into one float mask.

``contrib`` style: ``com.microsoft.MultiHeadAttention``, used only where its semantics provably
equal ours (no mask input, no GQA, equal head sizes, causal only for self-attention without a
cache, no softcap, no weights output). Anything else is refused with the reason.
"""

from __future__ import annotations

from attngraph_backends.onnx.guards import guarded_attention, lower_decomposition
from attngraph_backends.onnx.rules import DECOMPOSED, keep_mask, position_bias

from attngraph.errors import UnsupportedLowering
from attngraph.ir import DType, Op, dims
from attngraph.lowering import NodeCtx, Rules, interpret
from attngraph.passes.decompose import expand_nodes
from attngraph.passes.position_decompositions import rotary_tables
from attngraph.passes.rewrite import Emitter

ATTENTION_STYLE = Rules("onnx")
ATTENTION_STYLE.update(DECOMPOSED)
CONTRIB_STYLE = Rules("onnx")
CONTRIB_STYLE.update(DECOMPOSED)


def _full_mask(e, mask: str, q: str, k: str) -> str:
    """Expand ``mask`` so its last two dims are exactly (Sq, Skv): onnxruntime requires that."""
    target = e.op("Concat", [e.i64([1, 1]), e.shape_slice(q, 2, 3), e.shape_slice(k, 2, 3)], axis=0)
    return e.op("Expand", [mask, target], hint="attn_mask_full")


@ATTENTION_STYLE.register(Op.ATTENTION)
def _attention(ctx: NodeCtx, *inputs):
    """The standard ``Attention`` operator, guarded (``guards.guarded_attention``); where the operator has
    no equivalent (sinks; ALiBi before the scale together with a softcap) the decomposition, exactly."""
    a = ctx.node.attr_dict
    if "sinks" in a["operands"] or (a["alibi_slopes"] and a["alibi_before_scale"] and float(a["softcap"]) > 0):
        return _outputs(lower_decomposition(ctx.state, ctx, DECOMPOSED, list(inputs)))
    return _outputs(guarded_attention(ctx.state, ctx, DECOMPOSED, list(inputs), lambda: _attention_op(ctx, *inputs)))


@ATTENTION_STYLE.register(Op.ROTARY)
def _rotary(ctx: NodeCtx, x, *operands):
    """ONNX ``RotaryEmbedding`` (opset 23) with per-token cos/sin computed in the graph (angles in float64,
    any frequency scheme, the attention scaling folded in): exact for either layout and a partial dim."""
    e, node = ctx.state, ctx.node
    if e.compute is DType.FLOAT64 or e.opset < 23:  # onnxruntime's kernel is float32/float16
        return lower_decomposition(e, ctx, DECOMPOSED, [x, *operands])[0]
    em = Emitter({v.name for v in node.inputs + node.outputs})
    cos, sin = rotary_tables(node, em, DType.FLOAT32)  # (B or 1, 1, S, rd/2)
    env = dict(zip(node.inputs, [x, *operands], strict=True))
    interpret(expand_nodes(em.nodes, frozenset(DECOMPOSED), set()), DECOMPOSED, env, ctx.dims, e)
    target = e.op("Concat", [e.shape_slice(x, 0, 1), e.shape_slice(x, 2, 3), e.i64([int(cos.type.shape[3])])], axis=0)
    tables = [e.op("Expand", [e.op("Squeeze", [env[t], e.i64([1])]), target]) for t in (cos, sin)]
    size, rd = int(node.inputs[0].type.shape[3]), int(node.attr("rotary_dim")) or int(node.inputs[0].type.shape[3])
    return e.op("RotaryEmbedding", [x, *tables], interleaved=int(node.attr("layout") == "interleaved"),
                rotary_embedding_dim=rd if rd < size else 0, hint=node.output.name)


@ATTENTION_STYLE.register(Op.RMS_NORM)
def _rms_norm(ctx: NodeCtx, x, w):
    """ONNX ``RMSNormalization`` (opset 23) over the last axis; Gemma's (1 + w) is its scale input."""
    e, node = ctx.state, ctx.node
    if e.opset < 23:
        return lower_decomposition(e, ctx, DECOMPOSED, [x, w])[0]
    scale = e.op("Add", [w, e.scalar(1.0)]) if node.attr("add_one") else w
    return e.op("RMSNormalization", [x, scale], axis=-1, epsilon=float(node.attr("eps")), hint=node.output.name)


def _outputs(names: list[str]):
    return names[0] if len(names) == 1 else tuple(names)


def _attention_op(ctx: NodeCtx, q, k, v, *ops) -> list[str]:
    e = ctx.state
    a = ctx.node.attr_dict
    operands = dict(zip(a["operands"], ops))
    no_window = a["window_left"] < 0 and a["window_right"] < 0
    # Attention-24's nonpad_kv_seqlen: keys past each row's length masked, causal aligned bottom-right per row
    # (the opset-24 errata), exactly the IR's align="lengths"; the static cache's reading
    nonpad = a["align"] == "lengths" and no_window and e.opset >= 24
    native_causal = bool(a["causal"]) and (nonpad or (dims.canonical(a["offset"]) == 0 and no_window
                                                       and a["align"] == "start"))
    keep = keep_mask(e, ctx, operands, use_causal=not native_causal, use_lengths=not nonpad)
    bias = operands.get("bias")
    position = position_bias(e, ctx, operands)  # ALiBi, T5: one additive mask with the bias operand
    if position is not None:
        bias = position if bias is None else e.op("Add", [bias, position])
    mask = None
    if bias is not None:
        mask = bias if keep is None else e.op("Where", [keep, bias, e.scalar(float("-inf"))])
    elif keep is not None:
        mask = keep
    inputs = [q, k, v] + ([_full_mask(e, mask, q, k)] if mask is not None else [])
    if nonpad:
        inputs += [""] * (4 - len(inputs)) + ["", "", e.op("Cast", [operands["lengths"]], to=7)]  # int64
    attrs = {"scale": float(a["scale"]), "is_causal": int(native_causal)}
    if float(a["softcap"]) > 0:
        attrs["softcap"] = float(a["softcap"])
    if a["return_weights"]:
        attrs["qk_matmul_output_mode"] = 3
        y, _, _, w = e.op("Attention", inputs, outputs=[e.fresh(ctx.node.outputs[0].name), "", "",
                                                          e.fresh(ctx.node.outputs[1].name)], **attrs)
        return [y, w]
    return [e.op("Attention", inputs, hint=ctx.node.outputs[0].name, **attrs)]


def contrib_refusal(ctx: NodeCtx) -> str | None:
    """Why com.microsoft.MultiHeadAttention is not exact for this node, or None when it is."""
    a = ctx.node.attr_dict
    q, k, v = (x.type for x in ctx.node.inputs[:3])
    if a["operands"]:
        return "a mask input (its key_padding_mask fills with -10000 and never gives zero rows)"
    if a["window_left"] >= 0 or a["window_right"] >= 0:
        return "a sliding window"
    if float(a["softcap"]) > 0:
        return "softcap"
    if a["return_weights"]:
        return "attention weights as an output"
    if q.shape[1] != k.shape[1]:
        return "GQA/MQA (q heads != kv heads)"
    if q.shape[3] != v.shape[3]:
        return "a value head size different from the Q/K head size"
    if a["causal"] and (dims.canonical(a["offset"]) != 0 or dims.canonical(q.shape[2]) != dims.canonical(k.shape[2])):
        return "causal with q_len != kv_len or a KV cache (unidirectional matches neither alignment)"
    return None


@CONTRIB_STYLE.register(Op.ATTENTION)
def _contrib_attention(ctx: NodeCtx, q, k, v, *ops):
    why = contrib_refusal(ctx)
    if why is not None:
        raise UnsupportedLowering(f"style 'contrib' cannot express {why} exactly with "
                                  "com.microsoft.MultiHeadAttention; use style='attention' or 'decomposed'")
    e = ctx.state
    heads, size = int(ctx.node.inputs[0].type.shape[1]), int(ctx.node.inputs[0].type.shape[3])

    def mha() -> list[str]:
        q3 = e.op("Reshape", [e.op("Transpose", [q], perm=[0, 2, 1, 3]), e.i64([0, 0, heads * size])])
        y3 = e.op("MultiHeadAttention", [q3, k, v], domain="com.microsoft", num_heads=heads,
                  scale=float(ctx.attr("scale")), unidirectional=int(bool(ctx.attr("causal"))))
        y4 = e.op("Reshape", [y3, e.i64([0, 0, heads, size])])
        return [e.op("Transpose", [y4], perm=[0, 2, 1, 3], hint=ctx.node.outputs[0].name)]

    return _outputs(guarded_attention(e, ctx, DECOMPOSED, [q, k, v, *ops], mha))
