"""``python -m bench.hf_layer``: one decoder layer's attention of a Llama-shaped model imported with
``from_transformers``, every attngraph backend beside the module's own eager and sdpa forward, round-robin
in one process.

d_model 2048, 32 heads, 8 kv heads, head dim 64 (random weights from a config: nothing is downloaded).
Prefill at T 512 and 2048 (batch 1, causal), and one decode step against a 2048-token cache. The
module is called exactly as its model calls it (arguments captured by a forward pre-hook while the
model runs), so it pays for its own rotary, mask and cache handling, as attngraph's graph does.
Decode: the module appends to its ``DynamicCache`` (torch.cat; cropped back before each call), the imported
graph takes the cache as ``past_key``/``past_value`` (concat); ``attngraph-numba (static)`` runs the same layer built with
``kv_cache="static"`` (the cache written in place, in a 4096-slot buffer).

    python -m bench.hf_layer [--seqs 512 2048] [--cache 2048] [--out bench/reports/cpu-hf-layer.md]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys

import numpy as np

from bench.roundrobin import publish, round_robin, table

BACKENDS = ("numpy", "numba", "torch", "onnx")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.hf_layer", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[512, 2048], help="prefill lengths")
    p.add_argument("--cache", type=int, default=2048, help="cached tokens before the decode step")
    p.add_argument("--rounds", type=int, default=7, help="round-robin rounds per shape")
    p.add_argument("--budget", type=float, default=90.0, help="seconds per shape (at least 3 rounds)")
    p.add_argument("--out", help="write the Markdown report here")
    return p.parse_args(argv)


def _models():
    """The same random Llama-shaped layer twice: eager and sdpa."""
    import torch
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=128, hidden_size=2048, intermediate_size=256, num_hidden_layers=1,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                            max_position_embeddings=8192)
    torch.manual_seed(0)
    models = {}
    for impl in ("eager", "sdpa"):
        config._attn_implementation = impl
        model = tf.LlamaForCausalLM(copy.deepcopy(config)).eval()
        if models:
            model.load_state_dict(next(iter(models.values())).state_dict())
        models[impl] = model
    return models


def _captured_call(model, ids, cache=None):
    """Run the model once; return the attention module and the (args, kwargs) its model called it with."""
    import torch

    module = model.model.layers[0].self_attn
    seen = {}

    def hook(mod, args, kwargs):
        seen["call"] = (args, dict(kwargs))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
    finally:
        handle.remove()
    return module, seen["call"]


def _module_run(module, call, cache=None, keep=0):
    """The module called as its model called it; with ``cache``, first cropped back to ``keep`` tokens (a
    view, no copy), so every timed call appends the same one token to the same cache, as a decode step."""
    import torch

    args, kwargs = call

    def run():
        with torch.inference_mode():
            if cache is not None and cache.get_seq_length() > keep:
                cache.crop(keep - cache.get_seq_length())  # transformers 5: a negative count of tokens to drop
            return module(*args, **kwargs)[0]
    return run


def prefill(models, t, rounds, budget):
    import torch

    import attngraph as ag

    ids = torch.randint(3, 128, (1, t), generator=torch.Generator().manual_seed(1))
    runs, outputs = {}, {}
    for impl, model in models.items():
        module, call = _captured_call(model, ids)
        runs[f"transformers {impl}"] = _module_run(module, call)
    imported = ag.from_transformers(models["eager"].model.layers[0].self_attn)
    feed = imported.inputs(call[0][0] if call[0] else call[1]["hidden_states"])
    for backend in BACKENDS:
        ex = ag.compile(imported, backend)
        runs[f"attngraph-{backend}"] = lambda ex=ex: ex(feed)["y"]
    for name, run in runs.items():
        out = run()
        outputs[name] = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    return round_robin(runs, rounds=rounds, budget_s=budget, pause_s=0.02), _errors(outputs)


def decode(models, cache_len, rounds, budget):
    import torch
    import transformers as tf

    import attngraph as ag
    from attngraph.frontends.constructors import build_attention

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 128, (1, cache_len), generator=gen)
    nxt = torch.randint(3, 128, (1, 1), generator=gen)
    runs, outputs = {}, {}
    imported = ag.from_transformers(models["eager"].model.layers[0].self_attn)
    for impl, model in models.items():
        cache = tf.DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=ids, past_key_values=cache, use_cache=True)
        if impl == "eager":  # the imported graph's feed, from the model's own cache before the step
            keys, values = (t.numpy().copy() for t in (cache.layers[0].keys, cache.layers[0].values))
        module, call = _captured_call(model, nxt, cache)
        hidden = call[0][0] if call[0] else call[1]["hidden_states"]
        runs[f"transformers {impl}"] = _module_run(module, call, cache, cache_len)
    feed = imported.inputs(hidden, past_key_values=(keys, values))
    for backend in BACKENDS:
        ex = ag.compile(imported, backend)
        runs[f"attngraph-{backend}"] = lambda ex=ex: ex(feed)["y"]
    static = build_attention(dataclasses.replace(imported.config, kv_cache="static", max_len=2 * cache_len,
                                                 mask=None, mask_shape=None, key_padding=False))
    ex = ag.compile(static, "numba", weights=imported.weights)
    buffers = {n: np.zeros((1, 8, 2 * cache_len, 64), np.float32) for n in ("past_key", "past_value")}
    buffers["past_key"][:, :, :cache_len], buffers["past_value"][:, :, :cache_len] = keys, values
    static_feed = {"x": feed["x"], "cache_lengths": np.array([cache_len]), **buffers,
                   **({"position_ids": feed["position_ids"]} if "position_ids" in feed else {})}
    runs["attngraph-numba (static)"] = lambda: ex(static_feed)["y"]
    for name, run in runs.items():
        out = run()
        outputs[name] = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    return round_robin(runs, rounds=rounds, budget_s=budget, pause_s=0.02), _errors(outputs)


def _errors(outputs):
    ref = outputs["transformers eager"].astype(np.float64)
    return {n: float(np.linalg.norm(o - ref) / np.linalg.norm(ref)) for n, o in outputs.items()}


def _rows(timings, errors):
    best_hf = min(t.median_ms for n, t in timings.items() if n.startswith("transformers"))
    return [[n, f"{t.median_ms:.2f}", t.spread, f"{t.median_ms / best_hf:.2f}", f"{errors[n]:.1e}"]
            for n, t in timings.items()]


def main(argv=None) -> int:
    args = _args(argv)
    models = _models()
    headers = ["implementation", "median ms", "range ms", "x best transformers", "rel err vs eager"]
    lines = ["# A Llama-shaped attention layer from from_transformers (d_model 2048, 32/8 heads, head dim 64; "
             "CPU, fp32, batch 1)", ""]
    for t in args.seqs:
        print(f"prefill T={t} ...", file=sys.stderr, flush=True)
        timings, errors = prefill(models, t, args.rounds, args.budget)
        lines += [f"## prefill, T {t}, causal", "", table(headers, _rows(timings, errors)), ""]
    print(f"decode at cache {args.cache} ...", file=sys.stderr, flush=True)
    timings, errors = decode(models, args.cache, args.rounds, args.budget)
    lines += [f"## one decode step against a {args.cache}-token cache", "", table(headers, _rows(timings, errors)), ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
