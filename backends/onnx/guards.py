"""What keeps an exported model on attngraph's semantics where a runtime's kernel would leave them.

* **A masked key takes no part**: ``probs @ V`` gives NaN where a masked key (weight 0) holds NaN or
  inf in V (0 * NaN = NaN), and onnxruntime's ``Attention`` adds its mask to a NaN or inf score of a
  masked key instead of replacing it. The fast result is checked (a reduction over the output only)
  and, when it is not finite, recomputed exactly by an ``If`` branch: the weighted sum from counts of
  the non-finite values each row really uses, and the attention core by its decomposition.
* **Empty inputs**: onnxruntime's ``Attention`` kernel refuses a batch, query or key length of 0;
  the semantics give an empty output, or zeros for rows with no keys. An ``If`` branch returns those.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from attngraph_backends.onnx.emitter import ONNX_TYPES, OnnxEmitter
from onnx import numpy_helper

from attngraph.lowering import NodeCtx, Rules, interpret
from attngraph.passes.decompose import expand_nodes
from attngraph.passes.decompositions import DECOMPOSITIONS
from attngraph.passes.rewrite import Emitter


def any_nonfinite(e: OnnxEmitter, x: str) -> str:
    """A bool scalar: does ``x`` hold a NaN or an inf? (False for an empty ``x``.)"""
    bad = e.op("Cast", [e.op("Or", [e.op("IsNaN", [x]), e.op("IsInf", [x])])], to=ONNX_TYPES[e.compute])
    # one extra zero: never empty
    flat = e.op("Concat", [e.op("Reshape", [bad, e.i64([-1])]), e.const(np.zeros(1, e.np_compute))], axis=0)
    return e.op("Greater", [e.op("ReduceMax", [flat], keepdims=0), e.scalar(0.0)], hint="has_nonfinite")


def exact_weighted_sum(e: OnnxEmitter, p: str, v: str) -> str:
    """``sum_j p_j v_j`` over ``p_j != 0`` (see ``attngraph.array_math.weighted_sum``), batched MatMul shapes."""
    zero, inf = e.scalar(0.0), e.scalar(float("inf"))
    finite = e.op("Not", [e.op("Or", [e.op("IsNaN", [v]), e.op("IsInf", [v])])])
    out = e.op("MatMul", [p, e.op("Where", [finite, v, zero])])
    used = e.op("Cast", [e.op("Not", [e.op("Equal", [p, zero])])], to=ONNX_TYPES[e.compute])

    def uses(mask: str) -> str:
        return e.op("Greater", [e.op("MatMul", [used, e.op("Cast", [mask], to=ONNX_TYPES[e.compute])]), zero])

    nan, pos, neg = uses(e.op("IsNaN", [v])), uses(e.op("IsInf", [v], detect_negative=0)), \
        uses(e.op("IsInf", [v], detect_positive=0))
    nan = e.op("Or", [e.op("Or", [nan, e.op("IsNaN", [out])]), e.op("And", [pos, neg])])  # IsNaN(out): a NaN weight
    out = e.op("Where", [pos, inf, out])
    out = e.op("Where", [neg, e.op("Neg", [inf]), out])
    return e.op("Where", [nan, e.scalar(float("nan")), out])


def guarded_product(e: OnnxEmitter, p: str, v: str, hint: str) -> str:
    """``p @ v``, recomputed exactly in an ``If`` branch when it is not finite."""
    fast = e.op("MatMul", [p, v])
    if not e.guards:
        return fast
    (out,) = e.if_(any_nonfinite(e, fast), lambda: [exact_weighted_sum(e, p, v)], lambda: [fast], 1, hint=hint)
    return out


def lower_decomposition(e: OnnxEmitter, ctx: NodeCtx, rules: Rules, inputs: list[str]) -> list[str]:
    """The node's default decomposition, lowered here with ``rules``: its outputs' names."""
    node = ctx.node
    taken = {v.name for v in node.inputs + node.outputs}
    em = Emitter(taken)
    DECOMPOSITIONS[node.op](node, em)
    env = dict(zip(node.inputs, inputs, strict=True))
    interpret(expand_nodes(em.nodes, frozenset(rules), taken), rules, env, ctx.dims, e)
    return [env[v] for v in node.outputs]


def guarded_attention(e: OnnxEmitter, ctx: NodeCtx, rules: Rules, inputs: list[str],
                      fast: Callable[[], list[str]]) -> list[str]:
    """A fused attention node's outputs from ``fast()`` (a runtime's attention operator), with the
    empty-input and non-finite cases answered by ``If`` branches exactly as the semantics say."""
    if not e.guards:
        return fast()
    node = ctx.node
    q, k, v = inputs[:3]
    n = len(node.outputs)
    sizes = [e.shape_slice(q, 0, 1), e.shape_slice(q, 2, 3), e.shape_slice(k, 2, 3)]
    empty = e.op("ReduceMin", [e.op("Concat", sizes, axis=0)], keepdims=0)
    is_empty = e.op("Equal", [empty, e.const(np.int64(0), "zero")], hint="is_empty")

    def zeros() -> list[str]:  # no queries (empty output), or no keys (every row fully masked: 0)
        lead = e.shape_slice(q, 0, 3)
        shapes = [e.op("Concat", [lead, e.shape_slice(v, 3, 4)], axis=0),
                  e.op("Concat", [lead, e.shape_slice(k, 2, 3)], axis=0)][:n]
        return [e.op("ConstantOfShape", [s], value=numpy_helper.from_array(np.zeros(1, e.np_compute))) for s in shapes]

    outs = e.if_(is_empty, zeros, fast, n, hint="attention_or_empty")
    return e.if_(any_nonfinite(e, outs[0]), lambda: lower_decomposition(e, ctx, rules, inputs),
                 lambda: outs, n, hint=node.outputs[0].name)
