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
    g.add_argument("--causal", action="store_true", help="causal mask")
    g.add_argument("--window", type=int_at_least(-1), nargs=2, metavar=("LEFT", "RIGHT"),
                   help="sliding window; -1 = unbounded")
    g.add_argument("--key-padding", action="store_true", help="add a key_lengths input")
    g.add_argument("--mask", choices=["bool", "additive"], help="add a dense attn_mask input")
    g.add_argument("--scale", type=finite_float, help="score scale (default 1/sqrt(head_dim))")
    g.add_argument("--softcap", type=finite_float, help="softcap * tanh(scores / softcap); default off")
    g.add_argument("--clip-qkv", type=finite_float, help="clamp projected Q, K, V to [-c, c] (MPT)")
    g.add_argument("--kv-cache", action="store_true", help="past_key/past_value in, present out")
    g.add_argument("--return-weights", action="store_true", help="attention weights as an output")
    g.add_argument("--layout", choices=["4d", "3d"], default="4d", help="core attention input layout")
    g.add_argument("--dtype", choices=FLOAT_DTYPES, default="float32", help="storage dtype of the graph")
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="O0", help="passes to run (O0: none)")


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


def load_weights(path: str, graph: Graph):
    """``--weights FILE.npz``: arrays saved with ``Weights.save``, checked against ``graph``'s params by
    name, shape and dtype. Any problem (missing file, not an npz, wrong names or shapes) is one
    ``WeightError`` that names the file, so the command line reports it as a usage error."""
    import zipfile

    from attngraph.lowering.weights import Weights

    fix = "save weights with attngraph.Weights({...}).save('w.npz'), or leave out --weights for random ones"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise WeightError(f"--weights {path!r}: no such file; {fix}") from None
    except OSError as e:
        raise WeightError(f"--weights {path!r} cannot be read ({e.strerror or e}); {fix}") from None
    if not zipfile.is_zipfile(path):  # an .npz is a zip; numpy would call any other file 'pickled data'
        raise WeightError(f"--weights {path!r} is not an .npz file: expected a zip archive of named arrays, "
                          f"got a file starting with {head!r}; {fix}")
    try:
        weights = Weights.load(path)
    # np.load's errors for a zip that is not an npz of plain arrays: object arrays (ValueError), a member
    # that is not an .npy (ValueError, EOFError), a truncated member (BadZipFile, OSError)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise WeightError(f"--weights {path!r} is not an .npz of named arrays ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); {fix}") from None
    try:
        return weights.check(graph)
    except WeightError as e:
        raise WeightError(f"--weights {path!r}: {e}") from None
