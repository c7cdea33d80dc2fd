"""The normative semantics of attngraph: what attention means, the same on every backend.

This table is the one source. The README's table "What attention means here" is the same table
(a test compares them), every backend is held to it by the conformance corpus (each row names
the cases that pin it; a test checks they exist), and exported ONNX models carry its version
(``SEMANTICS_ID``). The core follows the ONNX ``Attention`` operator (opsets 23-25) as corrected by
its errata; conventions of other systems are converted at the edge, by name (``attngraph.frontends``).
"""

from __future__ import annotations

from dataclasses import dataclass

SEMANTICS_ID = "attngraph/1"


@dataclass(frozen=True)
class Rule:
    """One row: the question a user asks, attngraph's answer, and the conformance cases that pin it."""

    question: str
    answer: str
    cases: tuple[str, ...]


SEMANTICS: tuple[Rule, ...] = (
    Rule("bool mask: what does `True` mean?",
         "**True = this key takes part.** False masks it out. (`nn.MultiheadAttention` uses the opposite; "
         "convert at the edge.)", ("bool_mask_polarity",)),
    Rule("float mask", "added to the scaled scores as a bias; `-inf` masks a key out",
         ("additive_mask", "large_negative_fill_is_a_number")),
    Rule("integer mask", "refused with an error: ONNX would *add* 0/1 integers, which masks nothing", ()),
    Rule("mask shapes", "NumPy broadcasting, right-aligned to `(batch, q_heads, q_len, kv_total)`: a rank-3 "
         "mask is `(heads, q, kv)`", ("mask_rank_kv", "mask_rank_1_q_kv", "mask_rank_b_h_q_kv")),
    Rule("causal when `q_len != kv_len`", "query `i` sees key `j` iff `j <= i + offset`; `offset` = cached "
         "length with a KV cache, else 0 (top-left, as torch SDPA and ONNX)",
         ("causal_q_lt_kv", "causal_q_gt_kv", "decode_one_token_kv_cache", "decode_one_token_no_cache")),
    Rule("sliding window", "with `p = i + offset`, keys `p - left ... p + right` are kept; `-1` = unbounded side",
         ("sliding_window", "causal_window")),
    Rule("key lengths", "key `j` of batch row `b` is kept iff `j < key_lengths[b]`", ("key_padding_lengths",)),
    Rule("a query row with every key masked", "its output row is exactly **0**, and its attention weights are 0 "
         "(not NaN, not the mean of V)", ("fully_masked_row_bool", "fully_masked_row_neg_inf_bias")),
    Rule("scale", "`1/sqrt(head_dim)` of Q/K by default; `scale=` overrides", ("scale_override", "value_head_dim")),
    Rule("softcap", "`softcap * tanh(scores / softcap)`, after scaling and before the mask",
         ("softcap", "softcap_next_to_neg_inf")),
    Rule("GQA / MQA", "q heads are a multiple of kv heads; q head `h` reads kv head `h // (q_heads / kv_heads)` "
         "(repeat-interleave)", ("gqa", "mqa")),
    Rule("head split", "`(B, S, H*D)` is reshaped to `(B, S, H, D)` and transposed to `(B, H, S, D)`",
         ("self_attention_projections",)),
    Rule("KV cache", "`present = concat(past, new)` on the sequence axis; past goes in and present comes out "
         "together", ("kv_cache_prefill", "decode_one_token_kv_cache")),
    Rule("NaN / Inf in inputs", "propagate; never silently replaced", ("nan_in_one_input",)),
    Rule("value head size", "may differ from the Q/K head size", ("value_head_dim",)),
    Rule("clamp (MPT's `clip_qkv`)", "`min(max(x, -c), c)` on the projected Q, K and V, before the head split",
         ("clamp_qkv",)),
)


def markdown_table() -> str:
    """The table as the README shows it."""
    rows = ["| question | answer in attngraph |", "|---|---|"]
    rows += [f"| {r.question} | {r.answer} |" for r in SEMANTICS]
    return "\n".join(rows)
