"""One small graph per op: its single node reads graph inputs and writes the graph output.

``ONE_NODE[op]()`` -> (graph, inputs). Every op of the IR must have an entry (a test says which is
missing), so each op is run alone on each backend and compared with the float64 reference: a
failure points at one op's rule (or its decomposition) on one backend.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attngraph import GraphBuilder, Op
from attngraph.ir.op import BINARY_ARITHMETIC, COMPARISON, UNARY

RNG = np.random.default_rng(7)
F32 = "float32"


def _arr(shape, low=-2.0, high=2.0, dtype=np.float32):
    return RNG.uniform(low, high, size=shape).astype(dtype)


def _one(op: Op, specs: list[tuple[str, str, tuple]], arrays: list, *, feed: bool = True, **attrs):
    """A graph of one ``op`` node over inputs ``specs`` (name, dtype, shape); returns (graph, inputs).
    ``feed=False``: the inputs only bind dims (for ops that take none, such as ``iota``)."""
    b = GraphBuilder(f"one_{op.value}")
    values = [b.input(name, dtype, shape) for name, dtype, shape in specs]
    out = b.op(op, *(values if feed else ()), name="out", **attrs)
    outs = list(out) if isinstance(out, tuple) else [out]
    return b.build(outs), {name: arr for (name, _, _), arr in zip(specs, arrays, strict=True)}


def _scores(**attrs):
    def make():
        specs = [("s", F32, ("batch", 2, "q_len", "kv_len"))]
        arrays = [_arr((2, 2, 3, 5))]
        kinds = attrs.get("operands", ())
        if "bool" in kinds:
            specs.append(("m", "bool", ("q_len", "kv_len")))
            arrays.append(RNG.random((3, 5)) > 0.3)
        if "lengths" in kinds:
            specs.append(("n", "int64", ("batch",)))
            arrays.append(np.array([5, 2], np.int64))
        return _one(Op.MASK, specs, arrays, **attrs)
    return make


def _elementwise(op: Op) -> Callable:
    def make():
        if op in UNARY:
            positive = op in (Op.LOG, Op.SQRT)
            return _one(op, [("x", F32, ("batch", 3))], [_arr((2, 3), low=0.1 if positive else -2.0)])
        if op in COMPARISON or op in BINARY_ARITHMETIC:
            y = _arr((3,), low=0.5) if op is Op.DIV else _arr((3,))
            return _one(op, [("x", F32, ("batch", 3)), ("y", F32, (3,))], [_arr((2, 3)), y])
        raise AssertionError(op)
    return make


ONE_NODE: dict[Op, Callable] = {
    Op.LINEAR: lambda: _one(Op.LINEAR, [("x", F32, ("batch", 4, 6)), ("w", F32, (6, 3)), ("b", F32, (3,))],
                            [_arr((2, 4, 6)), _arr((6, 3)), _arr((3,))]),
    Op.SPLIT_HEADS: lambda: _one(Op.SPLIT_HEADS, [("x", F32, ("batch", "seq", 8))], [_arr((2, 3, 8))], heads=2),
    Op.CONCAT: lambda: _one(Op.CONCAT, [("a", F32, (2, "s", 3)), ("b", F32, (2, 4, 3))],
                            [_arr((2, 1, 3)), _arr((2, 4, 3))], axis=1),
    Op.SPLIT: lambda: _one(Op.SPLIT, [("x", F32, ("batch", 7))], [_arr((2, 7))], axis=-1, sizes=(3, 4)),
    Op.MATMUL: lambda: _one(Op.MATMUL, [("a", F32, ("batch", 4, 3, 5)), ("b", F32, ("batch", 2, 6, 5))],
                            [_arr((2, 4, 3, 5)), _arr((2, 2, 6, 5))], transpose_b=True),
    Op.SCALE: lambda: _one(Op.SCALE, [("x", F32, ("batch", 3))], [_arr((2, 3))], value=0.37),
    Op.SOFTCAP: lambda: _one(Op.SOFTCAP, [("x", F32, ("batch", 3))], [_arr((2, 3), -9, 9)], cap=2.5),
    Op.MASK: _scores(causal=True, offset=1, window_left=2, operands=("bool", "lengths")),
    Op.SOFTMAX: lambda: _one(Op.SOFTMAX, [("x", F32, ("batch", 4))],
                             [np.array([[1, 2, 3, 4], [-np.inf] * 4], np.float32)]),
    Op.WEIGHTED_SUM: lambda: _one(Op.WEIGHTED_SUM, [("p", F32, ("batch", 4, 3, 6)), ("v", F32, ("batch", 2, 6, 5))],
                                  [_arr((2, 4, 3, 6), 0, 1), _arr((2, 2, 6, 5))]),
    Op.MERGE_HEADS: lambda: _one(Op.MERGE_HEADS, [("x", F32, ("batch", 2, "seq", 4))], [_arr((2, 2, 3, 4))]),
    Op.CLAMP: lambda: _one(Op.CLAMP, [("x", F32, ("batch", 5))], [_arr((2, 5))], low=-0.5, high=0.75),
    Op.ATTENTION: lambda: _one(Op.ATTENTION, [("q", F32, ("batch", 4, "q_len", 8)), ("k", F32, ("batch", 2, "kv", 8)),
                                              ("v", F32, ("batch", 2, "kv", 3)), ("n", "int64", ("batch",))],
                               [_arr((2, 4, 3, 8)), _arr((2, 2, 5, 8)), _arr((2, 2, 5, 3)), np.array([5, 0])],
                               scale=0.3, softcap=3.0, causal=True, operands=("lengths",), return_weights=True),
    Op.ROTARY: lambda: _one(Op.ROTARY, [("x", F32, ("batch", 2, "seq", 8)), ("p", "int64", ("batch", "seq"))],
                            [_arr((2, 2, 3, 8)), np.array([[0, 1, 9], [4, 0, 2]])], layout="interleaved",
                            rotary_dim=6, inv_freq=(1.0, 0.3, 0.01), attention_scaling=1.2, operands=("positions",)),
    Op.RMS_NORM: lambda: _one(Op.RMS_NORM, [("x", F32, ("batch", 3, 5)), ("w", F32, (5,))],
                              [_arr((2, 3, 5)), _arr((5,))], eps=1e-3, add_one=True),
    Op.ALIBI: lambda: _one(Op.ALIBI, [("s", F32, ("batch", 3, "q_len", "kv_len"))], [_arr((2, 3, 2, 6))],
                           slopes=(0.5, 0.25, 0.125), offset=4),
    Op.REL_BIAS: lambda: _one(Op.REL_BIAS, [("s", F32, ("batch", 2, "q_len", "kv_len")), ("t", F32, (8, 2)),
                                            ("n", "int64", ("batch",))],
                              [_arr((2, 2, 3, 40)), _arr((8, 2)), np.array([40, 17])], num_buckets=8,
                              max_distance=16, bidirectional=False, align="lengths"),
    Op.CACHE_UPDATE: lambda: _one(Op.CACHE_UPDATE, [("c", F32, ("batch", 2, 6, 3)), ("n", F32, ("batch", 2, "s", 3)),
                                                    ("l", "int64", ("batch",))],
                                  [_arr((2, 2, 6, 3)), _arr((2, 2, 4, 3)), np.array([1, 5])], mode="circular"),
    Op.CONST: lambda: _one(Op.CONST, [("x", F32, ("n",))], [_arr((3,))], feed=False, value=("n", 2),
                           dtype="int64"),
    Op.IOTA: lambda: _one(Op.IOTA, [("x", F32, ("n",))], [_arr((4,))], feed=False, length="n+1"),
    Op.CAST: lambda: _one(Op.CAST, [("x", F32, ("batch", 3))], [_arr((2, 3), -5, 5)], dtype="int64"),
    Op.AND: lambda: _one(Op.AND, [("a", "bool", ("batch", 3)), ("b", "bool", (3,))],
                         [RNG.random((2, 3)) > 0.5, RNG.random(3) > 0.5]),
    Op.OR: lambda: _one(Op.OR, [("a", "bool", ("batch", 3)), ("b", "bool", (3,))],
                        [RNG.random((2, 3)) > 0.5, RNG.random(3) > 0.5]),
    Op.NOT: lambda: _one(Op.NOT, [("a", "bool", ("batch", 3))], [RNG.random((2, 3)) > 0.5]),
    Op.WHERE: lambda: _one(Op.WHERE, [("c", "bool", ("batch", 3)), ("x", F32, ("batch", 3)), ("y", F32, ())],
                           [RNG.random((2, 3)) > 0.5, _arr((2, 3)), np.float32(-np.inf)]),
    Op.REDUCE_MAX: lambda: _one(Op.REDUCE_MAX, [("x", F32, ("batch", 4))], [_arr((2, 4))], axis=-1, keepdims=False),
    Op.REDUCE_SUM: lambda: _one(Op.REDUCE_SUM, [("x", F32, ("batch", 4))], [_arr((2, 4))], axis=0, keepdims=True),
    Op.DOT: lambda: _one(Op.DOT, [("a", F32, ("batch", 1, 3, 4)), ("b", F32, (5, 4, 2))],
                         [_arr((2, 1, 3, 4)), _arr((5, 4, 2))]),
    Op.RESHAPE: lambda: _one(Op.RESHAPE, [("x", F32, ("batch", "s", 6))], [_arr((2, 3, 6))], shape=("batch", "s", 2, 3)),
    Op.TRANSPOSE: lambda: _one(Op.TRANSPOSE, [("x", F32, ("batch", 3, 4))], [_arr((2, 3, 4))], perm=(2, 0, 1)),
    Op.SLICE: lambda: _one(Op.SLICE, [("x", F32, ("batch", 6))], [_arr((2, 6))], axis=1, start=1, stop=4),
    Op.GATHER: lambda: _one(Op.GATHER, [("t", F32, (5, 3)), ("i", "int64", ("batch", 2))],
                            [_arr((5, 3)), np.array([[0, 4], [2, 2]], np.int64)]),
}
for _op in UNARY | BINARY_ARITHMETIC | COMPARISON:
    ONE_NODE[_op] = _elementwise(_op)
ONE_NODE[Op.MOD] = lambda: _one(Op.MOD, [("x", "int64", ("batch", 4)), ("y", "int64", (4,))],
                                [np.array([[-7, -1, 0, 9], [5, 13, -13, 2]]), np.array([4, 3, 5, 2])])
# MLA's absorbed core: 4 q heads over one latent head, causal at a cache offset, key lengths (row 1 sees none)
ONE_NODE[Op.LATENT_ATTENTION] = lambda: _one(
    Op.LATENT_ATTENTION, [("ql", F32, ("batch", 4, "q_len", 6)), ("qr", F32, ("batch", 4, "q_len", 2)),
                          ("c", F32, ("batch", 1, "kv", 6)), ("kr", F32, ("batch", 1, "kv", 2)),
                          ("n", "int64", ("batch",))],
    [_arr((2, 4, 3, 6)), _arr((2, 4, 3, 2)), _arr((2, 1, 5, 6)), _arr((2, 1, 5, 2)), np.array([5, 0])],
    scale=0.4, causal=True, offset=2, operands=("lengths",))
# packed sequences: 4 q heads on 2 kv heads, lengths (q, k) = (2, 3), (0, 2), (3, 1): causal bottom-right
ONE_NODE[Op.VARLEN_ATTENTION] = lambda: _one(
    Op.VARLEN_ATTENTION, [("q", F32, (1, 4, "tq", 4)), ("k", F32, (1, 2, "tk", 4)), ("v", F32, (1, 2, "tk", 4)),
                          ("cq", "int32", ("n",)), ("ck", "int32", ("n",))],
    [_arr((1, 4, 5, 4)), _arr((1, 2, 6, 4)), _arr((1, 2, 6, 4)), np.array([0, 2, 2, 5], np.int32),
     np.array([0, 3, 5, 6], np.int32)], scale=0.5, causal=True)
# the quantized KV cache (int8): ties at half a step and values past the saturation bound; scales powers of two
_QSCALE = (2.0 ** RNG.integers(-4, 2, size=(2, 2, 3, 1))).astype(np.float32)
_QX = (_QSCALE * np.concatenate([RNG.integers(-150, 150, size=(2, 2, 3, 3)) + 0.5,
                                 RNG.uniform(-130, 130, size=(2, 2, 3, 3))], axis=-1)).astype(np.float32)
ONE_NODE[Op.QUANTIZE] = lambda: _one(Op.QUANTIZE, [("x", F32, ("batch", 2, 3, 6)), ("s", F32, ("batch", 2, 3, 1))],
                                     [_QX, _QSCALE], dtype="int8")
ONE_NODE[Op.DEQUANTIZE] = lambda: _one(Op.DEQUANTIZE, [("q", "int8", ("batch", 2, 3, 6)), ("s", F32, ("batch", 2, 3, 1))],
                                       [RNG.integers(-127, 128, size=(2, 2, 3, 6)).astype(np.int8), _QSCALE])
ONE_NODE[Op.QUANT_ATTENTION] = lambda: _one(
    Op.QUANT_ATTENTION, [("q", F32, ("batch", 4, "q_len", 6)), ("k", "int8", ("batch", 2, "kv", 6)),
                         ("ks", F32, ("batch", 2, "kv", 1)), ("v", "int8", ("batch", 2, "kv", 5)),
                         ("vs", F32, (2, 1, 1)), ("n", "int64", ("batch",))],
    [_arr((2, 4, 2, 6)), RNG.integers(-127, 128, size=(2, 2, 7, 6)).astype(np.int8), _arr((2, 2, 7, 1), 0.001, 0.03),
     RNG.integers(-127, 128, size=(2, 2, 7, 5)).astype(np.int8), _arr((2, 1, 1), 0.001, 0.03), np.array([7, 3])],
    scale=0.4, causal=True, align="lengths", operands=("lengths",))
# the paged KV cache: an NHD pool of 6 blocks of 3, tables out of order with -1 padding; the write crosses a block
# edge (row 0: positions 2..3), the read is causal bottom-right over 4 and 5 keys with 4 q heads on 2 kv heads
_PTABLE = np.array([[4, 1, -1], [0, 5, -1]], np.int32)
ONE_NODE[Op.PAGED_CACHE_UPDATE] = lambda: _one(
    Op.PAGED_CACHE_UPDATE, [("pool", F32, (6, 3, 2, 4)), ("new", F32, ("batch", 2, "s", 4)),
                            ("table", "int32", ("batch", 3)), ("n", "int64", ("batch",))],
    [_arr((6, 3, 2, 4)), _arr((2, 2, 2, 4)), _PTABLE, np.array([2, 1])])
ONE_NODE[Op.PAGED_ATTENTION] = lambda: _one(
    Op.PAGED_ATTENTION, [("q", F32, ("batch", 4, "s", 4)), ("kp", F32, (6, 2, 3, 4)), ("vp", F32, (6, 2, 3, 5)),
                         ("table", "int32", ("batch", 3)), ("n", "int64", ("batch",))],
    [_arr((2, 4, 2, 4)), _arr((6, 2, 3, 4)), _arr((6, 2, 3, 5)), _PTABLE, np.array([4, 5])], scale=0.5,
    layout="HND")
