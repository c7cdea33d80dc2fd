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

from attngraph_backends.onnx.rules import DECOMPOSED, keep_mask

from attngraph.errors import UnsupportedLowering
from attngraph.ir import Op, dims
from attngraph.lowering import NodeCtx, Rules

ATTENTION_STYLE = Rules("onnx")
ATTENTION_STYLE.update(DECOMPOSED)
CONTRIB_STYLE = Rules("onnx")
CONTRIB_STYLE.update(DECOMPOSED)


def _full_mask(e, mask: str, q: str, k: str) -> str:
    """Expand ``mask`` so its last two dims are exactly (Sq, Skv): onnxruntime requires that."""
    target = e.op("Concat", [e.i64([1, 1]), e.shape_slice(q, 2, 3), e.shape_slice(k, 2, 3)], axis=0)
    return e.op("Expand", [mask, target], hint="attn_mask_full")


@ATTENTION_STYLE.register(Op.ATTENTION)
def _attention(ctx: NodeCtx, q, k, v, *ops):
    e = ctx.state
    a = ctx.node.attr_dict
    operands = dict(zip(a["operands"], ops))
    native_causal = bool(a["causal"]) and dims.canonical(a["offset"]) == 0 and a["window_left"] < 0 \
        and a["window_right"] < 0 and a["align"] == "start"
    keep = keep_mask(e, ctx, operands, use_causal=not native_causal)
    mask = None
    if "bias" in operands:
        mask = operands["bias"] if keep is None else e.op("Where", [keep, operands["bias"], e.scalar(float("-inf"))])
    elif keep is not None:
        mask = keep
    inputs = [q, k, v] + ([_full_mask(e, mask, q, k)] if mask is not None else [])
    attrs = {"scale": float(a["scale"]), "is_causal": int(native_causal)}
    if float(a["softcap"]) > 0:
        attrs["softcap"] = float(a["softcap"])
    if a["return_weights"]:
        attrs["qk_matmul_output_mode"] = 3
        y, _, _, w = e.op("Attention", inputs, outputs=[e.fresh(ctx.node.outputs[0].name), "", "",
                                                          e.fresh(ctx.node.outputs[1].name)], **attrs)
        return y, w
    return e.op("Attention", inputs, hint=ctx.node.outputs[0].name, **attrs)


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
        raise UnsupportedLowering(f"style 'contrib' cannot express {why} exactly with com.microsoft.MultiHeadAttention; "
                            "use style='attention' or 'decomposed'")
    e = ctx.state
    heads, size = int(ctx.node.inputs[0].type.shape[1]), int(ctx.node.inputs[0].type.shape[3])
    q3 = e.op("Reshape", [e.op("Transpose", [q], perm=[0, 2, 1, 3]), e.i64([0, 0, heads * size])])
    y3 = e.op("MultiHeadAttention", [q3, k, v], domain="com.microsoft", num_heads=heads,
              scale=float(ctx.attr("scale")), unidirectional=int(bool(ctx.attr("causal"))))
    y4 = e.op("Reshape", [y3, e.i64([0, 0, heads, size])])
    return e.op("Transpose", [y4], perm=[0, 2, 1, 3], hint=ctx.node.outputs[0].name)
