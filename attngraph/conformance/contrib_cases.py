"""Conformance cases for onnxruntime's ``com.microsoft`` attention operators, one per convention and trap.

Each case is a one-node model written with ``onnx.helper`` (``GroupQueryAttention``, ``MultiHeadAttention``,
``Attention`` or ``RotaryEmbedding``, seeded inputs): its ``build()`` lifts the node with discovery and feeds
the lifted graph the node's own inputs, so the conformance runner holds every backend to the float64
reference of what attngraph lifted. ``onnxruntime_outputs(name)`` gives what onnxruntime computes for the very
same node and inputs, by the lifted graph's output names; the tests hold the reference to it (within the
float32 budget, outside the rows the operator leaves unspecified): that is what pins each convention to
onnxruntime 1.32. The case names say the trap (``gqa_seqlens_k_is_total_minus_one``: ``seqlens_k`` is the key
count minus one, not the count).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from attngraph.conformance.case import Case

OUTPUTS = {"GroupQueryAttention": ("output", "present_key", "present_value"),
           "MultiHeadAttention": ("output", "present_key", "present_value"),
           "Attention": ("output", "present"), "RotaryEmbedding": ("output",)}


@dataclass(frozen=True)
class NodeCase:
    """One hand-written contrib node: ``make(rng) -> (inputs by role, constant roles, attrs, output shapes)``
    (an output shape None: undeclared; a missing output: not requested)."""

    name: str
    pins: str
    op: str
    make: Callable


def _roles(op: str) -> tuple[str, ...]:
    from attngraph.frontends.onnx_discovery import contrib_attention, contrib_gqa, contrib_mha, contrib_rotary

    return {"GroupQueryAttention": contrib_gqa.ROLES, "MultiHeadAttention": contrib_mha.ROLES,
            "Attention": contrib_attention.ROLES, "RotaryEmbedding": contrib_rotary.ROLES}[op]


def node_model(case: NodeCase):
    """``(ModelProto, feeds)``: the case's node as a model (constants as initializers) and its inputs."""
    import onnx
    from onnx import helper, numpy_helper

    inputs, constants, attrs, out_shapes = case.make(np.random.default_rng(zlib.crc32(case.name.encode())))
    roles = list(_roles(case.op))
    names = [r if r in inputs else "" for r in roles]
    while names and not names[-1]:
        names.pop()
    elem = {np.dtype(np.float32): 1, np.dtype(np.int32): 6, np.dtype(np.int64): 7, np.dtype(np.float16): 10}
    graph_inputs = [helper.make_tensor_value_info(r, elem[a.dtype], list(a.shape)) for r, a in inputs.items()
                    if r not in constants]
    inits = [numpy_helper.from_array(a, r) for r, a in inputs.items() if r in constants]
    outs = [o for o in OUTPUTS[case.op] if o in out_shapes]
    node = helper.make_node(case.op, names, outs, domain="com.microsoft", name=case.name, **attrs)
    ranks = {"output": inputs[roles[0]].ndim if case.op == "RotaryEmbedding" else 3, "present_key": 4,
             "present_value": 4, "present": 5}
    graph_outputs = [helper.make_tensor_value_info(o, 1, out_shapes[o] if out_shapes[o] is not None else
                                                   [f"{o}_{i}" for i in range(ranks[o])]) for o in outs]
    model = helper.make_model(helper.make_graph([node], case.name, graph_inputs, graph_outputs, inits),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    _ = onnx
    return model, {r: a for r, a in inputs.items() if r not in constants}


@functools.cache
def lifted(name: str):
    """``(Subgraph, model, feeds)`` of the named case: its node lifted by discovery (exactly one subgraph)."""
    from attngraph.errors import AttnGraphError
    from attngraph.frontends.onnx_discovery import discover

    case = next(c for c in node_cases() if c.name == name)
    model, feeds = node_model(case)
    found = discover(model)
    if len(found.found) != 1:
        why = "; ".join(u.reason for u in found.unrecognised) or "nothing found"
        raise AttnGraphError(f"{name}: discovery lifted {len(found.found)} subgraphs, not 1: {why}")
    return found.found[0], model, feeds


def graph_inputs(sub, model, feeds) -> dict:
    """The lifted graph's inputs: the model's values by the subgraph's input map (initializers included)."""
    from onnx import numpy_helper

    values = dict(feeds)
    values.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    return {ir: np.array(values[m], copy=True) for ir, m in sub.inputs.items()}


def onnxruntime_outputs(name: str) -> dict:
    """What onnxruntime computes for the case's node, by the lifted graph's output names."""
    import onnxruntime as ort

    sub, model, feeds = lifted(name)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, feeds)))
    return {ir: got[m] for ir, m in sub.outputs.items()}


