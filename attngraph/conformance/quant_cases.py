"""Conformance cases of the quantized KV cache (``attngraph.ir.quant_specs``): int8 and float8 e4m3fn, scales
per token and head or per head, an outlier token, ties at exactly half a step, a decode step and a chunk.

Each case has two references. ``Case.build`` gives the quantized graph (its float64 reference applies the
rounding rule exactly; the usual float32 budget holds). ``quant_truth(name)`` gives the same attention on the
float values the cache was quantized from, without quantization, and the per-row bound derived from the step
(``quant_budgets.attention_bound``): a backend's output must be within it of that truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attngraph.conformance.case import Case
from attngraph.conformance.quant_budgets import attention_bound, element_error
from attngraph.conformance.reference.quant_ops import quantize_values
from attngraph.frontends.constructors import core_attention
from attngraph.ir import DType, Graph
from attngraph.ir.dtypes import to_numpy
from attngraph.ir.quant_specs import QMAX

HEADS, KV_HEADS, HEAD_DIM, MAX_LEN, BATCH = 4, 2, 8, 16, 2
# one token per row with values this many times larger (keys a few times): a per-head scale then coarsens every
# other token, a per-token scale only the outlier's own (a key 40x larger would own the softmax: no test of the rest)
OUTLIER_V, OUTLIER_K = 40.0, 3.0
# ties at exactly half a step of the int8 grid with scale 2^-3 (amax 127 * 2^-3 = 15.875): ±0.5, ±1.5, ±2.5, 8.5
INT8_TIES = np.array([15.875, 0.0625, 0.1875, 0.3125, -0.0625, -0.1875, -0.3125, 1.0625], np.float32)
# ties of the float8 e4m3 grid with scale 2^-4 (amax 448 * 2^-4 = 28): 1.0625 -> 1.0, 1.1875 -> 1.25, 2.125 -> 2.0
FLOAT8_TIES = np.array([28.0, 1.0625, 1.1875, 2.125, -1.0625, -1.1875, -2.125, 0.5], np.float32) * np.float32(2 ** -4)


@dataclass(frozen=True)
class QuantSetup:
    """A quantized case and its truth: the quantized (graph, weights, inputs), the float ones, and the bound."""

    quant: tuple[Graph, dict, dict]
    truth: tuple[Graph, dict, dict]
    bound: np.ndarray  # (B, Hq, Sq, 1): the most |y - y_true| may be, derived from the step


def _token_scales(x: np.ndarray, dtype: DType) -> np.ndarray:
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    return np.where(amax == 0, np.float32(1), amax / np.float32(QMAX[dtype])).astype(np.float32)


def setup(dtype: str, kv_scale: str, lengths: tuple[int, int], q_len: int, ties: bool = False,
          seed: int = 0) -> QuantSetup:
    """The quantized core attention (static cache, causal) and its unquantized truth on the same values."""
    dt = DType.parse(dtype)
    rng = np.random.default_rng(seed)
    n = np.asarray(lengths, np.int64)
    q = rng.standard_normal((BATCH, HEADS, q_len, HEAD_DIM)).astype(np.float32)
    past = {t: rng.standard_normal((BATCH, KV_HEADS, MAX_LEN, HEAD_DIM)).astype(np.float32) for t in "kv"}
    new = {t: rng.standard_normal((BATCH, KV_HEADS, q_len, HEAD_DIM)).astype(np.float32) for t in "kv"}
    for b, outlier in enumerate((min(2, n[0] - 1), min(7, n[1] - 1))):  # one outlier token in each row's past
        if outlier >= 0:
            past["k"][b, :, outlier] *= OUTLIER_K
            past["v"][b, :, outlier] *= OUTLIER_V
    if ties:
        for t in "kv":
            new[t][0, :, 0] = INT8_TIES if dt is DType.INT8 else FLOAT8_TIES
    for t in "kv":
        for b in range(BATCH):
            past[t][b, :, n[b]:] = np.nan  # never read: past each row's length
    total = n + q_len  # keys each row reads after the write
    full = {t: past[t].copy() for t in "kv"}  # the true cache after the write
    for t in "kv":
        for b in range(BATCH):
            full[t][b, :, n[b]:total[b]] = new[t][b]
    g = core_attention(HEADS, HEAD_DIM, num_kv_heads=KV_HEADS, causal=True, kv_cache="static", max_len=MAX_LEN,
                       kv_cache_dtype=dtype, kv_scale=kv_scale)
    truth_graph = core_attention(HEADS, HEAD_DIM, num_kv_heads=KV_HEADS, causal=True, kv_cache="static",
                                 max_len=MAX_LEN)
    inputs = {"q": q, "k": new["k"], "v": new["v"], "cache_lengths": n.copy()}
    weights, errors = {}, {}
    for t, tag in (("k", "key"), ("v", "value")):
        valid = np.nan_to_num(full[t], nan=0.0)
        if kv_scale == "per_token_head":
            scale = _token_scales(valid, dt)                       # (B, H, M, 1): the write-time scale of each token
            stored_scale = scale.copy()
            for b in range(BATCH):
                stored_scale[b, :, n[b]:] = np.nan                 # garbage past the length: never read
            inputs[f"past_{tag}_scale"] = stored_scale
        else:
            scale = (np.max(np.abs(valid), axis=(0, 2, 3)) / np.float32(QMAX[dt])).astype(np.float32)  # calibrated
            weights[f"{t}_scale"] = scale
            scale = scale.reshape(1, KV_HEADS, 1, 1)
        stored = quantize_values(valid, scale, dt)
        cache = stored.astype(to_numpy(dt))
        if dt is DType.FLOAT8_E4M3FN:
            for b in range(BATCH):
                cache[b, :, n[b]:] = np.nan                        # float8 can hold garbage NaN: never read
        else:
            for b in range(BATCH):
                cache[b, :, n[b]:] = 127
        inputs[f"past_{tag}"] = cache
        errors[t] = element_error(valid.astype(np.float64), np.broadcast_to(scale, valid.shape), dtype)
    truth_inputs = {"q": q, "k": new["k"], "v": new["v"], "cache_lengths": n.copy(), "past_key": past["k"],
                    "past_value": past["v"]}
    bound = attention_bound(q.astype(np.float64), np.nan_to_num(full["k"]).astype(np.float64),
                            np.nan_to_num(full["v"]).astype(np.float64), errors["k"], errors["v"], n,
                            1.0 / np.sqrt(HEAD_DIM))
    return QuantSetup((g, weights, inputs), (truth_graph, {}, truth_inputs), bound)


# name -> (pins, dtype, kv_scale, lengths, q_len, ties)
QUANT_CASES = {
    "quant_int8_outlier_per_token": ("int8 cache, a scale per token and head: an outlier token costs the others "
                                     "nothing", "int8", "per_token_head", (5, 12), 1, False),
    "quant_int8_outlier_per_head": ("int8 cache, one calibrated scale per head: the outlier coarsens every token "
                                    "(larger error, still within the derived budget)", "int8", "per_head", (5, 12),
                                    1, False),
    "quant_int8_round_half_even": ("int8 write of values exactly at half a step (scale 2^-3): round half to even, "
                                   "pinned in present_key", "int8", "per_token_head", (5, 12), 1, True),
    "quant_int8_chunk": ("int8 cache, a 3-token chunk into rows of lengths 0 and 9 (causal bottom-right)", "int8",
                         "per_token_head", (0, 9), 3, False),
    "quant_float8_outlier_per_token": ("float8 e4m3fn cache, a scale per token and head, an outlier token; NaN "
                                       "garbage past each row's length never read", "float8_e4m3fn",
                                       "per_token_head", (5, 12), 1, False),
    "quant_float8_per_head": ("float8 e4m3fn cache, one calibrated scale per head", "float8_e4m3fn", "per_head",
                              (5, 12), 1, False),
    "quant_float8_round_half_even": ("float8 e4m3fn write of values exactly between two grid values: nearest even",
                                     "float8_e4m3fn", "per_token_head", (5, 12), 1, True),
}


def quant_setup(name: str) -> QuantSetup:
    """The quantized case ``name`` with its truth and bound."""
    _pins, dtype, kv_scale, lengths, q_len, ties = QUANT_CASES[name]
    return setup(dtype, kv_scale, lengths, q_len, ties)


def quant_cases() -> list[Case]:
    """The quantized-cache cases; each compares with the quantized graph's reference at the float32 budget."""
    return [Case(name, spec[0], lambda name=name: quant_setup(name).quant, "float32", True)
            for name, spec in QUANT_CASES.items()]
