"""The attention IR: a closed set of ops over typed SSA values, in topological order.

Semantics (normative; every backend implements exactly this, and tests hold each row):

* **bool mask**: ``True`` = the key takes part in attention, ``False`` = masked out.
* **float mask** (a bias): added to the scaled (and soft-capped) scores; ``-inf`` masks out.
* **integer masks** are rejected (ONNX adds them, which surprises everyone).
* **mask broadcasting**: NumPy right-aligned to ``(batch, q_heads, q_len, kv_total)``.
* **causal**: query ``i`` sees key ``j`` iff ``j <= i + offset``; ``offset`` is the past length
  with a KV cache, else 0 (top-left, like torch SDPA and ONNX).
* **sliding window** (ONNX opset 25): with ``p = i + offset``, key ``j`` is kept iff
  ``p - window_left <= j <= p + window_right``; ``-1`` leaves that side unbounded.
* **key lengths**: key ``j`` of batch ``b`` is kept iff ``j < lengths[b]``.
* **fully masked row**: the output row is exactly 0 and its attention weights are 0.
* **scale**: default ``1/sqrt(head_dim of Q/K)``; overridable.
* **softcap**: ``softcap * tanh(scores / softcap)`` after scaling, before the mask.
* **GQA / MQA**: q heads are a multiple of kv heads; q head ``h`` uses kv head ``h // (Hq / Hkv)``.
* **head split**: hidden ``(B, S, H*D)`` is reshaped to ``(B, S, H, D)`` then transposed to
  ``(B, H, S, D)`` (head-major).
* **KV cache**: ``present = concat(past, new)`` on the sequence axis; past and present come together.
* **NaN / Inf** in inputs propagate; they are never silently replaced.
* **value head dim** may differ from the Q/K head dim.

Weights are graph *params*, kept apart from the runtime *inputs*, so a backend can fold the
weight-only part of a graph once per compile. Linear weights are stored ``(in, out)``: ``x @ w``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from attngraph.dims import Dim


class Op(enum.StrEnum):
    """The closed vocabulary of ops. Every rule table is keyed by it and lists rules in this order."""

    # projections and layout
    LINEAR = "linear"              # x @ w (+ b); inputs (x, w[, b])
    SPLIT_HEADS = "split_heads"    # (B, S, H*D) -> (B, H, S, D); attrs: heads
    CONCAT = "concat"              # join on one axis; the KV cache's past+new; attrs: axis
    SPLIT = "split"                # one input, several outputs cut on one axis; attrs: axis, sizes
    # the attention core
    MATMUL = "matmul"              # batched (B, H, M, K) @ (B, Hkv, K, N) with GQA head grouping; attrs: transpose_b
    SCALE = "scale"                # x * value; attrs: value
    SOFTCAP = "softcap"            # cap * tanh(x / cap); attrs: cap
    MASK = "mask"                  # structured + dense masking of scores; see MASK_ATTRS
    SOFTMAX = "softmax"            # over the last axis; fully masked (all -inf) rows give 0
    WEIGHTED_SUM = "weighted_sum"  # probs (B, Hq, Sq, Skv) @ v (B, Hkv, Skv, Dv) with GQA grouping
    MERGE_HEADS = "merge_heads"    # (B, H, S, D) -> (B, S, H*D), the head concat
    # fused
    ATTENTION = "attention"        # the whole core in one op; created by passes.fuse_attention


class DType(enum.StrEnum):
    """Element types. Attention math runs in float32 or wider; float16/bfloat16 are storage types."""

    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"
    INT32 = "int32"
    INT64 = "int64"

    @property
    def short(self) -> str:
        """The short spelling used by the text form (``f32``)."""
        return _SHORT[self]

    @property
    def is_float(self) -> bool:
        return self in FLOAT_DTYPES

    @classmethod
    def parse(cls, text: str) -> DType:
        """Accept ``"float32"``, ``"f32"`` or a NumPy dtype name; raise ``ValueError`` naming the choices."""
        text = str(text)
        for member in cls:
            if text in (member.value, member.short):
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown dtype {text!r}; choose one of: {choices}")


_SHORT = {
    DType.FLOAT16: "f16", DType.BFLOAT16: "bf16", DType.FLOAT32: "f32", DType.FLOAT64: "f64",
    DType.BOOL: "bool", DType.INT32: "i32", DType.INT64: "i64",
}
FLOAT_DTYPES = frozenset({DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64})
INT_DTYPES = frozenset({DType.INT32, DType.INT64})


@dataclass(frozen=True, slots=True)
class TensorType:
    """A dtype and a shape whose dims are ints or symbols (see ``attngraph.dims``)."""

    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True, slots=True)
class Value:
    """A named SSA value; the name is unique within its graph."""

    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"%{self.name}"


Attr = Any  # int | float | bool | str | tuple of those; always hashable


@dataclass(frozen=True, slots=True)
class Node:
    """One op applied to values. ``attrs`` is sorted ``(name, value)`` pairs, complete (defaults filled)."""

    op: Op
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: tuple[tuple[str, Attr], ...] = ()

    def attr(self, name: str) -> Attr:
        for key, value in self.attrs:
            if key == name:
                return value
        raise KeyError(f"{self.op.value} node has no attribute {name!r}")

    @property
    def attr_dict(self) -> dict[str, Attr]:
        return dict(self.attrs)

    @property
    def output(self) -> Value:
        """The single output; ``ValueError`` for multi-output nodes."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op.value} node has {len(self.outputs)} outputs")
        return self.outputs[0]


@dataclass(frozen=True, slots=True)
class Graph:
    """A whole attention computation.

    ``inputs`` are fed at every call, ``params`` (weights) once per compile, ``nodes`` are in
    topological order, and ``outputs`` are returned by name.
    """

    name: str
    inputs: tuple[Value, ...]
    params: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]

    def __str__(self) -> str:
        from attngraph.printer import format_graph

        return format_graph(self)

    def producers(self) -> dict[Value, Node]:
        """Map from each node output to the node that defines it."""
        return {out: node for node in self.nodes for out in node.outputs}

    def users(self) -> dict[Value, list[Node]]:
        """Map from each value to the nodes that read it (graph outputs are not counted)."""
        uses: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for value in node.inputs:
                uses.setdefault(value, []).append(node)
        return uses

    def count(self, op: Op) -> int:
        """How many nodes apply ``op``."""
        return sum(1 for node in self.nodes if node.op is op)

    def replace(self, **changes: Any) -> Graph:
        """A copy with some fields changed."""
        fields = {f: getattr(self, f) for f in ("name", "inputs", "params", "nodes", "outputs")}
        fields.update(changes)
        return Graph(**fields)
