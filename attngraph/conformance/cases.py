"""The conformance corpus: named cases, each saying which convention it pins down.

A case builds ``(graph, weights, inputs)`` on demand (seeded, so every run sees the same numbers).
``quick`` cases are the small, fast set ``attngraph check`` runs; the rest (block edges, dtype
variants, seeded random configurations, ONNX's own node cases) run in the full corpus.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from attngraph.conformance.case import Case
from attngraph.conformance.latent_cases import latent_cases
from attngraph.conformance.varlen_cases import varlen_cases
from attngraph.conformance.quant_cases import quant_cases
from attngraph.conformance.paged_cases import paged_cases
from attngraph.frontends.constructors import causal_self_attention, core_attention, cross_attention, self_attention
from attngraph.ir import Graph
from attngraph.lowering.weights import Weights
from attngraph.testing.random_inputs import random_inputs

SIZES = {"batch": 2, "q_len": 5, "kv_len": 7, "past_len": 3}


def _graph_case(name: str, pins: str, make: Callable[[], Graph], sizes: dict | None = None,
                edit: Callable[[dict], None] | None = None, seed: int = 0, dtype: str = "float32",
                quick: bool = True, weight_scale: float = 1.0) -> Case:
    def build():
        g = make()
        inputs = random_inputs(g, {**SIZES, **(sizes or {})}, seed=seed)
        if edit:
            edit(inputs)
        weights = {k: (v.astype("float32") * weight_scale).astype(v.dtype)
                   for k, v in Weights.random(g, seed=seed).items()}
        return g, weights, inputs
    return Case(name, pins, build, dtype, quick)


def _core(name, pins, *, sizes=None, edit=None, dtype="float32", quick=True, heads=4, head_dim=8, **knobs):
    return _graph_case(name, pins, lambda: core_attention(heads, head_dim, dtype=dtype, **knobs), sizes, edit,
                       dtype=dtype, quick=quick)


def _set(name: str, index, value) -> Callable[[dict], None]:
    def edit(inputs):
        inputs[name][index] = value
    return edit


def _scale_qk(factor: float) -> Callable[[dict], None]:
    def edit(inputs):
        for n in ("q", "k"):
            inputs[n] = (inputs[n].astype(np.float32) * factor).astype(inputs[n].dtype)
    return edit


def _fill_row_with(value: float) -> Callable[[dict], None]:
    """Query row 1 gets ``value`` on every key. Its q is 0, so its scores are all 0 and the exact answer
    (uniform weights) is the same in float32 and float64: a backend that turns the fill into a mask gives 0."""
    def edit(inputs):
        inputs["attn_mask"][1, :] = value
        inputs["q"][:, :, 1] = 0
    return edit


def _all_masks_rows(kind: str) -> Callable[[dict], None]:
    def edit(inputs):
        inputs["attn_mask"][..., 1, :] = False if kind == "bool" else -np.inf
    return edit


def _masked_tail(value: float) -> Callable[[dict], None]:
    """Row 0 keeps 4 keys; keys 4.. of that row hold ``value`` in K and V."""
    def edit(inputs):
        inputs["key_lengths"][0] = 4
        inputs["k"][0, :, 4:] = value
        inputs["v"][0, :, 4:] = value
    return edit


def _masked_column(value: float) -> Callable[[dict], None]:
    """Key 2 is masked out for batch row 0 and holds ``value`` in K and V there."""
    def edit(inputs):
        inputs["attn_mask"][:] = True
        inputs["attn_mask"][0, ..., 2] = False
        inputs["k"][0, :, 2] = value
        inputs["v"][0, :, 2] = value
    return edit


def _nan_values_and_dead_row(inputs: dict) -> None:
    """Every value is NaN and query row 1 masks every key: that row is 0, the others NaN."""
    inputs["v"][:] = np.nan
    inputs["attn_mask"][1, :] = False


MASK_SHAPES = {
    "kv": ("kv_len",), "q_kv": ("q_len", "kv_len"), "1_q_kv": (1, "q_len", "kv_len"),
    "b_1_q_kv": ("batch", 1, "q_len", "kv_len"), "b_h_q_kv": ("batch", 4, "q_len", "kv_len"),
    "b_1_1_kv": ("batch", 1, 1, "kv_len"),
}


def named_cases() -> list[Case]:
    """Every row of the semantics table (attngraph.ir.semantics) and the classic traps."""
    cases = [
        _core("bool_mask_polarity", "bool mask: True = attend, False = masked out", mask="bool"),
        _core("additive_mask", "float mask is added to the scaled scores", mask="additive"),
        _core("causal_square", "causal: key j visible iff j <= i (q_len = kv_len)", causal=True,
              sizes={"kv_len": 5}),
        _core("causal_q_lt_kv", "causal without a cache is top-left aligned (j <= i) when q_len < kv_len",
              causal=True, sizes={"q_len": 3, "kv_len": 7}),
        _core("causal_q_gt_kv", "causal top-left when q_len > kv_len: late queries see every key",
              causal=True, sizes={"q_len": 7, "kv_len": 3}),
        _core("fully_masked_row_bool", "a query with every key masked by a bool mask gives exactly 0",
              mask="bool", edit=_all_masks_rows("bool"), return_weights=True),
        _core("fully_masked_row_neg_inf_bias", "a row of -inf bias is fully masked: output 0, not NaN",
              mask="additive", edit=_all_masks_rows("additive"), return_weights=True),
        _core("large_negative_fill_is_a_number", "a finite -1e9 fill is a bias, not a mask: the row is uniform",
              mask="additive", edit=_fill_row_with(-1e9), return_weights=True),
        _graph_case("decode_one_token_kv_cache", "one-token decode with a cache sees every past key (offset = past)",
                    lambda: causal_self_attention(16, 4, kv_cache=True), {"q_len": 1, "past_len": 6}),
        _core("decode_one_token_no_cache", "one query, causal, no cache: top-left, so it sees key 0 only",
              causal=True, sizes={"q_len": 1}),
        _graph_case("kv_cache_prefill", "present = concat(past, new); causal offset = past length",
                    lambda: causal_self_attention(16, 4, kv_cache=True, num_kv_heads=2), {"q_len": 4}),
        _core("fp16_scores_overflow_unless_scaled", "float16: Q.K up to 1e5 overflows unless scaled first / in f32",
              dtype="float16", head_dim=64, edit=_scale_qk(40.0)),
        _core("softcap_next_to_neg_inf", "softcap before the mask: -inf stays masked (tanh(-inf) = -1 is a trap)",
              softcap=2.0, mask="additive", edit=_set("attn_mask", (slice(None), 0), -np.inf), causal=True),
        _core("softcap", "softcap * tanh(scores / softcap) after scaling", softcap=1.5),
        _core("gqa", "GQA: q head h reads kv head h // (Hq/Hkv)", num_kv_heads=2),
        _core("mqa", "MQA: one kv head for all q heads", num_kv_heads=1),
        _graph_case("cross_kdim_vdim", "cross attention with key and value widths != d_model",
                    lambda: cross_attention(16, 4, kdim=12, vdim=20, mask="bool")),
        _core("value_head_dim", "value head dim may differ from the Q/K head dim; scale uses Q/K's",
              v_head_dim=5),
        _core("scale_override", "an explicit scale replaces 1/sqrt(head_dim)", scale=0.37),
        _core("nan_in_one_input", "NaN propagates: a NaN query row gives a NaN output row, others exact",
              edit=_set("q", (0, 1, 2, 3), np.nan)),
        _core("key_padding_lengths", "key lengths mask keys >= length; length 0 gives a zero row",
              key_padding=True, edit=_set("key_lengths", 0, 0)),
        _core("align_to_lengths", "causal aligned to each row's last valid key (right-padded decode)",
              causal=True, key_padding=True, align_to_lengths=True, sizes={"q_len": 3}),
        _core("sliding_window", "window (left, right): key j visible iff i-left <= j <= i+right",
              window=(2, 1), causal=False),
        _core("causal_window", "causal plus a left window (local attention)", window=(2, 0), causal=True),
        _graph_case("self_attention_projections", "head split is head-major; Q/K/V/O projections with bias",
                    lambda: self_attention(16, 4, return_weights=True)),
        _core("masked_key_nan_in_value_causal_future", "a masked key takes no part: NaN in the value of a key in "
              "the causal future never reaches the output", causal=True, edit=_set("v", (slice(None), slice(None), 6),
                                                                                     np.nan)),
        _core("masked_key_inf_beyond_key_lengths", "a key past key_lengths takes no part: inf in its key and value",
              key_padding=True, edit=_masked_tail(np.inf), return_weights=True),
        _core("masked_key_nan_by_bool_mask", "a key masked by a bool mask takes no part: NaN in its key and value",
              mask="bool", mask_shape=("batch", 1, 1, "kv_len"), edit=_masked_column(np.nan), return_weights=True),
        _core("fully_masked_row_nan_in_value", "a fully masked row is exactly 0 even when V holds NaN",
              mask="bool", edit=_nan_values_and_dead_row, return_weights=True),
        _core("empty_kv_len", "no keys at all: every row is fully masked, so the output is 0 (weights are empty)",
              sizes={"kv_len": 0}, return_weights=True),
        _core("empty_q_len", "no queries: an empty output", causal=True, sizes={"q_len": 0}),
        _core("empty_batch", "an empty batch: an empty output", mask="bool", sizes={"batch": 0}),
        _graph_case("clamp_qkv", "MPT's clip_qkv: projected Q, K, V clamped to [-c, c] (runs by decomposition)",
                    lambda: causal_self_attention(16, 4, num_kv_heads=2, clip_qkv=0.3)),
        _graph_case("score_stages", "every score stage (scaled, softcapped, masked, weights) as an output",
                    lambda: core_attention(4, 8, softcap=3.0, mask="bool",
                                              score_outputs=("scaled", "softcapped", "masked", "weights"))),
    ]
    cases += position_cases() + cache_cases()
    cases += latent_cases()
    cases += varlen_cases()
    cases += quant_cases()
    cases += paged_cases()
    for short, shape in MASK_SHAPES.items():
        cases.append(_core(f"mask_rank_{short}", f"a bool mask of shape {shape} broadcasts right-aligned",
                           mask="bool", mask_shape=shape))
    return cases


def _self(name: str, pins: str, sizes: dict | None = None, edit=None, dtype: str = "float32", **knobs) -> Case:
    """A causal self-attention case (d_model 24, 6 heads, 2 kv heads) with large weights, so softmax rows are
    far from uniform and a wrong position encoding shows."""
    def make():
        return causal_self_attention(24, 6, **{"num_kv_heads": 2, "dtype": dtype, **knobs})
    return _graph_case(name, pins, make, {"q_len": 6, "past_len": 5, "rope_positions": 64, **(sizes or {})}, edit,
                       dtype=dtype, weight_scale=3.0)


def _left_padded_positions(inputs: dict) -> None:
    """Row 0 left-padded by 2 tokens: its positions start at 0 on its third token (the pads repeat 0)."""
    inputs["position_ids"][:] = [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]


def _sinks_and_dead_row(inputs: dict) -> None:
    inputs["attn_mask"][2, :] = False


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}


def position_cases() -> list[Case]:
    """Rotary, QK-norm, sinks, ALiBi and T5's relative bias, each with its trap."""
    t5 = {"rel_bias": True, "rel_buckets": 32, "rel_max_distance": 128}
    return [
        _self("rotary_half", "rotary 'half': dim k pairs with k + rd/2 (rotate_half, Llama)", rotary="half"),
        _self("rotary_interleaved", "rotary 'interleaved': dims (2k, 2k+1) pair (GPT-J); the classic silent "
              "mismatch with 'half'", rotary="interleaved"),
        _self("rotary_partial_dim", "partial rotary: the first rotary_dim dims rotate, the rest pass (NeoX 25%)",
              rotary="half", rotary_dim=2, num_kv_heads=None),
        _self("rotary_decode_at_cache_offset", "one-token decode: the query and new key rotate at position past_len",
              {"q_len": 1, "past_len": 9}, rotary="half", kv_cache=True),
        _self("rotary_position_ids_left_padding", "explicit position_ids (left padding) drive the angles",
              edit=_left_padded_positions, rotary="half", position_ids=True),
        _self("rotary_cos_sin_cache", "user cos/sin caches indexed by position (any scaling scheme)",
              rotary="interleaved", rope_cache=True, kv_cache=True),
        _self("rotary_llama3_scaling", "llama3 frequency scaling computed in the graph", rotary="half",
              rope_theta=500000.0, rope_scaling=LLAMA3),
        _self("qk_norm_float16", "QK-norm (RMSNorm per head, before rotary) in float32 for float16 storage",
              dtype="float16", qk_norm="rms", rotary="half"),
        _self("qk_norm_plus_one", "Gemma 3's QK-norm scales by (1 + w)", qk_norm="rms_plus_one", rotary="half"),
        _self("sinks_fully_masked_row", "a sink takes all the mass of a fully masked row: the row is 0",
              edit=_sinks_and_dead_row, sinks=True, mask="bool"),
        _self("sinks_with_softcap", "sinks join the denominator after the softcap and a window", sinks=True,
              softcap=2.0, window=(2, 0)),
        _graph_case("alibi_12_heads", "ALiBi slopes for 12 heads (not a power of two), causal",
                    lambda: causal_self_attention(48, 12, alibi="after_scale"), {"q_len": 7}, weight_scale=3.0),
        _self("alibi_causal_window", "ALiBi with a causal sliding window", alibi="after_scale", window=(3, 0)),
        _self("alibi_before_scale", "ALiBi added before the scale (Falcon) at a cache offset", alibi="before_scale",
              kv_cache=True),
        _graph_case("t5_buckets_at_edges", "T5 buckets at the bucket edges (8, 12, 16, 23, 32, 46, 64, 91) and past "
                    "max_distance, both ways", lambda: self_attention(16, 4, bias=False, scale=1.0, **t5),
                    {"q_len": 150}, weight_scale=3.0, quick=False),
        _self("t5_causal_beyond_max_distance", "T5 decoder buckets (one way) with a cache past max_distance",
              {"q_len": 3, "past_len": 140}, bias=False, scale=1.0, kv_cache=True, **t5),
    ]


