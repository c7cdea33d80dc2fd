"""The reference rule of ``latent_attention`` (MLA's absorbed core), in float64, from its definition: the scores
of the latent part plus those of the rope part, scaled, masked, softmax, then the weights times the latent. It
reuses the reference's own matmul, mask, softmax and weighted sum (written from the semantics table)."""

from __future__ import annotations

from attngraph.conformance.reference.attention_ops import _Attrs, _mask, _matmul, _softmax, _weighted_sum
from attngraph.ir import Op


def _latent_attention(node, bound, q_lat, q_rope, latent, rope_key, *ops):
    t = _Attrs(transpose_b=True)
    s = (_matmul(t, bound, q_lat, latent) + _matmul(t, bound, q_rope, rope_key)) * float(node.attr("scale"))
    return _weighted_sum(node, bound, _softmax(node, bound, _mask(node, bound, s, *ops)), latent)


LATENT_OPS = {Op.LATENT_ATTENTION: _latent_attention}
