"""Discovery of attention in real exports: ``torch.onnx.export`` (TorchScript ``dynamo=False`` and
``dynamo=True``, opsets 17 to 24) of ``nn.MultiheadAttention``, two hand-written modules and tiny Hugging
Face layers. For each: what discovery reports (the listing's fields, or why a part was not lifted), and
the lifted graph run on the values onnxruntime computes inside the original model gives that model's
own outputs there. Then attngraph's own exports round-trip, partial matches are reported with a reason,
``from_onnx(path, subgraph=N)`` and ``attngraph inspect``.
"""

from __future__ import annotations

import numpy as np
import pytest

import attngraph as ag

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import onnx_exports as ox
from onnx import TensorProto, helper

from attngraph.errors import ConfigError, SerializationError, UnsupportedModel
from attngraph.frontends.onnx_discovery import discover

RTOL = 1e-5  # float32: the lifted graph and onnxruntime differ by rounding only

SELF = {"kind": "self", "heads": 4, "kv_heads": 4, "head_dim": 16, "rotary": None, "cache": False}
GQA = {**SELF, "kv_heads": 2}
PAD = {"causal": "no", "mask": "additive (padding)"}
CAUSAL_PAD = {"causal": "in mask", "mask": "additive (padding)"}
ROPE = {**GQA, **CAUSAL_PAD, "rotary": "half 16/16"}

# (case, exporter) -> the listing's fields of the one subgraph found, or ("unrecognised", words of the reason)
EXPECTED = {
    # torch's TorchScript export of nn.MultiheadAttention fixes the key length at the example's 6 (its K
    # reshape target is the constant [6, 4*batch, 16]; onnxruntime fails the model at any other length):
    # the head split is not one that holds at every length, so nothing is lifted
    ("mha", "ts"): ("unrecognised", "Reshape to [6, 4*batch, 16]"),
    ("mha", "dynamo"): {**SELF, **PAD},
    ("sdpa_causal", "ts"): {**SELF, "causal": "yes", "mask": None},       # opset 20, Trilu mask
    ("sdpa_causal", "dynamo"): {**SELF, "causal": "yes", "mask": None},   # opset 24, Attention(is_causal)
    ("cached_gqa", "ts"): {**GQA, "causal": "no", "mask": None, "cache": True},
    ("cached_gqa", "dynamo"): {**GQA, "causal": "no", "mask": None, "cache": True},
    ("gpt2", "ts"): {**SELF, **CAUSAL_PAD},                              # fused c_attn (Gemm + Split)
    ("gpt2", "dynamo"): {**SELF, **CAUSAL_PAD},
    ("bert", "ts"): {**SELF, **PAD},
    ("bert", "dynamo"): {**SELF, **PAD},
    ("opt", "ts"): {**SELF, **CAUSAL_PAD},
    ("opt", "dynamo"): {**SELF, **CAUSAL_PAD},
    ("llama", "ts"): ROPE,
    ("llama", "dynamo"): ROPE,
    ("llama_sdpa", "ts"): ROPE,
    ("llama_sdpa", "dynamo"): {**ROPE, "mask": "bool (padding)"},       # opset 23: Attention + RotaryEmbedding
    ("qwen2", "ts"): ROPE,
    ("qwen2", "dynamo"): ROPE,
    ("gemma2", "ts"): {**ROPE, "softcap": 3.0, "scale": round(32 ** -0.5, 6)},
    ("gemma2", "dynamo"): {**ROPE, "softcap": 3.0, "scale": round(32 ** -0.5, 6)},
    ("phi3", "ts"): {**ROPE, "rotary": "half 8/16"},                    # fused qkv_proj, partial rotary
    ("phi3", "dynamo"): {**ROPE, "rotary": "half 8/16"},
    ("t5", "ts"): {**SELF, "causal": "no", "mask": "additive (padding, position bias)", "scale": 1.0},
    ("t5", "dynamo"): {**SELF, "causal": "no", "mask": "additive (padding, position bias)", "scale": 1.0},
    ("whisper_cross", "ts"): {**SELF, "kind": "cross", "causal": "no", "mask": None},
    ("whisper_cross", "dynamo"): {**SELF, "kind": "cross", "causal": "no", "mask": None},
}
# Qwen3 normalises each head of Q and K (RMSNorm) before the rotary embedding: attngraph does not lift the
# normalisation from its primitive ops, so the core alone is lifted and the rest is reported
PARTIAL = {("qwen3", "ts"): ({**GQA, **CAUSAL_PAD, "kind": "core"}, "only some of Q, K and V come from a projection")}
# onnxruntime rejects the dynamo exporter's RotaryEmbedding for batch > 1: it writes cos/sin of shape
# (1, S, rd/2) where the operator wants (batch, S, rd/2); the original model then runs at batch 1 only
BATCH = {("llama_sdpa", "dynamo"): 1}


