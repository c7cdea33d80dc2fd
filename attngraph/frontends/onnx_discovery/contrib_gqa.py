"""``com.microsoft.GroupQueryAttention`` as the IR's core attention with a static KV cache.

What onnxruntime 1.32's CPU kernel computes, each point pinned by a conformance case (in parentheses):

* ``seqlens_k[b]`` is row b's key count after this step minus one, ``T_b - 1`` (``gqa_seqlens_k_is_total_minus_one``).
  The new tokens land at ``P_b = T_b - q_len``, or at 0 in a first prompt, whose rows are right-padded
  (``T_b <= q_len``): ``P_b = max(T_b - q_len, 0)``. Query i sees keys ``j <= P_b + i`` and ``j < T_b``: a
  padding query of a first prompt sees its row's ``T_b`` keys (``gqa_first_prompt_right_padding``). In
  attngraph's terms: the static cache with ``cache_lengths = max(seqlens_k + 1 - q_len, 0)``, plus a key limit
  ``j < seqlens_k + 1`` (a (batch, 1, 1, keys) bool mask, no T x T tensor).
* ``total_sequence_length`` only checks the inputs and picks onnxruntime's code path (a first prompt when it equals
  ``q_len``); the lifted graph does not read it: on inputs as the schema has them (``total_sequence_length`` the
  batch's largest key count, or larger for right-padded rows) the formulas above are what onnxruntime computes.
* The cache, by the model's declared shapes: no ``past_key`` (the new keys are the keys; ``present`` is them);
  a *shared buffer* (``present_key`` as long as ``past_key``: the new entries are written into it at ``P_b``,
  attngraph's static cache updated in place; its rows at or past ``T_b`` are unspecified, as onnxruntime's
  schema says); otherwise a *growing* cache (``present = past[:P_b], new, zeros``: onnxruntime's kernel copies
  each row's ``P_b`` entries and zero-fills the rest, ``gqa_growing_cache_ragged_rows_zero_filled``).
* ``local_window_size`` W keeps W keys, the query's own included: window ``(W - 1, 0)``
  (``gqa_local_window_counts_the_query``).
* ``smooth_softmax`` adds ``exp(0)`` to each softmax denominator: attention sinks of logit 0
  (``gqa_smooth_softmax_is_a_zero_sink``); ``head_sink`` gives each head's sink logit, with or without it
  (``gqa_head_sink_without_smooth_softmax``).
* ``softcap`` after the scale, before the mask (``gqa_softcap_after_scale``); ``scale`` 0 = 1/sqrt(head_size).
* ``do_rotary``: cos/sin caches (positions, rd/2) read at ``P_b + i``, K rotated before it is cached; ``rd`` is
  twice the caches' width (partial when shorter than the head); ``rotary_interleaved`` pairs (2k, 2k+1), else k
  and k + rd/2 (``gqa_rotary_at_cache_length``, ``gqa_rotary_partial_dim``, ``gqa_rotary_interleaved``).
* A packed QKV (``key``/``value`` absent) is split Q | K | V on the hidden axis (``gqa_packed_qkv``).
"""

from __future__ import annotations

import numpy as np

from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.constructors import build_attention
from attngraph.frontends.onnx_discovery.contrib_edit import GraphEdit, with_mask_operand
from attngraph.frontends.onnx_discovery.contrib_node import ContribNode, Lifted, same_dim
from attngraph.ir import DType, Op

ROLES = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
         "sin_cache", "position_ids", "attention_bias", "head_sink", "k_scale", "v_scale", "q_norm_weight",
         "k_norm_weight", "query_seqlens")
ATTRS = {"num_heads", "kv_num_heads", "scale", "softcap", "causal", "local_window_size", "do_rotary",
         "rotary_interleaved", "smooth_softmax", "qk_output", "sliding_window_cache", "k_quant_type", "v_quant_type",
         "kv_cache_bit_width", "qk_norm_epsilon", "q_norm_epsilon", "k_norm_epsilon"}
BUFFER = {"none": "q_len", "shared": "max_len", "growing": "past_len+q_len"}  # the cache buffer's length, IR dims
I64 = DType.INT64


