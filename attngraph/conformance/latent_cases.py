"""Conformance cases of multi-head latent attention (MLA, DeepSeek-V2/V3): the naive and the absorbed form on the
same weights and inputs, the query LoRA on and off, the decoupled rotary part at far positions, and decode steps
into the static latent cache (ragged rows, NaN past each row's length: never read)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attngraph.conformance.case import Case
from attngraph.frontends.latent import latent_attention
from attngraph.ir import Graph
from attngraph.lowering.weights import Weights
from attngraph.passes.absorb_mla import absorb_mla
from attngraph.testing.random_inputs import random_inputs

# hidden 32, 4 heads, latent rank 16, nope 8 + rope 4 (q/k head 12), value head 6: every width distinct
MLA = {"hidden_size": 32, "num_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
       "v_head_dim": 6}
SIZES = {"batch": 2, "q_len": 6}


def mla_graph(absorbed: bool, **knobs) -> Callable[[], Graph]:
    """A maker of the small MLA graph, naive or absorbed."""
    def make() -> Graph:
        g = latent_attention(**{**MLA, **knobs})
        return absorb_mla(g) if absorbed else g
    return make


def _far_positions(inputs: dict) -> None:
    """Positions far from 0 and different per row: a rotation applied to the wrong dims shows at once."""
    inputs["position_ids"][:] = np.array([[3, 11, 19, 27, 35, 43], [50, 41, 32, 23, 14, 5]])[:, :inputs["x"].shape[1]]


def _latent_cache(lengths: list[int]) -> Callable[[dict], None]:
    """Rows hold ``lengths`` cached tokens; every slot past a row's length holds NaN (never read)."""
    def edit(inputs):
        inputs["cache_lengths"][:] = lengths
        for b, n in enumerate(lengths):
            inputs["past_latent"][b, :, n:] = np.nan
            inputs["past_rope_key"][b, :, n:] = np.nan
    return edit


def _case(name: str, pins: str, absorbed: bool, sizes: dict | None = None, edit=None, **knobs) -> Case:
    make = mla_graph(absorbed, **knobs)

    def build():
        g = make()
        inputs = random_inputs(g, {**SIZES, **(sizes or {})}, seed=0)
        if edit:
            edit(inputs)
        # weights x3 so softmax rows are far from uniform (a wrong scale or rotation shows)
        return g, {k: v * 3 for k, v in Weights.random(g, seed=0).items()}, inputs
    return Case(name, pins, build, "float32", True)


def latent_cases() -> list[Case]:
    """The MLA cases; ``mla_naive`` and ``mla_absorbed`` share weights and inputs (the same seed and params)."""
    static = {"kv_cache": "static", "max_len": 16}
    return [
        _case("mla_naive", "MLA, naive form (per-head keys and values expanded from the latent), query LoRA",
              False, q_lora_rank=12),
        _case("mla_absorbed", "MLA, absorbed form (W_UK folded into the query, W_UV after the weighted sum): the "
              "same weights and inputs as mla_naive", True, q_lora_rank=12),
        _case("mla_q_lora_none", "MLA without a query LoRA (q_lora_rank=None: one q projection), absorbed", True),
        _case("mla_rope_decoupled", "MLA rotary on the decoupled rope dims only, at far explicit positions "
              "(interleaved pairs, DeepSeek)", True, edit=_far_positions, position_ids=True, q_lora_rank=12),
        _case("mla_decode_static_cache", "MLA one-token decode into the static latent cache, rows at different "
              "lengths; NaN past each row's length never read; rope at position len_b", True, {"q_len": 1},
              _latent_cache([3, 11]), **static),
        _case("mla_chunk_static_cache_naive", "MLA naive form: a 3-token chunk into the static latent cache "
              "(causal bottom-right per row)", False, {"q_len": 3}, _latent_cache([0, 9]), **static),
    ]
