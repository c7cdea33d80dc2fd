"""``python -m bench.decode``: one decode step (one new token per row against a long cache), every
attngraph backend beside the peers, round-robin in one process.

Core attention, 32 q heads, 8 kv heads, head dim 128, fp32 (a Llama-3-8B layer's attention). The
cache holds ``cache - 1`` tokens and the step writes the last slot, so every contender reads the
whole valid cache once. attngraph runs its static-cache graph (``kv_cache="static"``): numpy, numba
and torch write the caller's buffers in place; the onnx backend runs its exported TensorScatter +
Attention-24 model with the cache bound as input and output (in place, no copy). Peers: see
``bench/decode_peers.py``.

The floor is the time to copy the valid cache (K and V) once, measured in the same rounds
(``floor: copy the cache``). A second table holds the valid length fixed and grows ``max_len``: a
contender whose step grows with it reads (or copies) the unused tail.

    python -m bench.decode [--batches 1 8] [--caches 1024 4096 16384] [--out bench/reports/cpu-decode.md]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.decode_peers import PEERS
from bench.roundrobin import publish, round_robin, table

BACKENDS = ("numpy", "numba", "torch", "onnx")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--caches", type=int, nargs="+", default=[1024, 4096, 16384],
                   help="tokens in the cache after the step (= max_len)")
    p.add_argument("--heads", type=int, default=32, help="q heads")
    p.add_argument("--kv-heads", type=int, default=8, help="kv heads")
    p.add_argument("--head-dim", type=int, default=128, help="head dim")
    p.add_argument("--flat-length", type=int, default=1024, help="valid length of the max_len sweep")
    p.add_argument("--flat-max-lens", type=int, nargs="*", default=[1024, 4096, 16384],
                   help="max_len values of the sweep (empty to skip it)")
    p.add_argument("--rounds", type=int, default=9, help="round-robin rounds per shape")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per shape (at least 3 rounds)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime")
    p.add_argument("--out", help="write the Markdown report here")
    return p.parse_args(argv)


def _problem(batch, heads, kv_heads, head_dim, max_len, length, seed=0):
    """q, new k/v, and caches holding ``length - 1`` random tokens (zeros past them)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, 1, head_dim), dtype=np.float32)
    k, v = (rng.standard_normal((batch, kv_heads, 1, head_dim), dtype=np.float32) for _ in range(2))
    cache_k, cache_v = (np.zeros((batch, kv_heads, max_len, head_dim), np.float32) for _ in range(2))
    for cache in (cache_k, cache_v):
        cache[:, :, :length - 1] = rng.standard_normal((batch, kv_heads, length - 1, head_dim), dtype=np.float32)
    return q, k, v, cache_k, cache_v


def _reference(q, k, v, cache_k, cache_v, length):
    """The step in float64: attend over the cached tokens and the new one."""
    keys = np.concatenate([cache_k[:, :, :length - 1], k], axis=2).astype(np.float64)
    values = np.concatenate([cache_v[:, :, :length - 1], v], axis=2).astype(np.float64)
    group = q.shape[1] // k.shape[1]
    keys, values = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
    s = q.astype(np.float64) @ keys.transpose(0, 1, 3, 2) / np.sqrt(q.shape[3])
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ values


def _attngraph(backend, q, k, v, cache_k, cache_v, length):
    import attngraph as ag

    heads, head_dim, kv_heads, max_len = q.shape[1], q.shape[3], k.shape[1], cache_k.shape[2]
    graph = ag.core_attention(heads, head_dim, num_kv_heads=kv_heads, causal=True, kv_cache="static",
                              max_len=max_len)
    ex = ag.compile(graph, backend)
    feed = {"q": q, "k": k, "v": v, "past_key": cache_k, "past_value": cache_v,
            "cache_lengths": np.full(q.shape[0], length - 1, np.int64)}
    box = {}

    def step():
        box["out"] = ex(feed)
    return step, lambda: np.asarray(box["out"]["y"])


def _floor(cache_k, cache_v, length):
    """Copying the valid cache once (torch's parallel copy: both cores, as the kernels get)."""
    import torch

    src = [torch.from_numpy(c)[:, :, :length] for c in (cache_k, cache_v)]
    dst = [torch.empty_like(s) for s in src]

    def step():
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
    return step, None


