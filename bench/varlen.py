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
``B * max(L)^2`` (padded) or ``(sum L)^2`` (one dense block-diagonal mask: nothing skipped). Each contender's
error is measured on
its valid rows against a float64 per-sequence reference.

    python -m bench.varlen [--lengths 64 2048 ...] [--q-len 128] [--heads 8] [--kv-heads 2]
                           [--out bench/reports/cpu-serving-varlen.md]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.roundrobin import load_line, publish, round_robin, table  # sets OMP_WAIT_POLICY before torch loads

DEFAULT_LENGTHS = [64, 2048, 128, 1024, 256, 512, 96, 1536]


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.varlen", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS, help="the sequences' lengths")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--q-len", type=int, default=0, help="queries per sequence: its last q_len tokens against all "
                   "its keys, causal bottom-right (a chunked prefill; 1: a decode step); 0: every token (prefill)")
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


def _problem(q_lens, lengths, heads, kv_heads, d, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, heads, sum(q_lens), d), dtype=np.float32)
    k = rng.standard_normal((1, kv_heads, sum(lengths), d), dtype=np.float32)
    v = rng.standard_normal((1, kv_heads, sum(lengths), d), dtype=np.float32)
    return q, k, v, np.asarray([0, *np.cumsum(q_lens)], np.int32), np.asarray([0, *np.cumsum(lengths)], np.int32)


def _pad(x, lengths, cu, left=False):
    """(1, H, total, D) packed -> (B, H, max_len, D) padded with zeros (at the end, or at the start)."""
    width = max(lengths)
    out = np.zeros((len(lengths), x.shape[1], width, x.shape[3]), x.dtype)
    for s, n in enumerate(lengths):
        out[s, :, width - n if left else 0:width if left else n] = x[0, :, cu[s]:cu[s] + n]
    return out


def _unpad(y, lengths, left=False):
    """(B, H, max_len, Dv) -> (1, H, total, Dv): the valid rows only."""
    width = y.shape[2]
    return np.concatenate([y[s:s + 1, :, width - n if left else 0:width if left else n]
                           for s, n in enumerate(lengths)], axis=2)