def _export(case: str, exporter: str) -> str:
    try:
        return ox.export(case, exporter)
    except ox.ExportFailed as e:  # an exporter regression is a failure here, never a skip
        pytest.fail(str(e))


def _close(got: dict, want: dict) -> dict[str, float]:
    """The relative error of each output (max |diff| / max |want|)."""
    out = {}
    for name, ref in want.items():
        diff = np.max(np.abs(np.asarray(got[name], np.float64) - ref)) if ref.size else 0.0
        out[name] = float(diff / max(float(np.max(np.abs(ref))) if ref.size else 1.0, 1e-30))
    return out


def _check_runs(path: str, feeds: dict, sub, backend: str = "numpy") -> None:
    ins, want = ox.subgraph_io(path, feeds, sub)
    got = ag.compile(sub, backend)(**ins)
    errors = _close(got, want)
    assert max(errors.values()) < RTOL, (backend, errors)


@pytest.mark.parametrize("case,exporter", sorted(EXPECTED), ids=[f"{c}-{e}" for c, e in sorted(EXPECTED)])
def test_discovers_the_attention_of_an_export(case, exporter):
    path = _export(case, exporter)
    found = discover(path)
    expected = EXPECTED[case, exporter]
    if isinstance(expected, tuple):
        assert not found.found
        assert [u for u in found.unrecognised if expected[1] in u.reason], found.unrecognised
        return
    assert len(found.found) == 1, found
    assert not found.unrecognised, found.unrecognised
    sub = found.found[0]
    assert {k: sub.summary.get(k) for k in expected} == expected
    model_nodes = {n.name for n in onnx.load(path).graph.node}
    assert len(set(sub.nodes)) == len(sub.nodes) and set(sub.nodes) <= model_nodes
    _check_runs(path, ox.feeds(case, batch=BATCH.get((case, exporter))), sub)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch", "onnx"])
@pytest.mark.parametrize("case,exporter", [("llama", "dynamo"), ("whisper_cross", "ts"), ("cached_gqa", "ts")])
def test_a_lifted_graph_runs_on_every_backend(case, exporter, backend):
    from attngraph.lowering.registry import get_backend

    get_backend(backend)  # a missing backend package fails here with the pip extra to install
    path = _export(case, exporter)
    _check_runs(path, ox.feeds(case), discover(path).found[0], backend)


@pytest.mark.parametrize("case,exporter", sorted(PARTIAL), ids=[f"{c}-{e}" for c, e in sorted(PARTIAL)])
def test_a_partly_recognised_attention_lifts_its_core(case, exporter):
    path = _export(case, exporter)
    found = discover(path)
    expected, reason = PARTIAL[case, exporter]
    (sub,) = found.found
    assert {k: sub.summary.get(k) for k in expected} == expected
    (left,) = found.unrecognised
    assert reason in left.reason and any("only the attention core was lifted" in n for n in sub.notes)
    _check_runs(path, ox.feeds(case), sub)


def test_a_fully_padded_row_averages_v_as_the_model_does():
    """BERT's mask fills with finfo(float32).min, a number: a row whose keys are all padding averages V in the
    model, and the lifted graph (an additive mask) does the same; the note says so."""
    path = _export("bert", "ts")
    sub = discover(path).found[0]
    assert any("finite number, not -inf" in n for n in sub.notes), sub.notes
    feeds = ox.feeds("bert")
    feeds["attention_mask"] = feeds["attention_mask"].copy()
    feeds["attention_mask"][1] = 0  # every key of row 1 is padding
    _check_runs(path, feeds, sub)


