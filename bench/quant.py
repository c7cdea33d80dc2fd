"""``python -m bench.quant``: one decode step against a quantized KV cache (int8, float8 e4m3fn) beside the fp32
step, every contender round-robin in one process.

Core attention, batch 1, 32 q heads, 8 kv heads, head dim 128 (``bench/decode.py``'s shapes), a cache of
``cache - 1`` tokens plus the step's own (full after it). Contenders: attngraph's fp32 static cache on numba (the
baseline: ``x fp32``), and the quantized caches (``kv_cache_dtype=``) on numba (the decode kernel reading the
quantized cache in place), torch and onnx (they dequantize the cache each step: a float copy). The floor is
copying the int8 cache once. Errors are against the float64 step on the unquantized values.

    python -m bench.quant [--caches 16384] [--out bench/reports/cpu-quant-cache.md] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.roundrobin import publish, round_robin, table


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.quant", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--caches", type=int, nargs="+", default=[16384], help="tokens in the cache after the step")
    p.add_argument("--heads", type=int, default=32, help="q heads")
    p.add_argument("--kv-heads", type=int, default=8, help="kv heads")
    p.add_argument("--head-dim", type=int, default=128, help="head dim")
    p.add_argument("--rounds", type=int, default=9, help="round-robin rounds per shape")
    p.add_argument("--budget", type=float, default=90.0, help="seconds per shape (at least 3 rounds)")
    p.add_argument("--quick", action="store_true", help="a tiny shape (smoke test): cache 512, 4/2 heads, dim 32")
    p.add_argument("--out", help="write the Markdown report here")
    args = p.parse_args(argv)
    if args.quick:
        args.caches, args.heads, args.kv_heads, args.head_dim = [512], 4, 2, 32
    return args


# name -> (backend, kv_cache_dtype, kv_scale)
CONTENDERS = {
    "numba fp32 (baseline)": ("numba", None, None),
    "numba int8 per token+head": ("numba", "int8", "per_token_head"),
    "numba int8 per head": ("numba", "int8", "per_head"),
    "numba float8_e4m3fn per token+head": ("numba", "float8_e4m3fn", "per_token_head"),
    "torch int8 per token+head": ("torch", "int8", "per_token_head"),
    "onnx int8 per token+head": ("onnx", "int8", "per_token_head"),
}


def _problem(heads, kv_heads, head_dim, length, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, heads, 1, head_dim), dtype=np.float32)
    k, v = (rng.standard_normal((1, kv_heads, 1, head_dim), dtype=np.float32) for _ in range(2))
    cache_k, cache_v = (np.zeros((1, kv_heads, length, head_dim), np.float32) for _ in range(2))
    for cache in (cache_k, cache_v):
        cache[:, :, :length - 1] = rng.standard_normal((1, kv_heads, length - 1, head_dim), dtype=np.float32)
    return q, k, v, cache_k, cache_v


def _reference(q, k, v, cache_k, cache_v):
    keys = np.concatenate([cache_k[:, :, :-1], k], axis=2).astype(np.float64)
    values = np.concatenate([cache_v[:, :, :-1], v], axis=2).astype(np.float64)
    group = q.shape[1] // k.shape[1]
    keys, values = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
    s = q.astype(np.float64) @ keys.transpose(0, 1, 3, 2) / np.sqrt(q.shape[3])
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ values


def _contender(backend, dtype, kv_scale, q, k, v, cache_k, cache_v):
    """The step's function and its output reader; the quantized cache is written from the same float values."""
    import attngraph as ag
    from attngraph.conformance.reference.quant_ops import quantize_values
    from attngraph.ir import DType
    from attngraph.ir.dtypes import to_numpy
    from attngraph.ir.quant_specs import QMAX

    heads, head_dim, kv_heads, max_len = q.shape[1], q.shape[3], k.shape[1], cache_k.shape[2]
    knobs = {"kv_cache_dtype": dtype, "kv_scale": kv_scale} if dtype else {}
    graph = ag.core_attention(heads, head_dim, num_kv_heads=kv_heads, causal=True, kv_cache="static",
                              max_len=max_len, **knobs)
    feed = {"q": q, "k": k, "v": v, "cache_lengths": np.full(1, max_len - 1, np.int64)}
    weights = {}
    if dtype is None:
        feed.update(past_key=cache_k.copy(), past_value=cache_v.copy())
    else:
        dt = DType.parse(dtype)
        for tag, cache, new in (("key", cache_k, k), ("value", cache_v, v)):
            if kv_scale == "per_token_head":
                amax = np.max(np.abs(cache), -1, keepdims=True)
                scale = np.where(amax == 0, 1, amax / np.float32(QMAX[dt])).astype(np.float32)
                feed[f"past_{tag}_scale"] = scale
            else:
                top = max(float(np.abs(cache).max()), float(np.abs(new).max()))
                weights[f"{tag[0]}_scale"] = np.full(kv_heads, top / QMAX[dt], np.float32)
                scale = weights[f"{tag[0]}_scale"].reshape(1, kv_heads, 1, 1)
            feed[f"past_{tag}"] = quantize_values(cache, scale, dt).astype(to_numpy(dt))
    ex = ag.compile(graph, backend, weights=weights)
    box = {}

    def step():
        box["out"] = ex(feed)
    return step, lambda: np.asarray(box["out"]["y"])


