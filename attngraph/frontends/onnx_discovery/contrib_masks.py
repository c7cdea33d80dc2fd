"""The int32 padding masks of onnxruntime's ``MultiHeadAttention`` (``key_padding_mask``) and ``Attention``
(``mask_index``), as the additive bias attngraph's mask reads.

onnxruntime 1.32's CPU kernels *add* ``mask_filter_value`` (default -10000) to the score of each key the mask
excludes; a finite fill, so a row whose keys are all excluded is not zero but the softmax of its own scores
(``mha_key_padding_fill_is_added``, ``attention_mask_index_fill_is_added``). The forms, told apart by the
mask's dims (never guessed: an unknown dim is refused):

* ``lengths`` (batch,): key j of row b is kept iff ``j < mask[b]`` (right padding);
* ``ends_starts`` (2 * batch,): kept iff ``mask[batch + b] <= j < mask[b]`` (the exclusive ends, then the
  inclusive starts: ``attention_mask_index_end_positions``);
* ``keys`` (batch, total): kept iff ``mask[b, j] != 0`` (``mha_key_padding_mask_2d_polarity``);
* ``queries_keys`` (batch, q_len, total): kept iff ``mask[b, i, j] != 0``.
"""

from __future__ import annotations

from attngraph.frontends.onnx_discovery.contrib_node import ContribNode, same_dim
from attngraph.ir import DType, Op


def mask_form(c: ContribNode, role: str, total) -> str:
    """The form of the int mask input ``role`` (see the module docstring), or refused naming its shape."""
    d = c.dims(role)
    query = c.dims(c.roles[0]) or (None, None)
    batch, seq = query[0], query[1]
    c.int_input(role)
    if d is None or any(x is None for x in d):
        c.refuse(f"the shape of {role!r} is unknown, so its form (lengths, start/end positions or a 0/1 mask) "
                 "cannot be told")
    if len(d) == 1 and same_dim(d[0], batch):
        return "lengths"
    if len(d) == 1 and batch is not None and same_dim(d[0], batch * 2):
        return "ends_starts"
    if len(d) == 2 and same_dim(d[0], batch) and _may_be(d[1], total):
        return "keys"
    if len(d) == 3 and same_dim(d[0], batch) and _may_be(d[1], seq) and _may_be(d[2], total):
        return "queries_keys"
    c.refuse(f"{role!r} of shape {tuple(d)} is none of the forms attngraph reads: (batch,) lengths, (2 * batch,) end "
             f"and start positions, (batch, total={total}) or (batch, q_len, total) 0/1 masks (the (3 * batch + 2,) "
             "and 4-D forms are not lifted)")


def _may_be(dim, want) -> bool:
    """``dim`` is ``want``, provably, or a symbol the model leaves unrelated to it (onnxruntime requires the mask to
    be that long, and so do the lifted graph's input checks: a mask of another length is an error in both)."""
    return same_dim(dim, want) or (dim is not None and not dim.is_const and want is not None)


def padding_bias(em, mask, form: str, keys, fill: float, dtype: DType):
    """The additive bias of ``mask`` (an IR int value) in ``form``: 0 where a key is kept, ``fill`` where not,
    shaped (batch, 1, 1, keys) or (batch, 1, q_len, keys). ``keys`` is the IR dim of the total key length."""
    zero, filled = em.const(0.0, dtype), em.const(float(fill), dtype)
    if form in ("keys", "queries_keys"):
        dropped = em.emit(Op.EQUAL, mask, em.const(0, mask.type.dtype))
        bias = em.emit(Op.WHERE, dropped, filled, zero)
        shape = ("batch", 1, 1, keys) if form == "keys" else ("batch", 1, "q_len", keys)
        return em.emit(Op.RESHAPE, bias, shape=shape, name="padding_bias")
    slots = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=keys), shape=(1, keys))
    as_i64 = em.cast(mask, DType.INT64)
    if form == "lengths":
        kept = em.emit(Op.LESS, slots, em.emit(Op.RESHAPE, as_i64, shape=("batch", 1)))
    else:  # (2B,): the exclusive ends, then the inclusive starts
        ends = em.emit(Op.RESHAPE, em.emit(Op.SLICE, as_i64, axis=0, start=0, stop="batch"), shape=("batch", 1))
        starts = em.emit(Op.RESHAPE, em.emit(Op.SLICE, as_i64, axis=0, start="batch", stop="batch+batch"),
                         shape=("batch", 1))
        kept = em.emit(Op.AND, em.emit(Op.LESS, slots, ends), em.emit(Op.LESS_EQUAL, starts, slots))
    bias = em.emit(Op.WHERE, kept, zero, filled)
    return em.emit(Op.RESHAPE, bias, shape=("batch", 1, 1, keys), name="padding_bias")


def feed_masks(edit, c: ContribNode, mask_role: str, form: str | None, with_bias: bool, fill: float, keys: str,
               dtype: DType) -> dict:
    """Define the graph's additive ``attn_mask`` as the padding bias of the int mask ``mask_role`` (in ``form``;
    None: absent) plus the model's ``attention_bias`` (``with_bias``); returns the new IR inputs' model names."""
    inputs, parts = {}, []
    if form is not None:
        shapes = {"lengths": ("batch",), "ends_starts": ("batch+batch",), "keys": ("batch", keys),
                  "queries_keys": ("batch", "q_len", keys)}
        m = edit.new_input(mask_role, c.int_input(mask_role), shapes[form])
        inputs[mask_role] = c.name(mask_role)
        parts.append(lambda em: padding_bias(em, m, form, keys, fill, dtype))
    if with_bias:
        ad = c.dims("attention_bias")
        ab = edit.new_input("attention_bias", dtype, (1 if ad[0] == 1 else "batch", ad[1].value, "q_len", keys))
        inputs["attention_bias"] = c.name("attention_bias")
        parts.append(lambda em: ab)

    def summed(em):
        total = parts[0](em)
        for part in parts[1:]:
            total = em.emit(Op.ADD, total, part(em))
        return total
    edit.define("attn_mask", summed)
    return inputs


def bias_fits(c: ContribNode, heads: int, total) -> None:
    """``attention_bias`` must be (batch or 1, heads or 1, q_len, total) of the query's type, else refused."""
    ad, qd = c.dims("attention_bias"), c.dims(c.roles[0])
    ok = ad is not None and len(ad) == 4 and (ad[0] == 1 or same_dim(ad[0], qd[0])) and ad[1] in (1, heads) \
        and same_dim(ad[2], qd[1]) and same_dim(ad[3], total)
    if not ok:
        c.refuse(f"attention_bias must be (batch or 1, {heads} or 1, q_len, total={total}), got {ad}")
    if c.dtype("attention_bias") != c.dtype(c.roles[0]):
        c.refuse(f"attention_bias is not of the {c.roles[0]}'s type")


def mask_shape(c: ContribNode, form: str | None, with_bias: bool, heads: int, keys: str):
    """The IR dims of the summed additive mask (None without one)."""
    if form is None and not with_bias:
        return None
    ad = c.dims("attention_bias") if with_bias else None
    batch = "batch" if form is not None or (ad is not None and ad[0] != 1) else 1
    head = heads if ad is not None and ad[1] != 1 else 1
    rows = "q_len" if with_bias or form == "queries_keys" else 1
    return (batch, head, rows, keys)