def _cache_state(lengths: list[int], garbage: float = np.nan) -> Callable[[dict], None]:
    """Rows hold ``lengths`` cached tokens; every slot past a row's length holds ``garbage`` (never read)."""
    def edit(inputs):
        inputs["cache_lengths"][:] = lengths
        for b, n in enumerate(lengths):
            if n < inputs["past_key"].shape[2]:
                inputs["past_key"][b, :, n:] = garbage
                inputs["past_value"][b, :, n:] = garbage
    return edit


def cache_cases() -> list[Case]:
    """The static and the rolling KV cache: ragged rows, garbage past the valid length, full and wrapped."""
    static = {"kv_cache": "static", "max_len": 16}
    rolling = {"kv_cache": "rolling", "max_len": 8, "window": (7, 0)}
    return [
        _self("static_cache_ragged_decode", "one-token decode into a static cache, rows at different lengths; NaN "
              "past each row's length never read; rotary at position len_b", {"q_len": 1},
              _cache_state([3, 11]), rotary="half", **static),
        _self("static_cache_chunked_prefill", "a 4-token chunk into a non-empty static cache: causal bottom-right "
              "per row (offset len_b)", {"q_len": 4}, _cache_state([0, 9], np.inf), rotary="half", **static),
        _self("static_cache_full", "a chunk that fills the static cache to its last slot", {"q_len": 3},
              _cache_state([13, 13]), **static),
        _self("static_cache_window_sinks_softcap", "a static cache with a sliding window, sinks and softcap",
              {"q_len": 2}, _cache_state([6, 12]), window=(4, 0), sinks=True, softcap=3.0, **static),
        _self("rolling_cache_decode_wrapped", "a rolling cache (circular writes) past its first wrap: the window's "
              "keys only", {"q_len": 1}, _cache_state([20, 5]), rotary="half", **rolling),
        _self("rolling_cache_prefill", "a prompt that fills an empty rolling cache", {"q_len": 8},
              _cache_state([0, 0]), rotary="half", **rolling),
    ]