def test_the_weights_of_a_fused_qkv_projection_are_split_by_proof():
    """GPT-2's c_attn is one (64, 192) Gemm cut by Split: the lifted w_q/w_k/w_v are its column blocks."""
    path = _export("gpt2", "ts")
    sub = discover(path).found[0]
    model = onnx.load(path)
    c_attn = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("c_attn.weight"))
    for i, name in enumerate(("w_q", "w_k", "w_v")):
        np.testing.assert_array_equal(sub.weights[name], c_attn[:, 64 * i:64 * (i + 1)])


# ---- attngraph's own exports ------------------------------------------------------------------------

OWN = {
    "causal_gqa_rotary": lambda: ag.causal_self_attention(64, 4, num_kv_heads=2, rotary="half"),
    "cross": lambda: ag.cross_attention(64, 4, kdim=32),
    "cache_bool_mask": lambda: ag.causal_self_attention(64, 4, kv_cache=True, mask="bool"),
}


@pytest.mark.parametrize("style", ["decomposed", "attention", "contrib"])
@pytest.mark.parametrize("name", sorted(OWN))
def test_own_exports_round_trip(name, style, tmp_path):
    from attngraph.errors import Unsupported
    from attngraph.ir.serialize import to_json

    graph = OWN[name]()
    weights = ag.Weights.random(graph, seed=0)
    path = tmp_path / f"{name}.onnx"
    try:
        ag.export_onnx(graph, path, weights=weights, style=style)
    except Unsupported as e:  # contrib cannot express GQA or a mask input exactly: nothing to discover
        assert style == "contrib", e
        return
    found = discover(path)
    assert len(found.found) == 1 and not found.unrecognised
    sub = found.found[0]
    assert sub.summary["export"] == f"attngraph, style {style}"
    assert to_json(sub.graph) == to_json(graph)
    assert set(sub.nodes) == {n.name for n in onnx.load(str(path)).graph.node}
    for p in graph.params:
        np.testing.assert_array_equal(sub.weights[p.name], weights[p.name])


def test_an_edited_own_export_is_not_believed(tmp_path):
    """The metadata claims the graph; a model that is not exactly its export is read from its nodes."""
    graph = OWN["cross"]()
    path = tmp_path / "cross.onnx"
    ag.export_onnx(graph, path, weights=ag.Weights.random(graph, seed=0), style="attention")
    model = onnx.load(str(path))
    model.graph.node[-1].name = "renamed"
    found = discover(model)
    assert all("export" not in s.summary for s in found.found)


# ---- hand-made models: no attention, partial matches, names ---------------------------------------

def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _core(scale_after_mask: bool = False, where_fill: float | None = None, names: bool = True,
          weights: bool = False) -> onnx.ModelProto:
    """Q, K, V (B, 4, S, 16) -> softmax(Q K^T * 0.25 + M) V, or with the scale after the mask; ``weights``:
    the softmax is an output of the model too."""
    shape = ["B", 4, "S", 16]
    nodes = [helper.make_node("Transpose", ["K"], ["Kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["Q", "Kt"], ["s"])]
    if where_fill is not None:
        nodes += [helper.make_node("Mul", ["s", "c"], ["s1"]), helper.make_node("Cast", ["M"], ["Mb"], to=9),
                  helper.make_node("Where", ["Mb", "s1", "fill"], ["s2"])]
    elif scale_after_mask:
        nodes += [helper.make_node("Add", ["s", "M"], ["s1"]), helper.make_node("Mul", ["s1", "c"], ["s2"])]
    else:
        nodes += [helper.make_node("Mul", ["s", "c"], ["s1"]), helper.make_node("Add", ["s1", "M"], ["s2"])]
    nodes += [helper.make_node("Softmax", ["s2"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "V"], ["Y"])]
    for i, n in enumerate(nodes):
        n.name = f"n{i}" if names else ""
    inits = [helper.make_tensor("c", TensorProto.FLOAT, [], [0.25]),
             helper.make_tensor("fill", TensorProto.FLOAT, [], [where_fill or 0.0])]
    outputs = [("Y", shape)] + ([("p", ["B", 4, "S", "S"])] if weights else [])
    return _model(nodes, [("Q", shape), ("K", shape), ("V", shape), ("M", ["B", 1, "S", "S"])], outputs, inits)


@pytest.mark.parametrize("weights", [False, True], ids=["output", "output-and-weights"])
def test_a_bare_core_is_lifted_as_core_attention(weights):
    model = _core(weights=weights)
    found = discover(model)
    assert len(found.found) == 1 and not found.unrecognised
    sub = found.found[0]
    assert sub.summary["kind"] == "core" and sub.summary["mask"] == "additive"
    assert dict(sub.inputs) == {"q": "Q", "k": "K", "v": "V", "attn_mask": "M"}
    assert dict(sub.outputs) == ({"y": "Y", "attn_weights": "p"} if weights else {"y": "Y"})
    assert set(sub.nodes) == {f"n{i}" for i in range(6)}
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 4, 5, 16)).astype(np.float32) for _ in range(3))
    m = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    ref = ox.run_model(model, {"Q": q, "K": k, "V": v, "M": m})
    got = ag.compile(sub, "numpy")(q=q, k=k, v=v, attn_mask=m)
    for ir, name in sub.outputs.items():
        np.testing.assert_allclose(got[ir], ref[name], rtol=RTOL, atol=1e-6)


