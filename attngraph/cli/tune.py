"""``attngraph tune``: measure the eligible backends for a graph at given sizes and cache the winner."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import add_graph_args, nonnegative_int, positive_int

    add_graph_args(p)
    p.add_argument("--batch", type=positive_int, default=1, help="batch size")
    p.add_argument("--q-len", type=positive_int, default=512, help="query length")
    p.add_argument("--kv-len", type=positive_int, help="cross attention: key/value length (default q-len)")
    p.add_argument("--past-len", type=nonnegative_int, default=0, help="cached length with --kv-cache")
    p.add_argument("--refresh", action="store_true", help="measure again even when the cache has an answer")
    p.add_argument("--clear", action="store_true", help="delete the autotune cache and stop")


def run(args: argparse.Namespace) -> int:
    from attngraph.cli.graph_args import graph_from_args
    from attngraph.lowering.weights import Weights
    from attngraph.selection import select_backend
    from attngraph.selection.autotune import cache_path, clear_cache, tuned_order

    if args.clear:
        print(f"{'removed' if clear_cache() else 'no cache at'} {cache_path()}")
        return 0
    graph = graph_from_args(args)
    # the same sizes as compile(g, "auto", autotune=True, sizes=...): tuned_order normalises both to one cache key
    sizes = {"batch": args.batch, "q_len": args.q_len, "past_len": args.past_len,
             **({} if args.kv_len is None else {"kv_len": args.kv_len})}
    selection = select_backend(graph, sizes=sizes)
    order, times = tuned_order(graph, Weights.random(graph, seed=0), sizes, selection, refresh=args.refresh)
    selection.choice, selection.tuned = order[0], times
    print(selection.explain())
    print(f"cached in {cache_path()}")
    return 0
