"""``com.microsoft.Attention`` (the form onnxruntime's transformer optimizer writes for BERT and GPT-2) as the
IR's core attention behind three projections.

What onnxruntime 1.32's CPU kernel computes, each point pinned by a conformance case (in parentheses):

* ``input`` (B, S, E) @ ``weights`` (E, Dq + Dk + Dv) (+ ``bias``): Q, K, V are the column blocks in that order,
  split into ``num_heads`` heads each (``attention_fused_qkv_weights``); ``qkv_hidden_sizes`` gives the three
  widths when V's differs (``attention_qkv_hidden_sizes``). The weights (and bias) must be fixed by the model.
* ``mask_index`` (int32) in its forms (``contrib_masks``): (B,) lengths, (2B,) exclusive ends then inclusive
  starts (``attention_mask_index_end_positions``), (B, total) and (B, S, total) 0/1 masks; ``mask_filter_value``
  (-10000) is *added* to each excluded key (``attention_mask_filter_value_is_added``). The 4-D and (3B + 2,)
  forms are refused (the CPU kernel does not implement the 4-D one).
* ``past`` (2, B, H, P, D): K and V caches stacked; ``present`` = the two concats stacked the same way;
  ``unidirectional`` is causal with the offset P (``attention_unidirectional_past``, the GPT-2 form).
* ``attention_bias`` (B or 1, H or 1, S, total) is added (``attention_attention_bias``); ``scale`` (0: 1/sqrt(D)).
* ``do_rotary``, ``past_present_share_buffer`` and ``past_sequence_length`` are refused.
"""

from __future__ import annotations

import numpy as np

from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.constructors import build_attention
from attngraph.frontends.onnx_discovery.contrib_edit import GraphEdit, same_length_keys
from attngraph.frontends.onnx_discovery.contrib_masks import bias_fits, feed_masks, mask_form, mask_shape
from attngraph.frontends.onnx_discovery.contrib_node import ContribNode, Lifted, core_summary, same_dim
from attngraph.ir import DType, Op

ROLES = ("input", "weights", "bias", "mask_index", "past", "attention_bias", "past_sequence_length")
ATTRS = {"num_heads", "scale", "unidirectional", "mask_filter_value", "qkv_hidden_sizes", "do_rotary",
         "past_present_share_buffer", "rotary_embedding_dim"}


def lift_attention(node, prep) -> Lifted:
    """The lifted form of one Attention node (see the module docstring), or ``Refused``."""
    c = ContribNode(node, prep, ROLES)
    c.known_attrs(ATTRS)
    c.unused("past_sequence_length")
    for attr in ("do_rotary", "past_present_share_buffer"):
        if int(c.attr(attr, 0)):
            c.refuse(f"{attr}={c.attr(attr)}: not lifted")
    heads = int(c.attr("num_heads", 0))
    if heads <= 0:
        c.refuse(f"num_heads={heads} must be positive")
    w_q, w_k, w_v, b = _weights(c, heads)
    d, dv = w_q.shape[1] // heads, w_v.shape[1] // heads
    if w_k.shape[1] != w_q.shape[1]:
        c.refuse(f"the Q and K widths differ ({w_q.shape[1]}, {w_k.shape[1]})")
    cache = _past(c, heads, d, dv)
    causal = bool(int(c.attr("unidirectional", 0)))
    seq = c.dims("input")[1]
    total = seq + (c.dims("past")[3] if cache else 0)
    form = mask_form(c, "mask_index", total) if c.has("mask_index") else None
    if c.has("attention_bias"):
        bias_fits(c, heads, total)
    fill = c.float_attr("mask_filter_value", -10000.0)
    dtype = c.dtype("input")
    keys = "past_len+q_len" if cache else "q_len"  # the keys are the queries (and the past): self-attention
    shape = mask_shape(c, form, c.has("attention_bias"), heads, "kv_len+past_len" if cache else "kv_len")
    cfg = AttentionConfig(kind="core", layout="3d", num_heads=heads, head_dim=d, v_head_dim=dv if dv != d else None,
                          causal=causal, scale=c.float_attr("scale", 0.0) or None, kv_cache=cache,
                          mask="additive" if shape else None, mask_shape=shape,
                          dtype=dtype, name=f"attention_{node.name}".replace("/", "_")[:80])
    edit = GraphEdit(same_length_keys(build_attention(cfg)))
    x = edit.new_input("x", dtype, ("batch", "q_len", c.static("input", 2, "hidden width")))
    inputs = {"x": c.name("input")}
    weights = _feed_projections(edit, x, (w_q, w_k, w_v), b, dtype)
    if cache:
        inputs.update(_feed_past(edit, c, heads, d, dtype))
    if shape:
        inputs.update(feed_masks(edit, c, "mask_index", form, c.has("attention_bias"), fill, keys, DType.parse(dtype)))
    outputs = {"y": c.output(0)}
    edit.set_output("present_key", None)
    edit.set_output("present_value", None)
    if cache and c.output(1):
        edit.set_output("present", lambda em: _stacked(em, edit))
        outputs["present"] = c.output(1)
    summary = _summary(c, heads, d, dv, cache, causal, form, fill)
    notes = [(f"Attention's mask_filter_value {fill:g} is added to excluded keys' scores (an additive mask, not "
              "-inf): a row with every key excluded is the softmax of its own scores")] if form else []
    return Lifted(edit.finish(), weights, inputs, outputs, summary, notes)


