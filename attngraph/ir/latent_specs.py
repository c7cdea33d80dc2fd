"""Type rule of ``latent_attention``, the absorbed core of multi-head latent attention (DeepSeek-V2/V3 MLA).

``latent_attention(q_latent, q_rope, latent, rope_key, *mask operands) {scale, causal, offset, align, ...}``:

* ``q_latent`` (B, Hq, Sq, r): the no-position part of the query already multiplied by ``W_UK`` (absorbed);
* ``q_rope`` (B, Hq, Sq, dr): the rotated (decoupled) part of the query;
* ``latent`` (B, Hkv, T, r): the compressed KV (``kv_lora_rank`` = r), usually one head (Hkv = 1);
* ``rope_key`` (B, Hkv, T, dr): the shared rotated key.

It computes ``softmax(mask(scale * (q_latent . latent^T + q_rope . rope_key^T))) @ latent``, shape
(B, Hq, Sq, r): the latent is both the key (with ``q_latent``) and the value; ``W_UV`` is applied after it, by
the graph. The mask attributes and operands are ``mask``'s (``MASK_ATTRS``), so a static cache's ``lengths``
with ``align="lengths"`` work as for ``attention``. q head h reads kv head ``h // (Hq / Hkv)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir.attention_specs import MASK_ATTRS, MASK_OPERANDS, _finite_attr, _matmul, check_mask_operands
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import REQUIRED, OpSpec, need_float, need_rank, same
from attngraph.ir.types import TensorType

LATENT_OPERANDS = MASK_OPERANDS


def _latent_attention(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    q_lat, q_rope, latent, rope_key = ts[:4]
    for t, name in ((q_lat, "latent_attention q_latent"), (q_rope, "latent_attention q_rope"),
                    (latent, "latent_attention latent"), (rope_key, "latent_attention rope_key")):
        need_float(t, name)
        need_rank(t, 4, name, "(batch, heads, seq, dim)")
    if not q_lat.dtype == q_rope.dtype == latent.dtype == rope_key.dtype:
        raise GraphError(f"latent_attention inputs must share a dtype: {q_lat}, {q_rope}, {latent}, {rope_key}")
    (scores,) = _matmul((q_lat, latent), {"transpose_b": True})
    (rope_scores,) = _matmul((q_rope, rope_key), {"transpose_b": True})
    if not (same(scores.shape[3], rope_scores.shape[3]) and same(q_lat.shape[2], q_rope.shape[2])
            and latent.shape[1] == rope_key.shape[1]):
        raise GraphError(f"latent_attention: the latent {latent} and the rope key {rope_key} must share batch, heads "
                         f"and length, and q_latent {q_lat} and q_rope {q_rope} their query length")
    _finite_attr(a, "scale", "latent_attention")
    check_mask_operands(scores, ts[4:], a)
    return (TensorType(q_lat.dtype, q_lat.shape[:3] + (latent.shape[3],)),)


LATENT_SPECS = {Op.LATENT_ATTENTION: OpSpec(4, 7, {"scale": REQUIRED, **MASK_ATTRS}, _latent_attention)}
