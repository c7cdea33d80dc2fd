"""``python -m bench.generate``: whole-model greedy generation with transformers' ``generate()``, every attention
layer on an attngraph backend (``attngraph.transformers.use``) beside transformers' own ``sdpa`` and ``eager``,
round-robin in one process on one model.

A random-weight Llama-shaped model (nothing is downloaded): hidden 1024, 8 layers, 16 query / 4 kv heads (head
dim 64), MLP 2816, vocabulary 32000, fp32, batch 1; a 512-token random prompt, then 128 greedy tokens. Each
round runs every contender once; the table gives the medians of prefill and decode tokens/s, their ratio to
sdpa, and whether the greedy tokens equal eager's. A separate, untimed-for-the-table pass times each contender's
attention function (the part an attention implementation replaces) against the whole prefill and decode step,
so the report says how much of the time attention is at all.

    python -m bench.generate [--backends numba,torch,onnx,numpy] [--rounds 3] [--cache dynamic|static]
    python -m bench.generate --quick          # a tiny model: a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass

from bench.roundrobin import publish, table

FULL = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
        "num_key_value_heads": 4, "vocab_size": 32000, "prompt": 512, "new_tokens": 128}
QUICK = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128, "prompt": 16, "new_tokens": 8}
PEERS = ("sdpa", "eager")
REPORT = "bench/reports/cpu-generate.md"


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny model and prompt: a smoke run")
    p.add_argument("--backends", default="numba,torch,onnx,numpy",
                   help="comma-separated attngraph backends (auto, numpy, numba, torch, onnx)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds (each runs every contender once)")
    p.add_argument("--cache", default="dynamic", choices=["dynamic", "static"], help="transformers' cache")
    p.add_argument("--prompt", type=int, help="prompt tokens (default: 512, or 16 with --quick)")
    p.add_argument("--new-tokens", type=int, help="greedy tokens (default: 128, or 8 with --quick)")
    p.add_argument("--out", help=f"write the Markdown report here (default: {REPORT}, none with --quick)")
    return p.parse_args(argv)


def build_model(shape: dict):
    """The random-weight Llama-shaped model (seeded), eager to start with."""
    import torch
    import transformers as tf

    config = tf.LlamaConfig(**{k: v for k, v in shape.items() if k not in ("prompt", "new_tokens")},
                            max_position_embeddings=4096)
    torch.manual_seed(0)
    return tf.LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()


@dataclass
class Result:
    """Every round's figures of one contender."""

    name: str
    prefill: list[float]
    decode: list[float]
    tokens: object = None
    attention: tuple[float, float, float, float] | None = None  # prefill attn s, prefill s, decode attn s, decode s

    @property
    def prefill_tok_s(self) -> float:
        return statistics.median(self.prefill)

    @property
    def decode_tok_s(self) -> float:
        return statistics.median(self.decode)


