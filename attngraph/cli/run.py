"""``attngraph run``: run a graph on random inputs on a backend, time it, and summarise the outputs."""

from __future__ import annotations

import argparse
import time

import numpy as np

from attngraph.cli import show


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import nonnegative_int, positive_int

    show.configure(p)
    p.add_argument("--backend", default="numpy", help="backend to run on (see `attngraph info`)")
    p.add_argument("--weights", metavar="NPZ", help="weights saved with Weights.save (default: random, --seed)")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size")
    p.add_argument("--q-len", type=positive_int, default=16, help="query length")
    p.add_argument("--kv-len", type=positive_int, default=None, help="key length (cross/core; default q-len)")
    p.add_argument("--past-len", type=nonnegative_int, default=0, help="cached length with --kv-cache")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random inputs and weights")
    p.add_argument("--repeat", type=positive_int, default=5, help="timed calls after one warm-up")


def run(args: argparse.Namespace) -> int:
    from attngraph.cli.graph_args import graph_from_args, load_weights
    from attngraph.lowering.compile import compile as compile_graph
    from attngraph.lowering.weights import Weights
    from attngraph.testing.random_inputs import random_inputs

    graph = graph_from_args(args)
    if args.save:
        from attngraph.ir.serialize import save_graph

        save_graph(graph, args.save)
    weights = load_weights(args.weights, graph) if args.weights else Weights.random(graph, seed=args.seed)
    kv_len = args.q_len if args.kv_len is None else args.kv_len
    sizes = {"batch": args.batch, "q_len": args.q_len, "kv_len": kv_len, "past_len": args.past_len}
    inputs = random_inputs(graph, sizes, seed=args.seed)
    t0 = time.perf_counter()
    exe = compile_graph(graph, args.backend, weights=weights)
    compile_s = time.perf_counter() - t0
    outputs = exe(inputs)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        outputs = exe(inputs)
        times.append(time.perf_counter() - t0)
    reference = compile_graph(graph, "numpy", weights=weights)(inputs) if args.backend != "numpy" else None
    print(f"graph {graph.name} on {args.backend}: compile {compile_s * 1e3:.1f} ms, "
          f"median call {np.median(times) * 1e3:.3f} ms over {len(times)} calls")
    print("inputs:  " + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in inputs.items()))
    header = f"{'output':<16}{'shape':<22}{'dtype':<10}{'mean':>11}{'std':>11}{'max|x|':>11}{'NaN':>6}"
    print(header + ("   vs numpy" if reference else ""))
    for name, arr in outputs.items():
        a = np.asarray(arr, dtype=np.float64)
        fin = a[np.isfinite(a)]
        stats = (fin.mean(), fin.std(), np.abs(fin).max()) if fin.size else (np.nan,) * 3
        line = (f"{name:<16}{str(list(arr.shape)):<22}{str(arr.dtype):<10}"
                f"{stats[0]:>11.4g}{stats[1]:>11.4g}{stats[2]:>11.4g}{int(np.isnan(a).sum()):>6}")
        if reference:
            line += f"   {np.nanmax(np.abs(a - reference[name].astype(np.float64))):.2e}"
        print(line)
    return 0