def _reference(q, k, v, cu_q, cu_k):
    """Float64 causal attention per sequence, bottom-right (GQA by repeat-interleave), rows concatenated."""
    hq, hkv = q.shape[1], k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for s in range(len(cu_q) - 1):
        a, b, c, e = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        if a == b or c == e:
            continue
        qs = q[0, :, a:b].astype(np.float64)
        ks = np.repeat(k[0, :, c:e].astype(np.float64), hq // hkv, axis=0)
        vs = np.repeat(v[0, :, c:e].astype(np.float64), hq // hkv, axis=0)
        s_ = qs @ ks.transpose(0, 2, 1) / np.sqrt(q.shape[3])
        s_ = np.where(np.tri(b - a, e - c, (e - c) - (b - a), dtype=bool), s_, -np.inf)
        p = np.exp(s_ - s_.max(-1, keepdims=True))
        out[0, :, a:b] = (p / p.sum(-1, keepdims=True)) @ vs
    return out


def _block_diagonal_causal(cu_q, cu_k):
    """(Tq, Tk) bool: True where query i and key j share a sequence and j is at or before i (bottom-right)."""
    seg_q = np.repeat(np.arange(len(cu_q) - 1), np.diff(cu_q))
    seg_k = np.repeat(np.arange(len(cu_k) - 1), np.diff(cu_k))
    pos_q = np.arange(cu_q[-1]) - cu_q[seg_q] + (np.diff(cu_k) - np.diff(cu_q))[seg_q]  # local, bottom-right
    pos_k = np.arange(cu_k[-1]) - cu_k[seg_k]
    return (seg_q[:, None] == seg_k[None, :]) & (pos_k[None, :] <= pos_q[:, None])


def contenders(args):
    """name -> callable; each runs the whole packed step and returns the valid rows (1, Hq, total_q, D)."""
    import torch

    import attngraph as ag

    torch.set_num_threads(args.threads)
    lengths, hq, hkv, d = args.lengths, args.heads, args.kv_heads, args.head_dim
    q_lens = [min(args.q_len, n) for n in lengths] if args.q_len else list(lengths)
    chunk = bool(args.q_len)  # the last q_len tokens of each sequence: queries left-padded, aligned to lengths
    q, k, v, cu_q, cu_k = _problem(q_lens, lengths, hq, hkv, d)
    feed = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    pq = _pad(q, q_lens, cu_q, left=chunk)
    pk, pv = (_pad(x, lengths, cu_k) for x in (k, v))
    key_lengths = np.asarray(lengths, np.int64)
    varlen = ag.varlen_attention(hq, d, num_kv_heads=hkv, causal=True)
    padded = ag.core_attention(hq, d, num_kv_heads=hkv, causal=True, key_padding=True, align_to_lengths=chunk)
    numba_varlen = ag.compile(varlen, "numba", threads=args.threads)
    numba_padded = ag.compile(padded, "numba", threads=args.threads)
    torch_varlen = ag.compile(varlen, "torch")
    numpy_varlen = ag.compile(varlen, "numpy")
    onnx_varlen = ag.compile(varlen, "onnx")
    group = hq // hkv
    tq, tk, tv = (torch.from_numpy(x) for x in (q, np.repeat(k, group, 1), np.repeat(v, group, 1)))
    tmask = torch.from_numpy(_block_diagonal_causal(cu_q, cu_k))
    tpq, tpk, tpv = (torch.from_numpy(x) for x in (pq, np.repeat(pk, group, 1), np.repeat(pv, group, 1)))
    if chunk:  # padded chunk: query row r of batch row b sits at key lengths[b] - width + r; keys past it masked
        width, cols = pq.shape[2], np.arange(pk.shape[2])
        pos = key_lengths[:, None] - width + np.arange(width)[None, :]
        keep = (cols[None, None, :] <= pos[:, :, None]) & (cols[None, None, :] < key_lengths[:, None, None])
        pmask = torch.from_numpy(keep)[:, None]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return run

    def sdpa_padded():
        y = sdpa(tpq, tpk, tpv, attn_mask=pmask) if chunk else sdpa(tpq, tpk, tpv, is_causal=True)
        return _unpad(y.numpy(), q_lens, left=chunk)

    return {
        "attngraph-numba varlen": lambda: numba_varlen(feed)["y"],
        "attngraph-numba padded": lambda: _unpad(numba_padded(q=pq, k=pk, v=pv, key_lengths=key_lengths)["y"],
                                                 q_lens, left=chunk),
        "attngraph-torch varlen": lambda: torch_varlen(feed)["y"],
        "attngraph-numpy varlen": lambda: numpy_varlen(feed)["y"],
        "attngraph-onnx varlen": lambda: onnx_varlen(feed)["y"],
        "torch SDPA block-diagonal": no_grad(lambda: sdpa(tq, tk, tv, attn_mask=tmask).numpy()),
        "torch SDPA padded": no_grad(sdpa_padded),
    }, (q, k, v, cu_q, cu_k), q_lens


def main(argv=None) -> int:
    args = _args(argv)
    runs, problem, q_lens = contenders(args)
    ref = _reference(*problem)
    errors = {}
    for name, run in runs.items():
        got = np.asarray(run(), np.float64)
        errors[name] = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    load_before = load_line()
    timings = round_robin(runs, rounds=args.rounds, warmup=1, budget_s=args.budget)
    load_after = load_line()
    lengths, chunk = args.lengths, bool(args.q_len)
    real, padded = sum(lengths), len(lengths) * max(lengths)
    width = max(q_lens)
    # score pairs each contender computes: per-sequence causal tiles; the padded flash kernel (key lengths end its
    # key blocks; its padding query rows still see their keys); SDPA on the padded batch (causal flash skips the
    # future half in prefill; a chunk needs a dense mask: nothing skipped); one dense (Tq, Tk) block-diagonal mask
    def padded_rows(n):  # keys each padded query row of a sequence of n keys sees in the numba padded kernel
        r = np.arange(width)
        return np.clip((n - width + r + 1) if chunk else (r + 1), 0, n).sum()

    work = {"varlen": sum(q * (n - q) + q * (q + 1) / 2 for q, n in zip(q_lens, lengths)),
            "numba padded": sum(padded_rows(n) for n in lengths),
            "padded": len(lengths) * width * max(lengths) if chunk else len(lengths) * width * (width + 1) / 2,
            "dense": sum(q_lens) * real,
            "varlen_full": sum(q * n for q, n in zip(q_lens, lengths))}  # numpy's chunked attention: no skip
    ratio = {key: f"{w / max(work['varlen'], 1):.2f}" for key, w in work.items()}
    expect = {"attngraph-numba varlen": "1", "attngraph-numba padded": ratio["numba padded"],
              "attngraph-torch varlen": "1", "attngraph-numpy varlen": ratio["varlen_full"],
              "attngraph-onnx varlen": ratio["dense"], "torch SDPA block-diagonal": ratio["dense"],
              "torch SDPA padded": ratio["padded"]}
    base = timings["attngraph-numba varlen"].median_ms
    rows = [[name, f"{t.median_ms:.2f}", t.spread, f"{t.median_ms / base:.2f}", expect[name], f"{errors[name]:.1e}"]
            for name, t in timings.items()]
    what = (f"the last {args.q_len} tokens of each sequence against all its keys (a chunked prefill, causal "
            f"bottom-right)" if chunk else "a causal prefill")
    lines = [
        "# Packed variable-length batch vs a padded batch (CPU): " + (f"chunk of {args.q_len}" if chunk else "prefill"),
        "", f"{len(lengths)} sequences, lengths {lengths}: {real} real tokens, {padded} padded "
        f"({padded / real:.2f}x); {what}, {sum(q_lens)} queries; {args.heads} q heads / {args.kv_heads} kv heads, head "
        f"dim {args.head_dim}, fp32; {args.threads} threads; {len(next(iter(timings.values())).samples)} round-robin "
        "rounds.", "",
        f"Load before: `{load_before}`", f"Load after: `{load_after}`", "",
        table(["contender", "median ms", "spread ms", "x numba varlen", "expected x (score pairs)", "rel err vs f64"],
              rows), "",
        "Expected x: the score pairs each contender computes over those of the per-sequence causal tiles: the padded "
        "numba kernel adds its padding query rows (against the valid keys), SDPA on the padded batch computes "
        f"{'every (query, key) pair of the padded chunk' if chunk else 'the causal half of every padded sequence'}, "
        "one dense block-diagonal mask computes every packed (query, key) pair, numpy's per-sequence chunked "
        f"attention the full rectangle of each sequence. Real / padded tokens = {real / padded:.2f}.",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
