"""``attngraph export``: export a graph (from flags or ``--load``) to an ONNX file."""

from __future__ import annotations

import argparse

from attngraph.cli import show


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import nonnegative_int, positive_int

    show.configure(p)
    p.add_argument("output", help="path of the .onnx file to write")
    p.add_argument("--style", default="auto", choices=["auto", "decomposed", "attention", "contrib"],
                   help="ONNX form of the attention core (auto: attention, or decomposed for float64)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default per style: 18, or 23 for 'attention')")
    p.add_argument("--weights", metavar="NPZ", help="weights saved with Weights.save (default: random, --seed)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random weights")
    p.add_argument("--external-data", action="store_true", help="weights in a side file <output>.data")


def run(args: argparse.Namespace) -> int:
    from attngraph.cli.graph_args import graph_from_args, load_weights
    from attngraph.lowering.export import export_onnx, model_nodes
    from attngraph.lowering.weights import Weights

    graph = graph_from_args(args)
    weights = load_weights(args.weights, graph) if args.weights else Weights.random(graph, seed=args.seed)
    path = export_onnx(graph, args.output, weights=weights, style=args.style, opset=args.opset,
                       external_data=args.external_data or None)
    import onnx  # installed: export_onnx has checked (a missing onnx gives the one-line pip hint)

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    nodes = model_nodes(model.graph)
    ops = sorted({n.op_type for n in nodes})
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB): style {props['attngraph.style']}, "
          f"opset {model.opset_import[0].version}, {len(nodes)} nodes ({', '.join(ops)})")
    print("inputs:  " + ", ".join(f"{v.name}{[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}"
                                  for v in model.graph.input))
    print("outputs: " + ", ".join(v.name for v in model.graph.output))
    return 0