def _case(nc: NodeCase) -> Case:
    def build():
        sub, model, feeds = lifted(nc.name)
        return sub.graph, dict(sub.weights), graph_inputs(sub, model, feeds)
    return Case(f"contrib/{nc.name}", nc.pins, build, "float32", quick=False)


def contrib_cases() -> list[Case]:
    """Every hand-written contrib node as a conformance case; empty without onnx, onnx-ir, onnxscript or
    onnxruntime (discovery and the cases' own models need them)."""
    try:
        import onnx  # noqa: F401
        import onnx_ir  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (discovery's pattern rewriter)
    except ImportError:
        return []
    return [_case(nc) for nc in node_cases()]


# ---- the cases ------------------------------------------------------------------------------------------

def _f(rng, *shape, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _gqa(name: str, pins: str, *, batch=2, seq=1, heads=4, kv=2, d=16, past=8, seqlens=(3, 6), form="shared",
         packed=False, rotary=None, half=None, attrs=None, sink=False) -> NodeCase:
    """``form``: "shared" (present as long as past: a max-length buffer), "growing" (present = past + seq) or
    "none" (no past)."""
    def make(rng):
        ins = {}
        if packed:
            ins["query"] = _f(rng, batch, seq, (heads + 2 * kv) * d, scale=2.0)
        else:
            ins.update(query=_f(rng, batch, seq, heads * d, scale=2.0), key=_f(rng, batch, seq, kv * d, scale=2.0),
                       value=_f(rng, batch, seq, kv * d))
        if form != "none":
            ins.update(past_key=_f(rng, batch, kv, past, d, scale=2.0), past_value=_f(rng, batch, kv, past, d))
        ins["seqlens_k"] = np.array(seqlens, np.int32)
        ins["total_sequence_length"] = np.array(max(seqlens) + 1, np.int32)
        a = {"num_heads": heads, "kv_num_heads": kv, **(attrs or {})}
        consts = set()
        if rotary:
            w = half or d // 2
            ins["cos_cache"], ins["sin_cache"] = np.cos(_angles(64, w)), np.sin(_angles(64, w))
            consts |= {"cos_cache", "sin_cache"}
            a.update(do_rotary=1, rotary_interleaved=int(rotary == "interleaved"))
        if sink:
            ins["head_sink"] = _f(rng, heads)
            consts.add("head_sink")
        length = {"shared": past, "growing": past + seq, "none": seq}[form]
        out = {"output": [batch, seq, heads * d], "present_key": [batch, kv, length, d],
               "present_value": [batch, kv, length, d]}
        return ins, consts, a, out
    return NodeCase(name, pins, "GroupQueryAttention", make)


def _angles(positions: int, half: int) -> np.ndarray:
    inv = 10000.0 ** (-np.arange(half) / half)
    return (np.arange(positions)[:, None] * inv[None]).astype(np.float32)


def _mha(name: str, pins: str, *, batch=2, seq=3, keys=5, heads=2, d=8, dv=None, kpm=None, fill=None, bias_4d=None,
         past=0, uni=0, bnsh=False, bias=False, scale=None, integer=False) -> NodeCase:
    """``kpm``: None or a function (rng, batch, seq, total) -> int32 mask; ``integer``: small-integer Q and K and
    a power-of-two scale, so scores plus a fill are exact in float32 (a fill added or set tells apart exactly)."""
    dv = dv or d

    def make(rng):
        def val(*shape):
            return rng.integers(-2, 3, shape).astype(np.float32) if integer else _f(rng, *shape, scale=1.5)
        ins = {"query": val(batch, seq, heads * d)}
        if bnsh:
            ins.update(key=val(batch, heads, keys, d), value=_f(rng, batch, heads, keys, dv))
        else:
            ins.update(key=val(batch, keys, heads * d), value=_f(rng, batch, keys, heads * dv))
        if bias:
            ins["bias"] = _f(rng, 2 * heads * d + heads * dv)
        total = keys + past
        if kpm is not None:
            ins["key_padding_mask"] = kpm(rng, batch, seq, total)
        if bias_4d is not None:
            ins["attention_bias"] = _f(rng, *bias_4d(batch, heads, seq, total))
        if past:
            ins.update(past_key=_f(rng, batch, heads, past, d, scale=1.5), past_value=_f(rng, batch, heads, past, dv))
        out = {"output": None}
        if past:
            out.update(present_key=None, present_value=None)
        return ins, set(), _core_attrs(heads, uni, fill, scale), out
    return NodeCase(name, pins, "MultiHeadAttention", make)


def _core_attrs(heads: int, uni: int, fill, scale) -> dict:
    """MultiHeadAttention's and Attention's shared attributes (``mask_filter_value``/``scale`` only when set)."""
    a = {"num_heads": heads, "unidirectional": uni}
    if fill is not None:
        a["mask_filter_value"] = fill
    if scale is not None:
        a["scale"] = scale
    return a


def _attention(name: str, pins: str, *, batch=2, seq=4, hidden=16, heads=2, sizes=None, mask=None, past=0, uni=0,
               fill=None, scale=None, bias_4d=None, integer=False) -> NodeCase:
    def make(rng):
        widths = sizes or [hidden] * 3
        if integer:  # exact scores: x one-hot-ish small integers, weights small integers, scale a power of two
            x = rng.integers(-1, 2, (batch, seq, hidden)).astype(np.float32)
            w = rng.integers(-1, 2, (hidden, sum(widths))).astype(np.float32)
            b = np.zeros(sum(widths), np.float32)
        else:
            x, w, b = _f(rng, batch, seq, hidden), _f(rng, hidden, sum(widths), scale=0.5), _f(rng, sum(widths))
        ins = {"input": x, "weights": w, "bias": b}
        total = seq + past
        if mask is not None:
            ins["mask_index"] = mask(rng, batch, seq, total)
        if past:
            ins["past"] = _f(rng, 2, batch, heads, past, widths[0] // heads)
        if bias_4d is not None:
            ins["attention_bias"] = _f(rng, *bias_4d(batch, heads, seq, total))
        a = _core_attrs(heads, uni, fill, scale)
        if sizes:
            a["qkv_hidden_sizes"] = list(sizes)
        out = {"output": None}
        if past:
            out["present"] = None
        return ins, {"weights", "bias"}, a, out
    return NodeCase(name, pins, "Attention", make)


def _rotary(name: str, pins: str, *, rank=4, batch=2, seq=3, heads=2, d=16, half=None, positions="ids",
            attrs=None) -> NodeCase:
    def make(rng):
        w = half or d // 2
        x = _f(rng, batch, heads, seq, d) if rank == 4 else _f(rng, batch, seq, heads * d)
        pos = np.array([[0, 1, 2], [5, 2, 7]], np.int64)[:batch, :seq] if positions == "ids" else np.array([4],
                                                                                                          np.int64)
        cos, sin = np.cos(_angles(16, w)), np.sin(_angles(16, w))
        ins = {"input": x, "position_ids": pos, "cos_cache": cos, "sin_cache": sin}
        return ins, {"cos_cache", "sin_cache"}, dict(attrs or {}), {"output": None}
    return NodeCase(name, pins, "RotaryEmbedding", make)


def _right_padded(lengths):
    def mask(rng, batch, seq, total):
        return (np.arange(total)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return mask


def _lengths(values):
    return lambda rng, batch, seq, total: np.array(values, np.int32)


def _random_01(rng, batch, seq, total, *, rank=2):
    shape = (batch, total) if rank == 2 else (batch, seq, total)
    m = (rng.random(shape) > 0.35).astype(np.int32)
    m[..., 0] = 1  # every row keeps a key (a fully excluded row is its own case)
    return m


@functools.lru_cache(maxsize=1)
def node_cases() -> tuple[NodeCase, ...]:
    """Every hand-written contrib node case, in a stable order."""
    return (
        _gqa("gqa_seqlens_k_is_total_minus_one", "GroupQueryAttention decode: seqlens_k = key count - 1; the new "
             "token lands at seqlens_k (not seqlens_k + 1), rows at different lengths", seqlens=(3, 6)),
        _gqa("gqa_first_prompt_right_padding", "a right-padded first prompt: keys < seqlens_k + 1, padding queries "
             "see their row's keys; every token is written", seq=5, seqlens=(4, 2), form="none"),
        _gqa("gqa_growing_cache_ragged_rows_zero_filled", "a growing cache (present = past + seq) with ragged rows: "
             "present = past[:P], new, zeros", past=4, seqlens=(4, 2), form="growing"),
        _gqa("gqa_packed_qkv", "a packed QKV query (key/value absent) splits Q | K | V", packed=True,
             seqlens=(5, 7)),
        _gqa("gqa_chunk_after_past", "batch 1, a 3-token chunk after 3 cached tokens: causal bottom-right at "
             "seqlens_k + 1 - q_len", batch=1, seq=3, seqlens=(5,)),
        _gqa("gqa_local_window_counts_the_query", "local_window_size W keeps W keys, the query's own included "
             "(window (W - 1, 0))", seq=6, seqlens=(5, 3), form="none", attrs={"local_window_size": 2}),
        _gqa("gqa_smooth_softmax_is_a_zero_sink", "smooth_softmax adds exp(0) to each denominator: a sink of "
             "logit 0", seqlens=(2, 6), attrs={"smooth_softmax": 1}),
        _gqa("gqa_head_sink_without_smooth_softmax", "head_sink gives each head's sink logit, smooth_softmax off",
             seqlens=(2, 6), sink=True),
        _gqa("gqa_softcap_after_scale", "softcap after the custom scale, before the mask", seqlens=(4, 6),
             attrs={"softcap": 1.5, "scale": 0.3}),
        _gqa("gqa_rotary_at_cache_length", "do_rotary: Q and the new K rotate at position seqlens_k + 1 - q_len "
             "(half layout); the cache holds rotated keys", seqlens=(3, 6), rotary="half"),
        _gqa("gqa_rotary_interleaved", "rotary_interleaved=1 pairs dims (2k, 2k+1), in a first prompt",
             seq=4, seqlens=(3, 3), form="none", rotary="interleaved"),
        _gqa("gqa_rotary_partial_dim", "cos/sin caches narrower than the head: the first rd dims rotate",
             d=32, half=8, seqlens=(3, 6), rotary="half"),
        _gqa("gqa_not_causal", "causal=0: every query sees its row's seqlens_k + 1 keys", seq=5, seqlens=(4, 2),
             form="none", attrs={"causal": 0}),
        _mha("mha_key_padding_mask_2d_polarity", "key_padding_mask (batch, keys): 0 = padding, 1 = a key",
             kpm=lambda r, b, s, t: _random_01(r, b, s, t)),
        _mha("mha_key_padding_fill_is_added", "mask_filter_value is added to an excluded key's score (not set): a "
             "row with every key padded is the softmax of its own scores", integer=True, scale=0.25, fill=-64.0,
             kpm=_right_padded([3, 0])),
        _mha("mha_key_padding_lengths", "key_padding_mask (batch,): right-padding lengths", kpm=_lengths([2, 5])),
        _mha("mha_key_padding_mask_3d", "key_padding_mask (batch, q_len, keys): one mask per query",
             kpm=lambda r, b, s, t: _random_01(r, b, s, t, rank=3)),
        _mha("mha_attention_bias", "attention_bias (1, heads, q_len, keys) added, with a key padding mask",
             kpm=_right_padded([4, 5]), bias_4d=lambda b, h, s, t: (1, h, s, t)),
        _mha("mha_unidirectional_with_past", "unidirectional with a past: causal bottom-right (offset past), "
             "present = concat(past, new), a (batch, total) key padding mask", seq=3, keys=3, past=4, uni=1,
             kpm=_right_padded([7, 5])),
        _mha("mha_bnsh_key_value", "key/value given as (batch, heads, keys, head): already split", bnsh=True),
        _mha("mha_bias_with_bnsh_kv_adds_to_query_only", "bias with BNSH key/value: only its Q part is added",
             bnsh=True, bias=True),
        _mha("mha_bias", "bias (3 * hidden) adds to Q, K and V", bias=True),
        _mha("mha_value_head_dim", "a value head size different from the Q/K head size", dv=4, scale=0.3),
        _attention("attention_fused_qkv_weights", "input @ fused QKV weights + bias: Q, K, V are the column "
                   "blocks in that order"),
        _attention("attention_mask_index_lengths", "mask_index (batch,): right-padding lengths",
                   mask=_lengths([2, 4])),
        _attention("attention_mask_index_end_positions", "mask_index (2 * batch,): exclusive ends, then inclusive "
                   "starts", mask=_lengths([3, 4, 1, 0])),
        _attention("attention_mask_index_raw_2d", "mask_index (batch, total): 0/1, 0 excluded",
                   mask=lambda r, b, s, t: _random_01(r, b, s, t)),
        _attention("attention_mask_index_raw_3d", "mask_index (batch, q_len, total): one mask per query",
                   mask=lambda r, b, s, t: _random_01(r, b, s, t, rank=3)),
        _attention("attention_mask_filter_value_is_added", "mask_filter_value is added, not set: a fully excluded "
                   "row is the softmax of its own scores", integer=True, scale=0.25, fill=-64.0,
                   mask=_right_padded([2, 0])),
        _attention("attention_unidirectional_past", "the GPT-2 form: past (2, B, H, P, D), unidirectional causal "
                   "at offset P, a (batch, total) mask; present stacked the same way", past=3, uni=1,
                   mask=_right_padded([7, 5])),
        _attention("attention_qkv_hidden_sizes", "qkv_hidden_sizes: a value width different from Q and K's",
                   sizes=[16, 16, 8]),
        _attention("attention_attention_bias", "attention_bias (batch, 1, q_len, total) added, with a custom scale",
                   bias_4d=lambda b, h, s, t: (b, 1, s, t), scale=0.3),
        _rotary("rotary_contrib_position_ids", "position_ids (batch, seq): each token's own position (4-D input)"),
        _rotary("rotary_contrib_scalar_offset", "a (1,) position_ids is an offset: token i at offset + i",
                positions="offset"),
        _rotary("rotary_contrib_interleaved", "interleaved=1 pairs dims (2k, 2k+1)", attrs={"interleaved": 1}),
        _rotary("rotary_contrib_partial_dim", "rotary_embedding_dim with num_heads on a 3-D input: the first rd "
                "dims of each head rotate", rank=3, half=4, attrs={"num_heads": 2, "rotary_embedding_dim": 8}),
        _rotary("rotary_contrib_3d_head_size_from_cache", "a 3-D input without num_heads: the head size is twice "
                "the caches' width", rank=3),
    )
