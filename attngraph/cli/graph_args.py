"""Command-line flags that describe a graph, shared by ``show``, ``run`` and later commands, and the
argparse types that turn a bad flag value into a one-line usage error (exit 2) before any work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable

from attngraph.errors import WeightError
from attngraph.frontends.constructors import AttentionConfig, build_attention
from attngraph.ir import Graph
from attngraph.ir.serialize import load_graph
from attngraph.passes import PIPELINES, run_pipeline

FLOAT_DTYPES = ["float16", "bfloat16", "float32", "float64"]  # the dtypes a graph can be built in


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``; anything else is a usage error naming the value."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {n}")
        return n
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite float (``nan`` and ``inf`` are usage errors)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def name_list(known: Callable[[], Iterable[str]], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type``: comma-separated names, each one of ``known()`` (read when the flag is parsed,
    so backends registered at run time count)."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        choices = sorted(known())
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                                             f"choose from {', '.join(choices)} (comma-separated)")
        return names
    return parse


def bias_letters(text: str) -> str:
    """An argparse ``type``: some of the letters q, k, v, o, each once."""
    if not text or any(c not in "qkvo" for c in text) or len(set(text)) != len(text):
        raise argparse.ArgumentTypeError(f"expected some of the letters q, k, v, o (e.g. qkv), got {text!r}")
    return text


def add_graph_args(p: argparse.ArgumentParser) -> None:
    """Flags for building an attention graph, or ``--load FILE`` for a saved one."""
    g = p.add_argument_group("graph (built from flags unless --load is given)")
    g.add_argument("--load", metavar="FILE", help="load a graph saved as JSON instead of building one")
    g.add_argument("--kind", choices=["self", "cross", "core"], default="self", help="which attention")
    g.add_argument("--d-model", type=positive_int, default=64, help="model width (self/cross)")
    g.add_argument("--heads", type=positive_int, default=4, help="number of query heads")
    g.add_argument("--kv-heads", type=positive_int, help="number of key/value heads (GQA/MQA); default = heads")
    g.add_argument("--head-dim", type=positive_int, help="Q/K head size (default d_model / heads)")
    g.add_argument("--v-head-dim", type=positive_int, help="value head size (default head-dim)")
    g.add_argument("--kdim", type=positive_int, help="cross attention: key input width")
    g.add_argument("--vdim", type=positive_int, help="cross attention: value input width")
    g.add_argument("--no-bias", action="store_true", help="projections without bias")
    g.add_argument("--bias-on", metavar="LETTERS", type=bias_letters,
                   help="only these projections have a bias, of q, k, v, o (Qwen2: qkv; Whisper: qvo)")
    g.add_argument("--causal", action="store_true", help="causal mask")
    g.add_argument("--window", type=int_at_least(-1), nargs=2, metavar=("LEFT", "RIGHT"),
                   help="sliding window; -1 = unbounded")
    g.add_argument("--key-padding", action="store_true", help="add a key_lengths input")
    g.add_argument("--mask", choices=["bool", "additive"], help="add a dense attn_mask input")
    g.add_argument("--scale", type=finite_float, help="score scale (default 1/sqrt(head_dim))")
    g.add_argument("--softcap", type=finite_float, help="softcap * tanh(scores / softcap); default off")
    g.add_argument("--clip-qkv", type=finite_float, help="clamp projected Q, K, V to [-c, c] (MPT)")
    g.add_argument("--kv-cache", nargs="?", const="concat", choices=["concat", "static", "rolling"],
                   help="past_key/past_value in, present out: concat (present = past + new; the bare flag), "
                        "static (fixed max_len buffers written in place at cache_lengths) or rolling (circular)")
    g.add_argument("--max-len", type=positive_int, help="static/rolling cache slots per row")
    pos = p.add_argument_group("positions and normalisation")
    pos.add_argument("--rotary", choices=["half", "interleaved"], help="rotary embedding on Q and K, by pairing")
    pos.add_argument("--rotary-dim", type=positive_int, help="rotate only the first N dims of each head")
    pos.add_argument("--rope-theta", type=finite_float, default=10000.0, help="rotary base")
    pos.add_argument("--position-ids", action="store_true", help="a position_ids input drives the rotary angles")
    pos.add_argument("--rope-cache", action="store_true", help="cos_cache/sin_cache inputs (any scaling scheme)")
    pos.add_argument("--qk-norm", choices=["rms", "rms_plus_one", "rms_full"], help="RMSNorm on Q and K")
    pos.add_argument("--qk-norm-eps", type=finite_float, default=1e-6, help="QK-norm epsilon")
    pos.add_argument("--sinks", action="store_true", help="one learned sink logit per q head")
    pos.add_argument("--alibi", choices=["after_scale", "before_scale"], help="ALiBi, added after (Bloom) or "
                     "before (Falcon) the scale")
    pos.add_argument("--rel-bias", action="store_true", help="T5 bucketed relative position bias")
    pos.add_argument("--rel-buckets", type=positive_int, default=32, help="T5 num_buckets")
    pos.add_argument("--rel-max-distance", type=positive_int, default=128, help="T5 max_distance")
    g.add_argument("--return-weights", action="store_true", help="attention weights as an output")
    g.add_argument("--varlen", nargs="?", const="bottom_right", choices=["bottom_right", "top_left"],
                   help="packed variable-length core (varlen_attention: q/k/v packed, cu_seqlens_q/k; --causal "
                        "aligned per sequence as given, bottom_right by default); sizes: batch sequences of q-len")
    g.add_argument("--layout", choices=["4d", "3d"], default="4d", help="core attention input layout")
    g.add_argument("--dtype", choices=FLOAT_DTYPES, default="float32", help="storage dtype of the graph")
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="O0", help="passes to run (O0: none)")


def graph_from_args(args: argparse.Namespace) -> Graph:
    """The graph the flags describe, after ``--pipeline``."""
    if args.load:
        graph = load_graph(args.load)
    elif getattr(args, "varlen", None):
        graph = _varlen_from_args(args)
    else:
        config = AttentionConfig(
            kind=args.kind, num_heads=args.heads, d_model=None if args.kind == "core" else args.d_model,
            num_kv_heads=args.kv_heads, head_dim=args.head_dim or (args.d_model // args.heads if args.kind == "core"
                                                                  else None),
            v_head_dim=args.v_head_dim, kdim=args.kdim, vdim=args.vdim,
            bias=args.bias_on if args.bias_on else not args.no_bias,
            causal=args.causal, window=tuple(args.window) if args.window else None, key_padding=args.key_padding,
            mask=args.mask, scale=args.scale, softcap=args.softcap, clip_qkv=args.clip_qkv,
            kv_cache=args.kv_cache or False, max_len=args.max_len, rotary=args.rotary, rotary_dim=args.rotary_dim,
            rope_theta=args.rope_theta, position_ids=args.position_ids, rope_cache=args.rope_cache,
            qk_norm=args.qk_norm, qk_norm_eps=args.qk_norm_eps, sinks=args.sinks, alibi=args.alibi,
            rel_bias=args.rel_bias, rel_buckets=args.rel_buckets, rel_max_distance=args.rel_max_distance,
            score_outputs=("weights",) if args.return_weights else (), layout=args.layout, dtype=args.dtype)
        graph = build_attention(config)
    return run_pipeline(graph, args.pipeline)


def load_weights(path: str, graph: Graph):
    """``--weights FILE.npz``: arrays saved with ``Weights.save``, checked against ``graph``'s params by
    name, shape and dtype. Any problem is one ``WeightError`` naming the file (a usage error on the
    command line)."""
    from attngraph.lowering.weights import Weights

    try:
        return Weights.load(path).check(graph)
    except WeightError as e:
        raise WeightError(f"--weights {path!r}: {e}; or leave out --weights for random ones") from None


# flags a packed varlen core has no use for: refused rather than silently dropped
_NOT_VARLEN = ("kdim", "vdim", "bias_on", "key_padding", "mask", "clip_qkv", "kv_cache",
               "max_len", "rotary", "rotary_dim", "position_ids", "rope_cache", "qk_norm", "sinks", "alibi",
               "rel_bias", "return_weights")


def _varlen_from_args(args: argparse.Namespace) -> Graph:
    from attngraph.errors import ConfigError
    from attngraph.frontends.varlen import varlen_attention

    given = [f"--{n.replace('_', '-')}" for n in _NOT_VARLEN if getattr(args, n, None)]
    if given:
        raise ConfigError(f"--varlen builds the packed core alone (q/k/v, cu_seqlens, --causal, --window, --scale, "
                          f"--softcap); it "
                          f"takes no "
                          f"{', '.join(given)}. Fix: drop them, or build the graph in Python and --load it")
    return varlen_attention(args.heads, args.head_dim or args.d_model // args.heads, num_kv_heads=args.kv_heads,
                            v_head_dim=args.v_head_dim, causal=args.causal, align=args.varlen, scale=args.scale,
                            window=tuple(args.window) if args.window else None, softcap=args.softcap,
                            dtype=args.dtype)
