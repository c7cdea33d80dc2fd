"""The IR itself: symbolic dims, the verifier's rules, the text form, the builder."""

from __future__ import annotations

import pytest

import attngraph as ag
from attngraph import DType, Graph, Node, Op, TensorType, Value
from attngraph.ir import dims


def test_dims_canonical_sums():
    assert dims.add("q_len", "past_len") == "past_len+q_len"
    assert dims.add(2, 3) == 5
    assert dims.add("a", 0) == "a"
    assert dims.evaluate("past_len+q_len+2", {"past_len": 3, "q_len": 4}) == 9
    with pytest.raises(ValueError, match="bad dimension"):
        dims.canonical("q-len")


def test_golden_text_form():
    g = ag.core_attention(2, 4, causal=True, mask="bool", dtype="float16")
    assert str(g) == """graph core_attention {
  input %q: f16[batch,2,q_len,4]
  input %k: f16[batch,2,kv_len,4]
  input %v: f16[batch,2,kv_len,4]
  input %attn_mask: bool[q_len,kv_len]
  %scores: f16[batch,2,q_len,kv_len] = matmul(%q, %k) {transpose_b=True}
  %qk_scaled: f16[batch,2,q_len,kv_len] = scale(%scores) {value=0.5}
  %qk_masked: f16[batch,2,q_len,kv_len] = mask(%qk_scaled, %attn_mask) {align='start', causal=True, offset=0, operands=('bool',), window_left=-1, window_right=-1}
  %attn_weights: f16[batch,2,q_len,kv_len] = softmax(%qk_masked)
  %y: f16[batch,2,q_len,4] = weighted_sum(%attn_weights, %v)
  return %y
}"""


def test_kv_cache_types_are_symbolic_sums():
    g = ag.causal_self_attention(8, 2, kv_cache=True)
    present = {v.name: v for v in g.outputs}["present_key"]
    assert present.type == TensorType(DType.FLOAT32, ("batch", 2, "past_len+q_len", 4))
    mask = next(n for n in g.nodes if n.op is Op.MASK)
    assert mask.attr("offset") == "past_len"


def _graph_with(nodes, inputs, outputs):
    return Graph("g", tuple(inputs), (), tuple(nodes), tuple(outputs))


def test_verifier_rejects_use_before_definition():
    a = Value("a", TensorType(DType.FLOAT32, (1, 1, 2, 2)))
    b = Value("b", TensorType(DType.FLOAT32, (1, 1, 2, 2)))
    n = Node(Op.SOFTMAX, (b,), (a,))
    with pytest.raises(ag.GraphError, match=r"%b is used before it is defined\n  at: %a: f32\[1,1,2,2\] = softmax\(%b\)"):
        ag.verify_graph(_graph_with([n], [], [a]))


def test_verifier_rejects_double_definition_and_wrong_types():
    x = Value("x", TensorType(DType.FLOAT32, (1, 1, 2, 2)))
    n = Node(Op.SOFTMAX, (x,), (x,))
    with pytest.raises(ag.GraphError, match="defined twice"):
        ag.verify_graph(_graph_with([n], [x], [x]))
    wrong = Value("y", TensorType(DType.FLOAT64, (1, 1, 2, 2)))
    with pytest.raises(ag.GraphError, match=r"declared output types differ from inferred \(f32\[1,1,2,2\]\)"):
        ag.verify_graph(_graph_with([Node(Op.SOFTMAX, (x,), (wrong,))], [x], [wrong]))


def test_verifier_rejects_bad_arity_and_attributes():
    x = Value("x", TensorType(DType.FLOAT32, (1, 1, 2, 2)))
    y = Value("y", x.type)
    with pytest.raises(ag.GraphError, match="softmax takes 1..2 inputs, got 3"):
        ag.verify_graph(_graph_with([Node(Op.SOFTMAX, (x, x, x), (y,))], [x], [y]))
    with pytest.raises(ag.GraphError, match="has no attribute"):
        ag.verify_graph(_graph_with([Node(Op.SOFTMAX, (x,), (y,), (("axis", 1),))], [x], [y]))
    with pytest.raises(ag.GraphError, match="needs attribute 'value'"):
        ag.verify_graph(_graph_with([Node(Op.SCALE, (x,), (y,))], [x], [y]))


def test_builder_type_errors_name_the_problem():
    b = ag.GraphBuilder("t")
    q = b.input("q", "float32", ("batch", 3, "s", 4))
    k = b.input("k", "float32", ("batch", 2, "s", 4))
    with pytest.raises(ag.GraphError, match=r"q heads \(3\) must be a multiple of kv heads \(2\)"):
        b.op(Op.MATMUL, q, k, transpose_b=True)
    m = b.input("m", "int64", ("s", "s"))
    with pytest.raises(ag.GraphError, match="integer masks are rejected"):
        b.op(Op.MASK, q, m, operands=("bias",))
    bad = b.input("bad", "bool", (5, "s"))
    with pytest.raises(ag.GraphError, match="does not broadcast"):
        b.op(Op.MASK, q, bad, operands=("bool",))


def test_builder_makes_names_unique():
    b = ag.GraphBuilder("t")
    x = b.input("x", "float32", (1, 1, 2, 2))
    a = b.op(Op.SOFTMAX, x, name="p")
    c = b.op(Op.SOFTMAX, a, name="p")
    assert (a.name, c.name) == ("p", "p_1")
    with pytest.raises(ag.GraphError, match="already used"):
        b.input("x", "float32", (1,))
