"""``varlen_attention`` for the eager backends, written once against the array API: each packed sequence
attends on its own slices of Q, K and V (the shared chunked attention, causal at the sequence's own offset),
so the work is ``sum_s len_q(s) * len_k(s)``, not ``total_q * total_k`` as the dense block-diagonal mask of the
default decomposition. A backend passes ``attend`` to run a sequence its own way (torch: SDPA where exact)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attngraph.array_math.attention import chunked_attention


def sequence_bounds(cu_q: Any, cu_k: Any) -> list[tuple[int, int, int, int]]:
    """(q0, q1, k0, k1) of every sequence, read on the host once."""
    cq, ck = [int(x) for x in cu_q.tolist()], [int(x) for x in cu_k.tolist()]
    return [(cq[s], cq[s + 1], ck[s], ck[s + 1]) for s in range(len(cq) - 1)]


def varlen_attention(xp, q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, *, scale: float, causal: bool,
                     bottom_right: bool, compute: Any, max_bytes: int, device: Any = None, window_left: int = -1,
                     window_right: int = -1, softcap: float = 0.0,
                     attend: Callable[..., Any | None] | None = None) -> Any:
    """(1, Hq, total_q, Dv) in ``compute``: sequence ``s`` of ``q`` against sequence ``s`` of ``k``/``v`` only; rows
    of a sequence with no keys stay 0. ``attend(q_s, k_s, v_s, mask)`` (``mask``: causal, offset, window_left,
    window_right) may return a sequence's output (None: the shared chunked attention runs it)."""
    out = xp.zeros((1, q.shape[1], q.shape[2], v.shape[3]), dtype=compute, device=device)
    for q0, q1, k0, k1 in sequence_bounds(cu_q, cu_k):
        if q1 == q0 or k1 == k0:
            continue  # no queries, or no keys: every row of the sequence is fully masked, so 0
        mask = {"causal": causal, "offset": (k1 - k0) - (q1 - q0) if bottom_right else 0,
                "window_left": window_left, "window_right": window_right}
        qs, ks, vs = q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1]
        y = attend(qs, ks, vs, mask) if attend is not None else None
        if y is None:
            y, _ = chunked_attention(xp, qs, ks, vs, {}, scale=scale, softcap=softcap, return_weights=False,
                                     compute=compute, max_bytes=max_bytes, device=device, **mask)
        out[:, :, q0:q1] = xp.astype(y, compute, copy=False)
    return out