def edge_cases() -> list[Case]:
    """Long sequences whose lengths sit on and off kernel block edges, and dtype variants."""
    cases = []
    for t in (63, 64, 65, 127, 129, 257):
        cases.append(_core(f"block_edge_causal_T{t}", f"causal at T={t}, around 64/128-row kernel blocks",
                           causal=True, heads=2, head_dim=16, sizes={"batch": 1, "q_len": t, "kv_len": t},
                           quick=False))
    cases.append(_core("block_edge_lengths_T200", "key lengths ending on and off block edges (128, 64, 1)",
                       key_padding=True, heads=2, head_dim=16, sizes={"batch": 3, "q_len": 130, "kv_len": 200},
                       edit=_set("key_lengths", slice(None), np.array([128, 64, 1])), quick=False))
    for dtype in ("float64", "float16", "bfloat16"):
        cases.append(_graph_case(f"causal_mha_{dtype}", f"causal MHA with GQA stored in {dtype}",
                                 lambda dtype=dtype: causal_self_attention(16, 4, num_kv_heads=2, dtype=dtype),
                                 dtype=dtype, quick=dtype == "float64"))
        cases.append(_core(f"masked_core_{dtype}", f"bool mask and fully masked row in {dtype}", dtype=dtype,
                           mask="bool", edit=_all_masks_rows("bool"), quick=False))
    return cases


