"""The contenders of ``python -m bench.gpu``'s prefill and decode benches, on any torch device: attngraph's torch
backend, torch SDPA pinned to one kernel (flash or efficient, with ``torch.nn.attention.sdpa_kernel``), and the
copy floor. As in ``bench.decode``, each factory returns ``(step, read)``: a zero-argument step, which waits for
the device so that ``round_robin``'s wall-clock samples are right on CUDA, and a function reading its output.

A kernel that refuses the shape or dtype raises ``Unavailable`` with torch's reason (flash takes half types
only on CUDA; the efficient kernel has no CPU build); the bench reports it and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


class Unavailable(Exception):
    """This contender cannot run here (the message says why)."""


@dataclass
class Problem:
    """One bench shape's tensors on the device: q (B, Hq, S, D); k, v (B, Hkv, S, D), the new entries for a decode
    step; and for decode the caches (B, Hkv, max_len, D) holding ``length - 1`` tokens (zeros after them)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cache_k: torch.Tensor | None = None
    cache_v: torch.Tensor | None = None
    length: int = 0

    @property
    def device(self) -> torch.device:
        return self.q.device


def prefill_problem(batch, heads, kv_heads, head_dim, seq, dtype, device, seed=0) -> Problem:
    gen = torch.Generator(device).manual_seed(seed)
    q, k, v = (torch.randn((batch, h, seq, head_dim), generator=gen, device=device, dtype=dtype)
               for h in (heads, kv_heads, kv_heads))
    return Problem(q, k, v)


def decode_problem(batch, heads, kv_heads, head_dim, max_len, length, dtype, device, seed=0) -> Problem:
    """One new token per row against caches of ``max_len`` slots that hold ``length - 1`` tokens."""
    step = prefill_problem(batch, heads, kv_heads, head_dim, 1, dtype, device, seed)
    gen = torch.Generator(device).manual_seed(seed + 1)
    caches = []
    for _ in range(2):
        cache = torch.zeros((batch, kv_heads, max_len, head_dim), device=device, dtype=dtype)
        cache[:, :, :length - 1] = torch.randn((batch, kv_heads, length - 1, head_dim), generator=gen,
                                               device=device, dtype=dtype)
        caches.append(cache)
    return Problem(step.q, step.k, step.v, *caches, length=length)


def waiting(fn, device: torch.device):
    """``fn`` followed by a wait for the device's queued work."""
    if device.type != "cuda":
        return fn

    def step():
        fn()
        torch.cuda.synchronize(device)
    step.note = getattr(fn, "note", "")
    return step


def _compiled(p: Problem, **cache):
    """Causal core attention of ``p``'s heads and dtype on attngraph's torch backend, tensors in and out."""
    import attngraph as ag

    graph = ag.core_attention(p.q.shape[1], p.q.shape[3], num_kv_heads=p.k.shape[1], causal=True,
                              dtype=str(p.q.dtype).removeprefix("torch."), **cache)
    return ag.compile(graph, "torch", device=str(p.device), outputs="torch")


def attngraph_prefill(p: Problem):
    ex = _compiled(p)
    box = {}

    def run():
        box["y"] = ex(q=p.q, k=p.k, v=p.v)["y"]
    return waiting(run, p.device), lambda: box["y"]


def attngraph_decode(p: Problem):
    """The static-cache step graph, writing the new entries into the shared caches in place."""
    ex = _compiled(p, kv_cache="static", max_len=p.cache_k.shape[2])
    feed = {"q": p.q, "k": p.k, "v": p.v, "past_key": p.cache_k, "past_value": p.cache_v,
            "cache_lengths": np.full(p.q.shape[0], p.length - 1, np.int64)}
    box = {}

    def run():
        box["y"] = ex(feed)["y"]
    return waiting(run, p.device), lambda: box["y"]


def _sdpa(kernel: str, q, k, v, causal: bool):
    """SDPA pinned to ``kernel``; GQA through ``enable_gqa``, or, where the kernel refuses that, with the kv
    heads expanded once here (outside the timed step; the label says so)."""
    def call(kk, vv, gqa):
        with sdpa_kernel(KERNELS[kernel]):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)
    try:
        call(k, v, True)
        return (lambda kk, vv: call(kk, vv, True)), ""
    except RuntimeError as first:
        group = q.shape[1] // k.shape[1]
        try:
            call(k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), False)
        except RuntimeError:
            raise Unavailable(str(first).splitlines()[0][:160]) from None
        return (lambda kk, vv: call(kk.repeat_interleave(group, 1), vv.repeat_interleave(group, 1), False)), \
            " (kv heads repeated: no enable_gqa)"


def sdpa_prefill(kernel: str, p: Problem):
    attend, note = _sdpa(kernel, p.q, p.k, p.v, causal=True)
    box = {}

    def run():
        with torch.inference_mode():
            box["y"] = attend(p.k, p.v)
    run.note = note
    return waiting(run, p.device), lambda: box["y"]


def sdpa_decode(kernel: str, p: Problem):
    """``index_copy_`` of the new entries into the shared caches, then SDPA over each cache's valid prefix."""
    slot = torch.tensor([p.length - 1], device=p.device)
    keys, values = p.cache_k[:, :, :p.length], p.cache_v[:, :, :p.length]
    attend, note = _sdpa(kernel, p.q, keys, values, causal=False)
    box = {}

    def run():
        with torch.inference_mode():
            p.cache_k.index_copy_(2, slot, p.k)
            p.cache_v.index_copy_(2, slot, p.v)
            box["y"] = attend(keys, values)
    run.note = note
    return waiting(run, p.device), lambda: box["y"]


def copy_floor(p: Problem):
    """A device-to-device copy of the valid cache (K and V): the memory floor of a step that reads it once."""
    src = [c[:, :, :p.length] for c in (p.cache_k, p.cache_v)]
    dst = [torch.empty_like(s) for s in src]

    def run():
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
    return waiting(run, p.device), None


def error_vs_float64(out: Any, p: Problem, causal: bool, rows: int = 256) -> float:
    """max |out - ref| / max |ref| over the last ``rows`` queries of batch row 0, q head 0 (which reads kv head 0),
    against float64 attention on the CPU: a slice keeps the reference small at any sequence length."""
    q = p.q[0, 0, -rows:].double().cpu()
    keys = (p.cache_k[0, 0, :p.length] if p.cache_k is not None else p.k[0, 0]).double().cpu()
    values = (p.cache_v[0, 0, :p.length] if p.cache_v is not None else p.v[0, 0]).double().cpu()
    s = q @ keys.T / q.shape[-1] ** 0.5
    if causal:  # query i of these sits at position (keys - rows) + i
        first = keys.shape[0] - q.shape[0]
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(first + 1), float("-inf"))
    ref = torch.softmax(s, dim=-1) @ values
    got = out[0, 0, -rows:].double().cpu()
    return float((got - ref).abs().max() / ref.abs().max())
