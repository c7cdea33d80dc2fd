"""What each backend computes exactly, and which features a graph needs.

A backend is eligible for a graph only when it declares every feature the graph uses; the
declarations are pinned by the conformance corpus (every built-in passes all of it today, so
every built-in declares everything; a third-party backend declares what it has).
"""

from __future__ import annotations

from dataclasses import dataclass

from attngraph.ir import Graph, Op

FEATURES = ("dtype:float16", "dtype:bfloat16", "dtype:float32", "dtype:float64", "mask:bool", "mask:bias",
            "mask:lengths", "causal", "window", "align:lengths", "gqa", "kv_cache", "softcap",
            "weights_output", "score_outputs")
ALL = frozenset(FEATURES)


@dataclass(frozen=True)
class Capabilities:
    features: frozenset
    devices: tuple[str, ...] = ("cpu",)
    note: str = ""

    def missing(self, needed: set[str]) -> list[str]:
        return sorted(needed - self.features)


CAPABILITIES: dict[str, Capabilities] = {
    "numpy": Capabilities(ALL, ("cpu",), "the reference"),
    "numba": Capabilities(ALL, ("cpu",), "streaming kernel, O(T) memory"),
    "torch": Capabilities(ALL, ("cpu", "cuda"), "SDPA where exact"),
    "onnx": Capabilities(ALL, ("cpu", "cuda"), "onnxruntime; float64 exported in the decomposed style"),
}


def graph_features(graph: Graph) -> set[str]:
    """Every feature of FEATURES that ``graph`` uses."""
    need = {f"dtype:{v.type.dtype.value}" for v in graph.inputs if v.type.dtype.value.startswith(("float", "bfl"))}
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
        if node.op in (Op.SOFTCAP,) or (node.op is Op.ATTENTION and attrs.get("softcap")):
            need.add("softcap")
        if node.op is Op.CONCAT:
            need.add("kv_cache")
        if node.op in (Op.MATMUL, Op.ATTENTION) and node.inputs[0].type.shape[1] != node.inputs[1].type.shape[1]:
            need.add("gqa")
        if node.op in (Op.SCALE, Op.MASK, Op.SOFTCAP, Op.SOFTMAX) and node.outputs[0].name in outputs:
            need.add("score_outputs" if node.op is not Op.SOFTMAX else "weights_output")
    return need
