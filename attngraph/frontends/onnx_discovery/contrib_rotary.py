"""``com.microsoft.RotaryEmbedding`` as the IR's ``rotary`` op (a subgraph of its own: kind ``rotary``).

What onnxruntime 1.32's CPU kernel computes, each point pinned by a conformance case (in parentheses):

* ``input`` (B, H, S, D), or (B, S, H*D) split into ``num_heads`` heads; without ``num_heads`` a 3-D input's head
  size is twice the caches' width (``rotary_contrib_3d_head_size_from_cache``).
* ``position_ids`` (B, S) gives each token's position (``rotary_contrib_position_ids``); a (1,) value is an
  offset: token i sits at ``offset + i`` (``rotary_contrib_scalar_offset``).
* ``cos_cache``/``sin_cache`` (positions, rd/2) read at the position; ``interleaved`` pairs dims (2k, 2k+1),
  else k and k + rd/2 (``rotary_contrib_interleaved``); ``rotary_embedding_dim`` rotates the first rd dims of
  each head, the rest pass through (3-D input with ``num_heads``: ``rotary_contrib_partial_dim``).
* ``scale`` is ignored by the CPU kernel though its schema says it is used: a value other than 1 is refused, as
  are ``is_packed_batching`` and a partial rotation of a 4-D input (the CPU kernel refuses that one).
"""

from __future__ import annotations

from attngraph.frontends.onnx_discovery.contrib_node import ContribNode, Lifted
from attngraph.ir import DType, Op
from attngraph.ir.builder import GraphBuilder

ROLES = ("input", "position_ids", "cos_cache", "sin_cache")
ATTRS = {"interleaved", "num_heads", "rotary_embedding_dim", "is_packed_batching", "scale"}


def lift_rotary(node, prep) -> Lifted:
    """The lifted form of one RotaryEmbedding node (see the module docstring), or ``Refused``."""
    c = ContribNode(node, prep, ROLES)
    c.known_attrs(ATTRS)
    if int(c.attr("is_packed_batching", 0)):
        c.refuse("is_packed_batching=1 (ragged packed batches) is not lifted")
    if c.float_attr("scale", 1.0) != 1.0:
        c.refuse(f"scale={c.attr('scale')}: onnxruntime's CPU kernel ignores it while its schema says it is used; "
                 "attngraph lifts scale 1 only")
    for role in ROLES:
        if not c.has(role):
            c.refuse(f"input {role!r} is required")
    rank, half = c.rank("input"), c.static("cos_cache", 1, "rotary half-width")
    if c.rank("cos_cache") != 2 or c.rank("sin_cache") != 2 or c.static("sin_cache", 1, "rotary half-width") != half:
        c.refuse("cos_cache and sin_cache must both be (positions, rotary_dim / 2)")
    heads, head, rd = _heads(c, rank, half)
    dtype = c.dtype("input")
    layout = "interleaved" if int(c.attr("interleaved", 0)) else "half"
    b = GraphBuilder(f"rotary_{node.name}".replace("/", "_")[:80])
    x = b.input("x", dtype, ("batch", "q_len", heads * head) if rank == 3 else ("batch", heads, "q_len", head))
    x4 = b.op(Op.SPLIT_HEADS, x, heads=heads, name="x_heads") if rank == 3 else x
    positions, form = _positions(c, b)
    cos, sin = (b.input(n, dtype, ("rope_positions", half)) for n in ("cos_cache", "sin_cache"))
    y = b.op(Op.ROTARY, x4, positions, cos, sin, layout=layout, rotary_dim=rd, operands=("positions", "cos_sin"),
             name="rotated" if rank == 4 else "rotated_heads")
    if rank == 3:
        y = b.op(Op.MERGE_HEADS, y, name="rotated")
    graph = b.build([y])
    inputs = {"x": c.name("input"), "position_ids": c.name("position_ids"), "cos_cache": c.name("cos_cache"),
              "sin_cache": c.name("sin_cache")}
    text = (f"rotary {layout} {rd}/{head} of {'(B, S, H*D) split into' if rank == 3 else '(B, H, S, D),'} {heads} "
            f"heads; positions {form}; cos/sin caches (positions, {half}) read at the position")
    summary = {"kind": "rotary", "heads": heads, "kv_heads": None, "head_dim": head, "causal": None, "mask": None,
               "rotary": f"{layout} {rd}/{head}", "cache": False, "computes": text}
    return Lifted(graph, {}, inputs, {y.name: c.output(0)}, summary)


def _heads(c: ContribNode, rank: int, half: int) -> tuple[int, int, int]:
    """(heads, head size, rotated dims)."""
    heads_attr, rd_attr = int(c.attr("num_heads", 0)), int(c.attr("rotary_embedding_dim", 0))
    if rank == 4:
        heads, head = c.static("input", 1, "head count"), c.static("input", 3, "head size")
        if rd_attr and rd_attr != head:
            c.refuse(f"rotary_embedding_dim={rd_attr} with a 4-D input: onnxruntime's CPU kernel refuses a partial "
                     "rotation there")
    elif rank == 3:
        width = c.static("input", 2, "hidden width")
        if rd_attr and not heads_attr:
            c.refuse(f"rotary_embedding_dim={rd_attr} needs num_heads (onnxruntime requires them together)")
        head = width // heads_attr if heads_attr else 2 * half
        if heads_attr and width % heads_attr or width % head:
            c.refuse(f"the hidden width {width} is not a whole number of heads (num_heads={heads_attr}, head size "
                     f"{head})")
        heads = width // head
    else:
        c.refuse(f"input must be 3-D (batch, seq, hidden) or 4-D (batch, heads, seq, head), got rank {rank}")
    rd = rd_attr or head
    if rd != 2 * half or rd > head or rd % 2:
        c.refuse(f"the caches' width {half} does not rotate {rd} of a {head}-dim head")
    return heads, head, rd


def _positions(c: ContribNode, b: GraphBuilder):
    """The (batch or 1, q_len) positions: the input itself, or ``offset + i`` for a (1,) offset."""
    d = c.dims("position_ids")
    if getattr(c.value("position_ids").dtype, "name", None) != "INT64":
        c.refuse("position_ids must be int64")
    if d is not None and len(d) == 2:
        return b.input("position_ids", DType.INT64, ("batch", "q_len")), "from position_ids (B, S)"
    if d is not None and len(d) == 1 and d[0] == 1:
        offset = b.input("position_ids", DType.INT64, (1,))
        steps = b.op(Op.RESHAPE, b.op(Op.IOTA, length="q_len"), shape=(1, "q_len"), name="token_steps")
        positions = b.op(Op.ADD, b.op(Op.RESHAPE, offset, shape=(1, 1)), steps, name="positions")
        return positions, "offset + i (a (1,) offset)"
    c.refuse(f"position_ids must be (batch, seq) or a (1,) offset, got {d}")
