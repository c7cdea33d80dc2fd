"""Random arrays for a graph's inputs at chosen sizes (for ``attngraph run``, benchmarks, checks)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attngraph.errors import InputError
from attngraph.ir import DType, Graph, dims
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering.value_checks import bounds_of
from attngraph.lowering.varlen_checks import random_cu_seqlens, varlen_plans


def random_inputs(graph: Graph, sizes: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """One array per graph input: floats ~ N(0, 1); bool masks about 80% True with the diagonal kept;
    key lengths uniform in [1, kv_total] (0 when there are no keys). ``sizes`` binds the symbols (``batch``,
    ``q_len``...)."""
    rng = np.random.default_rng(seed)
    sizes = packed_sizes(graph, sizes)
    out = {}
    for value in graph.inputs:
        try:
            shape = tuple(dims.evaluate(d, sizes) for d in value.type.shape)
        except KeyError as e:
            raise InputError(f"input {value.name!r} has dim {e.args[0]!r}; give its size, e.g. "
                             f"{e.args[0]}=8 (sizes given: {dict(sizes)})") from None
        dt = value.type.dtype
        if dt is DType.BOOL:
            arr = rng.random(shape) < 0.8
            arr[..., 0] = True  # every query keeps at least one key
            out[value.name] = arr
        elif dt in (DType.INT32, DType.INT64):  # key lengths: 1..kv_total keys kept per batch row
            total = sizes.get("kv_len", sizes.get("q_len", 1)) + sizes.get("past_len", 0)
            total = min([total, *_largest_index(graph, value, sizes)])
            out[value.name] = rng.integers(min(1, total), total + 1, size=shape).astype(to_numpy(dt))
        else:
            out[value.name] = rng.standard_normal(shape).astype(to_numpy(dt))
    for name, _what, dim in varlen_plans(graph):  # packed sequences: valid cumulative lengths, not random ints
        out[name] = random_cu_seqlens(rng, out[name].shape[0], dims.evaluate(dim, sizes), out[name].dtype)
    return out


def _largest_index(graph: Graph, value, sizes: Mapping[str, int]) -> list[int]:
    """The largest value each op that reads ``value`` as a length or position takes (the input value checks')."""
    out = []
    for node in graph.nodes:
        for bound in bounds_of(node):
            try:
                high = bound.range(sizes)[1] if bound.value == value else None
            except KeyError:  # a size the caller did not give: that op's bound is left out
                high = None
            if high is not None:
                out.append(high)
    return out


def packed_sizes(graph: Graph, sizes: Mapping[str, int]) -> dict[str, int]:
    """``sizes`` plus, for a ``varlen_attention`` graph, its packed dims when not given: ``batch`` sequences of
    ``q_len`` queries and ``kv_len`` keys packed (so ``attngraph run`` works with its usual size flags)."""
    from attngraph.ir import Op

    out = dict(sizes)
    batch, q_len = out.get("batch", 1), out.get("q_len", 1)
    for node in graph.nodes:
        if node.op is Op.VARLEN_ATTENTION:
            q, k, _, cu, _ = node.inputs
            for d, size in ((cu.type.shape[0], batch + 1), (q.type.shape[2], batch * q_len),
                            (k.type.shape[2], batch * out.get("kv_len", q_len))):
                if isinstance(d, str) and d.isidentifier():
                    out.setdefault(d, size)
    return out
