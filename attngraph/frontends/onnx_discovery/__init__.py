"""Discovery: every attention subgraph of an ONNX model, lifted into the attngraph IR with its weights.

    found = discover("model.onnx")           # a path, bytes or an onnx.ModelProto
    for sub in found.found:                   # Subgraph: graph, weights, nodes, inputs, outputs, summary, notes
        run = attngraph.compile(sub, "numpy")
    for u in found.unrecognised:              # what looked like attention but was not lifted, and why
        print(u.nodes, u.reason)

What is recognised (each part only where the IR provably computes the same, never guessed):

* the core: an ONNX ``Attention`` node, or ``MatMul(Q, K^T)`` -> scale -> [tanh soft-cap] -> [mask]
  -> ``Softmax`` -> ``MatMul(V)`` (``core``), with the scale anywhere on Q, K or the scores;
* around it (``operands``, ``output``): projections (``MatMul`` + ``Add``, ``Gemm``, one fused QKV
  projection cut by ``Split``/``Slice``/``Gather``), the head split and merge in any spelling of layout
  ops (``layout`` proves what a chain does), the GQA repeat of K/V heads, rotary embeddings (the ONNX
  op and the decomposed ``rotate_half`` form, partial too: ``rotary``), the KV cache ``Concat(past, new)``;
* masks (``masks``): any float mask added to the scores (padding, causal, position biases, whatever made
  it) as an additive mask; torch's causal ``Trilu`` mask as the IR's causal flag; ``Where(cond, s, -inf)``
  as a bool mask;
* attngraph's own exports, through the proof the ONNX backend uses (``own``).

The model is loaded with the safe loader and never changed: discovery works on a copy (``prepare``).
"""

from __future__ import annotations

from attngraph.errors import AttnGraphError
from attngraph.frontends.onnx_discovery.found import Discovery, Subgraph, Unrecognised

__all__ = ["Discovery", "Subgraph", "Unrecognised", "discover"]

_CONTRIB_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                      "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention", "SparseAttention"}


def discover(source) -> Discovery:
    """Every attention subgraph of ``source`` (a path, bytes or an ``onnx.ModelProto``), lifted, in model
    order, and what looked like attention but was not lifted, with the reason.

    Raises ``SerializationError`` for a file that is not a valid ONNX model, and ``AttnGraphError`` when
    discovery's own dependencies (onnxscript, onnx-ir) are missing. A model without attention gives an
    empty ``found``.
    """
    try:
        import onnx_ir  # noqa: F401
        from onnxscript.rewriter import pattern  # noqa: F401
    except ImportError as e:
        raise AttnGraphError(f"attention discovery needs onnxscript and onnx-ir ({e}): pip install "
                             "'onnxscript>=0.5'") from None
    from attngraph.frontends.onnx_discovery.own import own_export
    from attngraph.frontends.onnx_discovery.prepare import load, prepare

    proto, base_dir = load(source)
    own, why = own_export(proto, base_dir)
    if own is not None:
        return Discovery((own,), ())
    prep = prepare(proto, base_dir)
    if why:
        prep.notes.append(why)
    return _discover(prep)


