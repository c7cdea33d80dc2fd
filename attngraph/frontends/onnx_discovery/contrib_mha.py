"""``com.microsoft.MultiHeadAttention`` as the IR's core attention (3-D Q, K, V; a concat KV cache).

What onnxruntime 1.32's CPU kernel computes, each point pinned by a conformance case (in parentheses):

* ``query`` (B, S, H*D); ``key``/``value`` (B, L, H*D) or already split into heads, (B, H, L, D): the BNSH
  form (``mha_bnsh_key_value``). The packed forms ((B, S, H, 3, D) QKV, (B, L, H, 2, D) KV) are not
  implemented by onnxruntime's CPU kernel, so nothing here can pin them: refused.
* ``bias`` (3 * hidden) adds to Q, K and V; with BNSH key/value only its Q part is used
  (``mha_bias_with_bnsh_kv_adds_to_query_only``).
* ``key_padding_mask`` (int32) in its forms (``contrib_masks``): ``mask_filter_value`` (-10000) is *added* to
  each excluded key's score (``mha_key_padding_mask_2d_polarity``, ``mha_key_padding_fill_is_added``).
* ``attention_bias`` (B or 1, H or 1, S, total) is added to the scaled scores (``mha_attention_bias``).
* ``past_key``/``past_value`` (B, H, P, D): ``present = concat(past, new)``; ``unidirectional`` is causal with
  the offset P (bottom-right, ``mha_unidirectional_with_past``). Without a past and with ``S != L`` onnxruntime's
  causal mask is neither top-left nor bottom-right: refused unless the model proves S == L.
* ``scale`` (0 or absent: 1/sqrt(D)).
"""

from __future__ import annotations

from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.constructors import build_attention
from attngraph.frontends.onnx_discovery.contrib_edit import GraphEdit
from attngraph.frontends.onnx_discovery.contrib_masks import bias_fits, feed_masks, mask_form, mask_shape
from attngraph.frontends.onnx_discovery.contrib_node import ContribNode, Lifted, core_summary, same_dim
from attngraph.ir import DType, Op

ROLES = ("query", "key", "value", "bias", "key_padding_mask", "attention_bias", "past_key", "past_value",
         "past_sequence_length", "cache_indirection")
ATTRS = {"num_heads", "scale", "unidirectional", "mask_filter_value"}


def lift_mha(node, prep) -> Lifted:
    """The lifted form of one MultiHeadAttention node (see the module docstring), or ``Refused``."""
    c = ContribNode(node, prep, ROLES)
    c.known_attrs(ATTRS)
    c.unused("past_sequence_length", "cache_indirection")
    if c.output(3):
        c.refuse("its qk output is read: the QK output is not lifted")
    heads = int(c.attr("num_heads", 0))
    if heads <= 0:
        c.refuse(f"num_heads={heads} must be positive")
    d, dv, bnsh = _shapes(c, heads)
    cache = _cache(c, heads, d, dv, bnsh)
    causal = _causal(c, cache)
    total = c.dims("key")[2 if bnsh else 1] + (c.dims("past_key")[2] if cache else 0)
    form = mask_form(c, "key_padding_mask", total) if c.has("key_padding_mask") else None
    if c.has("attention_bias"):
        bias_fits(c, heads, total)
    fill = c.float_attr("mask_filter_value", -10000.0)
    keys = "kv_len+past_len" if cache else "kv_len"
    shape = mask_shape(c, form, c.has("attention_bias"), heads, keys)
    dtype = c.dtype("query")
    cfg = AttentionConfig(kind="core", layout="3d", num_heads=heads, head_dim=d, v_head_dim=dv if dv != d else None,
                          causal=causal, scale=c.float_attr("scale", 0.0) or None, kv_cache=cache,
                          mask="additive" if shape else None, mask_shape=shape, dtype=dtype,
                          name=f"mha_{node.name}".replace("/", "_")[:80])
    edit = GraphEdit(build_attention(cfg))
    inputs = _feed_qkv(edit, c, heads, d, dv, bnsh)
    if cache:
        inputs.update(past_key=c.name("past_key"), past_value=c.name("past_value"))
    if shape:
        inputs.update(feed_masks(edit, c, "key_padding_mask", form, c.has("attention_bias"), fill, keys,
                                 DType.parse(dtype)))
    outputs = {"y": c.output(0)}
    for i, name in ((1, "present_key"), (2, "present_value")):
        if cache and c.output(i):
            outputs[name] = c.output(i)
        elif cache:
            edit.set_output(name, None)
    summary = _summary(c, heads, d, dv, bnsh, cache, causal, form, fill)
    notes = [(f"MultiHeadAttention's mask_filter_value {fill:g} is added to excluded keys' scores (lifted as an "
              "additive mask, not -inf): a row with every key excluded is the softmax of its own scores")] if form else []
    return Lifted(edit.finish(), {}, inputs, outputs, summary, notes)


