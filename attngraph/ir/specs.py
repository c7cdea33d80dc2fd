"""The per-op table ``OPS``: arity, attributes with defaults, and the type rule of every op.

The builder uses it to type new nodes and fill attribute defaults; ``verify_graph`` re-runs it
to check every node. The rules themselves live in ``attention_specs`` and ``primitive_specs``.
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir import dims
from attngraph.ir.attention_specs import (
    ATTENTION_OPERANDS,
    ATTENTION_SPECS,
    MASK_ATTRS,
    MASK_OPERANDS,
    POSITION_BIAS_ATTRS,
    check_mask_operands,
)
from attngraph.ir.cache_specs import CACHE_SPECS
from attngraph.ir.graph import Attr
from attngraph.ir.latent_specs import LATENT_SPECS
from attngraph.ir.quant_specs import QUANT_SPECS
from attngraph.ir.paged_specs import PAGED_SPECS
from attngraph.ir.op import Op
from attngraph.ir.position_specs import POSITION_SPECS
from attngraph.ir.primitive_specs import PRIMITIVE_SPECS
from attngraph.ir.spec_helpers import REQUIRED, OpSpec
from attngraph.ir.types import TensorType
from attngraph.ir.varlen_specs import VARLEN_SPECS

OPS: dict[Op, OpSpec] = {op: {**ATTENTION_SPECS, **POSITION_SPECS, **CACHE_SPECS, **LATENT_SPECS, **VARLEN_SPECS,
                              **QUANT_SPECS, **PAGED_SPECS, **PRIMITIVE_SPECS}[op] for op in Op}

# attributes holding a dim (int or symbol): kept in canonical spelling so equal dims compare equal
DIM_ATTRS = frozenset({"offset", "length", "start", "stop"})

__all__ = ["ATTENTION_OPERANDS", "DIM_ATTRS", "POSITION_BIAS_ATTRS", "uses_symbols", "MASK_ATTRS", "MASK_OPERANDS",
           "OPS", "REQUIRED", "OpSpec", "check_mask_operands", "complete_attrs", "infer_types", "normalize_attr"]


def normalize_attr(value: Attr) -> Attr:
    """Make an attribute hashable (lists become tuples)."""
    if isinstance(value, list | tuple):
        return tuple(normalize_attr(v) for v in value)
    return value


def _canonical_dim(name: str, value: Attr) -> Attr:
    try:
        if name in DIM_ATTRS:
            return dims.canonical(value)
        if name == "shape":
            return tuple(dims.canonical(d) for d in value)
    except (TypeError, ValueError) as e:
        raise GraphError(f"attribute {name}={value!r}: {e}") from None
    return value


def uses_symbols(node) -> bool:
    """True when one of the node's attributes holds a symbolic dim (its value is known only at run time)."""
    for name, value in node.attrs:
        if name in DIM_ATTRS or name in ("shape", "value"):
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, str) and dims.symbols(v):
                    return True
    return False


def complete_attrs(op: Op, given: dict[str, Attr]) -> tuple[tuple[str, Attr], ...]:
    """Fill defaults and reject unknown or missing attributes; returns sorted pairs."""
    spec = OPS[op]
    unknown = sorted(set(given) - set(spec.attrs))
    if unknown:
        raise GraphError(f"{op.value} has no attribute(s) {unknown}; known: {sorted(spec.attrs)}")
    full = {}
    for name, default in spec.attrs.items():
        if name in given:
            full[name] = _canonical_dim(name, normalize_attr(given[name]))
        elif default is REQUIRED:
            raise GraphError(f"{op.value} needs attribute {name!r}")
        else:
            full[name] = default
    return tuple(sorted(full.items()))


def infer_types(op: Op, inputs: Sequence[TensorType], attrs: dict[str, Attr]) -> tuple[TensorType, ...]:
    """Output types of ``op`` applied to ``inputs``; checks arity first."""
    spec = OPS[op]
    n = len(inputs)
    if n < spec.min_inputs or (spec.max_inputs is not None and n > spec.max_inputs):
        most = "any number" if spec.max_inputs is None else spec.max_inputs
        raise GraphError(f"{op.value} takes {spec.min_inputs}..{most} inputs, got {n}")
    return spec.infer(inputs, attrs)
