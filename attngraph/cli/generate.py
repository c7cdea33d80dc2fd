"""``attngraph generate``: greedy generation of a local checkpoint with attngraph's attention, beside transformers.

    attngraph generate ./my-model --backend numba --prompt-len 128 --new-tokens 64
    attngraph generate ./my-model --backend onnx --cache static --batch 2

The checkpoint (a ``save_pretrained`` folder) is loaded with ``local_files_only=True``: nothing is downloaded. A
seeded random prompt is generated from greedily by attngraph (``attngraph.transformers.use``), by transformers'
``sdpa`` and by ``eager``, in that order, in one process; the table gives each one's prefill and decode tokens/s
and the ratio to sdpa, and attngraph's greedy tokens are checked against eager's (exit status 1 if they differ).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BACKENDS = ["auto", "numpy", "numba", "torch", "onnx"]
PEERS = ("sdpa", "eager")


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import nonnegative_int, positive_int

    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                   help="a local causal-LM folder (config.json and weights, as save_pretrained writes); "
                        "never downloads")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="the attngraph backend every attention layer runs on (auto: compile(graph, 'auto') per layer)")
    p.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens per row (random, seeded)")
    p.add_argument("--new-tokens", type=int_at_least_2, default=64, help="greedy tokens to generate per row")
    p.add_argument("--batch", type=positive_int, default=1, help="prompts generated from at once")
    p.add_argument("--cache", default="dynamic", choices=["dynamic", "static"],
                   help="transformers' cache: DynamicCache, or StaticCache (cache_implementation='static')")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random prompt")
    p.add_argument("--no-peers", action="store_true", help="run attngraph and eager only (no sdpa timing)")


def int_at_least_2(text: str) -> int:
    from attngraph.cli.graph_args import int_at_least

    return int_at_least(2)(text)  # a decode rate needs a token after the prefill's


def run(args: argparse.Namespace) -> int:
    from attngraph.cli.hf import _load
    from attngraph.frontends.transformers import generation as gen
    from attngraph.frontends.transformers.integration import implementation_name

    if (Path(args.checkpoint) / "config.json").is_file():  # else _load says what is wrong, on one line
        print(f"loading {args.checkpoint} ...", file=sys.stderr, flush=True)
    model = _load(Path(args.checkpoint), "eager", command="generate", auto_class="AutoModelForCausalLM",
                  dtype=_float32())
    vocab = int(model.config.get_text_config().vocab_size)
    ids = gen.random_prompt(args.batch, args.prompt_len, vocab, args.seed)
    ours = implementation_name(args.backend)
    contenders = [ours, *(p for p in PEERS if not (args.no_peers and p == "sdpa"))]
    runs, failed = {}, {}
    for name in contenders:
        try:
            runs[name] = _timed(model, name, ids, args)
        except Exception as e:  # noqa: BLE001 - a peer transformers cannot run (e.g. sdpa with softcap) is reported
            if name == ours:
                raise
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print(_table(runs, failed, args))
    return _verdict(runs, ours)


def _float32():
    import torch

    return torch.float32


def _timed(model, name: str, ids, args):
    """Switch, warm up (compiles, caches: untimed), then time one greedy generation, with progress on stderr."""
    from attngraph.frontends.transformers import generation as gen

    gen.switch(model, name)
    print(f"{name}: warming up ...", file=sys.stderr, flush=True)
    gen.greedy(model, ids[:, : min(8, ids.shape[1])], 2, cache=args.cache)
    tty = sys.stderr.isatty()

    def progress(step: int, total: int) -> None:
        if tty or step in (1, total) or step % 16 == 0:
            end = "\n" if step == total or not tty else ""
            print(f"\r{name}: token {step}/{total}", end=end, file=sys.stderr, flush=True)

    return gen.greedy(model, ids, args.new_tokens, cache=args.cache, progress=progress)


def _table(runs: dict, failed: dict, args) -> str:
    from attngraph.frontends.transformers.integration import text_table

    base = runs.get("sdpa")
    rows = []
    for name, r in runs.items():
        ratio = (f"{r.prefill_tok_s / base.prefill_tok_s:.2f}x", f"{r.decode_tok_s / base.decode_tok_s:.2f}x") \
            if base else ("-", "-")
        rows.append([name, f"{r.prefill_s:.3f}", f"{r.prefill_tok_s:.1f}", f"{r.decode_tok_s:.2f}", *ratio])
    head = (f"{args.checkpoint}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
            f"{args.cache} cache (one run each, after a warm-up; timings on a shared machine are noisy)")
    headers = ["implementation", "prefill s", "prefill tok/s", "decode tok/s", "prefill vs sdpa", "decode vs sdpa"]
    notes = [f"{name} did not run: {why}" for name, why in failed.items()]
    return "\n".join([head, text_table(headers, rows), *notes])


def _verdict(runs: dict, ours: str) -> int:
    from attngraph.frontends.transformers.generation import first_mismatch

    found = first_mismatch(runs[ours].tokens, runs["eager"].tokens)
    total = runs[ours].tokens.numel()
    if found is None:
        print(f"greedy tokens: {ours} matches eager ({total} of {total})")
        return 0
    row, position = found
    print(f"greedy tokens: {ours} differs from eager at new token {position} of row {row}: "
          f"{int(runs[ours].tokens[row, position])} vs {int(runs['eager'].tokens[row, position])}")
    return 1
