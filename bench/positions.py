"""``python -m bench.positions``: the attention that models run today, every attngraph backend beside the
peers, round-robin in one process.

1. rotary + GQA causal prefill (d_model 2048, 16 heads, 4 kv heads, Llama-style rotate_half, no bias),
   T 512..4096: attngraph's numpy, numba, torch and onnx (onnxruntime running the exported model, which
   uses ONNX ``RotaryEmbedding`` + ``Attention``) beside torch (explicit rotary + SDPA, as HF does);
2. ALiBi causal prefill (d_model 2048, 16 heads, Bloom-style, after the scale), the same contenders, the
   torch peer passing ALiBi as SDPA's float attn_mask;
3. the Numba kernel's ALiBi and sink overhead over plain causal attention (core attention, 16 heads,
   head dim 128): the target is under 15%.

    python -m bench.positions [--seqs 512 1024 2048 4096] [--rounds 5] [--out bench/reports/cpu-positions.md]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.roundrobin import publish, round_robin, table


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.positions",
                                description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="prefill lengths")
    p.add_argument("--rounds", type=int, default=5, help="round-robin rounds per shape")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per shape (at least 3 rounds)")
    p.add_argument("--out", help="write the Markdown report here")
    return p.parse_args(argv)


def _torch_peer(weights, x, heads, kv_heads, rope, alibi):
    """Explicit projections, HF-style rotate_half rotary (cos/sin computed per call) and SDPA."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(np.ascontiguousarray(v.T)) for k, v in weights.items()}
    xt = torch.from_numpy(x)
    b, t, d = x.shape
    hd = d // heads
    inv = torch.tensor(rope, dtype=torch.float32) if rope else None
    bias = torch.from_numpy(alibi) if alibi is not None else None

    def rotate(u, cos, sin):
        half = u.shape[-1] // 2
        return u * cos + torch.cat([-u[..., half:], u[..., :half]], dim=-1) * sin

    def run():
        with torch.inference_mode():
            q = F.linear(xt, w["w_q"]).view(b, t, heads, hd).transpose(1, 2)
            k = F.linear(xt, w["w_k"]).view(b, t, kv_heads, hd).transpose(1, 2)
            v = F.linear(xt, w["w_v"]).view(b, t, kv_heads, hd).transpose(1, 2)
            if inv is not None:
                freqs = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
                emb = torch.cat([freqs, freqs], dim=-1)
                cos, sin = emb.cos(), emb.sin()
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            if bias is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != heads)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return F.linear(y.transpose(1, 2).reshape(b, t, d), w["w_o"]).numpy()
    return run


def _alibi_mask(slopes, t):
    """Bloom's ALiBi plus the causal mask as one float (1, H, T, T) tensor, for the torch peer."""
    j = np.arange(t)
    dist = (j[None, :] - j[:, None]).astype(np.float32)
    mask = np.where(dist > 0, -np.inf, 0.0).astype(np.float32)
    return (np.asarray(slopes, np.float32)[:, None, None] * dist[None] + mask[None])[None]


def prefill(workload: str, t: int, rounds: int, budget: float):
    import attngraph as ag
    from attngraph.frontends.positions import alibi_slopes, rope_frequencies

    heads, kv_heads = 16, 4 if workload == "rotary" else 16
    knobs = {"rotary": "half"} if workload == "rotary" else {"alibi": "after_scale"}
    g = ag.causal_self_attention(2048, heads, num_kv_heads=kv_heads, bias=False, **knobs)
    w = ag.Weights.random(g, seed=0)
    x = np.random.default_rng(1).standard_normal((1, t, 2048)).astype(np.float32)
    runs = {f"attngraph-{b}": (lambda ex=ag.compile(g, b, weights=w): ex(x=x)["y"])
            for b in ("numpy", "numba", "torch", "onnx")}
    rope = rope_frequencies(2048 // heads)[0] if workload == "rotary" else None
    alibi = _alibi_mask(alibi_slopes(heads), t) if workload == "alibi" else None
    runs["torch (rotary + SDPA)" if rope else "torch (SDPA, ALiBi mask)"] = _torch_peer(dict(w), x, heads, kv_heads,
                                                                                     rope, alibi)
    ref = runs["attngraph-numpy"]()
    errors = {n: float(np.linalg.norm(r() - ref) / np.linalg.norm(ref)) for n, r in runs.items()}
    return round_robin(runs, rounds=rounds, budget_s=budget), errors


def numba_overhead(t: int, rounds: int, budget: float):
    import attngraph as ag

    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 16, t, 128)).astype(np.float32) for _ in range(3))
    graphs = {"causal": ag.core_attention(16, 128, causal=True),
              "causal + ALiBi": ag.core_attention(16, 128, causal=True, alibi="after_scale"),
              "causal + sinks": ag.core_attention(16, 128, causal=True, sinks=True)}
    runs = {}
    for name, g in graphs.items():
        ex = ag.compile(g, "numba", weights=ag.Weights.random(g, seed=0))
        runs[name] = lambda ex=ex: ex(q=q, k=k, v=v)["y"]
    return round_robin(runs, rounds=rounds, budget_s=budget)


def main(argv=None) -> int:
    args = _args(argv)
    lines = ["# Position encodings: rotary, ALiBi, sinks (CPU, fp32, batch 1)", ""]
    for workload in ("rotary", "alibi"):
        lines += [f"## {workload} causal prefill, d_model 2048, 16 heads"
                  + (", 4 kv heads" if workload == "rotary" else ""), ""]
        rows = []
        for t in args.seqs:
            print(f"{workload} T={t} ...", file=sys.stderr, flush=True)
            timings, errors = prefill(workload, t, args.rounds, args.budget)
            best_peer = min(v.median_ms for n, v in timings.items() if not n.startswith("attngraph"))
            for name, tm in timings.items():
                rows.append([str(t), name, f"{tm.median_ms:.1f}", tm.spread, f"{tm.median_ms / best_peer:.2f}",
                             f"{errors[name]:.1e}"])
        lines += [table(["T", "implementation", "median ms", "range ms", "x torch peer", "rel err vs numpy"], rows), ""]
    print("numba overhead ...", file=sys.stderr, flush=True)
    over = numba_overhead(2048, args.rounds, args.budget)
    base = over["causal"].median_ms
    lines += ["## Numba kernel: ALiBi and sinks over plain causal (core attention, T 2048, 16 heads, head dim 128)", "",
              table(["variant", "median ms", "range ms", "overhead"],
                    [[n, f"{t.median_ms:.1f}", t.spread, f"{100 * (t.median_ms / base - 1):+.1f}%"]
                     for n, t in over.items()]), ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