def _shapes(c: ContribNode, heads: int) -> tuple[int, int, bool]:
    if not c.has("key") or not c.has("value"):
        c.refuse("a packed QKV or packed KV (key or value absent): onnxruntime's CPU kernel does not implement "
                 "them, so their convention cannot be pinned here")
    if c.rank("query") != 3:
        c.refuse(f"input 'query' must be (batch, seq, hidden), got rank {c.rank('query')}")
    width = c.static("query", 2, "hidden width")
    if width % heads:
        c.refuse(f"the query width {width} is not a multiple of num_heads={heads}")
    d = width // heads
    kr, vr = c.rank("key"), c.rank("value")
    if kr != vr or kr not in (3, 4):
        c.refuse(f"key and value must both be 3-D (batch, seq, hidden) or 4-D (batch, heads, seq, head), got ranks "
                 f"{kr} and {vr} (5-D packed KV is not implemented on CPU)")
    bnsh = kr == 4
    if bnsh:
        if c.static("key", 1, "head count") != heads or c.static("value", 1, "head count") != heads:
            c.refuse(f"BNSH key/value must have num_heads={heads} heads")
        if c.static("key", 3, "head size") != d:
            c.refuse(f"BNSH key has head size {c.static('key', 3, 'head size')}, the query {d}")
        dv = c.static("value", 3, "head size")
    else:
        if c.static("key", 2, "hidden width") != width:
            c.refuse(f"key width {c.static('key', 2, 'hidden width')} differs from the query's {width}")
        vw = c.static("value", 2, "hidden width")
        if vw % heads:
            c.refuse(f"the value width {vw} is not a multiple of num_heads={heads}")
        dv = vw // heads
    seq = 2 if bnsh else 1
    kd, vd, qd = c.dims("key"), c.dims("value"), c.dims("query")
    if not (same_dim(kd[0], qd[0]) and same_dim(vd[0], qd[0]) and same_dim(kd[seq], vd[seq])):
        c.refuse(f"query, key and value disagree on batch or key length ({qd}, {kd}, {vd})")
    for role in ("key", "value"):
        if c.dtype(role) != c.dtype("query"):
            c.refuse(f"input {role!r} is {c.dtype(role)} but 'query' is {c.dtype('query')}")
    return d, dv, bnsh


def _cache(c: ContribNode, heads: int, d: int, dv: int, bnsh: bool) -> bool:
    if c.has("past_key") != c.has("past_value"):
        c.refuse("past_key and past_value must be given together")
    if not c.has("past_key"):
        return False
    if bnsh:
        c.refuse("past_key with BNSH key/value (a cross-attention cache passed as key) is not lifted")
    for role, dim in (("past_key", d), ("past_value", dv)):
        pd = c.dims(role)
        if pd is None or len(pd) != 4 or pd[1] != heads or pd[3] != dim or not same_dim(pd[0], c.dims("query")[0]):
            c.refuse(f"input {role!r} must be (batch, {heads}, past, {dim}), got {pd}")
    if not same_dim(c.dims("past_key")[2], c.dims("past_value")[2]):
        c.refuse("past_key and past_value differ in length")
    return True


def _causal(c: ContribNode, cache: bool) -> bool:
    uni = int(c.attr("unidirectional", 0))
    if uni not in (0, 1):
        c.refuse(f"unidirectional={uni}: onnxruntime takes 0 or 1")
    if uni and not same_dim(c.dims("query")[1], c.dims("key")[1]):
        c.refuse("unidirectional=1 with a key length not provably the query's: onnxruntime's causal mask is then "
                 "neither top-left nor bottom-right aligned")
    return bool(uni)


def _feed_qkv(edit: GraphEdit, c: ContribNode, heads: int, d: int, dv: int, bnsh: bool) -> dict:
    inputs = {}
    bias = edit.new_input("bias", c.dtype("query"), (2 * heads * d + heads * dv,)) if c.has("bias") else None
    if bias is not None:
        inputs["bias"] = c.name("bias")
        c_width = c.static("bias", 0, "width")
        if c_width != 2 * heads * d + heads * dv:
            c.refuse(f"bias has {c_width} entries, not hidden + hidden + v_hidden = {2 * heads * d + heads * dv}")
    cuts = {"q": (0, heads * d), "k": (heads * d, 2 * heads * d), "v": (2 * heads * d, 2 * heads * d + heads * dv)}
    for role, ir in (("query", "q"), ("key", "k"), ("value", "v")):
        four = bnsh and role != "query"
        adds = bias is not None and not four  # BNSH key/value take no bias (onnxruntime adds only Q's)
        if not (four or adds):
            inputs[ir] = c.name(role)
            continue
        old = edit.value(ir)
        width = old.type.shape[2]
        shape = ("batch", heads, "kv_len", width // heads) if four else old.type.shape
        raw = edit.new_input(f"{role}_in", c.dtype("query"), shape)
        inputs[f"{role}_in"] = c.name(role)

        def make(em, raw=raw, four=four, adds=adds, cut=cuts[ir]):
            x = em.emit(Op.MERGE_HEADS, raw) if four else raw
            if adds:
                x = em.emit(Op.ADD, x, em.emit(Op.SLICE, bias, axis=0, start=cut[0], stop=cut[1]))
            return x
        edit.define(ir, make)
    return inputs


def _summary(c, heads, d, dv, bnsh, cache, causal, form, fill) -> dict:
    parts = ["Q (B, S, H*D); K, V " + ("(B, H, L, D)" if bnsh else "(B, L, H*D)")]
    if c.has("bias"):
        parts.append("bias added to Q" + ("" if bnsh else ", K, V"))
    if cache:
        parts.append("cache: present = concat(past, new)")
    return core_summary(c, parts, heads=heads, head_dim=d, causal=causal, cache=cache, mask_role="key_padding_mask",
                        form=form, fill=fill)
