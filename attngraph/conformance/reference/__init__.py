"""The float64 reference: any attngraph graph evaluated op by op in float64, plainly.

It shares no code with the backends, the shared array math or the decompositions: every op has a
rule of its own here (``attention_ops``, ``position_ops``, ``primitive_ops``), written from the semantics table
(``attngraph.ir.semantics``). The tests' ``oracle.py`` is a second, independent oracle.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attngraph.conformance.reference.attention_ops import ATTENTION_OPS
from attngraph.conformance.reference.latent_ops import LATENT_OPS
from attngraph.conformance.reference.position_ops import POSITION_OPS
from attngraph.conformance.reference.primitive_ops import PRIMITIVE_OPS
from attngraph.conformance.reference.varlen_ops import VARLEN_OPS
from attngraph.conformance.reference.quant_ops import QUANT_OPS
from attngraph.conformance.reference.paged_ops import PAGED_OPS
from attngraph.ir import Graph, Op, dims
from attngraph.ir.types import QUANT_DTYPES

RULES = {op: {**ATTENTION_OPS, **POSITION_OPS, **LATENT_OPS, **VARLEN_OPS, **QUANT_OPS, **PAGED_OPS,
                  **PRIMITIVE_OPS}[op] for op in Op}


def evaluate(graph: Graph, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> dict:
    """Every output of ``graph`` in float64 (bool/int inputs kept as they are)."""
    env, bound = {}, {}
    for value in list(graph.inputs) + list(graph.params):
        arr = np.asarray(inputs[value.name] if value.name in inputs else weights[value.name])
        # a quantized cache (int8, float8) is held as its exact float64 values, as the quantize rule gives them
        floats = arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" or value.type.dtype in QUANT_DTYPES
        env[value] = arr.astype(np.float64) if floats else arr
        for d, size in zip(value.type.shape, arr.shape, strict=True):
            if not dims.is_static(d) and dims.canonical(d) in dims.symbols(d):
                bound[dims.canonical(d)] = int(size)
    with np.errstate(invalid="ignore"):  # NaN and inf propagate by the semantics table: expected, not a warning
        for node in graph.nodes:
            result = RULES[node.op](node, bound, *(env[v] for v in node.inputs))
            for value, out in zip(node.outputs, result if len(node.outputs) > 1 else (result,), strict=True):
                env[value] = out
    return {v.name: env[v] for v in graph.outputs}