def lift_gqa(node, prep) -> Lifted:
    """The lifted form of one GroupQueryAttention node (see the module docstring), or ``Refused``."""
    c = ContribNode(node, prep, ROLES)
    c.known_attrs(ATTRS)
    _refuse_extras(c)
    heads, kv_heads, head_dim, packed = _heads(c)
    form = _cache_form(c, kv_heads, head_dim)
    causal, window = _causal(c)
    rotary = _rotary(c, head_dim)
    sinks = _sinks(c, heads)
    scale = c.float_attr("scale", 0.0) or None
    softcap = c.float_attr("softcap", 0.0) or None
    cfg = AttentionConfig(kind="core", layout="3d", num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                          causal=causal, window=window, scale=scale, softcap=softcap, sinks=sinks is not None,
                          rotary=rotary[0] if rotary else None,
                          rotary_dim=rotary[1] if rotary and rotary[1] < head_dim else None,
                          rope_cache=rotary is not None, kv_cache="static", max_len=BUFFER[form],
                          dtype=c.dtype("query"), name=_name(node))
    edit = GraphEdit(build_attention(cfg))
    inputs = _feed_qkv(edit, c, packed, heads, kv_heads, head_dim)
    inputs.update(_feed_lengths(edit, c, form))
    inputs.update(_feed_cache(edit, c, form, kv_heads, head_dim))
    if rotary:
        inputs.update(cos_cache=c.name("cos_cache"), sin_cache=c.name("sin_cache"))
    outputs = {"y": c.output(0)}
    for i, name in ((1, "present_key"), (2, "present_value")):
        if c.output(i):
            outputs[name] = c.output(i)
        else:
            edit.set_output(name, None)
    graph = edit.finish()
    weights = {"sinks": sinks} if sinks is not None else {}
    unspecified = {k: ("seqlens_k", 1) for k in outputs if k.startswith("present")} if form == "shared" else {}
    summary = _summary(c, heads, kv_heads, head_dim, form, causal, window, rotary, sinks, scale, softcap, packed)
    return Lifted(graph, weights, inputs, outputs, summary, _notes(form, c), unspecified)


def _name(node) -> str:
    return f"gqa_{node.name}".replace("/", "_")[:80]


def _refuse_extras(c: ContribNode) -> None:
    c.unused("attention_bias", "k_scale", "v_scale", "q_norm_weight", "k_norm_weight", "query_seqlens")
    if c.has("position_ids"):
        c.refuse("input 'position_ids' is given: onnxruntime reads only its first element in a first prompt, a "
                 "convention attngraph does not lift (leave it out: positions are then the cache length + i)")
    for attr in ("k_quant_type", "v_quant_type"):
        if c.attr(attr, "NONE") != "NONE":
            c.refuse(f"{attr}={c.attr(attr)!r}: a quantized KV cache has no attngraph form")
    if c.attr("kv_cache_bit_width") is not None:
        c.refuse(f"kv_cache_bit_width={c.attr('kv_cache_bit_width')}: a quantized KV cache has no attngraph form")
    if int(c.attr("qk_output", 0)) != 0 or c.output(3):
        c.refuse(f"qk_output={c.attr('qk_output', 0)} (output_qk): the QK output is not lifted")
    if int(c.attr("sliding_window_cache", 0)) != 0:
        c.refuse("sliding_window_cache=1: the window-sized cache evicts by compaction (rows shift as it fills), "
                 "which attngraph's static and rolling caches do not express")


def _heads(c: ContribNode) -> tuple[int, int, int, bool]:
    heads, kv_heads = int(c.attr("num_heads", 0)), int(c.attr("kv_num_heads", 0))
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        c.refuse(f"num_heads={heads} must be a positive multiple of kv_num_heads={kv_heads}")
    if c.rank("query") != 3:
        c.refuse(f"input 'query' must be (batch, seq, hidden), got rank {c.rank('query')}")
    width = c.static("query", 2, "hidden width")
    packed = not c.has("key")
    if packed != (not c.has("value")):
        c.refuse("key and value must be given together (or both left out for a packed QKV)")
    parts = heads + 2 * kv_heads if packed else heads
    if width % parts:
        c.refuse(f"the query width {width} is not a multiple of {parts} head(s) "
                 f"({'packed QKV: num_heads + 2 * kv_num_heads' if packed else 'num_heads'})")
    head_dim = width // parts
    if not packed:
        qd, kd, vd = c.dims("query"), c.dims("key"), c.dims("value")
        for role, d in (("key", kd), ("value", vd)):
            if d is None or len(d) != 3 or not same_dim(d[1], qd[1]) or not same_dim(d[0], qd[0]):
                c.refuse(f"input {role!r} must be (batch, seq, kv_hidden) with the query's batch and seq, got {d}")
            if not (d[2] is not None and d[2].is_const and d[2].value == kv_heads * head_dim):
                c.refuse(f"input {role!r} must be {kv_heads * head_dim} wide (kv_num_heads x head_size), got {d[2]}")
        for role in ("key", "value"):
            if c.dtype(role) != c.dtype("query"):
                c.refuse(f"input {role!r} is {c.dtype(role)} but 'query' is {c.dtype('query')}")
    return heads, kv_heads, head_dim, packed