def contenders(shapes, length, threads, names=None):
    q, k, v, cache_k, cache_v = shapes
    made = {"floor: copy the cache": _floor(cache_k, cache_v, length)}
    for backend in BACKENDS:
        made[f"attngraph-{backend}"] = _attngraph(backend, q, k, v, cache_k, cache_v, length)
    for name, factory in PEERS.items():
        kwargs = {} if name.startswith("torch") else {"threads": threads}
        made[name] = factory(q, k, v, cache_k, cache_v, length, **kwargs)
    return {n: m for n, m in made.items() if names is None or n in names}


def decode_table(batch, cache, args):
    shapes = _problem(batch, args.heads, args.kv_heads, args.head_dim, cache, cache)
    runs = contenders(shapes, cache, args.threads)
    ref = _reference(*shapes, cache)
    errors = {}
    for name, (step, read) in runs.items():
        if read is not None:
            step()
            errors[name] = float(np.abs(read() - ref).max() / np.abs(ref).max())
    timings = round_robin({n: s for n, (s, _) in runs.items()}, rounds=args.rounds, warmup=2, budget_s=args.budget,
                          inner=3, pause_s=0.02)
    floor = timings["floor: copy the cache"].median_ms
    peers = {n: t.median_ms for n, t in timings.items() if n in PEERS}
    best_peer = min(peers.values())
    rows = [[n, f"{t.median_ms:.2f}", t.spread, f"{t.median_ms / floor:.2f}", f"{t.median_ms / best_peer:.2f}",
             f"{errors[n]:.1e}" if n in errors else ""] for n, t in timings.items()]
    mine = {n: t.median_ms for n, t in timings.items() if n.startswith("attngraph")}
    best = min(mine, key=mine.get)
    summary = (f"best attngraph: {best} {mine[best]:.2f} ms = {mine[best] / floor:.2f}x the floor, "
               f"{mine[best] / best_peer:.2f}x the best peer's time ({min(peers, key=peers.get)}, "
               f"{best_peer:.2f} ms; below 1 is faster)")
    return table(["contender", "median ms", "range ms", "x floor", "x best peer", "max err / max |y|"], rows), summary


def flat_table(args):
    """Valid length fixed, ``max_len`` growing: the static-cache contenders only."""
    names = ["floor: copy the cache", *(f"attngraph-{b}" for b in BACKENDS), "torch static (index_copy_ + SDPA)",
             "ORT TensorScatter + Attention-24", "ORT GroupQueryAttention (shared buffer)"]
    medians = {n: [] for n in names}
    for max_len in args.flat_max_lens:
        print(f"  max_len {max_len} ...", file=sys.stderr, flush=True)
        shapes = _problem(1, args.heads, args.kv_heads, args.head_dim, max_len, args.flat_length)
        runs = contenders(shapes, args.flat_length, args.threads, names)
        timings = round_robin({n: s for n, (s, _) in runs.items()}, rounds=args.rounds, warmup=2,
                              budget_s=args.budget, inner=3, pause_s=0.02)
        for n in names:
            medians[n].append(timings[n].median_ms)
    rows = [[n, *(f"{m:.2f}" for m in medians[n]), f"{max(medians[n]) / min(medians[n]):.2f}"] for n in names]
    return table(["contender", *(f"max_len {m} ms" for m in args.flat_max_lens), "largest / smallest"], rows)


def main(argv=None) -> int:
    args = _args(argv)
    lines = [f"# Decode step: {args.heads} q heads, {args.kv_heads} kv heads, head dim {args.head_dim}, fp32 "
             f"(CPU, {args.threads} threads, round-robin, medians)", ""]
    for batch in args.batches:
        for cache in args.caches:
            print(f"batch {batch}, cache {cache} ...", file=sys.stderr, flush=True)
            text, summary = decode_table(batch, cache, args)
            lines += [f"## batch {batch}, cache {cache} (one new token; the cache is full after it)", "", text, "",
                      summary, ""]
    if args.flat_max_lens:
        print(f"flat in max_len (valid length {args.flat_length}) ...", file=sys.stderr, flush=True)
        lines += [f"## Valid length {args.flat_length}, growing max_len (batch 1): a step should not grow", "",
                  flat_table(args), ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