def _floor(cache_k):
    """Copying the int8 cache (K and V) once: the bytes a quantized step must read."""
    src = np.zeros(cache_k.shape, np.int8)
    dst = [np.empty_like(src), np.empty_like(src)]

    def step():
        for d in dst:
            np.copyto(d, src)
    return step


def quant_table(cache, args):
    shapes = _problem(args.heads, args.kv_heads, args.head_dim, cache)
    ref = _reference(*shapes)
    runs, errors = {"floor: copy the int8 cache": _floor(shapes[3])}, {}
    for name, (backend, dtype, kv_scale) in CONTENDERS.items():
        try:
            step, read = _contender(backend, dtype, kv_scale, *shapes)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            print(f"  {name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        step()
        errors[name] = float(np.abs(read() - ref).max() / np.abs(ref).max())
        runs[name] = step
    timings = round_robin(runs, rounds=args.rounds, warmup=2, budget_s=args.budget, inner=3, pause_s=0.02)
    base = timings["numba fp32 (baseline)"].median_ms
    floor = timings["floor: copy the int8 cache"].median_ms
    rows = [[n, f"{t.median_ms:.2f}", t.spread, f"{t.median_ms / base:.2f}", f"{t.median_ms / floor:.2f}",
             f"{errors[n]:.1e}" if n in errors else ""] for n, t in timings.items()]
    int8 = timings["numba int8 per token+head"].median_ms
    summary = (f"numba int8 step {int8:.2f} ms = {int8 / base:.2f}x the fp32 step ({base:.2f} ms; target <= 0.6x), "
               f"{int8 / floor:.2f}x the int8 copy floor")
    bytes_read = 2 * args.kv_heads * cache * args.head_dim
    note = (f"bytes read by the step: fp32 {4 * bytes_read / 2**20:.0f} MiB, int8/float8 {bytes_read / 2**20:.0f} MiB "
            f"(+ {2 * args.kv_heads * cache * 4 / 2**20:.1f} MiB of per-token scales)")
    return table(["contender", "median ms", "range ms", "x fp32", "x floor", "max err / max |y|"], rows), summary, note


def main(argv=None) -> int:
    args = _args(argv)
    lines = [f"# Quantized KV cache decode step: batch 1, {args.heads} q heads, {args.kv_heads} kv heads, head dim "
             f"{args.head_dim} (CPU, round-robin, medians)", ""]
    for cache in args.caches:
        print(f"cache {cache} ...", file=sys.stderr, flush=True)
        text, summary, note = quant_table(cache, args)
        lines += [f"## cache {cache} (one new token; the cache is full after it)", "", text, "", summary, "", note, ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