def _cache_form(c: ContribNode, kv_heads: int, head_dim: int) -> str:
    if c.has("past_key") != c.has("past_value"):
        c.refuse("past_key and past_value must be given together")
    if not c.has("past_key"):
        return "none"
    for role in ("past_key", "past_value"):
        d = c.dims(role)
        # a symbolic head count or head size (onnxruntime-genai declares 'kv_cache_dim') is checked at run time,
        # by onnxruntime and by the lifted graph's input checks alike
        if d is None or len(d) != 4 or not all(x is None or not x.is_const or x == want
                                                for x, want in ((d[1], kv_heads), (d[3], head_dim))):
            c.refuse(f"input {role!r} must be (batch, {kv_heads}, length, {head_dim}), got {d}")
        if c.dtype(role) != c.dtype("query"):
            c.refuse(f"input {role!r} is {c.dtype(role)}; attngraph lifts a cache of the query's type "
                     f"{c.dtype('query')}")
    past, present = c.dims("past_key"), c.out_dims(1)
    if present is not None and len(present) == 4 and same_dim(present[2], past[2]):
        return "shared"
    return "growing"


def _causal(c: ContribNode) -> tuple[bool, tuple[int, int] | None]:
    causal = int(c.attr("causal", 1))
    w = int(c.attr("local_window_size", -1))
    if causal not in (0, 1):
        c.refuse(f"causal={causal}: onnxruntime takes 0 or 1")
    if w == 0 or w < -1:
        c.refuse(f"local_window_size={w}: a window keeps W >= 1 keys (or -1 for none)")
    if w > 0 and not causal:
        c.refuse(f"local_window_size={w} with causal=0: onnxruntime refuses a window without causal masking")
    return bool(causal), ((w - 1, 0) if w > 0 else None)


def _rotary(c: ContribNode, head_dim: int) -> tuple[str, int] | None:
    on = int(c.attr("do_rotary", 0))
    given = c.has("cos_cache") or c.has("sin_cache")
    if not on:
        if given:
            c.refuse("cos_cache/sin_cache are given but do_rotary=0")
        return None
    if not (c.has("cos_cache") and c.has("sin_cache")):
        c.refuse("do_rotary=1 needs both cos_cache and sin_cache")
    half = c.static("cos_cache", 1, "rotary half-width")
    if c.static("sin_cache", 1, "rotary half-width") != half or c.rank("cos_cache") != 2:
        c.refuse("cos_cache and sin_cache must both be (positions, rotary_dim / 2)")
    if 2 * half > head_dim:
        c.refuse(f"the caches rotate {2 * half} dims of a {head_dim}-dim head")
    return ("interleaved" if int(c.attr("rotary_interleaved", 0)) else "half"), 2 * half


def _sinks(c: ContribNode, heads: int) -> np.ndarray | None:
    if c.has("head_sink"):
        values = c.constant("head_sink")
        if values is None:
            c.refuse("input 'head_sink' is computed in the model; attngraph lifts sinks fixed by the model "
                     "(an initializer)")
        if values.shape != (heads,):
            c.refuse(f"head_sink must be ({heads},), got {values.shape}")
        return np.ascontiguousarray(values, dtype=np.dtype(c.dtype("query")) if c.dtype("query") != "bfloat16"
                                    else values.dtype)
    if int(c.attr("smooth_softmax", -1)) == 1:
        return np.zeros(heads, np.dtype(c.dtype("query")) if c.dtype("query") != "bfloat16" else np.float32)
    return None


# ---- edits of the built graph ---------------------------------------------------------------------------

def _feed_qkv(edit: GraphEdit, c: ContribNode, packed: bool, heads: int, kv_heads: int, d: int) -> dict:
    if not packed:
        return {"q": c.name("query"), "k": c.name("key"), "v": c.name("value")}
    qkv = edit.new_input("qkv", c.dtype("query"), ("batch", "q_len", (heads + 2 * kv_heads) * d))
    olds = [edit.value(n) for n in ("q", "k", "v")]
    edit.define("q", lambda em: em.node(Op.SPLIT, [qkv], olds, axis=2, sizes=(heads * d, kv_heads * d,
                                                                               kv_heads * d)).outputs[0])
    edit.define("k", lambda em: olds[1])
    edit.define("v", lambda em: olds[2])
    return {"qkv": c.name("query")}


