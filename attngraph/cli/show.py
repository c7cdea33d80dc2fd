"""``attngraph show``: build (from flags) or load a graph, print its text form, optionally save it."""

from __future__ import annotations

import argparse
import sys


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import add_graph_args

    add_graph_args(p)
    p.add_argument("--save", metavar="FILE", help="also save the graph as JSON (written atomically)")


def run(args: argparse.Namespace) -> int:
    from attngraph.cli.graph_args import graph_from_args
    from attngraph.ir.serialize import save_graph

    graph = graph_from_args(args)
    print(graph)
    if args.save:
        save_graph(graph, args.save)
        print(f"saved to {args.save}", file=sys.stderr)
    return 0
