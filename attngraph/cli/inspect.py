"""``attngraph inspect``: the attention subgraphs discovery finds in an ONNX model, as a table.

    attngraph inspect model.onnx                 # one row per subgraph, then what was not lifted and why
    attngraph inspect model.onnx --no-notes      # without each subgraph's notes
    attngraph inspect model.onnx --json out.json # also as JSON

Each row: the index (``from_onnx(path, subgraph=N)`` returns that subgraph), the model nodes it replaces
(first .. last, and how many), the op it comes from (an onnxruntime ``com.microsoft`` operator, an ONNX
``Attention`` node, or decomposed nodes), its kind (self, cross, core or rotary), heads, kv heads, head dim,
whether it is causal (``yes``; ``in mask`` when the model's mask encodes it), its mask, rotary embedding and KV
cache (a GroupQueryAttention's form: shared buffer or growing). A lifted contrib operator also gets a line saying
what it computes in attngraph's terms (its attributes and inputs mapped: cache lengths, window, sinks, masks).
The model is loaded with the safe loader and never changed.
"""

from __future__ import annotations

import argparse

COLUMNS = ("#", "nodes", "count", "op", "kind", "heads", "kv heads", "head dim", "causal", "mask", "rotary", "cache")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to inspect (external data beside it)")
    p.add_argument("--notes", action=argparse.BooleanOptionalAction, default=True,
                   help="print each subgraph's notes (how the model's conventions were mapped)")
    p.add_argument("--width", type=_width, default=36, metavar="N",
                   help="the most characters shown of a node name")
    p.add_argument("--json", metavar="PATH", help="also write the listing as JSON")


def _width(text: str) -> int:
    if not text.isdigit() or int(text) < 8:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 8, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from attngraph.frontends.onnx_discovery import discover

    found = discover(args.model)
    print(f"{args.model}: {len(found.found)} attention subgraph(s), {len(found.unrecognised)} part(s) not lifted")
    if found.found:
        rows = [_row(s, args.width) for s in found.found]
        print(_table([COLUMNS] + rows))
    for s in found.found:
        if s.summary.get("computes"):
            print(f"  [{s.index}] computes: {s.summary['computes']}")
    if args.notes:
        for s in found.found:
            for note in s.notes:
                print(f"  [{s.index}] note: {note}")
    if found.unrecognised:
        print("not lifted:")
        for u in found.unrecognised:
            print(f"  {_span(u.nodes, args.width)} ({len(u.nodes)} node(s)): {u.reason}")
    if args.json:
        _write_json(args.json, found)
    return 0


def _row(sub, width: int) -> tuple[str, ...]:
    from attngraph.frontends.onnx_discovery.found import source_op

    s = sub.summary
    cache = s.get("cache")
    return (str(sub.index), _span(sub.nodes, width), str(len(sub.nodes)), source_op(sub), _text(s.get("kind")),
            _text(s.get("heads")), _text(s.get("kv_heads")), _text(s.get("head_dim")), _text(s.get("causal")),
            _text(s.get("mask")), _text(s.get("rotary")), cache if isinstance(cache, str) else "yes" if cache else "no")


def _text(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _short(name: str, width: int) -> str:
    """``name`` cut in the middle to ``width`` characters."""
    if len(name) <= width:
        return name
    keep = width - 3
    return name[:keep // 2] + "..." + name[len(name) - (keep - keep // 2):]


def _span(nodes, width: int) -> str:
    if not nodes:
        return "-"
    first, last = _short(nodes[0], width), _short(nodes[-1], width)
    return first if len(nodes) == 1 else f"{first} .. {last}"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _write_json(path: str, found) -> None:
    import json

    from attngraph.fileio import atomic_write_text

    data = {"found": [{"index": s.index, "nodes": list(s.nodes), "inputs": dict(s.inputs), "outputs": dict(s.outputs),
                       "summary": dict(s.summary), "notes": list(s.notes)} for s in found.found],
            "unrecognised": [{"nodes": list(u.nodes), "reason": u.reason} for u in found.unrecognised]}
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
