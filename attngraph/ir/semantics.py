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
    Rule("queries aligned to key lengths", "with `align_to_lengths` (and in a static cache), query `i` of batch "
         "row `b` sits at key position `key_lengths[b] - q_len + i` for the causal mask, the window and the "
         "position biases (bottom-right per row: a right-padded decode, or the keys a transformers cache hands an "
         "attention function)", ("align_to_lengths",)),
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
    Rule("static KV cache", "a fixed `(B, kv_heads, max_len, D)` buffer and per-row `cache_lengths` `len_b`: the "
         "new keys are written at `len_b ... len_b + q_len - 1`, and query `i` sees keys `j <= len_b + i` "
         "(bottom-right per row, the opset-24 errata); slots past `len_b + q_len` are never read, so garbage or NaN "
         "there cannot leak; the output cache is the input buffer, updated in place (`cache_inplace=False`: a new "
         "array)", ("static_cache_ragged_decode", "static_cache_chunked_prefill", "static_cache_full")),
    Rule("rolling KV cache", "a static cache of `max_len` = window slots written circularly (slot `p % max_len` for "
         "position `p`): a causal sliding-window layer sees its last `max_len` keys", ("rolling_cache_decode_wrapped",
                                                                                      "rolling_cache_prefill")),
    Rule("NaN / Inf in inputs", "propagate; never silently replaced", ("nan_in_one_input",)),
    Rule("masked keys", "a masked key takes no part in anything: NaN or inf in its key or value never reaches the "
         "output (a key of attention weight exactly 0 contributes nothing)",
         ("masked_key_nan_in_value_causal_future", "masked_key_inf_beyond_key_lengths", "masked_key_nan_by_bool_mask",
          "fully_masked_row_nan_in_value")),
    Rule("empty inputs", "a batch or query length of 0 gives empty outputs; a key length of 0 leaves every row "
         "fully masked, so each output row is 0", ("empty_kv_len", "empty_q_len", "empty_batch")),
    Rule("value head size", "may differ from the Q/K head size", ("value_head_dim",)),
    Rule("rotary embedding: which dims pair?", "named, never inferred: `half` (rotate_half: dim `k` pairs with `k + "
         "rd/2`; Llama, NeoX, Qwen, Gemma, Phi) or `interleaved` (dims `2k`, `2k+1`; GPT-J, ONNX `interleaved=1`)",
         ("rotary_half", "rotary_interleaved")),
    Rule("rotary embedding: which dims rotate?", "the first `rotary_dim` dims of each head; the rest pass through "
         "(NeoX 25%, Phi-3 50%)", ("rotary_partial_dim",)),
    Rule("rotary embedding: positions", "query / new key `i` sits at `offset + i` (offset = cached length), unless a "
         "`position_ids` input gives the positions; cached keys are stored already rotated",
         ("rotary_decode_at_cache_offset", "rotary_position_ids_left_padding")),
    Rule("rotary embedding: frequencies", "angle `position * theta^(-2k/rotary_dim)`, with linear, llama3 or yarn "
         "scaling computed in the graph, or cos/sin caches given as inputs and read at the position (any scheme)",
         ("rotary_llama3_scaling", "rotary_cos_sin_cache")),
    Rule("QK-norm", "RMSNorm over each head's dims of Q and K, `x / sqrt(mean(x^2) + eps) * w` (or `* (1 + w)`, "
         "Gemma 3), computed in float32, before the rotary embedding", ("qk_norm_float16", "qk_norm_plus_one")),
    Rule("attention sinks", "one logit per q head joins the softmax denominator and has no value; a row whose keys "
         "are all masked gives 0", ("sinks_fully_masked_row", "sinks_with_softcap")),
    Rule("ALiBi", "score += `slope_h * (j - i_pos)`; slopes by the standard rule (every other slope of the next "
         "power of two for other head counts); added after the scale, or before it (Falcon: then times the scale)",
         ("alibi_12_heads", "alibi_causal_window", "alibi_before_scale")),
    Rule("relative position bias (T5)", "score += `table[bucket(j - i_pos), h]` with T5's buckets (bidirectional "
         "or causal, `num_buckets`, `max_distance`), after the scale", ("t5_buckets_at_edges",
                                                                        "t5_causal_beyond_max_distance")),
    Rule("clamp (MPT's `clip_qkv`)", "`min(max(x, -c), c)` on the projected Q, K and V, before the head split",
         ("clamp_qkv",)),
    Rule("multi-head latent attention (MLA, DeepSeek-V2/V3)", "q/k head = `qk_nope_head_dim + qk_rope_head_dim`, "
         "scale `1/sqrt(qk_nope_head_dim + qk_rope_head_dim)` by default; the rotary embedding turns only the decoupled "
         "`qk_rope_head_dim` dims of each query head and of the one rope key all heads share (`interleaved` pairs, as "
         "DeepSeek; transformers' V3 writes the rotated pairs de-interleaved, which changes no score); the latent is "
         "RMS-normed before it is cached; the cache holds the latent `(B, 1, M, kv_lora_rank)` and the rotated rope key "
         "`(B, 1, M, qk_rope_head_dim)`, nothing else", ("mla_naive", "mla_q_lora_none", "mla_rope_decoupled",
                                                         "mla_decode_static_cache", "mla_chunk_static_cache_naive")),
    Rule("MLA absorbed form (`absorb_mla`)", "the same function as the naive form: `W_UK` (from `w_kv_b`) folded into "
         "the query, `latent_attention` with the latent as key and value, `W_UV` after the weighted sum",
         ("mla_naive", "mla_absorbed")),
    Rule("packed variable-length batches (`varlen_attention`)", "sequences concatenated on the sequence axis of "
         "`(1, H, total, D)`, cut by `cu_seqlens_q` / `cu_seqlens_k` (`0 = cu[0] <= ... <= cu[N] = total`, the same "
         "`N` for both); a query sees only the keys of its own sequence; `causal` compares local positions, query "
         "`a` sees key `c` iff `c <= a + offset_s`, `offset_s = len_k(s) - len_q(s)` with `align=\"bottom_right\"` "
         "(flash-attention's varlen, xformers `...FromBottomRight`) or `0` with `align=\"top_left\"` (xformers "
         "`BlockDiagonalCausalMask`); a window `(left, right)` keeps local keys `a + offset_s - left ... a + offset_s "
         "+ right` (flash-attention's `window_size`); `softcap` caps the scaled scores before the masks; a query "
         "with no visible key gives 0; a bad `cu_seqlens` is an `InputError`",
         ("varlen_empty_and_single_token_sequences", "varlen_causal_bottom_right_q_ne_k", "varlen_causal_top_left",
          "varlen_nan_does_not_cross_sequences", "varlen_masked_future_key_nan", "varlen_block_diagonal_gqa",
          "varlen_sliding_window_bottom_right", "varlen_two_sided_window_top_left", "varlen_softcap_causal")),
    Rule("quantized KV cache (`kv_cache_dtype`)", "`int8` or `float8_e4m3fn` storage of a static/rolling cache, written "
         "at write time as `q = round_half_even(clamp(x / s, -QMAX, QMAX))` computed in float32 (QMAX 127 for int8, "
         "448 for float8, whose grid rounds to nearest even), read as `float32(q) * s`; `kv_scale=\"per_token_head\"`: "
         "`s = amax(|x|) / QMAX` over each written token's head dims (1 for an all-zero token), kept in float32 "
         "`past/present_key_scale` buffers; `\"per_head\"`: calibrated float32 `k_scale`/`v_scale` parameters, values "
         "beyond them saturate; int8 stores NaN as 0 (a per-token scale of a NaN token is NaN); the output is within "
         "a bound derived from the step of the unquantized attention (`conformance.quant_budgets`)",
         ("quant_int8_outlier_per_token", "quant_int8_outlier_per_head", "quant_int8_round_half_even",
          "quant_int8_chunk", "quant_float8_outlier_per_token", "quant_float8_per_head",
          "quant_float8_round_half_even")),
    Rule("paged KV cache (`paged_cache_update`, `paged_attention`)", "a pool of fixed-size blocks, named layout "
         "`NHD` `(num_blocks, block_size, kv_heads, head_dim)` (vLLM) or `HND` `(num_blocks, kv_heads, block_size, "
         "head_dim)`; row `b`'s position `p` is slot `p % block_size` of block `block_table[b, p // block_size]`; the "
         "write puts new token `s` at position `cache_lengths[b] + s` (in place), the read attends over positions "
         "`0 .. seq_lens[b] - 1` in table order, causal bottom-right (query `i` sees `j <= seq_lens[b] - S + i`); "
         "slots past the length and table columns past the ones needed are never read (NaN, garbage, `-1`); a block "
         "id out of range, a table too short, a slot collision or a write into a block another row reads is an "
         "`InputError`",
         ("paged_block_table_out_of_order", "paged_shared_prefix_block", "paged_sequence_ends_mid_block",
          "paged_block_size_1", "paged_unused_blocks_nan_inf_garbage", "paged_chunk_crosses_block_edge_causal",
          "paged_hnd_layout_gqa_shared", "paged_first_token_empty_row", "paged_softcap_non_causal",
          "paged_layer_rotary_at_cached_positions")),
)


def markdown_table() -> str:
    """The table as the README shows it."""
    rows = ["| question | answer in attngraph |", "|---|---|"]
    rows += [f"| {r.question} | {r.answer} |" for r in SEMANTICS]
    return "\n".join(rows)
