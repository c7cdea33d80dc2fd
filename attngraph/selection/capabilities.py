"""What a backend can compute exactly, derived from the backend class itself, and which features a
graph needs. A backend is eligible for a graph only when it has every feature the graph uses.

A backend's features come from its rules: a feature is there when every op it needs is covered
(a rule, or a default decomposition into ops with rules) and every dtype is in ``Backend.dtypes``;
a backend may also name features it refuses (``Backend.refuses``). The built-ins cover everything,
and the conformance corpus pins that; a plug-in gets exactly what its rules give it.
"""

from __future__ import annotations

from dataclasses import dataclass

from attngraph.ir import DType, Graph, Op

FEATURES = ("dtype:float16", "dtype:bfloat16", "dtype:float32", "dtype:float64", "mask:bool", "mask:bias",
            "mask:lengths", "causal", "window", "align:lengths", "gqa", "kv_cache", "softcap",
            "weights_output", "score_outputs", "clamp")
ALL = frozenset(FEATURES)
# feature -> the ops a backend must cover to compute it
FEATURE_OPS: dict[str, frozenset[Op]] = {
    "mask:bool": frozenset({Op.MASK}), "mask:bias": frozenset({Op.MASK}), "mask:lengths": frozenset({Op.MASK}),
    "causal": frozenset({Op.MASK}), "window": frozenset({Op.MASK}), "align:lengths": frozenset({Op.MASK}),
    "gqa": frozenset({Op.MATMUL, Op.WEIGHTED_SUM}), "kv_cache": frozenset({Op.CONCAT}),
    "softcap": frozenset({Op.SOFTCAP}), "weights_output": frozenset({Op.SOFTMAX}),
    "score_outputs": frozenset({Op.SCALE, Op.MASK}), "clamp": frozenset({Op.CLAMP}),
}


@dataclass(frozen=True)
class Capabilities:
    """The features a backend computes exactly, the devices it runs on, and a one-line note."""

    features: frozenset
    devices: tuple[str, ...] = ("cpu",)
    note: str = ""

    def missing(self, needed: set[str]) -> list[str]:
        return sorted(needed - self.features)


def capabilities_of(backend_cls) -> Capabilities:
    """A backend class's capabilities, from its covered ops, dtypes and refusals."""
    covered = backend_cls.covered()
    features = {f"dtype:{d.value}" for d in backend_cls.dtypes if d.is_float}
    features |= {f for f, ops in FEATURE_OPS.items() if ops <= covered}
    features -= set(getattr(backend_cls, "refuses", ()))
    return Capabilities(frozenset(features), tuple(backend_cls.devices), backend_cls.note)


def graph_features(graph: Graph) -> set[str]:
    """Every feature of FEATURES that ``graph`` uses."""
    need = {f"dtype:{v.type.dtype.value}" for v in graph.inputs if v.type.dtype in
            (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64)}
    outputs = {v.name for v in graph.outputs}
    for node in graph.nodes:
        attrs = node.attr_dict
        if node.op in (Op.MASK, Op.ATTENTION):
            for operand in attrs.get("operands", ()):
                need.add(f"mask:{operand}")
            if attrs.get("causal"):
                need.add("causal")
            if attrs.get("window_left", -1) >= 0 or attrs.get("window_right", -1) >= 0:
                need.add("window")
            if attrs.get("align") == "lengths":
                need.add("align:lengths")
        if node.op is Op.ATTENTION and attrs.get("return_weights"):
            need.add("weights_output")
        if node.op is Op.SOFTCAP or (node.op is Op.ATTENTION and attrs.get("softcap")):
            need.add("softcap")
        if node.op is Op.CONCAT:
            need.add("kv_cache")
        if node.op is Op.CLAMP:
            need.add("clamp")
        if node.op in (Op.MATMUL, Op.ATTENTION) and node.inputs[0].type.shape[1] != node.inputs[1].type.shape[1]:
            need.add("gqa")
        if node.op in (Op.SCALE, Op.MASK, Op.SOFTCAP, Op.SOFTMAX) and node.outputs[0].name in outputs:
            need.add("score_outputs" if node.op is not Op.SOFTMAX else "weights_output")
    return need
