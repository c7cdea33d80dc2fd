"""``python -m bench.latent``: the decode step of multi-head latent attention (MLA, DeepSeek-V2/V3) on the CPU.

A DeepSeek-V2-Lite attention layer (hidden 2048, 16 heads, no query LoRA, kv_lora_rank 512, nope 128, rope 64,
value 128), fp32, one new token per row against a cache of ``cache`` tokens (``cache - 1`` cached, the step writes
the last slot), round-robin in one process.

Two tables per shape:

* **core**: the absorbed core alone (``latent_attention``), which reads the latent cache (B, 1, M, 512) and the
  rope key cache (B, 1, M, 64) and nothing else: bytes read = the latent caches' bytes. Its floor is those bytes
  over the memory bandwidth measured in the same rounds by copying the same caches (numpy's copy, and torch's
  two-thread copy; bandwidth = bytes read + written / time, the faster of the two); the target is 2x the floor.
  The peer is the same absorbed math by hand in torch (two matmuls, softmax, matmul).
* **layer**: the whole layer step (projections included): attngraph's absorbed and naive graphs with the static
  latent cache, against transformers' ``DeepseekV3Attention`` (eager and sdpa) with its ``DynamicCache`` (which
  caches the latent too but expands it through ``kv_b_proj`` to per-head keys and values at every step). The
  layer's floor adds the weights' bytes to the caches'.

    python -m bench.latent [--batches 1 4] [--caches 4096 16384 65536] [--out bench/reports/cpu-latent.md]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.roundrobin import publish, round_robin, table

V2_LITE = {"hidden_size": 2048, "num_heads": 16, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
           "v_head_dim": 128}
BACKENDS = ("numba", "numpy", "torch", "onnx")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.latent", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes")
    p.add_argument("--caches", type=int, nargs="+", default=[4096, 16384, 65536], help="tokens after the step")
    p.add_argument("--layer-caches", type=int, nargs="*", default=[4096, 16384], help="caches of the layer table (batch 1)")
    p.add_argument("--heads", type=int, default=V2_LITE["num_heads"])
    p.add_argument("--hidden", type=int, default=V2_LITE["hidden_size"])
    p.add_argument("--rank", type=int, default=V2_LITE["kv_lora_rank"], help="kv_lora_rank")
    p.add_argument("--rope", type=int, default=V2_LITE["qk_rope_head_dim"], help="qk_rope_head_dim")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--budget", type=float, default=40.0, help="seconds per table (at least 3 rounds)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny shapes (the smoke test)")
    p.add_argument("--out", help="write the Markdown report here")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.caches, args.layer_caches = [1], [64], [32]
        args.heads, args.hidden, args.rank, args.rope, args.rounds, args.budget = 4, 64, 32, 8, 3, 2.0
    return args


def _dims(args) -> dict:
    nope = V2_LITE["qk_nope_head_dim"] if not args.quick else 16
    return {"hidden_size": args.hidden, "num_heads": args.heads, "kv_lora_rank": args.rank, "qk_nope_head_dim": nope,
            "qk_rope_head_dim": args.rope, "v_head_dim": nope}


# ---- the core: latent_attention on the latent caches -----------------------------------------------------

def _core_problem(batch, heads, rank, rope, cache, seed=0):
    rng = np.random.default_rng(seed)
    q_lat = rng.standard_normal((batch, heads, 1, rank), dtype=np.float32)
    q_rope = rng.standard_normal((batch, heads, 1, rope), dtype=np.float32)
    latent = rng.standard_normal((batch, 1, cache, rank), dtype=np.float32)
    rope_key = rng.standard_normal((batch, 1, cache, rope), dtype=np.float32)
    return q_lat, q_rope, latent, rope_key


def _core_graph(heads, rank, rope, cache, scale):
    import attngraph as ag

    b = ag.GraphBuilder("mla_core_step")
    ins = [b.input("q_latent", "float32", ("batch", heads, 1, rank)), b.input("q_rope", "float32", ("batch", heads, 1, rope)),
           b.input("latent", "float32", ("batch", 1, cache, rank)), b.input("rope_key", "float32", ("batch", 1, cache, rope))]
    lengths = b.input("kv_lengths", "int64", ("batch",))
    y = b.op(ag.Op.LATENT_ATTENTION, *ins, lengths, scale=scale, causal=True, align="lengths", operands=("lengths",),
             name="y")
    return b.build([y])


def _core_reference(q_lat, q_rope, latent, rope_key, scale):
    d = np.float64
    s = (np.einsum("bhqr,bkr->bhqk", q_lat.astype(d), latent[:, 0].astype(d))
         + np.einsum("bhqe,bke->bhqk", q_rope.astype(d), rope_key[:, 0].astype(d))) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bkr->bhqr", p / p.sum(-1, keepdims=True), latent[:, 0].astype(d))


def _attngraph_core(backend, problem, scale):
    import attngraph as ag

    q_lat, q_rope, latent, rope_key = problem
    ex = ag.compile(_core_graph(q_lat.shape[1], q_lat.shape[3], q_rope.shape[3], latent.shape[2], scale), backend)
    feed = {"q_latent": q_lat, "q_rope": q_rope, "latent": latent, "rope_key": rope_key,
            "kv_lengths": np.full(q_lat.shape[0], latent.shape[2], np.int64)}
    box = {}

    def step():
        box["y"] = ex(feed)["y"]
    return step, lambda: np.asarray(box["y"])


def _torch_core(problem, scale):
    """The absorbed core by hand in torch: two matmuls, softmax, matmul (the latent as key and value)."""
    import torch

    q_lat, q_rope, latent, rope_key = (torch.from_numpy(x) for x in problem)
    box = {}

    def step():
        with torch.inference_mode():
            s = (q_lat @ latent.transpose(2, 3) + q_rope @ rope_key.transpose(2, 3)) * scale
            box["y"] = torch.softmax(s, dim=-1) @ latent
    return step, lambda: box["y"].numpy()


def _copies(arrays):
    """Copying the arrays once: numpy's copy and torch's parallel copy (both cores)."""
    import torch

    dst = [np.empty_like(a) for a in arrays]
    src_t, dst_t = [torch.from_numpy(a) for a in arrays], [torch.empty_like(torch.from_numpy(a)) for a in arrays]

    def numpy_copy():
        for d, s in zip(dst, arrays, strict=True):
            np.copyto(d, s)

    def torch_copy():
        for d, s in zip(dst_t, src_t, strict=True):
            d.copy_(s)
    return {"copy: numpy": (numpy_copy, None), "copy: torch": (torch_copy, None)}


def _bandwidth(timings, nbytes) -> tuple[float, str]:
    """GB/s of the faster copy (read + write) and its name."""
    name = min(("copy: numpy", "copy: torch"), key=lambda n: timings[n].median_ms)
    return 2 * nbytes / (timings[name].median_ms * 1e-3) / 1e9, name


def core_table(batch, cache, args):
    dims = _dims(args)
    scale = 1.0 / np.sqrt(dims["qk_nope_head_dim"] + args.rope)
    problem = _core_problem(batch, args.heads, args.rank, args.rope, cache)
    runs = {**_copies(problem[2:]), **{f"attngraph-{b}": _attngraph_core(b, problem, scale) for b in BACKENDS},
            "torch absorbed core by hand": _torch_core(problem, scale)}
    ref = _core_reference(*problem, scale)
    errors = {}
    for name, (step, read) in runs.items():
        if read is not None:
            step()
            errors[name] = float(np.abs(read() - ref).max() / np.abs(ref).max())
    timings = round_robin({n: s for n, (s, _) in runs.items()}, rounds=args.rounds, warmup=2, budget_s=args.budget,
                          inner=3, pause_s=0.02)
    nbytes = problem[2].nbytes + problem[3].nbytes
    bw, via = _bandwidth(timings, nbytes)
    floor = nbytes / (bw * 1e9) * 1e3
    rows = [[n, f"{t.median_ms:.3f}", t.spread, f"{t.median_ms / floor:.2f}", f"{errors[n]:.1e}" if n in errors else ""]
            for n, t in timings.items()]
    best = timings["attngraph-numba"].median_ms
    summary = (f"bytes read by the step = latent + rope key caches = {nbytes / 2**20:.1f} MiB; bandwidth {bw:.1f} GB/s "
               f"({via}); floor {floor:.3f} ms; attngraph-numba {best:.3f} ms = **{best / floor:.2f}x the floor** "
               f"(target 2x); the torch peer {timings['torch absorbed core by hand'].median_ms / best:.2f}x "
               "attngraph-numba's time")
    return table(["contender", "median ms", "range ms", "x floor", "max err / max |y|"], rows), summary


# ---- the layer: attngraph's static latent cache against transformers' DeepseekV3Attention -----------------------

def _hf_layer(dims, impl, threads):
    import torch
    import transformers
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

    torch.set_num_threads(threads)
    config = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=dims["hidden_size"], intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=dims["num_heads"], num_key_value_heads=dims["num_heads"], q_lora_rank=None,
        kv_lora_rank=dims["kv_lora_rank"], qk_nope_head_dim=dims["qk_nope_head_dim"],
        qk_rope_head_dim=dims["qk_rope_head_dim"], v_head_dim=dims["v_head_dim"], max_position_embeddings=1 << 17)
    config._attn_implementation = impl
    torch.manual_seed(0)
    return m.DeepseekV3Attention(config, 0).eval(), m.DeepseekV3RotaryEmbedding(config).eval(), config


def layer_table(cache, args):
    import torch
    from transformers import DynamicCache

    import attngraph as ag

    dims, batch = _dims(args), 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, dims["hidden_size"]), dtype=np.float32)
    past_c = rng.standard_normal((batch, 1, cache - 1, dims["kv_lora_rank"]), dtype=np.float32)
    past_r = rng.standard_normal((batch, 1, cache - 1, dims["qk_rope_head_dim"]), dtype=np.float32)
    runs, hf_out = {}, {}
    for impl in ("eager", "sdpa"):
        attn, rotary, config = _hf_layer(dims, impl, args.threads)
        runs[f"transformers DeepseekV3Attention {impl}"] = _hf_step(attn, rotary, x, past_c, past_r, cache, hf_out, impl)
    imported = ag.from_transformers(attn)  # the weights (sdpa's module: the same seed, the same weights)
    # transformers' V3 stores the rotated rope key de-interleaved ([evens, odds]); attngraph keeps pairs in place
    ours_r = np.empty_like(past_r)
    half = past_r.shape[3] // 2
    ours_r[..., 0::2], ours_r[..., 1::2] = past_r[..., :half], past_r[..., half:]
    for absorbed in (True, False):
        g = ag.latent_attention(**dims, scale=float(attn.scaling), kv_cache="static", max_len=cache)
        runs[f"attngraph-numba {'absorbed' if absorbed else 'naive'}"] = _ag_step(
            ag.absorb_mla(g) if absorbed else g, imported.weights, x, past_c, ours_r, cache)
    copies = _copies([*(np.array(w) for w in imported.weights.values()), past_c, past_r])
    runs.update(copies)
    for _, (step, _) in runs.items():
        step()
    errors = {n: float(np.abs(read() - hf_out["eager"]).max() / np.abs(hf_out["eager"]).max())
              for n, (_, read) in runs.items() if read is not None}
    timings = round_robin({n: s for n, (s, _) in runs.items()}, rounds=args.rounds, warmup=1, budget_s=args.budget,
                          inner=1, pause_s=0.02)
    nbytes = sum(np.asarray(w).nbytes for w in imported.weights.values()) + past_c.nbytes + past_r.nbytes
    bw, via = _bandwidth(timings, nbytes)
    floor = nbytes / (bw * 1e9) * 1e3
    rows = [[n, f"{t.median_ms:.2f}", t.spread, f"{t.median_ms / floor:.2f}",
             f"{errors[n]:.1e}" if n in errors else ""] for n, t in timings.items()]
    mine = timings["attngraph-numba absorbed"].median_ms
    peers = {n: t.median_ms for n, t in timings.items() if n.startswith("transformers")}
    best_peer = min(peers, key=peers.get)
    summary = (f"bytes: weights + latent caches = {nbytes / 2**20:.1f} MiB, bandwidth {bw:.1f} GB/s ({via}), floor "
               f"{floor:.2f} ms; attngraph-numba absorbed {mine:.2f} ms = {mine / floor:.2f}x the floor, "
               f"{peers[best_peer] / mine:.1f}x faster than {best_peer} ({peers[best_peer]:.2f} ms)")
    return table(["contender", "median ms", "range ms", "x floor", "max err / max |y| vs eager"], rows), summary


def _hf_step(attn, rotary, x, past_c, past_r, cache, out, impl):
    import torch
    from transformers import DynamicCache

    kv = DynamicCache(config=attn.config)
    kv.update(torch.from_numpy(past_c), torch.from_numpy(past_r), 0)
    xt = torch.from_numpy(x)
    emb = rotary(xt, torch.full((x.shape[0], 1), cache - 1))
    box = {}

    def step():
        with torch.inference_mode():
            box["y"] = attn(xt, position_embeddings=emb, attention_mask=None, cache=kv)[0]
        kv.crop(-1)  # drop the new token: the next step writes the same slot again
        out.setdefault(impl, box["y"].numpy())
    return step, lambda: box["y"].numpy()


def _ag_step(graph, weights, x, past_c, past_r, cache):
    import attngraph as ag

    ex = ag.compile(graph, "numba", weights=weights)
    lat = np.zeros((x.shape[0], 1, cache, past_c.shape[3]), np.float32)
    rk = np.zeros((x.shape[0], 1, cache, past_r.shape[3]), np.float32)
    lat[:, :, :cache - 1], rk[:, :, :cache - 1] = past_c, past_r
    feed = {"x": x, "past_latent": lat, "past_rope_key": rk, "cache_lengths": np.full(x.shape[0], cache - 1, np.int64)}
    box = {}

    def step():
        box["y"] = ex(feed)["y"]  # writes slot cache - 1 in place, every step the same values
    return step, lambda: np.asarray(box["y"])


def main(argv=None) -> int:
    args = _args(argv)
    import os

    load = os.getloadavg()
    dims = _dims(args)
    lines = [f"# MLA decode step: {dims['num_heads']} heads, kv_lora_rank {dims['kv_lora_rank']}, rope "
             f"{dims['qk_rope_head_dim']}, nope {dims['qk_nope_head_dim']}, value {dims['v_head_dim']}, hidden "
             f"{dims['hidden_size']}, fp32 (CPU, round-robin medians; load at start {load[0]:.2f})", ""]
    for batch in args.batches:
        for cache in args.caches:
            print(f"core: batch {batch}, cache {cache} ...", file=sys.stderr, flush=True)
            text, summary = core_table(batch, cache, args)
            lines += [f"## Core step, batch {batch}, cache {cache}", "", text, "", summary, ""]
    for cache in args.layer_caches:
        print(f"layer: cache {cache} ...", file=sys.stderr, flush=True)
        text, summary = layer_table(cache, args)
        lines += [f"## Layer step, batch 1, cache {cache}", "", text, "", summary, ""]
    lines.append(f"load average at the end: {os.getloadavg()[0]:.2f}")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