def rounds(model, names: list[str], ids, new_tokens: int, n_rounds: int, cache: str) -> dict[str, Result]:
    """Round-robin: every round runs each contender once (after one untimed warm-up each)."""
    from attngraph.frontends.transformers import generation as gen

    results = {n: Result(n, [], []) for n in names}
    for name in names:
        print(f"warming up {name} ...", file=sys.stderr, flush=True)
        gen.switch(model, name)
        gen.greedy(model, ids[:, :16], 2, cache=cache)
    for r in range(n_rounds):
        for name in names:
            gen.switch(model, name)
            t0 = time.perf_counter()
            run = gen.greedy(model, ids, new_tokens, cache=cache)
            results[name].prefill.append(run.prefill_tok_s)
            results[name].decode.append(run.decode_tok_s)
            results[name].tokens = run.tokens
            print(f"round {r + 1}/{n_rounds} {name}: prefill {run.prefill_tok_s:.0f} tok/s, decode "
                  f"{run.decode_tok_s:.2f} tok/s ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return results


def attention_split(model, names: list[str], ids, new_tokens: int, cache: str, results: dict[str, Result]) -> None:
    """One more generation per contender with its attention function timed (``bench.attention_timing``)."""
    from bench.attention_timing import timed_attention

    from attngraph.frontends.transformers import generation as gen

    for name in names:
        print(f"timing {name}'s attention ...", file=sys.stderr, flush=True)
        gen.switch(model, name)
        with timed_attention(model, name) as spent:
            run = gen.greedy(model, ids, new_tokens, cache=cache)
        results[name].attention = (spent["prefill"], run.prefill_s, spent["decode"], run.decode_s)


def report(results: dict[str, Result], shape: dict, args) -> list[str]:
    sdpa = results.get("sdpa")
    eager = results.get("eager")
    rows = []
    for r in results.values():
        same = "-" if eager is None or r is eager else ("yes" if bool((r.tokens == eager.tokens).all()) else "NO")
        rows.append([r.name, f"{r.prefill_tok_s:.1f}", f"{r.decode_tok_s:.2f}",
                     f"{r.prefill_tok_s / sdpa.prefill_tok_s:.2f}" if sdpa else "-",
                     f"{r.decode_tok_s / sdpa.decode_tok_s:.2f}" if sdpa else "-", same])
    split = []
    for r in results.values():
        if r.attention:
            pa, p, da, d = r.attention
            steps = max(len(r.tokens[0]) - 1, 1)
            split.append([r.name, f"{pa * 1e3:.1f} of {p * 1e3:.1f}", f"{100 * pa / p:.1f}%",
                          f"{da / steps * 1e3:.2f} of {d / steps * 1e3:.2f}", f"{100 * da / d:.1f}%"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ceiling = []
    if sdpa is not None and sdpa.attention:
        pa, p, da, d = sdpa.attention
        ceiling = ["", f"sdpa's attention is {100 * pa / p:.1f}% of its prefill and {100 * da / d:.1f}% of its decode "
                   f"step: an attention implementation that took no time at all would make the whole model at most "
                   f"{p / (p - pa):.2f}x faster at prefill and {d / (d - da):.2f}x at decode; the rest is the model's "
                   "own projections, MLP and LM head, which every contender runs the same."]
    return [
        "# Greedy generation, whole model: attngraph attention vs transformers "
        f"(CPU, fp32, batch 1, {args.cache} cache)",
        "",
        f"Llama-shaped, random weights: hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, MLP {shape['intermediate_size']}, "
        f"vocabulary {shape['vocab_size']}; prompt {shape['prompt']}, {shape['new_tokens']} new tokens. "
        f"Medians of {args.rounds} round-robin rounds in one process; {os.cpu_count()} cores, load average "
        f"{load:.1f} at the end (a shared machine: compare within a row).",
        "",
        table(["contender", "prefill tok/s", "decode tok/s", "prefill x sdpa", "decode x sdpa", "tokens = eager"],
              rows),
        "",
        "## Where the time goes: the attention function against the whole step (one timed generation each)",
        "",
        table(["contender", "prefill: attention ms of total", "share", "decode: attention ms of total per token",
               "share"], split),
        *ceiling,
        "",
    ]


def main(argv=None) -> int:
    args = _args(argv)
    shape = dict(QUICK if args.quick else FULL)
    shape["prompt"] = args.prompt or shape["prompt"]
    shape["new_tokens"] = args.new_tokens or shape["new_tokens"]
    from attngraph.frontends.transformers import generation as gen
    from attngraph.frontends.transformers.integration import implementation_name

    names = [implementation_name(b.strip()) for b in args.backends.split(",") if b.strip()] + list(PEERS)
    print("building the model ...", file=sys.stderr, flush=True)
    model = build_model(shape)
    ids = gen.random_prompt(1, shape["prompt"], shape["vocab_size"], seed=1)
    results = rounds(model, names, ids, shape["new_tokens"], args.rounds, args.cache)
    attention_split(model, names, ids, shape["new_tokens"], args.cache, results)
    publish(report(results, shape, args), args.out or (None if args.quick else REPORT))
    mismatched = [r.name for r in results.values() if not bool((r.tokens == results["eager"].tokens).all())]
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