def _weights(c: ContribNode, heads: int):
    w = c.constant("weights")
    if w is None:
        c.refuse("input 'weights' is computed in the model; attngraph lifts projection weights the model fixes "
                 "(an initializer)")
    b = c.constant("bias") if c.has("bias") else None
    if c.has("bias") and b is None:
        c.refuse("input 'bias' is computed in the model, not an initializer")
    if c.rank("input") != 3 or w.ndim != 2 or w.shape[0] != c.static("input", 2, "hidden width"):
        c.refuse(f"input (batch, seq, {w.shape[0] if w.ndim == 2 else '?'}) and weights (hidden, q + k + v) do not "
                 f"fit: weights {w.shape}")
    sizes = list(c.attr("qkv_hidden_sizes", []) or [])
    if not sizes:
        if w.shape[1] % 3:
            c.refuse(f"weights width {w.shape[1]} is not divisible by 3 and qkv_hidden_sizes is not given")
        sizes = [w.shape[1] // 3] * 3
    if len(sizes) != 3 or sum(sizes) != w.shape[1] or any(s <= 0 or s % heads for s in sizes):
        c.refuse(f"qkv_hidden_sizes={sizes} must be three positive multiples of num_heads={heads} summing to the "
                 f"weights width {w.shape[1]}")
    if b is not None and b.shape != (w.shape[1],):
        c.refuse(f"bias {b.shape} does not match the weights width {w.shape[1]}")
    cuts = np.cumsum([0] + sizes)
    blocks = [np.ascontiguousarray(w[:, cuts[i]:cuts[i + 1]]) for i in range(3)]
    bias = None if b is None else [np.ascontiguousarray(b[cuts[i]:cuts[i + 1]]) for i in range(3)]
    return (*blocks, bias)


def _past(c: ContribNode, heads: int, d: int, dv: int) -> bool:
    if not c.has("past"):
        if c.output(1):
            c.refuse("present is read but no past is given")
        return False
    pd, qd = c.dims("past"), c.dims("input")
    if d != dv:
        c.refuse("a past with a value head size different from the key's (onnxruntime requires them equal)")
    if pd is None or len(pd) != 5 or pd[0] != 2 or pd[2] != heads or pd[4] != d or not same_dim(pd[1], qd[0]):
        c.refuse(f"past must be (2, batch, {heads}, past, {d}), got {pd}")
    return True


def _feed_projections(edit: GraphEdit, x, blocks, bias, dtype: str) -> dict:
    """Q, K, V from ``x`` and the weight blocks: the IR's linear op, weights as params."""
    weights = {}
    for i, (ir, w) in enumerate(zip(("q", "k", "v"), blocks)):
        wp = edit.new_param(f"w_{ir}", dtype, w.shape)
        weights[wp.name] = w.astype(np.dtype(dtype)) if dtype != "bfloat16" else w
        args = [x, wp]
        if bias is not None:
            bp = edit.new_param(f"b_{ir}", dtype, bias[i].shape)
            weights[bp.name] = bias[i].astype(w.dtype)
            args.append(bp)
        edit.define(ir, lambda em, args=args: em.emit(Op.LINEAR, *args))
    return weights


def _feed_past(edit: GraphEdit, c: ContribNode, heads: int, d: int, dtype: str) -> dict:
    past = edit.new_input("past", dtype, (2, "batch", heads, "past_len", d))
    for i, name in enumerate(("past_key", "past_value")):
        edit.define(name, lambda em, i=i: em.emit(
            Op.RESHAPE, em.emit(Op.SLICE, past, axis=0, start=i, stop=i + 1), shape=("batch", heads, "past_len", d)))
    return {"past": c.name("past")}


def _stacked(em, edit: GraphEdit):
    """present (2, B, H, total, D): the key and value caches stacked on a new leading axis."""
    parts = []
    for name in ("present_key", "present_value"):
        v = edit.value(name)
        parts.append(em.emit(Op.RESHAPE, v, shape=(1,) + tuple(v.type.shape)))
    return em.emit(Op.CONCAT, *parts, axis=0, name="present")


def _summary(c, heads, d, dv, cache, causal, form, fill) -> dict:
    parts = [f"x @ fused QKV weights{' + bias' if c.has('bias') else ''} -> Q, K ({heads} x {d}), V ({heads} x {dv})"]
    if cache:
        parts.append("cache: past (2, B, H, P, D), present = stacked concat(past, new)")
    return core_summary(c, parts, heads=heads, head_dim=d, causal=causal, cache=cache, mask_role="mask_index",
                        form=form, fill=fill)
