"""``attngraph``: the command line. Each sub-command is one entry in ``COMMANDS``.

    attngraph info                         Python, packages, hardware, backends (available or why not)
    attngraph show [graph flags] [--save]  build or load a graph and print its text form
    attngraph run  [graph flags] --backend numpy --batch 2 --q-len 16
    attngraph export OUT.onnx [graph flags] --style auto|decomposed|attention|contrib
    attngraph conformance [--backends ...] [--cases PATTERN] [--dtype ...] [--json F] [--markdown F] [--html F]
    attngraph check                        the first command: backend choice, quick conformance, ONNX export
    attngraph tune [graph flags] --batch 8 --q-len 1024 [--refresh | --clear]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from attngraph import cli_conformance, cli_tune
from attngraph.errors import AttnGraphError


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _info_args(p: argparse.ArgumentParser) -> None:
    pass


def _info(args: argparse.Namespace) -> int:
    from attngraph.registry import available_backends, backend_status
    from attngraph.sysinfo import describe_machine

    m = describe_machine()
    print(f"Python     {m['python']} on {m['platform']}")
    print(f"CPU        {m['cpu']} ({m['cores']} cores; {' '.join(m['cpu_flags']) or 'no vector flags read'})")
    print(f"Memory     {m['memory_gib']} GiB")
    print("Packages   " + ", ".join(f"{k} {v or '-'}" for k, v in m["packages"].items()))
    print("Backends")
    for name in available_backends():
        ok, why = backend_status(name)
        print(f"  {name:<8} {'available' if ok else 'unavailable: ' + why}")
    from attngraph.mha import causal_self_attention
    from attngraph.selection import select_backend

    print("\nChoice for a causal MHA (d_model 512, 8 heads, batch 8, seq 1024); `attngraph tune` measures:")
    print(select_backend(causal_self_attention(512, 8), sizes={"batch": 8, "q_len": 1024}).explain())
    return 0


def _show_args(p: argparse.ArgumentParser) -> None:
    from attngraph.cli_graph import add_graph_args

    add_graph_args(p)
    p.add_argument("--save", metavar="FILE", help="also save the graph as JSON (written atomically)")


def _show(args: argparse.Namespace) -> int:
    from attngraph.cli_graph import graph_from_args
    from attngraph.serialize import save_graph

    graph = graph_from_args(args)
    print(graph)
    if args.save:
        save_graph(graph, args.save)
        print(f"saved to {args.save}", file=sys.stderr)
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    _show_args(p)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--q-len", type=int, default=16)
    p.add_argument("--kv-len", type=int, default=None, help="key length (cross/core; default q-len)")
    p.add_argument("--past-len", type=int, default=0, help="cached length with --kv-cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5, help="timed calls after one warm-up")


def _run(args: argparse.Namespace) -> int:
    from attngraph.api import compile as compile_graph
    from attngraph.cli_graph import graph_from_args
    from attngraph.random_inputs import random_inputs
    from attngraph.weights import Weights

    graph = graph_from_args(args)
    if args.save:
        from attngraph.serialize import save_graph

        save_graph(graph, args.save)
    sizes = {"batch": args.batch, "q_len": args.q_len, "kv_len": args.kv_len or args.q_len, "past_len": args.past_len}
    inputs = random_inputs(graph, sizes, seed=args.seed)
    weights = Weights.random(graph, seed=args.seed)
    t0 = time.perf_counter()
    exe = compile_graph(graph, args.backend, weights=weights)
    compile_s = time.perf_counter() - t0
    outputs = exe(inputs)
    times = []
    for _ in range(max(args.repeat, 1)):
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


def _export_args(p: argparse.ArgumentParser) -> None:
    _show_args(p)
    p.add_argument("output", help="path of the .onnx file to write")
    p.add_argument("--style", default="auto", choices=["auto", "decomposed", "attention", "contrib"])
    p.add_argument("--opset", type=int, help="ONNX opset (default per style: 18, or 23 for 'attention')")
    p.add_argument("--weights", metavar="NPZ", help="weights saved with Weights.save (default: random, --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--external-data", action="store_true", help="weights in a side file <output>.data")


def _export(args: argparse.Namespace) -> int:
    import onnx

    from attngraph.cli_graph import graph_from_args
    from attngraph.onnx_export import export_onnx
    from attngraph.weights import Weights

    graph = graph_from_args(args)
    weights = Weights.load(args.weights) if args.weights else Weights.random(graph, seed=args.seed)
    path = export_onnx(graph, args.output, weights=weights, style=args.style, opset=args.opset,
                       external_data=args.external_data or None)
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB): style {props['attngraph.style']}, "
          f"opset {model.opset_import[0].version}, {len(model.graph.node)} nodes ({', '.join(ops)})")
    print("inputs:  " + ", ".join(f"{v.name}{[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}"
                                  for v in model.graph.input))
    print("outputs: " + ", ".join(v.name for v in model.graph.output))
    return 0


COMMANDS: dict[str, Command] = {
    "info": Command("show Python, packages, hardware and which backends are available", _info_args, _info),
    "show": Command("build (or load) a graph and print its text form", _show_args, _show),
    "run": Command("run a graph on random inputs on a backend and summarise the outputs", _run_args, _run),
    "export": Command("export a graph (from flags or --load) to an ONNX file", _export_args, _export),
    "conformance": Command("run the conformance corpus on every backend against the float64 reference",
                           cli_conformance.conformance_args, cli_conformance.conformance),
    "check": Command("pick a backend for this machine, run the quick conformance, export and verify ONNX",
                     cli_conformance.check_args, cli_conformance.check),
    "tune": Command("time the eligible backends for a graph at given sizes and cache the winner",
                    cli_tune.tune_args, cli_tune.tune),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attngraph", description="attention graphs on every backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (AttnGraphError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"attngraph {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
