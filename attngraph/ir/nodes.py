"""``make_node``: the one way to create a typed node (attributes completed, outputs inferred and named).

The builder, every pass and every decomposition create nodes through it, so a node is always
complete and typed exactly as ``verify_graph`` will check it.
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir import specs
from attngraph.ir.graph import Attr, Node, Value
from attngraph.ir.names import fresh_name
from attngraph.ir.op import Op


def make_node(op: Op, inputs: Sequence[Value], taken: set[str], *, name: str | Sequence[str] | None = None,
              outputs: Sequence[Value | None] | None = None, **attrs: Attr) -> Node:
    """``op(inputs) {attrs}`` with inferred output types.

    Output names are fresh (``name`` or the op's name as the hint, marked in ``taken``); an entry
    of ``outputs`` that is a Value is used as that output instead (it must have the inferred type),
    which is how a rewrite keeps the names the rest of the graph refers to.
    """
    full = specs.complete_attrs(op, attrs)
    types = specs.infer_types(op, [v.type for v in inputs], dict(full))
    if name is None or isinstance(name, str):
        hint = name or op.value
        hints = [hint] if len(types) == 1 else [f"{hint}_{i}" for i in range(len(types))]
    else:
        hints = list(name)
    if len(hints) != len(types):
        raise GraphError(f"{op.value} makes {len(types)} outputs but {len(hints)} names were given")
    given = list(outputs) if outputs is not None else [None] * len(types)
    made = []
    for hint, t, fixed in zip(hints, types, given, strict=True):
        if fixed is not None:
            if fixed.type != t:
                raise GraphError(f"{op.value} makes {t} but the output it replaces, %{fixed.name}, is {fixed.type}")
            made.append(fixed)
        else:
            made.append(Value(fresh_name(taken, hint), t))
    return Node(op, tuple(inputs), tuple(made), full)
