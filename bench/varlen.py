"""``python -m bench.varlen``: causal prefill of a packed variable-length batch against a padded batch, on the CPU.

Eight sequences of mixed lengths (default 64 .. 2048), fp32, ``heads`` q heads on ``kv_heads`` kv heads, causal
(each sequence's queries are its keys, so bottom-right and top-left agree). Contenders, round-robin in one process:

* ``attngraph-numba varlen``: ``varlen_attention`` on the packed batch (numba's per-sequence tiles);
* ``attngraph-numba padded``: ``core_attention(causal, key_padding)`` on the batch padded to the longest sequence;
* ``attngraph-torch varlen`` / ``attngraph-numpy varlen``: ``varlen_attention`` on the torch / numpy backend (one
  attention per sequence on its own slices: SDPA, or NumPy's chunked attention);
* ``attngraph-onnx varlen``: the exported default decomposition (a dense block-diagonal bool mask) under
  onnxruntime;
* ``torch SDPA block-diagonal``: ``scaled_dot_product_attention`` on the packed batch with a (T, T) bool
  block-diagonal causal mask;
* ``torch SDPA padded``: ``scaled_dot_product_attention(is_causal=True)`` on the padded batch.

Each time is a median over rounds; ratios are against ``attngraph-numba varlen`` in the same run. The expected
proportions are printed beside them: real tokens / padded tokens, and the causal score work, ``sum L^2`` against
``B * max(L)^2`` (padded) or ``(sum L)^2`` (one dense block-diagonal mask: nothing skipped). Each contender's error is measured on
its valid rows against a float64 per-sequence reference.

    python -m bench.varlen [--lengths 64 2048 ...] [--heads 8] [--kv-heads 2] [--out bench/reports/cpu-serving-varlen.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess

import numpy as np

from bench.roundrobin import publish, round_robin, table  # sets OMP_WAIT_POLICY before torch loads

DEFAULT_LENGTHS = [64, 2048, 128, 1024, 256, 512, 96, 1536]


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.varlen", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS, help="the sequences' lengths")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--budget", type=float, default=60.0, help="seconds (at least 3 rounds)")
    p.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    p.add_argument("--quick", action="store_true", help="tiny shapes (the smoke test)")
    p.add_argument("--out", help="write the Markdown report here")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.heads, args.kv_heads, args.head_dim = [4, 32, 0, 9, 17, 1, 8, 24], 2, 1, 8
        args.rounds, args.budget = 3, 2.0
    return args


def _problem(lengths, heads, kv_heads, d, seed=0):
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    q = rng.standard_normal((1, heads, total, d), dtype=np.float32)
    k = rng.standard_normal((1, kv_heads, total, d), dtype=np.float32)
    v = rng.standard_normal((1, kv_heads, total, d), dtype=np.float32)
    cu = np.asarray([0, *np.cumsum(lengths)], np.int32)
    return q, k, v, cu


def _pad(x, lengths, cu):
    """(1, H, total, D) packed -> (B, H, max_len, D) right-padded with zeros."""
    out = np.zeros((len(lengths), x.shape[1], max(lengths), x.shape[3]), x.dtype)
    for s, n in enumerate(lengths):
        out[s, :, :n] = x[0, :, cu[s]:cu[s] + n]
    return out


def _unpad(y, lengths):
    """(B, H, max_len, Dv) -> (1, H, total, Dv): the valid rows only."""
    return np.concatenate([y[s:s + 1, :, :n] for s, n in enumerate(lengths)], axis=2)


def _reference(q, k, v, cu):
    """Float64 causal attention per sequence (GQA by repeat-interleave), rows concatenated."""
    hq, hkv = q.shape[1], k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for s in range(len(cu) - 1):
        a, b = int(cu[s]), int(cu[s + 1])
        if a == b:
            continue
        qs = q[0, :, a:b].astype(np.float64)
        ks = np.repeat(k[0, :, a:b].astype(np.float64), hq // hkv, axis=0)
        vs = np.repeat(v[0, :, a:b].astype(np.float64), hq // hkv, axis=0)
        s_ = qs @ ks.transpose(0, 2, 1) / np.sqrt(q.shape[3])
        s_ = np.where(np.tril(np.ones((b - a, b - a), bool)), s_, -np.inf)
        p = np.exp(s_ - s_.max(-1, keepdims=True))
        out[0, :, a:b] = (p / p.sum(-1, keepdims=True)) @ vs
    return out


def _block_diagonal_causal(cu, total):
    """(T, T) bool: True where query i and key j share a sequence and j <= i."""
    seg = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
    idx = np.arange(total)
    return (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])


def contenders(args):
    """name -> (callable, output getter) over one problem; each runs one prefill."""
    import torch

    import attngraph as ag

    torch.set_num_threads(args.threads)
    lengths, hq, hkv, d = args.lengths, args.heads, args.kv_heads, args.head_dim
    q, k, v, cu = _problem(lengths, hq, hkv, d)
    feed = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu, "cu_seqlens_k": cu}
    pq, pk, pv = (_pad(x, lengths, cu) for x in (q, k, v))
    key_lengths = np.asarray(lengths, np.int64)
    varlen = ag.varlen_attention(hq, d, num_kv_heads=hkv, causal=True)
    padded = ag.core_attention(hq, d, num_kv_heads=hkv, causal=True, key_padding=True)
    numba_varlen = ag.compile(varlen, "numba", threads=args.threads)
    numba_padded = ag.compile(padded, "numba", threads=args.threads)
    torch_varlen = ag.compile(varlen, "torch")
    numpy_varlen = ag.compile(varlen, "numpy")
    onnx_varlen = ag.compile(varlen, "onnx")
    total = int(cu[-1])
    tq, tk, tv = (torch.from_numpy(x) for x in (q, np.repeat(k, hq // hkv, 1), np.repeat(v, hq // hkv, 1)))
    tmask = torch.from_numpy(_block_diagonal_causal(cu, total))
    tpq, tpk, tpv = (torch.from_numpy(x) for x in (pq, np.repeat(pk, hq // hkv, 1), np.repeat(pv, hq // hkv, 1)))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return run

    return {
        "attngraph-numba varlen": lambda: numba_varlen(feed)["y"],
        "attngraph-numba padded": lambda: _unpad(numba_padded(q=pq, k=pk, v=pv, key_lengths=key_lengths)["y"],
                                                 lengths),
        "attngraph-torch varlen": lambda: torch_varlen(feed)["y"],
        "attngraph-numpy varlen": lambda: numpy_varlen(feed)["y"],
        "attngraph-onnx varlen": lambda: onnx_varlen(feed)["y"],
        "torch SDPA block-diagonal": no_grad(lambda: sdpa(tq, tk, tv, attn_mask=tmask).numpy()),
        "torch SDPA padded": no_grad(lambda: _unpad(sdpa(tpq, tpk, tpv, is_causal=True).numpy(), lengths)),
    }, (q, k, v, cu)


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return f"load average: {os.getloadavg()}"


def main(argv=None) -> int:
    args = _args(argv)
    runs, (q, k, v, cu) = contenders(args)
    ref = _reference(q, k, v, cu)
    errors = {}
    for name, run in runs.items():
        got = np.asarray(run(), np.float64)
        errors[name] = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    load_before = _load()
    timings = round_robin(runs, rounds=args.rounds, warmup=1, budget_s=args.budget)
    load_after = _load()
    lengths = args.lengths
    real, padded = sum(lengths), len(lengths) * max(lengths)
    m = max(lengths)
    # score pairs each contender computes: per-sequence causal tiles; the padded flash kernel (valid rows causal,
    # padding rows over the valid keys: key lengths end its key blocks); causal SDPA on the padded batch; one
    # dense (T, T) mask (nothing skipped)
    work = {"varlen": sum(n * (n + 1) / 2 for n in lengths),
            "numba padded": sum(n * (n + 1) / 2 + (m - n) * n for n in lengths),
            "padded": len(lengths) * m * (m + 1) / 2, "dense": real ** 2,
            "varlen_full": sum(n * n for n in lengths)}  # numpy's chunked attention: the causal half is masked
    ratio = {key: f"{w / max(work['varlen'], 1):.2f}" for key, w in work.items()}
    expect = {"attngraph-numba varlen": "1", "attngraph-numba padded": ratio["numba padded"],
              "attngraph-torch varlen": "1", "attngraph-numpy varlen": ratio["varlen_full"],
              "attngraph-onnx varlen": ratio["dense"], "torch SDPA block-diagonal": ratio["dense"],
              "torch SDPA padded": ratio["padded"]}
    base = timings["attngraph-numba varlen"].median_ms
    rows = [[name, f"{t.median_ms:.2f}", t.spread, f"{t.median_ms / base:.2f}", expect[name], f"{errors[name]:.1e}"]
            for name, t in timings.items()]
    lines = [
        "# Packed variable-length prefill vs a padded batch (CPU)", "",
        f"{len(lengths)} sequences, lengths {lengths}: {real} real tokens, {padded} padded "
        f"({padded / real:.2f}x); {args.heads} q heads / {args.kv_heads} kv heads, head dim {args.head_dim}, fp32, "
        f"causal; {args.threads} threads; {len(next(iter(timings.values())).samples)} round-robin rounds.", "",
        f"Load before: `{load_before}`", f"Load after: `{load_after}`", "",
        table(["contender", "median ms", "spread ms", "x numba varlen", "expected x (score pairs)", "rel err vs f64"],
              rows), "",
        "Expected x: the score pairs each contender computes over those of the per-sequence causal tiles "
        "(`sum L(L+1)/2`): the padded numba kernel adds the padding rows against the valid keys, causal SDPA on "
        f"the padded batch `B M(M+1)/2`, one dense block-diagonal mask `(sum L)^2`. Real / padded tokens = "
        f"{real / padded:.2f}.",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
