"""The conformance corpus: named cases, each saying which convention it pins down.

A case builds ``(graph, weights, inputs)`` on demand (seeded, so every run sees the same numbers).
``quick`` cases are the small, fast set ``attngraph check`` runs; the rest (block edges, dtype
variants, seeded random configurations, ONNX's own node cases) run in the full corpus.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from attngraph.frontends.constructors import causal_self_attention, core_attention, cross_attention, self_attention
from attngraph.conformance.case import Case
from attngraph.ir import Graph
from attngraph.lowering.weights import Weights
from attngraph.testing.random_inputs import random_inputs


SIZES = {"batch": 2, "q_len": 5, "kv_len": 7, "past_len": 3}


def _graph_case(name: str, pins: str, make: Callable[[], Graph], sizes: dict | None = None,
                edit: Callable[[dict], None] | None = None, seed: int = 0, dtype: str = "float32",
                quick: bool = True) -> Case:
    def build():
        g = make()
        inputs = random_inputs(g, {**SIZES, **(sizes or {})}, seed=seed)
        if edit:
            edit(inputs)
        return g, dict(Weights.random(g, seed=seed)), inputs
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
        _graph_case("clamp_qkv", "MPT's clip_qkv: projected Q, K, V clamped to [-c, c] (runs by decomposition)",
                    lambda: causal_self_attention(16, 4, num_kv_heads=2, clip_qkv=0.3)),
        _graph_case("score_stages", "every score stage (scaled, softcapped, masked, weights) as an output",
                    lambda: core_attention(4, 8, softcap=3.0, mask="bool",
                                              score_outputs=("scaled", "softcapped", "masked", "weights"))),
    ]
    for short, shape in MASK_SHAPES.items():
        cases.append(_core(f"mask_rank_{short}", f"a bool mask of shape {shape} broadcasts right-aligned",
                           mask="bool", mask_shape=shape))
    return cases


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
    from attngraph.conformance.onnx_cases import onnx_node_cases

    out = named_cases() + edge_cases() + random_cases()
    if include_onnx:
        out += onnx_node_cases()
    names = [c.name for c in out]
    dupes = {n for n, k in itertools.groupby(sorted(names)) if len(list(k)) > 1}
    if dupes:
        raise ValueError(f"duplicate case names: {sorted(dupes)}")
    return out

