"""Command-line flags that describe a graph, shared by ``show``, ``run`` and later commands."""

from __future__ import annotations

import argparse

from attngraph.frontends.constructors import AttentionConfig, build_attention
from attngraph.ir import Graph
from attngraph.ir.serialize import load_graph
from attngraph.passes import PIPELINES, run_pipeline


def add_graph_args(p: argparse.ArgumentParser) -> None:
    """Flags for building an attention graph, or ``--load FILE`` for a saved one."""
    g = p.add_argument_group("graph (built from flags unless --load is given)")
    g.add_argument("--load", metavar="FILE", help="load a graph saved as JSON instead of building one")
    g.add_argument("--kind", choices=["self", "cross", "core"], default="self")
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--heads", type=int, default=4, help="number of query heads")
    g.add_argument("--kv-heads", type=int, help="number of key/value heads (GQA/MQA); default = heads")
    g.add_argument("--head-dim", type=int, help="Q/K head size (default d_model / heads)")
    g.add_argument("--v-head-dim", type=int, help="value head size (default head-dim)")
    g.add_argument("--kdim", type=int, help="cross attention: key input width")
    g.add_argument("--vdim", type=int, help="cross attention: value input width")
    g.add_argument("--no-bias", action="store_true", help="projections without bias")
    g.add_argument("--causal", action="store_true")
    g.add_argument("--window", type=int, nargs=2, metavar=("LEFT", "RIGHT"), help="sliding window; -1 = unbounded")
    g.add_argument("--key-padding", action="store_true", help="add a key_lengths input")
    g.add_argument("--mask", choices=["bool", "additive"], help="add a dense attn_mask input")
    g.add_argument("--scale", type=float)
    g.add_argument("--softcap", type=float)
    g.add_argument("--clip-qkv", type=float, help="clamp projected Q, K, V to [-c, c] (MPT)")
    g.add_argument("--kv-cache", action="store_true", help="past_key/past_value in, present out")
    g.add_argument("--return-weights", action="store_true", help="attention weights as an output")
    g.add_argument("--layout", choices=["4d", "3d"], default="4d", help="core attention input layout")
    g.add_argument("--dtype", default="float32")
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="O0", help="passes to run (default O0: none)")


def graph_from_args(args: argparse.Namespace) -> Graph:
    """The graph the flags describe, after ``--pipeline``."""
    if args.load:
        graph = load_graph(args.load)
    else:
        config = AttentionConfig(
            kind=args.kind, num_heads=args.heads, d_model=None if args.kind == "core" else args.d_model,
            num_kv_heads=args.kv_heads, head_dim=args.head_dim or (args.d_model // args.heads if args.kind == "core"
                                                                  else None),
            v_head_dim=args.v_head_dim, kdim=args.kdim, vdim=args.vdim, bias=not args.no_bias,
            causal=args.causal, window=tuple(args.window) if args.window else None, key_padding=args.key_padding,
            mask=args.mask, scale=args.scale, softcap=args.softcap, clip_qkv=args.clip_qkv, kv_cache=args.kv_cache,
            score_outputs=("weights",) if args.return_weights else (), layout=args.layout, dtype=args.dtype)
        graph = build_attention(config)
    return run_pipeline(graph, args.pipeline)
