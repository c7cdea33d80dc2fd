"""``attngraph optimize``: every attention subgraph of an ONNX model rewritten in one export style, checked.

    attngraph optimize model.onnx model.opt.onnx                      # style attention (ONNX Attention, opset >= 23)
    attngraph optimize model.onnx out.onnx --style contrib            # com.microsoft.MultiHeadAttention where exact
    attngraph optimize model.onnx out.onnx --style decomposed --no-check
    attngraph optimize model.onnx out.onnx --no-guards               # the operator's own edge-case behaviour
    attngraph optimize genai.onnx out.onnx --contrib-ops rewrite      # onnxruntime's fused ops to style attention too

The model is trusted for nothing (``load_untrusted``). Each subgraph discovery lifts is replaced by the export of
its graph; one the style cannot express exactly is left as it is, with the reason. The result passes onnx's
checker and matches the original under onnxruntime on seeded random inputs before it is written (atomically).
Progress goes to stderr, the report to stdout (``--json`` for a file).
"""

from __future__ import annotations

import argparse
import sys


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import nonnegative_int, positive_int
    from attngraph.frontends.onnx_discovery.optimize import STYLES

    p.add_argument("input", metavar="IN.onnx", help="the model to optimize (external data is read from its folder)")
    p.add_argument("output", metavar="OUT.onnx", help="where to write the result (with OUT.onnx.data when large)")
    p.add_argument("--style", default="attention", choices=list(STYLES),
                   help="form of each attention: the ONNX Attention operator (opset >= 23), onnxruntime's "
                        "com.microsoft.MultiHeadAttention where exact, or primitive ops")
    p.add_argument("--opset", type=positive_int,
                   help="default-domain opset of the result (default: the model's, raised to the style's minimum "
                        "where that is safe)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the original and the result under onnxruntime (onnx's checker still runs)")
    p.add_argument("--no-guards", action="store_true",
                   help="leave out the If branches that keep each rewritten attention on attngraph's semantics for "
                        "empty inputs and non-finite values: it then does what the runtime's operator does there "
                        "(as the original nodes did), and is faster at small shapes")
    p.add_argument("--contrib-ops", default="keep", choices=["keep", "rewrite"],
                   help="the attention of onnxruntime's com.microsoft operators (GroupQueryAttention, "
                        "MultiHeadAttention, Attention, RotaryEmbedding): keep them (the fused kernels onnxruntime "
                        "and onnxruntime-genai run, a shared KV buffer included) or rewrite them in --style like "
                        "every other attention, checked under onnxruntime")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the check's random inputs")
    p.add_argument("--size", type=_size_arg, action="append", default=[], metavar="DIM=N",
                   help="size of a symbolic dim for the check (repeatable; default batch 2, past 3, others 6)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")


def _size_arg(text: str) -> tuple[str, int]:
    """An argparse ``type``: ``DIM=N`` with N >= 1 (a bad one is a one-line usage error)."""
    name, _, value = text.partition("=")
    if not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected DIM=N with N >= 1 (e.g. batch=1), got {text!r}")
    return name, int(value)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from attngraph.fileio import atomic_write_text
    from attngraph.frontends.onnx_discovery.optimize import CheckFailed, optimize_onnx

    if os.path.abspath(args.input) == os.path.abspath(args.output):
        from attngraph.errors import ConfigError

        raise ConfigError(f"OUT.onnx is IN.onnx ({args.input!r}); write the result to another file")

    def progress(msg: str) -> None:
        print(f"attngraph optimize: {msg}", file=sys.stderr, flush=True)

    try:
        report = optimize_onnx(args.input, args.output, style=args.style, opset=args.opset, check=not args.no_check,
                               seed=args.seed, sizes=dict(args.size), guards=not args.no_guards,
                               contrib=args.contrib_ops, progress=progress)
    except CheckFailed as e:
        line = " ".join(str(e).split())
        print(f"attngraph optimize: error: the rewritten model failed its check, nothing written: {line}",
              file=sys.stderr)
        return 1
    print(report)
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 0
