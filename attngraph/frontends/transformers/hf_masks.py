"""The compact mask attngraph registers with transformers' ``AttentionMaskInterface``: no T x T tensor.

transformers builds one mask per forward (per layer type) through the mask interface of the model's
``attn_implementation``, and hands it to every attention layer. Under attngraph's names that mask is
``(batch, 1, 1, keys)`` bool key padding (or ``(batch, 1, 1, 1)`` when nothing is padded) carrying a ``MaskInfo``:
which pattern transformers asked for (causal, sliding window, bidirectional), how many keys of the buffer the
attention function receives hold tokens, and where the queries sit. The graph then builds the causal and
window masks itself.

Where the queries sit: every transformers cache hands the attention function its keys in position order with the
newest query's key last among the valid ones (``DynamicLayer``: past + new; ``DynamicSlidingWindowLayer``: its
last ``W - 1`` tokens + new; ``StaticLayer``: the whole ``max_cache_len`` buffer, tokens ``[0, valid)``;
``StaticSlidingWindowLayer``: its ``W`` slots, rolled into order). So query ``i`` of ``q`` sits at buffer index
``valid - q + i`` (bottom-right per row, attngraph's ``align_to_lengths``), with ``valid = q_offset + q_length -
kv_offset``, and keys at or past ``valid`` are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attngraph.errors import InputError, UnsupportedConfig

ATTRIBUTE = "_attngraph_mask"


@dataclass(frozen=True)
class MaskInfo:
    """What one transformers mask call asked for, in the terms of the keys the attention function receives.

    ``pattern``: "causal", "sliding" (causal within ``window`` = transformers' ``sliding_window`` W: query ``p``
    keeps keys ``p - W < j <= p``) or "bidirectional"; None when the model passed no mask at all (then the layer's
    own spec decides). ``valid``: keys ``[0, valid)`` hold tokens. ``padding``: ``(batch, kv_length)`` bool, True =
    a real token, or None when no valid key is padding."""

    pattern: str | None
    window: int | None
    q_length: int
    kv_length: int
    valid: int
    padding: np.ndarray | None = None


def attngraph_mask(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: Any = 0,
                   mask_function: Any = None, attention_mask: Any = None, local_size: int | None = None,
                   use_vmap: bool = False, **_: Any) -> Any:
    """The mask function registered under attngraph's names (``AttentionMaskInterface``): the 2-D padding of the
    keys the layer will see, and a ``MaskInfo``, instead of a dense (batch, 1, q, keys) mask."""
    import torch

    pattern, window = mask_pattern(mask_function, local_size, use_vmap)
    kv_offset = int(kv_offset)
    valid = int(q_offset) + int(q_length) - kv_offset  # a StaticLayer's offset is a tensor the cache updates later
    if not 0 < valid <= kv_length:
        raise InputError(f"the cache gives {kv_length} keys (offset {kv_offset}) for {q_length} queries at offset "
                         f"{int(q_offset)}: {valid} would hold tokens; a static cache must be larger than the "
                         "prompt plus the new tokens (max_cache_len)")
    padding = None
    carrier = torch.ones((batch_size, 1, 1, 1), dtype=torch.bool)
    if attention_mask is not None:
        keys = _keys_padding(attention_mask, kv_length, kv_offset)
        if not bool(keys[:, :valid].all()):
            carrier = keys.reshape(batch_size, 1, 1, kv_length).contiguous()
            padding = carrier.reshape(batch_size, kv_length).numpy()
    setattr(carrier, ATTRIBUTE, MaskInfo(pattern, window, int(q_length), int(kv_length), valid, padding))
    return carrier


def _keys_padding(attention_mask: Any, kv_length: int, kv_offset: int) -> Any:
    """The 2-D mask's columns of the keys the layer sees, ``[kv_offset, kv_offset + kv_length)``; columns past the
    mask (a static cache's empty tail) count as padding, as transformers pads them."""
    import torch

    mask = attention_mask.to(device="cpu", dtype=torch.bool)
    short = kv_offset + kv_length - mask.shape[-1]
    if short > 0:
        mask = torch.nn.functional.pad(mask, (0, short))
    return mask[:, kv_offset:kv_offset + kv_length]


def mask_pattern(mask_function: Any, local_size: int | None, use_vmap: bool) -> tuple[str, int | None]:
    """("causal" | "sliding" | "bidirectional", window) from transformers' mask function; anything else (image
    token overlays, packed sequences, chunked or block attention) is refused by name."""
    from transformers import masking_utils as mu

    if not use_vmap and local_size is None and mask_function is mu.causal_mask_function:
        return "causal", None
    if not use_vmap and local_size is None and mask_function is mu.bidirectional_mask_function:
        return "bidirectional", None
    if not use_vmap and local_size is not None and _is_sliding_causal(mask_function, int(local_size)):
        return "sliding", int(local_size)
    name = getattr(mask_function, "__qualname__", type(mask_function).__name__)
    raise UnsupportedConfig(
        f"transformers asked the attngraph attention implementation for a mask it cannot express: {name} "
        f"(sliding window {local_size}, custom mask function {use_vmap}); attngraph builds causal, sliding-window and "
        "bidirectional masks with key padding. Packed sequences, image-token overlays and chunked or block "
        "attention are refused: run this model with attn_implementation='sdpa'")


def _is_sliding_causal(fn: Any, window: int) -> bool:
    """``sliding_window_causal_mask_function(window)``: ``and_masks(sliding_window_overlay(window), causal)``."""
    from transformers import masking_utils as mu

    parts = _closure(fn).get("mask_functions")
    if not isinstance(parts, tuple) or len(parts) != 2 or parts[1] is not mu.causal_mask_function:
        return False
    overlay = parts[0]
    return getattr(overlay, "__qualname__", "").startswith("sliding_window_overlay.") and \
        _closure(overlay).get("sliding_window") == window


def _closure(fn: Any) -> dict[str, Any]:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    return dict(zip(code.co_freevars, (c.cell_contents for c in cells), strict=True)) if code else {}


def mask_info(attention_mask: Any, q_length: int, kv_length: int) -> MaskInfo:
    """The ``MaskInfo`` an attention call received; with no mask at all, every key is a token (then the queries
    must be as many as the keys: a shorter query block needs to know where it sits)."""
    if attention_mask is None:
        if q_length != kv_length:
            raise UnsupportedConfig(
                f"the attngraph attention implementation got {q_length} queries against {kv_length} keys and no "
                "mask, so where the queries sit is unknown; the model must build its masks through transformers' "
                "mask interface (create_causal_mask), which attngraph registers")
        return MaskInfo(None, None, q_length, kv_length, kv_length)
    info = getattr(attention_mask, ATTRIBUTE, None)
    if info is None:
        raise UnsupportedConfig(
            f"the attngraph attention implementation got a dense mask of shape {tuple(attention_mask.shape)}, not "
            "the compact one attngraph's mask interface makes; pass the model its 2-D padding mask (batch, tokens) "
            "instead of a prepared 4-D mask")
    if (info.q_length, info.kv_length) != (q_length, kv_length):
        raise InputError(f"the mask was made for {info.q_length} queries and {info.kv_length} keys but the layer "
                         f"has {q_length} and {kv_length}: the model's cache layers disagree with the mask's")
    return info