def _feed_lengths(edit: GraphEdit, c: ContribNode, form: str) -> dict:
    """``cache_lengths = max(seqlens_k + 1 - q_len, 0)`` and the key limit ``j < seqlens_k + 1``."""
    seqlens = edit.new_input("seqlens_k", c.int_input("seqlens_k"), ("batch",))
    total = edit.prelude(lambda em: em.emit(Op.ADD, em.cast(seqlens, I64), em.const(1, I64), name="total_keys"))
    edit.define("cache_lengths", lambda em: em.emit(
        Op.MAXIMUM, em.emit(Op.SUB, total, em.emit(Op.CONST, value="q_len", dtype="int64")), em.const(0, I64),
        name="cache_lengths_from_seqlens"))
    keys = BUFFER[form]

    def limit(em):
        slots = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=keys), shape=(1, keys))
        keep = em.emit(Op.LESS, slots, em.emit(Op.RESHAPE, total, shape=("batch", 1)))
        return em.emit(Op.RESHAPE, keep, shape=("batch", 1, 1, keys), name="key_limit")

    with_mask_operand(edit, "bool", edit.prelude(limit))
    return {"seqlens_k": c.name("seqlens_k")}


def _feed_cache(edit: GraphEdit, c: ContribNode, form: str, kv_heads: int, d: int) -> dict:
    if form == "shared":
        return {"past_key": c.name("past_key"), "past_value": c.name("past_value")}
    if form == "none":  # the buffer is the new entries themselves: every slot is written
        edit.define("past_key", lambda em: edit.value("kh"))
        edit.define("past_value", lambda em: edit.value("vh"))
        return {}
    lengths = edit.value("cache_lengths")
    for which, new in (("key", "kh"), ("value", "vh")):
        past = edit.new_input(f"past_{which}_in", c.dtype("query"), ("batch", kv_heads, "past_len", d))

        def grown(em, past=past, new=new, which=which):  # past[:P_b], then zeros: the rows onnxruntime does not copy
            slots = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=BUFFER["growing"]), shape=(1, 1, BUFFER["growing"], 1))
            kept = em.emit(Op.LESS, slots, em.emit(Op.RESHAPE, lengths, shape=("batch", 1, 1, 1)))
            joined = em.emit(Op.CONCAT, past, edit.value(new), axis=2)
            return em.emit(Op.WHERE, kept, joined, em.const(0.0, past.type.dtype), name=f"grown_{which}")
        edit.define(f"past_{which}", grown)
    return {"past_key_in": c.name("past_key"), "past_value_in": c.name("past_value")}


# ---- what inspect shows ---------------------------------------------------------------------------------

def _summary(c, heads, kv_heads, head_dim, form, causal, window, rotary, sinks, scale, softcap, packed) -> dict:
    cache = {"none": "new keys only", "shared": "shared buffer (static, in place)",
             "growing": "growing (past[:P] + new, zero-filled)"}[form]
    parts = [("packed QKV" if packed else "Q, K, V"), f"cache: {cache}",
             "new keys at P = max(seqlens_k + 1 - q_len, 0), keys < seqlens_k + 1",
             "causal (query i sees keys <= P + i)" if causal else "not causal"]
    if window:
        parts.append(f"window: {window[0] + 1} keys (IR window ({window[0]}, 0))")
    if rotary:
        parts.append(f"rotary {rotary[0]} {rotary[1]}/{head_dim} from cos/sin caches at P + i")
    if softcap:
        parts.append(f"softcap {softcap:g}")
    if sinks is not None:
        parts.append("sinks: head_sink" if c.has("head_sink") else "sinks: 0 (smooth_softmax)")
    parts.append(f"scale {scale if scale else 1 / np.sqrt(head_dim):.6g}")
    return {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "causal": "yes" if causal else "no",
            "mask": "key limit (seqlens_k + 1)", "rotary": f"{rotary[0]} {rotary[1]}/{head_dim}" if rotary else None,
            "cache": form if form != "none" else False, "window": window, "softcap": softcap,
            "sinks": sinks is not None, "computes": "; ".join(parts)}


def _notes(form: str, c: ContribNode) -> list[str]:
    notes = [("GroupQueryAttention lifted as attngraph's static cache: cache_lengths = max(seqlens_k + 1 - q_len, 0) "
              "and a key limit seqlens_k + 1; total_sequence_length is not read")]
    if form == "shared":
        notes.append("present_key is as long as past_key: a shared buffer, written in place; its rows at or past "
                     "seqlens_k + 1 are unspecified (onnxruntime's own contract)")
    elif form == "growing":
        notes.append("the growing form: present = past[:P_b], the new entries, zeros (onnxruntime's kernel without "
                     "buffer sharing); run with a shared max-length buffer (total_sequence_length <= past length, "
                     "as onnxruntime-genai's past_present_share_buffer does), onnxruntime returns the buffer itself "
                     "while this graph returns past + q_len rows (the same values where both are specified)")
    return notes