def _discover(prep) -> Discovery:
    from attngraph.frontends.onnx_discovery.chain import Tracker
    from attngraph.frontends.onnx_discovery.contrib import lift_contrib
    from attngraph.frontends.onnx_discovery.core import match_attention_node, match_decomposed
    from attngraph.frontends.onnx_discovery.evaluate import Evaluator
    from attngraph.frontends.onnx_discovery.lift import lift
    from attngraph.frontends.onnx_discovery.operands import Refused
    from attngraph.frontends.onnx_discovery.single import attention_node

    tracker = Tracker(prep.shapes, Evaluator)
    found: list[Subgraph] = []
    left: list[Unrecognised] = []
    claimed: set[str] = set()
    explained: set[str] = set()  # softmax nodes a found or refused core accounts for
    for node in list(prep.model.graph):
        if node.name in claimed:
            continue
        core, why = None, None
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            core, why = match_attention_node(node, tracker.ev, tracker.dims)
            if core is None:
                try:
                    sub = attention_node(node, prep, len(found))
                except Refused as e:
                    left.append(Unrecognised((node.name,), e.reason))
                    continue
                found.append(sub)
                claimed.update(sub.nodes)
                continue
        elif node.domain == "com.microsoft" and node.op_type in _CONTRIB_ATTENTION | {"RotaryEmbedding"}:
            try:
                sub = lift_contrib(node, prep, len(found))
            except Refused as e:
                left.append(Unrecognised((node.name,), e.reason))
                continue
            found.append(sub)
            claimed.update(sub.nodes)
            continue
        elif node.op_type == "MatMul":
            core, why = match_decomposed(prep.model, node, tracker.ev, tracker.dims)
            if core is None and why is None:
                continue
            softmax = _softmax_before(node)
            if softmax is not None:
                explained.add(softmax.name)
        else:
            continue
        if core is None:
            left.append(Unrecognised(_names(node), why))
            continue
        try:
            sub, parts = lift(core, prep, tracker, len(found))
        except Refused as e:
            if core.node is not None:  # the Attention node alone, as from_onnx reads it
                try:
                    sub, parts = attention_node(node, prep, len(found)), []
                except Refused:
                    sub = None
            else:
                sub = None
            if sub is None:
                names = _names(node) + tuple(n.name for n in e.nodes if n.name not in _names(node))
                left.append(Unrecognised(names, e.reason))
                continue
        if claimed & set(sub.nodes):
            left.append(Unrecognised(_names(node), "its nodes overlap an attention subgraph found before"))
            continue
        found.append(sub)
        left.extend(parts)
        claimed.update(sub.nodes)
    left.extend(_unexplained_softmax(prep.model, explained, claimed))
    left.extend(_nested(prep.proto.graph))
    return Discovery(tuple(found), tuple(left))


def _nested(graph, path: str = "") -> list[Unrecognised]:
    """Attention-like nodes inside control flow (If/Loop/Scan bodies): discovery reads the main graph only."""
    out = []
    for node in graph.node:
        for a in node.attribute:
            for k, sub in ([(None, a.g)] if a.HasField("g") else []) + list(enumerate(a.graphs)):
                where = f"{path}{node.name or node.op_type}.{a.name}" + (f"[{k}]" if k is not None else "")
                hits = [n.name or n.op_type for n in sub.node
                        if n.op_type in ("Softmax", "Attention") or n.op_type in _CONTRIB_ATTENTION]
                if hits:
                    out.append(Unrecognised(tuple(hits), f"inside the control-flow body {where!r}: discovery lifts "
                                                         "attention from the model's main graph only"))
                out.extend(_nested(sub, f"{where} > "))
    return out


def _softmax_before(matmul):
    """The Softmax feeding ``matmul``'s first input (through a Cast or a NaN guard), or None."""
    v = matmul.inputs[0]
    for _ in range(3):
        node = v.producer() if v is not None else None
        if node is None:
            return None
        if node.op_type == "Softmax":
            return node
        if node.op_type not in ("Cast", "Where"):
            return None
        v = node.inputs[0] if node.op_type == "Cast" else node.inputs[2]
    return None


def _names(node) -> tuple[str, ...]:
    softmax = _softmax_before(node)
    return (softmax.name, node.name) if softmax is not None else (node.name,)


def _unexplained_softmax(model, explained: set, claimed: set) -> list[Unrecognised]:
    """A Softmax between two MatMuls that no core accounts for (e.g. a Dropout in between)."""
    out = []
    for node in model.graph:
        if node.op_type != "Softmax" or node.name in explained or node.name in claimed:
            continue
        if _near(node, "MatMul", up=True) and _near(node, "MatMul", up=False):
            out.append(Unrecognised((node.name,), "a Softmax between two MatMuls that is not the attention core "
                                                  "attngraph lifts (something other than a cast or a NaN guard "
                                                  "sits between it and the MatMul with V)"))
    return out


def _near(node, op: str, up: bool, depth: int = 4) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if up:
                nxt += [v.producer() for v in n.inputs if v is not None and v.producer() is not None]
            else:
                nxt += [u.node for v in n.outputs for u in v.uses()]
        if any(n.op_type == op for n in nxt):
            return True
        frontier = nxt
    return False
