"""What the lifters of onnxruntime's ``com.microsoft`` operators share (``contrib`` dispatches to them):
``ContribNode`` (one node's inputs by schema name, their dims and constant values, its attributes; ``refuse``
raises ``Refused`` naming the node), ``Lifted`` (what a lifter returns) and ``core_summary`` (the listing)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attngraph.frontends.onnx_discovery.operands import Refused

DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64"}


@dataclass
class Lifted:
    """What one contrib node becomes: the graph with its weights, IR input/output name -> model value name,
    the listing's ``summary``, the ``notes`` on how conventions were mapped, and ``unspecified`` outputs."""

    graph: object
    weights: dict
    inputs: dict
    outputs: dict
    summary: dict
    notes: list = field(default_factory=list)
    unspecified: dict = field(default_factory=dict)


class ContribNode:
    """One ``com.microsoft`` node of the prepared model, read by its schema's input names (``roles``)."""

    def __init__(self, node, prep, roles: tuple[str, ...]):
        self.node, self.prep, self.roles = node, prep, roles
        self.op = node.op_type
        ins = list(node.inputs) + [None] * (len(roles) - len(node.inputs))
        if len(node.inputs) > len(roles):
            self.refuse(f"it has {len(node.inputs)} inputs; onnxruntime 1.32's schema names {len(roles)}")
        self._inputs = dict(zip(roles, ins))

    def refuse(self, why: str):
        raise Refused(f"com.microsoft.{self.op} {self.node.name!r}: {why}", nodes=(self.node,))

    # ---- attributes ---------------------------------------------------------------------------------------
    def attr(self, name: str, default=None):
        a = self.node.attributes.get(name)
        if a is None:
            return default
        value = a.value
        return value.decode() if isinstance(value, bytes) else value

    def float_attr(self, name: str, default: float) -> float:
        """A float attribute as onnxruntime reads it (float32)."""
        return float(np.float32(self.attr(name, default)))

    def known_attrs(self, known: set[str]) -> None:
        """Refuse an attribute this lifter does not read (a newer onnxruntime's, or a misspelt one)."""
        unknown = sorted(set(self.node.attributes) - known)
        if unknown:
            self.refuse(f"attribute(s) {unknown} are not read by attngraph's lifting (their meaning is not pinned)")

    # ---- inputs -------------------------------------------------------------------------------------------
    def has(self, role: str) -> bool:
        return self._inputs.get(role) is not None

    def value(self, role: str):
        return self._inputs.get(role)

    def name(self, role: str) -> str:
        return self._inputs[role].name

    def dims(self, role: str) -> tuple | None:
        v = self._inputs.get(role)
        return None if v is None else self.prep.shapes.get(v.name)

    def out_dims(self, index: int) -> tuple | None:
        """An output's dims: as the model declares them when it is a graph output (what the model's author says
        it is), else as inferred."""
        name = self.output(index)
        if name is None:
            return None
        from attngraph.frontends.onnx_discovery.symbolic import parse_dim

        for vi in self.prep.proto.graph.output:
            if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                return tuple(parse_dim(int(d.dim_value)) if d.HasField("dim_value") else
                             parse_dim(d.dim_param) if d.dim_param else None for d in vi.type.tensor_type.shape.dim)
        return self.prep.shapes.get(name)

    def rank(self, role: str) -> int | None:
        d = self.dims(role)
        return None if d is None else len(d)

    def static(self, role: str, axis: int, what: str) -> int:
        """A dim that must be a known int (a head count or width), else refused naming it."""
        d = self.dims(role)
        if d is None or not -len(d) <= axis < len(d) or d[axis] is None or not d[axis].is_const:
            self.refuse(f"input {role!r} needs a known {what} (dim {axis}), got shape {_shown(d)}")
        return d[axis].value

    def dtype(self, role: str) -> str:
        v = self._inputs[role]
        name = getattr(v.dtype, "name", None)
        if name not in DTYPES:
            self.refuse(f"input {role!r} has element type {name}; attngraph lifts float32, float16, bfloat16")
        return DTYPES[name]

    def int_input(self, role: str) -> str:
        """An integer input's dtype name (int32 for onnxruntime's masks and lengths)."""
        name = getattr(self._inputs[role].dtype, "name", None)
        if name not in ("INT32", "INT64"):
            self.refuse(f"input {role!r} has element type {name}, not an integer type")
        return name.lower()

    def constant(self, role: str) -> np.ndarray | None:
        """The input's value when the model fixes it (an initializer or a Constant node), else None."""
        v = self._inputs.get(role)
        if v is None:
            return None
        if v.const_value is not None:
            return np.asarray(v.const_value.numpy())
        made = v.producer()
        if made is not None and made.op_type == "Constant" and "value" in made.attributes:
            return np.asarray(made.attributes["value"].value.numpy())
        return None

    def output(self, index: int) -> str | None:
        outs = self.node.outputs
        if index >= len(outs) or outs[index] is None or not outs[index].name:
            return None
        return outs[index].name

    def unused(self, *roles: str) -> None:
        """Refuse each of ``roles`` that the node gives: inputs this lifting does not read."""
        given = [r for r in roles if self.has(r)]
        if given:
            self.refuse(f"input(s) {given} are given; attngraph does not lift the node with them")


def same_dim(a, b) -> bool:
    """Two model dims (``Poly``) provably equal."""
    return a is not None and b is not None and a == b


def _shown(d) -> str:
    return "unknown" if d is None else "(" + ", ".join("?" if x is None else str(x) for x in d) + ")"


def core_summary(c: ContribNode, parts: list[str], *, heads: int, head_dim: int, causal: bool, cache: bool,
                 mask_role: str, form: str | None, fill: float) -> dict:
    """The listing of a MultiHeadAttention or Attention core: ``parts`` (what is particular to the op) then the
    causal flag, the masks, the scale, as ``inspect`` shows them."""
    parts = parts + ["causal, offset past length" if causal else "not causal"]
    if form:
        parts.append(f"{mask_role} ({form}): {fill:g} added to excluded keys")
    if c.has("attention_bias"):
        parts.append("attention_bias added")
    scale = c.float_attr("scale", 0.0)
    parts.append(f"scale {scale if scale else head_dim ** -0.5:.6g}")
    return {"heads": heads, "kv_heads": heads, "head_dim": head_dim, "causal": "yes" if causal else "no",
            "mask": "additive" if form or c.has("attention_bias") else None, "rotary": None, "cache": cache,
            "computes": "; ".join(parts)}
