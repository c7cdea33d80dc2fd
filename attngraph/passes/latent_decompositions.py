"""Default decomposition of ``latent_attention`` (MLA's absorbed core) into the attention ops."""

from __future__ import annotations

from attngraph.ir import Node, Op, specs
from attngraph.passes.decomposition_registry import decomposes
from attngraph.passes.rewrite import Emitter


@decomposes(Op.LATENT_ATTENTION, uses={Op.MATMUL, Op.ADD, Op.SCALE, Op.MASK, Op.SOFTMAX, Op.WEIGHTED_SUM})
def _latent_attention(node: Node, em: Emitter) -> None:
    """latent_attention(q_lat, q_rope, c, k_rope, *m) ==> matmul(q_lat, c) + matmul(q_rope, k_rope) -> scale
    -> [mask] -> softmax -> weighted_sum(., c): the latent is the key of the no-position part and the value."""
    a = node.attr_dict
    q_lat, q_rope, latent, rope_key = node.inputs[:4]
    s = em.emit(Op.ADD, em.emit(Op.MATMUL, q_lat, latent, transpose_b=True, name="latent_scores"),
                em.emit(Op.MATMUL, q_rope, rope_key, transpose_b=True, name="rope_scores"), name="scores")
    s = em.emit(Op.SCALE, s, value=float(a["scale"]), name="qk_scaled")
    if node.inputs[4:] or a["causal"] or a["window_left"] >= 0 or a["window_right"] >= 0:
        s = em.emit(Op.MASK, s, *node.inputs[4:], name="qk_masked", **{n: a[n] for n in specs.MASK_ATTRS})
    probs = em.emit(Op.SOFTMAX, s, name="attn_weights")
    em.emit(Op.WEIGHTED_SUM, probs, latent, out=node.output)
