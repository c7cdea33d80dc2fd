"""Conformance cases of ``varlen_attention`` (packed variable-length batches), each named after its trap:
sequences of length 0 and 1, causal bottom-right with ``q_len != k_len`` per sequence (rows with no key), the
top-left variant of xformers' ``BlockDiagonalCausalMask``, NaN that must not cross a sequence boundary, GQA on a
block-diagonal mask, and (full corpus) sequence lengths on and off the numba kernel's 64-row block edges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attngraph.conformance.case import Case
from attngraph.frontends.varlen import varlen_attention
from attngraph.testing.random_inputs import random_inputs


def cu(lengths: Sequence[int]) -> list[int]:
    """Cumulative lengths from 0: ``cu([3, 0, 4]) == [0, 3, 3, 7]``."""
    return [0, *np.cumsum(lengths).tolist()]


def _case(name: str, pins: str, q_lens: Sequence[int], k_lens: Sequence[int], *, nan: bool = False,
          future_nan: bool = False, quick: bool = True, heads: int = 4, head_dim: int = 8, **knobs) -> Case:
    def build():
        g = varlen_attention(heads, head_dim, **knobs)
        cu_q, cu_k = cu(q_lens), cu(k_lens)
        inputs = random_inputs(g, {"total_q": cu_q[-1], "total_k": cu_k[-1], "cu_len": len(cu_q)}, seed=0)
        inputs["cu_seqlens_q"] = np.asarray(cu_q, inputs["cu_seqlens_q"].dtype)
        inputs["cu_seqlens_k"] = np.asarray(cu_k, inputs["cu_seqlens_k"].dtype)
        if nan:  # a NaN query row in sequence 0, NaN keys and values in sequence 1: sequence 2 stays exact
            inputs["q"][0, :, cu_q[0] + 1] = np.nan
            inputs["k"][0, :, cu_k[1]] = np.nan
            inputs["v"][0, :, cu_k[1] + 1] = np.nan
        if future_nan:  # NaN in the last key and value of every sequence: seen only where causal lets it in
            for s in range(len(k_lens)):
                if k_lens[s]:
                    inputs["k"][0, :, cu_k[s + 1] - 1] = np.nan
                    inputs["v"][0, :, cu_k[s + 1] - 1] = np.nan
        return g, {}, inputs
    return Case(name, pins, build, knobs.get("dtype", "float32"), quick)


def varlen_cases() -> list[Case]:
    """The packed-sequence cases (registered in the corpus: every backend and ONNX export style runs them)."""
    return [
        _case("varlen_empty_and_single_token_sequences", "packed sequences of length 0 (queries, keys or both) and "
              "1: an empty key range gives a zero row, nothing shifts into a neighbour", [0, 1, 0, 3, 1, 2],
              [3, 0, 0, 1, 5, 2], causal=True),
        _case("varlen_causal_bottom_right_q_ne_k", "causal bottom-right per sequence (flash-attention varlen): "
              "q_len < k_len sees the cached prefix, q_len > k_len leaves its first rows empty (0)", [2, 5, 3],
              [5, 3, 4], causal=True, align="bottom_right"),
        _case("varlen_causal_top_left", "causal top-left per sequence (xformers BlockDiagonalCausalMask): local "
              "query a sees local keys 0..a", [2, 5, 3], [5, 3, 4], causal=True, align="top_left"),
        _case("varlen_nan_does_not_cross_sequences", "a NaN query row, key and value inside one sequence stay in "
              "it: the other sequences' rows are exact (no attention across sequence boundaries)", [3, 4, 2],
              [3, 4, 3], nan=True),
        _case("varlen_masked_future_key_nan", "NaN in each sequence's last key and value under causal top-left: "
              "masked (q_len < k_len) it takes no part; visible to the last query (q_len = k_len) it makes that row "
              "alone NaN", [3, 4, 2], [6, 4, 2], future_nan=True, causal=True, align="top_left"),
        _case("varlen_sliding_window_bottom_right", "a causal sliding window per sequence (flash-attention's "
              "window_size, aligned bottom-right): local keys p - 3 .. p with p = a + len_k - len_q", [6, 2, 9],
              [9, 2, 5], causal=True, window=(3, 0)),
        _case("varlen_two_sided_window_top_left", "a two-sided window without causal, aligned top-left: local keys "
              "a - 2 .. a + 1", [7, 3], [5, 6], window=(2, 1), align="top_left"),
        _case("varlen_softcap_causal", "softcap per packed sequence (Gemma 2 with flash-attention's varlen): cap * "
              "tanh(s / cap) after the scale, before the causal mask", [4, 6], [7, 6], causal=True, softcap=0.8),
        _case("varlen_block_diagonal_gqa", "non-causal block-diagonal mask (xformers BlockDiagonalMask) with GQA "
              "(4 q heads on 2 kv heads), a value head size of its own and int64 cu_seqlens", [4, 1, 3], [2, 6, 3],
              num_kv_heads=2, v_head_dim=5, cu_dtype="int64"),
        _case("varlen_block_edges", "sequence lengths on and off 64-row kernel blocks (1, 63, 64, 65, 0, 129), "
              "causal bottom-right", [1, 63, 64, 65, 0, 129], [1, 63, 70, 65, 5, 129], causal=True, heads=2,
              head_dim=16, quick=False),
        _case("varlen_causal_float16", "packed causal attention stored in float16, computed in float32", [3, 0, 6],
              [5, 2, 6], causal=True, num_kv_heads=2, dtype="float16", quick=False),
    ]
