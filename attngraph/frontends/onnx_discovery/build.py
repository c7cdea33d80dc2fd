"""The IR graph of a recognised attention subgraph, with its weights and its maps to the model's values.

The graph comes from ``AttentionConfig`` and ``build_attention`` (the same builder every other importer
uses), so a lifted subgraph is an ordinary attngraph graph. One form the builder does not make is added
here: Hugging Face's per-token rotary tables (cos/sin already read at each token, shape (1, .., S, rd) or
(.., S, rd/2)) become the graph's ``cos``/``sin`` inputs, reshaped to a (q_len, rd/2) table that the
rotary op reads at row ``i`` for token ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attngraph.errors import ConfigError
from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.constructors import build_attention
from attngraph.frontends.onnx_discovery.masks import Mask, broadcast, ir_mask_shape
from attngraph.frontends.onnx_discovery.operands import Operand, Refused
from attngraph.frontends.onnx_discovery.symbolic import Poly
from attngraph.ir import Graph, Node, Op, TensorType, Value, dims
from attngraph.ir.nodes import make_node
from attngraph.ir.verify import verify_graph


@dataclass
class Plan:
    """Everything the lifted graph is made from."""

    kind: str
    q: Operand
    k: Operand
    v: Operand
    mask: Mask
    scale: float
    softcap: float | None
    dtype: str
    y: object                      # the model value the graph's ``y`` is
    weights_probs: object = None   # the model value of the attention weights, when the model reads them
    w_o: np.ndarray | None = None
    b_o: np.ndarray | None = None
    name: str = "attention"
    rope_shape: tuple = ()         # the per-token cos/sin tables' IR dims
    mask_dims: tuple | None = None  # the model mask's dims (Poly)
    extra_dims: tuple | None = None  # the second bias's dims
    aliases: list = field(default_factory=list)  # model values equal to an input (K's copy of the rotary tables)
    notes: list = field(default_factory=list)


def build(plan: Plan) -> tuple[Graph, dict, dict, dict]:
    """``(graph, weights, inputs, outputs)``: the verified IR graph, its weights, and the maps IR input /
    output name -> model value name."""
    q, k, v = plan.q, plan.k, plan.v
    cache = k.past is not None
    kv_ir = {("self", False): "q_len", ("self", True): "past_len+q_len"}.get((plan.kind, cache),
                                                                             "kv_len+past_len" if cache else "kv_len")
    mask_shape = extra_shape = None
    if plan.mask.kind:
        targets = [(q.batch, "batch"), (Poly.of(q.heads), q.heads), (q.seq, "q_len"), (k.total, dims.canonical(kv_ir))]
        mask_shape = ir_mask_shape(plan.mask_dims, targets)
        if plan.mask.extra is not None:
            extra_shape = ir_mask_shape(plan.extra_dims, targets)
    cfg = _config(plan, broadcast(mask_shape, extra_shape) if extra_shape is not None else mask_shape)
    graph = build_attention(cfg)
    if extra_shape is not None:
        graph = summed_bias(graph, mask_shape, extra_shape)
    inputs: dict[str, str] = {}
    rot = q.rotary
    if rot is not None and rot.form in ("full", "half"):
        graph = per_token_rope(graph, rot.form, rot.rotary_dim, plan.rope_shape)
        inputs.update(cos=rot.cos.name, sin=rot.sin.name)
    elif rot is not None:
        inputs.update(cos_cache=rot.cos.name, sin_cache=rot.sin.name, position_ids=rot.positions.name)
    if plan.kind == "self":
        inputs["x"] = q.x.name
    elif plan.kind == "cross":
        inputs.update(query=q.x.name, key=k.x.name, value=v.x.name)
        if k.x is v.x:
            graph = _value_is_key(graph)
            del inputs["value"]
    else:
        inputs.update(q=q.leaf.name, k=k.leaf.name, v=v.leaf.name)
    if plan.mask.kind:
        inputs["attn_mask"] = plan.mask.value.name
    if plan.mask.extra is not None:
        inputs["attn_bias"] = plan.mask.extra.name
    if cache:
        inputs.update(past_key=k.past.name, past_value=v.past.name)
    outputs = {"y": plan.y.name}
    if cache and k.present is not None:
        outputs["present_key"] = k.present.name
    if cache and v.present is not None:
        outputs["present_value"] = v.present.name
    if plan.weights_probs is not None:
        outputs["attn_weights"] = plan.weights_probs.name
    graph = _only_outputs(graph, outputs)
    return graph, _weights(plan), inputs, outputs


def _config(plan: Plan, mask_shape) -> AttentionConfig:
    q, k, v = plan.q, plan.k, plan.v
    rot = q.rotary
    letters = ""
    if plan.kind in ("self", "cross"):
        letters = "".join(t for t, b in (("q", q.bias), ("k", k.bias), ("v", v.bias), ("o", plan.b_o))
                          if b is not None)
    bias: bool | str = True if letters == "qkvo" else (letters or False)
    d_model = None
    if plan.kind != "core":
        d_model = int(q.weight.shape[0])
        if plan.w_o is None or plan.w_o.shape[1] != d_model:
            raise Refused("the output projection's width differs from the hidden size of the queries")
    cross = plan.kind == "cross"
    try:
        return AttentionConfig(
            kind=plan.kind, num_heads=q.heads, d_model=d_model,
            num_kv_heads=k.heads if k.heads != q.heads else None, head_dim=q.dim,
            v_head_dim=v.dim if v.dim != q.dim else None,
            kdim=int(k.weight.shape[0]) if cross and k.weight.shape[0] != d_model else None,
            vdim=int(v.weight.shape[0]) if cross and v.weight.shape[0] != d_model else None,
            bias=bias, causal=plan.mask.causal, mask=plan.mask.kind, mask_shape=mask_shape, scale=plan.scale,
            softcap=plan.softcap, rotary=rot.layout if rot else None,
            rotary_dim=rot.rotary_dim if rot and rot.rotary_dim != q.dim else None,
            rope_cache=rot is not None, position_ids=rot is not None and rot.form == "table",
            kv_cache=k.past is not None, score_outputs=("weights",) if plan.weights_probs is not None else (),
            layout="4d", dtype=plan.dtype, name=plan.name)
    except ConfigError as e:  # the combination is not one the IR expresses
        raise Refused(f"attngraph cannot express this attention: {e}") from None


def _weights(plan: Plan) -> dict[str, np.ndarray]:
    if plan.kind == "core":
        return {}
    out = {}
    for tag, op in (("q", plan.q), ("k", plan.k), ("v", plan.v)):
        out[f"w_{tag}"] = np.ascontiguousarray(op.weight)
        if op.bias is not None:
            out[f"b_{tag}"] = np.ascontiguousarray(op.bias)
    out["w_o"] = np.ascontiguousarray(plan.w_o)
    if plan.b_o is not None:
        out["b_o"] = np.ascontiguousarray(plan.b_o)
    return out


def _value_is_key(graph: Graph) -> Graph:
    """Cross attention whose keys and values are projected from one tensor: ``value`` reads ``key``."""
    key = next(v for v in graph.inputs if v.name == "key")
    value = next(v for v in graph.inputs if v.name == "value")
    if key.type != value.type:
        raise Refused(f"one tensor feeds the keys and the values, but their declared types differ ({key.type}, "
                      f"{value.type})")
    nodes = tuple(Node(n.op, tuple(key if x == value else x for x in n.inputs), n.outputs, n.attrs)
                  for n in graph.nodes)
    return verify_graph(graph.replace(inputs=tuple(v for v in graph.inputs if v != value), nodes=nodes))


def _only_outputs(graph: Graph, outputs: dict) -> Graph:
    keep = tuple(v for v in graph.outputs if v.name in outputs)
    missing = set(outputs) - {v.name for v in keep}
    if missing:
        raise Refused(f"the lifted graph has no output(s) {sorted(missing)}")
    return graph if len(keep) == len(graph.outputs) else verify_graph(graph.replace(outputs=keep))


def per_token_rope(graph: Graph, form: str, rotary_dim: int, shape: tuple) -> Graph:
    """Feed the rotary ops from per-token tables: inputs ``cos``/``sin`` of ``shape`` (.., q_len, rd or rd/2)
    replace ``cos_cache``/``sin_cache``; row i of the reshaped table is token i's (offset 0)."""
    taken = {v.name for v in graph.inputs + graph.params} | {o.name for n in graph.nodes for o in n.outputs}
    width = rotary_dim if form == "full" else rotary_dim // 2
    prefix: list[Node] = []
    subst: dict[str, Value] = {}
    new_inputs = []
    for old in graph.inputs:
        if old.name not in ("cos_cache", "sin_cache"):
            new_inputs.append(old)
            continue
        name = old.name.split("_")[0]
        if name in taken:
            raise Refused(f"the lifted graph already has a value named {name!r}")
        taken.add(name)
        table = Value(name, TensorType(old.type.dtype, tuple(dims.canonical(d) for d in shape)))
        new_inputs.append(table)
        node = make_node(Op.RESHAPE, [table], taken, name=f"{name}_rows", shape=("q_len", width))
        prefix.append(node)
        value = node.output
        if form == "full":  # the two halves are equal (proven): the IR's table is the first
            node = make_node(Op.SLICE, [value], taken, name=f"{name}_table", axis=1, start=0, stop=rotary_dim // 2)
            prefix.append(node)
            value = node.output
        subst[old.name] = value
    body = []
    for n in graph.nodes:
        if n.op is Op.ROTARY:
            ins = [subst.get(x.name, x) for x in n.inputs]
            attrs = dict(n.attrs)
            attrs["offset"] = 0
            n = make_node(Op.ROTARY, ins, taken, outputs=list(n.outputs), **attrs)
        body.append(n)
    return verify_graph(graph.replace(inputs=tuple(new_inputs), nodes=tuple(prefix + body)))


def summed_bias(graph: Graph, first: tuple, second: tuple) -> Graph:
    """Take the additive mask as two inputs, ``attn_mask`` (``first``) then ``attn_bias`` (``second``), and
    add them in the graph."""
    taken = {v.name for v in graph.inputs + graph.params} | {o.name for n in graph.nodes for o in n.outputs}
    old = next(v for v in graph.inputs if v.name == "attn_mask")
    if "attn_bias" in taken:
        raise Refused("the lifted graph already has a value named 'attn_bias'")
    a = Value("attn_mask", TensorType(old.type.dtype, tuple(dims.canonical(d) for d in first)))
    b = Value("attn_bias", TensorType(old.type.dtype, tuple(dims.canonical(d) for d in second)))
    taken.add("attn_bias")
    node = make_node(Op.ADD, [a, b], taken, name="attn_mask_sum")
    if node.output.type != old.type:
        raise Refused(f"the two biases broadcast to {node.output.type}, not the scores' mask {old.type}")
    body = [Node(n.op, tuple(node.output if x.name == "attn_mask" else x for x in n.inputs), n.outputs, n.attrs)
            for n in graph.nodes]
    inputs = []
    for v in graph.inputs:
        inputs += [a, b] if v.name == "attn_mask" else [v]
    return verify_graph(graph.replace(inputs=tuple(inputs), nodes=(node,) + tuple(body)))