def random_cases(count: int = 16, seed: int = 1234) -> list[Case]:
    """Seeded random configurations across the builder's space."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        kv_heads = int(rng.choice([1, 2]))
        heads = kv_heads * int(rng.integers(1, 4))
        head_dim = int(rng.integers(1, 9))
        knobs = {"num_kv_heads": kv_heads, "v_head_dim": [None, 3][rng.integers(2)],
                 "bias": bool(rng.integers(2)), "causal": bool(rng.integers(2)),
                 "mask": [None, "bool", "additive"][rng.integers(3)], "softcap": [None, 1.5][rng.integers(2)],
                 "window": [None, (1, 0), (2, 1)][rng.integers(3)], "kv_cache": bool(rng.integers(2)),
                 "key_padding": bool(rng.integers(2)), "dtype": ["float32", "float64"][rng.integers(2)],
                 "return_weights": bool(rng.integers(2))}
        sizes = {"batch": int(rng.integers(1, 3)), "q_len": int(rng.integers(1, 6)),
                 "kv_len": int(rng.integers(1, 6)), "past_len": int(rng.integers(0, 4))}
        kind = ["self", "cross"][rng.integers(2)]
        make = (lambda k=knobs, h=heads, d=head_dim: self_attention(h * d, h, **k)) if kind == "self" else \
            (lambda k=knobs, h=heads, d=head_dim: cross_attention(h * d, h, **k))
        shown = ", ".join(f"{k}={v}" for k, v in knobs.items() if v not in (None, False))
        cases.append(_graph_case(f"random_{i:02d}", f"random {kind} attention: heads={heads}, {shown}", make,
                                 sizes, seed=i, dtype=knobs["dtype"], quick=False))
    return cases


def all_cases(include_onnx: bool = True) -> list[Case]:
    """The whole corpus, in a stable order."""
    from attngraph.conformance.contrib_cases import contrib_cases
    from attngraph.conformance.onnx_cases import onnx_node_cases

    out = named_cases() + edge_cases() + random_cases()
    if include_onnx:
        out += onnx_node_cases() + contrib_cases()
    names = [c.name for c in out]
    dupes = {n for n, k in itertools.groupby(sorted(names)) if len(list(k)) > 1}
    if dupes:
        raise ValueError(f"duplicate case names: {sorted(dupes)}")
    return out

