"""``python -m bench.serving``: serving-style decode steps. Paged KV cache rows: one decode step of a batch on a
paged block pool (block size 16 and 128) beside the contiguous static cache, every contender round-robin in one
process.

Core attention, 32 q heads, 8 kv heads, head dim 128, fp32 (``bench/decode.py``'s shape). Every row holds
``cache - 1`` tokens and the step writes the last one, so each contender reads the whole valid cache once. The
paged pool holds exactly the batch's blocks, handed out in a shuffled order (as a running server's free list
leaves them: no row's blocks are adjacent); the contiguous baseline is ``DecodeSession``'s static-cache graph
(``kv_cache="static"``), written in place. ``x contiguous`` divides by the same backend's contiguous step. The
floor is the time to copy the valid cache (K and V) once. Errors are against the float64 step.

The module is a table of row builders (``PAGED_ROWS``, run by ``paged_rows``): another family of serving rows
(varlen batches) adds its own table and builder to ``ROW_BUILDERS``.

    python -m bench.serving [--batch 8] [--cache 4096] [--backends numba] [--out bench/reports/cpu-serving-paged.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np

from bench.roundrobin import load_line, publish, round_robin, table  # sets OMP_WAIT_POLICY before torch loads

# row name -> (block_size, layout); each runs on every backend of --backends, beside that backend's contiguous step
PAGED_ROWS = {
    "paged bs16 NHD": (16, "NHD"),
    "paged bs128 NHD": (128, "NHD"),
    "paged bs16 HND": (16, "HND"),
}


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.serving",
                                description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="sequences in the step")
    p.add_argument("--cache", type=int, default=4096, help="tokens of each sequence after the step")
    p.add_argument("--heads", type=int, default=32, help="q heads")
    p.add_argument("--kv-heads", type=int, default=8, help="kv heads")
    p.add_argument("--head-dim", type=int, default=128, help="head dim")
    p.add_argument("--backends", nargs="+", default=["numba"], help="attngraph backends to time")
    p.add_argument("--rows", nargs="*", default=list(PAGED_ROWS), help="paged rows (PAGED_ROWS keys)")
    p.add_argument("--rounds", type=int, default=9, help="round-robin rounds")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of timing (at least 3 rounds)")
    p.add_argument("--quick", action="store_true", help="a tiny shape (smoke test): batch 2, cache 256, 4/2 heads, "
                                                       "dim 32, every backend")
    p.add_argument("--out", help="write the Markdown report here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.cache, args.heads, args.kv_heads, args.head_dim = 2, 256, 4, 2, 32
        args.backends = ["numpy", "numba", "torch", "onnx"]
    return args


class Problem:
    """One decode step's values: q, the new k/v and each row's ``cache - 1`` cached tokens, plus the reference."""

    def __init__(self, args, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        b, hq, hkv, d, n = args.batch, args.heads, args.kv_heads, args.head_dim, args.cache
        self.batch, self.heads, self.kv_heads, self.head_dim, self.length = b, hq, hkv, d, n
        self.q = rng.standard_normal((b, hq, 1, d), dtype=np.float32)
        self.k, self.v = (rng.standard_normal((b, hkv, 1, d), dtype=np.float32) for _ in range(2))
        self.keys, self.values = (rng.standard_normal((b, hkv, n - 1, d), dtype=np.float32) for _ in range(2))

    def reference(self) -> np.ndarray:
        keys = np.concatenate([self.keys, self.k], axis=2).astype(np.float64)
        values = np.concatenate([self.values, self.v], axis=2).astype(np.float64)
        group = self.heads // self.kv_heads
        keys, values = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
        s = self.q.astype(np.float64) @ keys.transpose(0, 1, 3, 2) / np.sqrt(self.head_dim)
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)) @ values


def contiguous_row(backend: str, pb: Problem) -> Callable[[], np.ndarray]:
    """The static-cache step (``DecodeSession``'s graph), the cache written in place."""
    import attngraph as ag

    g = ag.core_attention(pb.heads, pb.head_dim, num_kv_heads=pb.kv_heads, causal=True, kv_cache="static",
                          max_len=pb.length)
    ex = ag.compile(g, backend)
    caches = [np.zeros((pb.batch, pb.kv_heads, pb.length, pb.head_dim), np.float32) for _ in range(2)]
    caches[0][:, :, :-1], caches[1][:, :, :-1] = pb.keys, pb.values
    feed = {"q": pb.q, "k": pb.k, "v": pb.v, "past_key": caches[0], "past_value": caches[1],
            "cache_lengths": np.full(pb.batch, pb.length - 1, np.int64)}
    return lambda: np.asarray(ex(feed)["y"])


def paged_row(backend: str, pb: Problem, block_size: int, layout: str, seed: int = 1) -> Callable[[], np.ndarray]:
    """The same step on a paged pool holding the batch's blocks in a shuffled order."""
    import attngraph as ag

    per_row = -(-pb.length // block_size)
    num_blocks = pb.batch * per_row
    g = ag.paged_attention(pb.heads, pb.head_dim, num_kv_heads=pb.kv_heads, block_size=block_size,
                           num_blocks=num_blocks, max_blocks=per_row, layout=layout)
    ex = ag.compile(g, backend)
    table = np.random.default_rng(seed).permutation(num_blocks).reshape(pb.batch, per_row).astype(np.int32)
    shape = (num_blocks, block_size, pb.kv_heads, pb.head_dim) if layout == "NHD" else \
        (num_blocks, pb.kv_heads, block_size, pb.head_dim)
    pools = [np.zeros(shape, np.float32) for _ in range(2)]
    for pool, tokens in zip(pools, (pb.keys, pb.values), strict=True):
        for b in range(pb.batch):
            for j in range(pb.length - 1):
                blk, off = table[b, j // block_size], j % block_size
                if layout == "NHD":
                    pool[blk, off] = tokens[b, :, j]
                else:
                    pool[blk, :, off] = tokens[b, :, j]
    feed = {"q": pb.q, "k": pb.k, "v": pb.v, "key_cache": pools[0], "value_cache": pools[1], "block_table": table,
            "cache_lengths": np.full(pb.batch, pb.length - 1, np.int64)}
    return lambda: np.asarray(ex(feed)["y"])


def floor_row(pb: Problem) -> Callable[[], None]:
    """Copying the valid cache (K and V) once."""
    src = [pb.keys, pb.values]
    dst = [np.empty_like(s) for s in src]

    def step():
        for d, s in zip(dst, src, strict=True):
            np.copyto(d, s)
    return step


def paged_rows(args, pb: Problem) -> dict[str, tuple[Callable, str]]:
    """Each backend's contiguous step and its paged rows: name -> (run, the name of its baseline row)."""
    runs = {}
    for backend in args.backends:
        base = f"{backend} contiguous (static cache)"
        runs[base] = (contiguous_row(backend, pb), base)
        for name in args.rows:
            block_size, layout = PAGED_ROWS[name]
            runs[f"{backend} {name}"] = (paged_row(backend, pb, block_size, layout), base)
    return runs


ROW_BUILDERS = [paged_rows]  # each: (args, problem) -> {name: (run, baseline name)}


def main(argv=None) -> int:
    args = _args(argv)
    pb = Problem(args)
    runs: dict[str, tuple[Callable, str | None]] = {"floor: copy the cache": (floor_row(pb), None)}
    for build in ROW_BUILDERS:
        runs.update(build(args, pb))
    ref = pb.reference()
    errors = {name: float(np.abs(np.asarray(run(), np.float64) - ref).max() / np.abs(ref).max())
              for name, (run, base) in runs.items() if base is not None}
    load_before = load_line()
    timings = round_robin({n: r for n, (r, _) in runs.items()}, rounds=args.rounds, warmup=2, budget_s=args.budget)
    load_after = load_line()
    floor = timings["floor: copy the cache"].median_ms
    rows = []
    for name, t in timings.items():
        base = runs[name][1]
        ratio = f"{t.median_ms / timings[base].median_ms:.3f}" if base else ""
        rows.append([name, f"{t.median_ms:.2f}", t.spread, ratio, f"{t.median_ms / floor:.2f}",
                     f"{errors[name]:.1e}" if name in errors else ""])
    mb = 2 * pb.batch * pb.kv_heads * (pb.length - 1) * pb.head_dim * 4 / 2**20
    lines = [
        "# Paged KV cache decode vs the contiguous static cache (CPU)", "",
        f"One decode step: batch {pb.batch}, each row {pb.length - 1} cached tokens + 1 new; {pb.heads} q heads / "
        f"{pb.kv_heads} kv heads, head dim {pb.head_dim}, fp32 ({mb:.0f} MiB of K and V read per step); paged pools "
        f"hold exactly the batch's blocks in a shuffled order; {len(next(iter(timings.values())).samples)} "
        f"round-robin rounds; {os.cpu_count()} CPUs.", "",
        f"Load before: `{load_before}`", f"Load after: `{load_after}`", "",
        table(["contender", "median ms", "range ms", "x contiguous", "x floor", "max err / max |y|"], rows), "",
        "x contiguous: the row's median over the same backend's contiguous static-cache step, measured in the same "
        "rounds. The floor copies the valid K and V once (one read and one write of the cache).",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
