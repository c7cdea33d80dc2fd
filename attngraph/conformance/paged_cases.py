"""Conformance cases of the paged KV cache (``paged_cache_update`` + ``paged_attention``), each named after its trap:
a block table out of order, a prefix block shared by two rows (read, never written), a sequence ending mid-block,
block size 1, NaN / inf garbage in every unused block and slot and junk in the unused table columns (none may
leak), a chunk of several new tokens crossing a block edge (causal bottom-right), the HND layout with GQA, a first
token into an empty cache, and a whole layer with rotary at the cached positions.

Every case fills the slots no row reads with ``garbage`` (NaN by default): the written pools are compared too, so a
write into the wrong slot, or a lost one, fails as surely as a wrong output row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attngraph.conformance.case import Case
from attngraph.frontends.paged import paged_attention, paged_self_attention
from attngraph.lowering.weights import Weights
from attngraph.testing.random_inputs import random_inputs


def _garbage(inputs: dict, tables: Sequence[Sequence[int]], lengths: Sequence[int], seq: int, block_size: int,
             layout: str, garbage: float) -> None:
    """Every slot outside the rows' cached tokens (and the slots this call writes) holds ``garbage``."""
    keep = set()
    for row, n in zip(tables, lengths):
        for p in range(n):
            keep.add((row[p // block_size], p % block_size))
    for name in ("key_cache", "value_cache"):
        pool = inputs[name]
        for blk in range(pool.shape[0]):
            for off in range(block_size):
                if (blk, off) not in keep:
                    if layout == "NHD":
                        pool[blk, off] = garbage
                    else:
                        pool[blk, :, off] = garbage


def _case(name: str, pins: str, tables: Sequence[Sequence[int]], lengths: Sequence[int], *, seq: int = 1,
          block_size: int = 4, num_blocks: int = 8, layout: str = "NHD", garbage: float = np.nan, layer: bool = False,
          heads: int = 4, kv_heads: int = 2, head_dim: int = 8, quick: bool = True, dtype: str = "float32",
          **knobs) -> Case:
    def build():
        common = {"block_size": block_size, "num_blocks": num_blocks, "max_blocks": len(tables[0]),
                  "num_kv_heads": kv_heads, "layout": layout, "dtype": dtype}
        if layer:
            g = paged_self_attention(heads * head_dim, heads, **common, **knobs)
        else:
            g = paged_attention(heads, head_dim, **common, **knobs)
        inputs = random_inputs(g, {"batch": len(tables), "q_len": seq}, seed=0)
        inputs["block_table"] = np.asarray(tables, np.int32)
        inputs["cache_lengths"] = np.asarray(lengths, np.int64)
        _garbage(inputs, tables, lengths, seq, block_size, layout, garbage)
        return g, _weights(g) if layer else {}, inputs
    return Case(name, pins, build, dtype, quick)


def _weights(g) -> dict:
    return dict(Weights.random(g, seed=0).items())


def paged_cases() -> list[Case]:
    """The paged-cache cases (registered in the corpus: every backend and ONNX export style runs them)."""
    junk = 10**6  # an unused table column holding a block id far out of range: never read
    return [
        _case("paged_block_table_out_of_order", "a row's blocks are read in table order, not id order: tables "
              "[6, 1, 4] and [3, 7, 0]; one new token each, rows at 9 and 6 cached tokens", [[6, 1, 4], [3, 7, 0]],
              [9, 6]),
        _case("paged_shared_prefix_block", "two rows share their first block (a common prefix): both read it, "
              "neither writes it; each appends into its own tail block", [[5, 2, -1], [5, 0, 3]], [6, 9]),
        _case("paged_sequence_ends_mid_block", "lengths ending inside a block (5 and 2 of block size 4): the "
              "block's slots past the length hold NaN and are never read", [[2, 6, -1], [4, -1, -1]], [5, 2]),
        _case("paged_block_size_1", "block size 1: every token its own block, the table scrambled",
              [[7, 3, 0, 5, 1, -1], [6, 2, 4, -1, -1, -1]], [4, 2], block_size=1, num_blocks=8),
        _case("paged_unused_blocks_nan_inf_garbage", "every unused block and slot holds +inf (a NaN case is the "
              "default) and unused table columns hold -1 and an id far out of range: nothing leaks",
              [[1, -1, junk], [6, 3, junk]], [2, 5], garbage=np.inf),
        _case("paged_chunk_crosses_block_edge_causal", "a 3-token chunk written across a block edge, causal "
              "bottom-right per row (query i sees keys j <= seq_len - 3 + i)", [[0, 4, 2], [7, 1, -1]], [2, 3],
              seq=3),
        _case("paged_hnd_layout_gqa_shared", "the HND pool layout (num_blocks, kv_heads, block_size, head_dim), GQA "
              "(8 q heads on 2 kv heads), a shared prefix block and a value head size of its own",
              [[3, 6, -1], [3, 1, 5]], [7, 8], layout="HND", heads=8, v_head_dim=5),
        _case("paged_first_token_empty_row", "a row with no cached token takes its first into a fresh block, beside "
              "a longer row: it attends to itself only", [[4, -1, -1], [0, 2, 6]], [0, 10]),
        _case("paged_softcap_non_causal", "softcap on a paged read, without the causal mask (a 2-token chunk sees "
              "all of its row's keys)", [[2, 5, -1], [1, -1, -1]], [5, 1], seq=2, softcap=0.7, causal=False),
        _case("paged_layer_rotary_at_cached_positions", "a whole decode layer on a paged pool: rotary at position "
              "cache_lengths[b] + i, keys stored rotated", [[1, 6, -1], [2, 0, 7]], [4, 9], seq=2, layer=True,
              rotary="half"),
        _case("paged_float16_pool", "a float16 pool, computed in float32", [[6, 1, 4], [3, 7, -1]], [9, 6],
              dtype="float16", quick=False),
    ]
