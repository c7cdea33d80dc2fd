"""onnxruntime's ``com.microsoft`` attention operators in discovery, node by node: each hand-written conformance
case (``attngraph.conformance.contrib_cases``, one per convention and trap) lifted and held to what onnxruntime
itself computes for the same node; each form attngraph does not lift refused by name; ``inspect``,
``from_onnx(subgraph=N)`` and ``optimize`` on such nodes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import attngraph as ag
from attngraph.cli.main import main
from attngraph.conformance import contrib_cases as cc
from attngraph.conformance.budgets import BUDGETS, compare
from attngraph.conformance.model_check import specified
from attngraph.conformance.reference import evaluate
from attngraph.frontends.onnx_discovery import discover

CASES = [c.name for c in cc.node_cases()]


@pytest.mark.parametrize("name", CASES)
def test_lifted_node_computes_what_onnxruntime_computes(name):
    """The float64 reference of the lifted graph equals onnxruntime's outputs for the same node and inputs
    (the positions the operator leaves unspecified aside): the case's convention is onnxruntime's."""
    sub, model, feeds = cc.lifted(name)
    inputs = cc.graph_inputs(sub, model, feeds)
    with np.errstate(all="ignore"):
        ref = evaluate(sub.graph, sub.weights, inputs)
    ort = cc.onnxruntime_outputs(name)
    assert set(ref) == set(ort)
    for out, want in ref.items():
        got, want = specified(sub, inputs, out, np.asarray(ort[out]), np.asarray(want))
        verdict = compare(got, want, BUDGETS["float32"], out)
        assert verdict.ok, f"{name}: {verdict.detail}"
    assert float(np.abs(ref[next(iter(ref))]).max()) > 0.05, "a case whose output is ~0 pins nothing"


def _variant(name: str, change) -> cc.NodeCase:
    """The named case with ``change(inputs, constants, attrs, outputs)`` applied to what it makes."""
    base = next(c for c in cc.node_cases() if c.name == name)

    def make(rng):
        made = base.make(rng)
        change(*made)
        return made
    return dataclasses.replace(base, name=f"{name}_variant", make=make)


def _set(**attrs):
    return lambda ins, consts, a, out: a.update(attrs)


def _add(role, array, constant=False):
    def change(ins, consts, a, out):
        ins[role] = array
        if constant:
            consts.add(role)
    return change


def _drop(*roles):
    def change(ins, consts, a, out):
        for r in roles:
            ins.pop(r)
    return change


def _input_sink(ins, consts, a, out):
    ins["head_sink"] = np.zeros(4, np.float32)  # a graph input: computed at run time


REFUSED = [
    ("gqa_seqlens_k_is_total_minus_one", _set(sliding_window_cache=1), "sliding_window_cache=1"),
    ("gqa_seqlens_k_is_total_minus_one", _set(k_quant_type="PER_TENSOR"), "k_quant_type='PER_TENSOR'"),
    ("gqa_seqlens_k_is_total_minus_one", _set(local_window_size=0), "local_window_size=0"),
    ("gqa_seqlens_k_is_total_minus_one", _set(qk_output=1), "qk_output=1"),
    ("gqa_seqlens_k_is_total_minus_one", _set(local_window_size=3, causal=0), "local_window_size=3 with causal=0"),
    ("gqa_seqlens_k_is_total_minus_one", _input_sink, "'head_sink' is computed in the model"),
    ("gqa_seqlens_k_is_total_minus_one", _add("position_ids", np.zeros((2, 1), np.int64)), "'position_ids'"),
    ("gqa_seqlens_k_is_total_minus_one", _add("attention_bias", np.zeros((2, 1, 1, 8), np.float32)),
     "['attention_bias']"),
    ("gqa_seqlens_k_is_total_minus_one", _set(some_new_knob=1), "['some_new_knob'] are not read"),
    ("mha_bias", _drop("key", "value"), "packed QKV or packed KV"),
    ("mha_bias", _set(unidirectional=1), "unidirectional=1 with a key length not provably the query's"),
    ("mha_bias", _add("key_padding_mask", np.zeros(8, np.int32)), "(3 * batch + 2,)"),
    ("attention_fused_qkv_weights", _add("mask_index", np.ones((2, 1, 4, 4), np.int32)), "4-D forms"),
    ("attention_fused_qkv_weights", _set(do_rotary=1), "do_rotary=1"),
    ("attention_fused_qkv_weights", lambda ins, consts, a, out: consts.discard("weights"),
     "'weights' is computed in the model"),
    ("rotary_contrib_position_ids", _set(scale=0.5), "scale=0.5"),
    ("rotary_contrib_position_ids", _set(is_packed_batching=1), "is_packed_batching=1"),
]


@pytest.mark.parametrize("name,change,reason", REFUSED, ids=[f"{n}-{r[:24]}" for n, _, r in REFUSED])
def test_what_is_not_lifted_is_refused_by_name(name, change, reason):
    model, _ = cc.node_model(_variant(name, change))
    found = discover(model)
    assert not found.found
    assert len(found.unrecognised) == 1 and reason in found.unrecognised[0].reason, found.unrecognised


def test_other_contrib_attention_ops_are_listed_not_lifted():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])
    node = helper.make_node("DecoderMaskedMultiHeadAttention", ["x"], ["y"], domain="com.microsoft", num_heads=2)
    model = helper.make_model(helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", 1, [1, 2, 16])]),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    found = discover(model)
    assert not found.found and "DecoderMaskedMultiHeadAttention is not lifted" in found.unrecognised[0].reason


def test_shared_buffer_is_written_in_place_and_its_tail_left_unspecified():
    """GroupQueryAttention with present as long as past: attngraph's static cache, the caller's buffer updated
    in place (numpy); rows past seqlens_k + 1 are unspecified, so comparisons skip them."""
    sub, model, feeds = cc.lifted("gqa_seqlens_k_is_total_minus_one")
    assert sub.summary["cache"] == "shared" and sub.unspecified == {"present_key": ("seqlens_k", 1),
                                                                     "present_value": ("seqlens_k", 1)}
    inputs = cc.graph_inputs(sub, model, feeds)
    out = ag.compile(sub.graph, "numpy")(inputs)
    assert out["present_key"] is inputs["past_key"]
    # the new token of row 1 (seqlens_k 6) sits at slot 6: the last key it sees is its own
    k_new = inputs["past_key"][1, :, 6]
    assert np.array_equal(out["present_key"][1, :, 6], k_new)


def test_from_onnx_subgraph_and_compile_run_a_contrib_node():
    sub, model, feeds = cc.lifted("mha_unidirectional_with_past")
    again = ag.from_onnx(model, subgraph=0)
    assert again.inputs == sub.inputs and again.outputs == sub.outputs
    got = ag.compile(again, "torch")(cc.graph_inputs(again, model, feeds))
    ort = cc.onnxruntime_outputs("mha_unidirectional_with_past")
    assert np.allclose(got["y"], ort["y"], atol=2e-6)


def test_inspect_says_what_each_contrib_node_computes(tmp_path, capsys):
    import onnx

    model, _ = cc.node_model(next(c for c in cc.node_cases() if c.name == "gqa_local_window_counts_the_query"))
    path = tmp_path / "gqa.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path), "--no-notes"]) == 0
    out = capsys.readouterr().out
    assert "com.microsoft.GroupQueryAttention" in out
    assert "window: 2 keys (IR window (1, 0))" in out and "new keys at P = max(seqlens_k + 1 - q_len, 0)" in out


@pytest.mark.parametrize("name", ["mha_attention_bias", "attention_unidirectional_past", "rotary_contrib_partial_dim",
                                  "gqa_packed_qkv"])
def test_optimize_moves_a_contrib_node_to_the_standard_style_or_keeps_it(name, tmp_path):
    import onnx

    from attngraph.frontends.onnx_discovery.optimize import optimize_onnx

    model, _ = cc.node_model(next(c for c in cc.node_cases() if c.name == name))
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    kept = optimize_onnx(str(src), None)
    assert not kept.rewritten and "kept as it is" in kept.left[0].reason
    moved = optimize_onnx(str(src), str(tmp_path / "out.onnx"), contrib="rewrite", sizes={"past": 4})
    assert len(moved.rewritten) == 1 and moved.checked and moved.max_ratio <= 1.0, str(moved)
    out = onnx.load(tmp_path / "out.onnx")
    assert not [n for n in out.graph.node if n.domain == "com.microsoft"]