def test_a_partial_match_is_reported_with_its_reason():
    """The scale applied after the mask is not the IR's order (mask after scale): not lifted, and said why."""
    found = discover(_core(scale_after_mask=True))
    assert not found.found
    (left,) = found.unrecognised
    assert "n4" in left.nodes and "not the attention core attngraph lifts" in left.reason


def test_a_finite_fill_of_masked_scores_is_not_lifted():
    """Where(mask, scores, -10000): a fully masked row averages V there, attngraph's bool mask gives 0."""
    found = discover(_core(where_fill=-10000.0))
    assert not found.found
    (left,) = found.unrecognised
    assert "-10000" in left.reason and "averages V" in left.reason


def test_unnamed_nodes_are_named_and_said_so():
    found = discover(_core(names=False))
    sub = found.found[0]
    assert len(set(sub.nodes)) == len(sub.nodes) == 6 and all(sub.nodes)
    assert any("no name or a duplicated one" in n for n in sub.notes)


def test_an_attention_node_of_another_form_goes_through_from_onnx():
    """A 3-D ONNX Attention (heads split inside the op) between projections: lifted as that node alone."""
    rng = np.random.default_rng(0)
    ws = [onnx.numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), f"w{t}") for t in "qkvo"]
    nodes = [helper.make_node("MatMul", ["x", f"w{t}"], [t], name=f"proj_{t}") for t in "qkv"]
    nodes += [helper.make_node("Attention", ["q", "k", "v"], ["a"], name="attn", q_num_heads=4, kv_num_heads=2,
                               is_causal=1),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="proj_o")]
    ws[1] = onnx.numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "wk")
    ws[2] = onnx.numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "wv")
    model = _model(nodes, [("x", ["B", "S", 32])], [("y", ["B", "S", 32])], ws, opset=23)
    (sub,) = discover(model).found
    assert sub.nodes == ("attn",) and sub.summary["causal"] == "yes" and sub.summary["kv_heads"] == 2
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    want = ox.run_model(model, {"x": x}, {"q": "float32", "k": "float32", "v": "float32", "a": "float32"})
    got = ag.compile(sub, "numpy")(**{n: want[n] for n in sub.inputs.values()})
    np.testing.assert_allclose(got["a"], want["a"], rtol=RTOL, atol=1e-5)


def test_a_model_without_attention_finds_nothing():
    w = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Softmax", ["h"], ["y"],
                                                                                         name="sm")]
    found = discover(_model(nodes, [("x", ["B", 8])], [("y", ["B", 4])], [w]))
    assert found.found == () and found.unrecognised == ()


# ---- from_onnx(path, subgraph=N) and attngraph inspect ---------------------------------------------------

