"""The safe softmax, written once for every eager backend: rows whose scores are all ``-inf`` give
probabilities 0 (a plain softmax gives NaN there); a NaN anywhere in a row keeps the row NaN.
With sinks, each head's sink logit joins the denominator and carries no value (GPT-OSS,
StreamingLLM), so a fully masked row gives 0 there too: the sink takes all the mass."""

from __future__ import annotations

from typing import Any


def safe_softmax(xp, x: Any, sinks: Any = None) -> Any:
    """Softmax over the last axis with fully masked rows at 0; ``sinks``: (H,) for x (B, H, rows, keys)."""
    if x.shape[-1] == 0 and sinks is None:
        return x
    peak = xp.max(x, axis=-1, keepdims=True) if x.shape[-1] else xp.full(x.shape[:-1] + (1,), -float("inf"),
                                                                          dtype=x.dtype)
    sink = None
    if sinks is not None:
        sink = xp.reshape(xp.astype(sinks, x.dtype), (1, -1, 1, 1))
        peak = xp.where(sink > peak, sink, peak)  # NaN in the scores still wins: NaN > x is False
    dead = peak == -float("inf")
    shift = xp.where(dead, xp.zeros_like(peak), peak)
    e = xp.exp(x - shift)
    total = xp.sum(e, axis=-1, keepdims=True)
    if sink is not None:
        total = total + xp.exp(sink - shift)
    return e / xp.where(dead, xp.ones_like(total), total)
