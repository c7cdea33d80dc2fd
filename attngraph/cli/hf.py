"""``attngraph hf-export``: the attention layers of a local Hugging Face checkpoint, listed and exported to ONNX.

    attngraph hf-export ./my-model out/                 # one .onnx per distinct layer configuration
    attngraph hf-export ./my-model out/ --layer 3       # attention layer 3 of the listing
    attngraph hf-export ./my-model out/ --list          # print the listing only

The checkpoint is a folder written by ``save_pretrained`` and is loaded with ``local_files_only=True``: nothing
is downloaded. Batch, sequence and cache lengths stay dynamic in the exported models.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

STYLES = ["auto", "decomposed", "attention", "contrib"]


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import nonnegative_int, positive_int

    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                   help="a local model folder (config.json and weights, as save_pretrained writes); never downloads")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the .onnx files (created if missing)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--layer", type=nonnegative_int, metavar="N",
                       help="export attention layer N (a row of the listing)")
    which.add_argument("--distinct", action="store_true",
                       help="export the first layer of each distinct configuration (the default)")
    which.add_argument("--list", action="store_true", help="print the listing of attention layers; export nothing")
    p.add_argument("--style", default="auto", choices=STYLES,
                   help="ONNX form of the attention core (auto: attention, or decomposed for float64)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default per style: 18, or 23 for 'attention')")
    p.add_argument("--attn-implementation", default="auto", choices=["auto", "eager", "sdpa"],
                   help="the implementation the model is loaded with (auto: transformers' choice); it matters where "
                        "the two compute differently (Falcon's ALiBi)")
    p.add_argument("--padding", default="mask", choices=["mask", "lengths", "none"],
                   help="padding input: the 2-D padding mask as a bool mask, key lengths (right padding), or none")
    p.add_argument("--no-cache", action="store_true", help="decoder layers without past_key/past_value inputs")


def run(args: argparse.Namespace) -> int:
    from attngraph.frontends.transformers import from_transformers
    from attngraph.lowering.export import export_onnx

    model = _load(Path(args.checkpoint), args.attn_implementation)
    layers = from_transformers(model, padding=None if args.padding == "none" else args.padding,
                               cache=False if args.no_cache else None)
    print(layers)
    if args.list:
        return 0
    chosen = [(layers.entry(args.layer), [args.layer])] if args.layer is not None else layers.distinct()
    out_dir, skipped = Path(args.out_dir), 0
    for entry, rows in chosen:
        if entry.error:
            print(f"skipped layer {entry.index} ({entry.path}): {entry.error}", file=sys.stderr)
            skipped += 1
            continue
        imported = layers[entry.index]
        path = out_dir / f"layer{entry.index:03d}-{entry.path.replace('.', '_')}.onnx"
        export_onnx(imported.graph, path, weights=imported.weights, style=args.style, opset=args.opset)
        shared = f", the same graph as layers {', '.join(map(str, rows))}" if len(rows) > 1 else ""
        print(f"wrote {path}: layer {entry.index} ({entry.path}){shared}")
        print("  inputs:  " + ", ".join(f"{v.name}{list(v.type.shape)}" for v in imported.graph.inputs))
        for note in imported.notes:
            print(f"  note: {note}")
    return 1 if skipped else 0


def _load(checkpoint: Path, implementation: str, *, command: str = "hf-export", auto_class: str = "AutoModel",
          **options):
    """The model in ``checkpoint``, loaded offline with transformers' ``auto_class`` (a missing or unreadable folder
    is a usage error); ``options`` go to ``from_pretrained``."""
    from attngraph.errors import ConfigError

    if not (checkpoint / "config.json").is_file():
        raise ConfigError(f"CHECKPOINT_DIR {str(checkpoint)!r} is not a local model folder (no config.json); "
                          f"{command} reads checkpoints saved with save_pretrained and never downloads")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces beside local_files_only
    try:
        import transformers
        from transformers.utils import logging
    except ImportError:
        raise ConfigError(f"{command} needs transformers: pip install 'transformers>=4.50'") from None
    logging.disable_progress_bar()  # the command's own lines are the output
    options["local_files_only"] = True
    if implementation != "auto":
        options["attn_implementation"] = implementation
    try:
        return getattr(transformers, auto_class).from_pretrained(str(checkpoint), **options).eval()
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load {str(checkpoint)!r} with transformers: {first}") from None