def test_from_onnx_returns_the_nth_subgraph():
    path = _export("whisper_cross", "ts")
    sub = ag.from_onnx(path, subgraph=0)
    assert sub.summary["kind"] == "cross"
    ag.compile(sub, "numpy")
    with pytest.raises(ConfigError, match=r"subgraph=3 is out of range: discovery found 1 attention subgraph"):
        ag.from_onnx(path, subgraph=3)
    with pytest.raises(ConfigError, match="must be an int"):
        ag.from_onnx(path, subgraph="0")
    with pytest.raises(UnsupportedModel, match="unsupported op"):  # without subgraph=: one Attention node only
        ag.from_onnx(path)
    with pytest.raises(ConfigError, match="found no attention subgraph"):
        ag.from_onnx(_core(scale_after_mask=True), subgraph=0)


def test_inspect_lists_subgraphs_and_what_was_not_lifted(capsys, tmp_path):
    from attngraph.cli.main import main

    path = _export("llama", "dynamo")
    assert main(["inspect", path, "--json", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[1:3]
    assert header.split() == ["#", "nodes", "count", "op", "kind", "heads", "kv", "heads", "head", "dim", "causal",
                              "mask", "rotary", "cache"]
    assert row.split()[0] == "0" and " self " in row and "half 16/16" in row and "in mask" in row
    assert "note:" in out and (tmp_path / "l.json").exists()
    assert main(["inspect", _export("mha", "ts"), "--no-notes"]) == 0
    out = capsys.readouterr().out
    assert "0 attention subgraph(s), 1 part(s) not lifted" in out and "not lifted:" in out


def test_inspect_usage_errors_are_one_line(capsys, tmp_path):
    from attngraph.cli.main import main

    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attngraph inspect: error:" in err
    assert main(["inspect", "x.onnx", "--width", "2"]) == 2
    assert main(["inspect", "--help"]) == 0
    assert "(default: 36)" in capsys.readouterr().out


def test_a_broken_file_is_a_serialization_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(SerializationError):
        discover(path)


# ---- the layout proofs ------------------------------------------------------------------------------------

def test_layout_proofs_follow_exactly_what_a_chain_does():
    """A packed QKV cut by Gather and a head split (the proof names each column), an Expand of kv heads
    (GQA), and the refusals: a reshape that splits the sequence axis, an expand along the batch."""
    from attngraph.frontends.onnx_discovery import layout as L
    from attngraph.frontends.onnx_discovery.symbolic import Poly, parse_dim

    b, s = Poly.of("batch"), Poly.of("seq")
    assert parse_dim("batch*seq") == b * s and parse_dim("past + seq") == Poly.of("past") + s
    assert parse_dim("floor(a/b)") != parse_dim("a")
    v = L.reshape(L.source([b, s, Poly.of(192)], {2}), [b, s, Poly.of(3), Poly.of(64)])
    v = L.transpose(L.reshape(L.gather(v, 2, 1, True), [b, s, Poly.of(4), Poly.of(16)]), [0, 2, 3, 1])
    batch, seq, cols = L.heads(v, transposed=True)
    assert (batch, seq) == (b, s)
    np.testing.assert_array_equal(cols, 64 + np.arange(64).reshape(4, 16))  # K: columns 64..127, head-major
    kv = L.unsqueeze(L.source([b, Poly.of(2), s, Poly.of(16)], {1, 3}), [2])
    kv = L.reshape(L.expand(kv, [b, Poly.of(2), Poly.of(2), s, Poly.of(16)]), [b, Poly.of(4), s, Poly.of(16)])
    np.testing.assert_array_equal(L.heads(kv)[2][:, 0], [0, 0, 16, 16])  # q head h reads kv head h // 2
    with pytest.raises(L.LayoutError, match="does not group"):  # (B, S, 64) -> (B, 2, S/2, 64): splits seq
        L.reshape(L.source([b, s, Poly.of(64)], {2}), [b, Poly.of(2), s, Poly.of(32)])
    with pytest.raises(L.LayoutError, match="batch or sequence"):
        L.expand(L.source([Poly.of(1), s, Poly.of(64)], {2}), [b, s, Poly.of(64)])


def test_a_model_given_as_bytes_is_read_the_same(tmp_path):
    path = _export("sdpa_causal", "ts")
    with open(path, "rb") as f:
        found = discover(f.read())
    assert len(found.found) == 1 and found.found[0].summary["causal"] == "yes"
