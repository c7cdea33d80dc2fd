"""``absorb_mla``: multi-head latent attention's naive core rewritten to the absorbed form (DeepSeek-V2 sec. 2.1.2).

The naive core expands the latent ``c`` (B, T, r) into per-head keys and values, ``c @ w_kv_b -> heads -> split:
k_nope, v``, and computes ``softmax(mask(scale * (q_nope . k_nope^T + q_rope . k_rope^T))) @ v``. Since
``k_nope = c @ W_UK[h]`` and ``v = c @ W_UV[h]`` per head, the same function is

    q_latent = q_nope @ W_UK[h]^T                         (B, H, S, r): W_UK folded into the query
    o_latent = latent_attention(q_latent, q_rope, c, k_rope)   the latent is key and value
    context  = o_latent @ W_UV[h]                         (B, H, S, dv): W_UV after the weighted sum

so a decode step reads the latent cache and the rope key cache and nothing else. ``W_UK``/``W_UV`` are cut from
the ``w_kv_b`` param inside the graph (params only: a backend folds them once per compile). The pattern matched:

    linear(c, w_kv_b) -> split_heads -> split(axis 3): k_nope, v
    add(matmul(q_nope, k_nope^T), matmul(q_rope, k_rope^T)) -> scale -> [mask] -> softmax -> weighted_sum(., v)

Each intermediate value must have one reader (k_nope and v only the core's): anything else is left as it is.
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, Value, specs
from attngraph.passes.dce import eliminate_dead_code
from attngraph.passes.rewrite import Emitter, GraphIndex, Rewrite, Step, rewrite, taken_names

CORE = (Step(Op.SOFTMAX), Step(Op.MASK, optional=True), Step(Op.SCALE), Step(Op.ADD))


def _expansion(index: GraphIndex, v: Value) -> tuple[Node, Node, Node] | None:
    """The ``linear(c, w_kv_b) -> split_heads -> split`` nodes that made ``v`` (its second output)."""
    split = index.producer(v, Op.SPLIT)
    if split is None or len(split.outputs) != 2 or split.outputs[1] != v or split.attr("axis") not in (3, -1):
        return None
    heads = index.producer(split.inputs[0], Op.SPLIT_HEADS)
    linear = heads and index.producer(heads.inputs[0], Op.LINEAR)
    if linear is None or len(linear.inputs) != 2 or linear.inputs[1] not in index.params:
        return None
    if not (index.single_use(split.inputs[0]) and index.single_use(split.outputs[0]) and index.single_use(v)):
        return None
    return linear, heads, split


def _scores(index: GraphIndex, add: Node, k_nope: Value) -> tuple[Node, Node] | None:
    """The two matmuls summed by ``add``: (the one reading ``k_nope``, the rope one), both ``q . k^T``."""
    mms = [index.producer(x, Op.MATMUL) for x in add.inputs]
    if any(m is None or not m.attr("transpose_b") or not index.single_use(m.output) for m in mms):
        return None
    nope = [m for m in mms if m.inputs[1] == k_nope]
    if len(nope) != 1:
        return None
    rope = mms[1] if nope[0] is mms[0] else mms[0]
    return nope[0], rope


def _absorb(node: Node, index: GraphIndex, taken: set[str]) -> Rewrite | None:
    if node.op is not Op.WEIGHTED_SUM:
        return None
    found = _expansion(index, node.inputs[1])
    softmax = index.producer(node.inputs[0], Op.SOFTMAX)
    if found is None or softmax is None or len(softmax.inputs) != 1 or not index.single_use(node.inputs[0]):
        return None
    chain = index.match_chain(softmax, CORE)
    if chain is None:
        return None
    linear, heads, split = found
    pair = _scores(index, chain.get(Op.ADD), split.outputs[0])
    if pair is None:
        return None
    nope_mm, rope_mm = pair
    q_nope, (q_rope, k_rope) = nope_mm.inputs[0], rope_mm.inputs
    c, w = linear.inputs
    h, (nope, dv) = int(heads.attr("heads")), tuple(int(s) for s in split.attr("sizes"))
    r = int(w.type.shape[0])
    if q_nope.type.shape[1] != h or k_rope.type.shape[1] != 1 or c.type.rank != 3:
        return None
    em = Emitter(taken)
    w_uk, w_uv = em.emit(Op.SPLIT, em.emit(Op.RESHAPE, w, shape=(r, h, nope + dv), name="w_kv_b_heads"), axis=2,
                         sizes=(nope, dv), name="w_kv_b_split")
    w_uk = em.emit(Op.RESHAPE, em.emit(Op.TRANSPOSE, w_uk, perm=(1, 2, 0)), shape=(1, h, nope, r), name="w_uk")
    w_uv = em.emit(Op.RESHAPE, em.emit(Op.TRANSPOSE, w_uv, perm=(1, 0, 2)), shape=(1, h, r, dv), name="w_uv")
    q_latent = em.emit(Op.DOT, q_nope, w_uk, name="q_latent")
    latent = _as_latent_heads(em, index, c)
    mask = chain.get(Op.MASK)
    attrs = {n: mask.attr(n) for n in specs.MASK_ATTRS} if mask is not None else {}
    core = em.emit(Op.LATENT_ATTENTION, q_latent, q_rope, latent, k_rope, *(mask.inputs[1:] if mask else ()),
                   scale=float(chain.get(Op.SCALE).attr("value")), name="latent_context", **attrs)
    em.emit(Op.DOT, core, w_uv, out=node.output)
    return Rewrite(remove=[node, *chain.nodes, nope_mm, rope_mm], add=em.nodes)


def _as_latent_heads(em: Emitter, index: GraphIndex, c: Value) -> Value:
    """The latent as (B, 1, T, r): the value ``c`` was reshaped from (the cache, or the new latent), or a reshape."""
    batch, keys, r = c.type.shape
    source = index.producer(c, Op.RESHAPE)
    if source is not None and source.inputs[0].type.shape == (batch, 1, keys, r):
        return source.inputs[0]
    return em.emit(Op.RESHAPE, c, shape=(batch, 1, keys, r), name="latent")


def absorb_mla(graph: Graph) -> Graph:
    """The absorbed form of every naive MLA core in ``graph`` (same function; see the module docstring); the same
    object back when there is none."""
    taken = taken_names(graph)
    new = rewrite(graph, lambda node, index: _absorb(node, index, taken))
    return graph if new is graph else eliminate_dead_code(new)
