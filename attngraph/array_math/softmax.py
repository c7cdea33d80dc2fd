"""The safe softmax, written once for every eager backend: rows whose scores are all ``-inf`` give
probabilities 0 (a plain softmax gives NaN there); a NaN anywhere in a row keeps the row NaN."""

from __future__ import annotations

from typing import Any


def safe_softmax(xp, x: Any) -> Any:
    """Softmax over the last axis with fully masked rows at 0."""
    peak = xp.max(x, axis=-1, keepdims=True)
    dead = peak == -float("inf")
    zero = xp.zeros_like(peak)
    e = xp.exp(x - xp.where(dead, zero, peak))
    total = xp.sum(e, axis=-1, keepdims=True)
    return e / xp.where(dead, xp.ones_like(total), total)
