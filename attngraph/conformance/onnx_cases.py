"""ONNX's own ``test_attention_*``, ``test_rotary_embedding*`` and ``test_rms_normalization*`` node
cases (built in memory by the installed onnx), through ``from_onnx``: the graph is ours, the inputs are
ONNX's. The function-body ``_expanded`` twins are left out: they are the same cases written in primitive
ops, which ``from_onnx`` does not import."""

from __future__ import annotations

from attngraph.conformance.case import Case

# ONNX's node cases for the operators from_onnx imports (Attention, RotaryEmbedding, RMSNormalization)
ONNX_OPERATOR_CASES = ("test_attention_", "test_rotary_embedding", "test_rms_normalization")


def onnx_node_cases() -> list[Case]:
    """One Case per Attention node case; empty when onnx is not installed."""
    import warnings

    try:
        from onnx.backend.test.loader import load_model_tests
    except ImportError:
        return []
    with warnings.catch_warnings():  # onnx's generators for other operators warn while making their data
        warnings.simplefilter("ignore", RuntimeWarning)
        tests = load_model_tests(kind="node")
    cases = []
    for t in tests:
        if not t.name.startswith(ONNX_OPERATOR_CASES) or t.name.endswith("_expanded"):
            continue

        def build(t=t):
            from attngraph.frontends.onnx_import import from_onnx

            graph = from_onnx(t.model)
            inputs, _expected = t.data_sets[0]
            return graph, {}, {vi.name: arr for vi, arr in zip(t.model.graph.input, inputs, strict=True)}

        elem = t.model.graph.input[0].type.tensor_type.elem_type  # TensorProto: 1 f32, 10 f16, 11 f64, 16 bf16
        dtype = {10: "float16", 11: "float64", 16: "bfloat16"}.get(elem, "float32")
        op = t.model.graph.node[0].op_type
        cases.append(Case(f"onnx/{t.name.removeprefix('test_')}", f"ONNX {op} operator node case", build, dtype,
                          quick=False))
    return cases
