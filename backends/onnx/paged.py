"""ONNX lowering of the paged KV cache's write: ``ScatterND`` at the slots the block table gives (``Gather`` on the
table, exact integer ``Div``/``Mod`` for block column and offset), in every export style. The read,
``paged_attention``, exports by its default decomposition: ``Gather`` of each row's blocks on the table, then the
attention core (``attngraph.passes.paged_decompositions``). The value checks keep every slot to one writer, so the
scatter's order does not matter (ScatterND leaves duplicate indices undefined)."""

from __future__ import annotations

import numpy as np
import onnx
from attngraph_backends.onnx.fused import ATTENTION_STYLE, CONTRIB_STYLE
from attngraph_backends.onnx.rules import DECOMPOSED, _e, _hint

from attngraph.ir import Op
from attngraph.ir.paged_specs import block_geometry


def _paged_cache_update(ctx, pool, new, table, lengths):
    e = _e(ctx)
    layout = ctx.attr("layout")
    _, bs, _, _ = block_geometry(ctx.node.inputs[0].type, layout)
    i64 = onnx.TensorProto.INT64
    shape = e.op("Shape", [new])  # (B, H, S, D)
    seq = e.op("Squeeze", [e.op("Slice", [shape, e.i64([2]), e.i64([3])]), e.i64([0])])
    zero, one = e.const(np.int64(0), "zero"), e.const(np.int64(1), "one")
    steps = e.op("Reshape", [e.op("Range", [zero, seq, one]), e.i64([1, -1])])
    pos = e.op("Add", [e.op("Reshape", [e.op("Cast", [lengths], to=i64), e.i64([-1, 1])]), steps])  # (B, S)
    size = e.const(np.int64(bs), "block_size")
    block = e.op("GatherElements", [e.op("Cast", [table], to=i64), e.op("Div", [pos, size])], axis=1)
    offset = e.op("Mod", [pos, size])
    updates = e.op("Transpose", [new], perm=[0, 2, 1, 3])  # (B, S, H, D): one update per (token, head) row
    if layout == "NHD":  # pool (N, bs, H, D): index (block, offset) -> a (H, D) slice
        index = e.op("Concat", [e.unsqueeze(block, [2]), e.unsqueeze(offset, [2])], axis=2)
    else:  # pool (N, H, bs, D): index (block, head, offset) -> a (D,) row
        heads = e.op("Slice", [shape, e.i64([1]), e.i64([2])])
        target = e.op("Concat", [e.op("Shape", [block]), heads], axis=0)  # (B, S, H)
        h_ids = e.op("Reshape", [e.op("Range", [zero, e.op("Squeeze", [heads, e.i64([0])]), one]), e.i64([1, 1, -1])])
        parts = [e.op("Expand", [e.unsqueeze(block, [2]), target]), e.op("Expand", [h_ids, target]),
                 e.op("Expand", [e.unsqueeze(offset, [2]), target])]
        index = e.op("Concat", [e.unsqueeze(p, [3]) for p in parts], axis=3)
    return e.op("ScatterND", [pool, index, updates], hint=_hint(ctx))


# every style's table (the styles copy DECOMPOSED when fused.py loads, so each gets the rule itself);
# export.py imports this module (rules.py importing it would be an import cycle)
for _table in (DECOMPOSED, ATTENTION_STYLE, CONTRIB_STYLE):
    _table.register(Op.PAGED_CACHE_UPDATE)(_paged_cache_update)
