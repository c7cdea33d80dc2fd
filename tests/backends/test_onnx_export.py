"""Exported ONNX files: every builder feature x style, re-run at shapes other than any used to build
them, under onnxruntime and onnx's ReferenceEvaluator, against the float64 oracle."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import assert_close

import attngraph as ag
from attngraph.testing.random_inputs import random_inputs

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FEATURES = {
    "self": dict(kind="self"),
    "cross": dict(kind="cross", kdim=12, vdim=20),
    "causal": dict(kind="self", causal=True),
    "gqa": dict(kind="self", causal=True, num_kv_heads=2),
    "mqa": dict(kind="cross", num_kv_heads=1, mask="bool"),
    "kv_cache": dict(kind="self", causal=True, num_kv_heads=2, kv_cache=True),
    "softcap": dict(kind="self", softcap=2.0, mask="additive"),
    "bool_mask": dict(kind="self", mask="bool", mask_shape=("batch", 1, "q_len", "q_len")),
    "additive_mask": dict(kind="cross", mask="additive", mask_shape=(4, "q_len", "kv_len")),
    "lengths": dict(kind="cross", key_padding=True, causal=True),
    "window": dict(kind="self", window=(2, 1), kv_cache=True),
    "weights_out": dict(kind="self", causal=True, score_outputs=("weights",), num_kv_heads=2),
}
CONTRIB_OK = {"self", "causal"}
SIZES = [{"batch": 2, "q_len": 5, "kv_len": 7, "past_len": 3}, {"batch": 3, "q_len": 2, "kv_len": 4, "past_len": 6}]


def _graph(feature: str) -> ag.Graph:
    return ag.build_attention(ag.AttentionConfig(d_model=16, num_heads=4, **FEATURES[feature]))


def _oracle(graph: ag.Graph, config: dict, x: dict, w) -> dict:
    query = x.get("x", x.get("query"))
    key, value = (query, query) if "x" in x else (x["key"], x["value"])
    mask = x.get("attn_mask")
    y, pk, pv, stages = oracle.mha(
        query, key, value, w, num_heads=4, num_kv_heads=config.get("num_kv_heads"), past_key=x.get("past_key"),
        past_value=x.get("past_value"), softcap=config.get("softcap") or 0.0, causal=config.get("causal", False),
        window=config.get("window") or (-1, -1), bool_mask=mask if config.get("mask") == "bool" else None,
        bias=mask if config.get("mask") == "additive" else None, key_lengths=x.get("key_lengths"))
    return {"y": y, "present_key": pk, "present_value": pv, "attn_weights": stages["weights"]}


def _styles(feature):
    return ["decomposed", "attention"] + (["contrib"] if feature in CONTRIB_OK else [])


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_export_runs_at_new_shapes_on_every_engine(feature, tmp_path):
    from onnx.reference import ReferenceEvaluator

    graph = _graph(feature)
    w = ag.Weights.random(graph, seed=1)
    for style in _styles(feature):
        path = ag.export_onnx(graph, tmp_path / f"{feature}-{style}.onnx", weights=w, style=style)
        run = ag.compile(path, "onnx")  # the saved file, as a user would run it
        ref_eval = ReferenceEvaluator(str(path)) if style != "contrib" else None
        for sizes in SIZES:
            x = random_inputs(graph, sizes, seed=sizes["batch"])
            want = _oracle(graph, FEATURES[feature], x, w)
            got = run(x)
            for name in got:
                assert_close(got[name], want[name], "float32", f"{feature}/{style}/{name} at {sizes}")
            if ref_eval is not None:
                names = [v.name for v in graph.outputs]
                for name, arr in zip(names, ref_eval.run(names, x)):
                    assert_close(arr, want[name], "float32", f"ReferenceEvaluator {feature}/{style}/{name}")


@pytest.mark.parametrize("style", ["decomposed", "attention", "contrib"])
def test_export_passes_full_checker_and_is_reproducible(style, tmp_path):
    graph = _graph("causal")
    w = ag.Weights.random(graph, seed=0)
    a = ag.export_onnx(graph, tmp_path / "a.onnx", weights=w, style=style)
    b = ag.export_onnx(graph, tmp_path / "b.onnx", weights=w, style=style)
    assert a.read_bytes() == b.read_bytes(), "the same graph and weights must give identical bytes"
    model = onnx.load(str(a))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["attngraph.style"] == style and "fully masked rows give 0" in props["attngraph.semantics"]
    assert ag.from_json(props["attngraph.graph"]) == graph
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "q_len"], "batch and sequence axes must stay dynamic"
    assert [f for f in tmp_path.iterdir()] and all(not f.name.startswith(".") for f in tmp_path.iterdir())


def test_auto_style_picks_attention_op_and_decomposed_for_float64():
    from attngraph_backends.onnx.export import to_onnx

    from attngraph.lowering.export import model_nodes

    ops32 = {n.op_type for n in model_nodes(to_onnx(_graph("gqa"), ag.Weights.random(_graph("gqa"))).graph)}
    assert "Attention" in ops32
    g64 = ag.self_attention(16, 4, dtype="float64")
    ops64 = {n.op_type for n in model_nodes(to_onnx(g64, ag.Weights.random(g64)).graph)}
    assert "Attention" not in ops64 and "Softmax" in ops64


def test_large_weights_go_to_external_data(tmp_path):
    graph = _graph("self")
    w = ag.Weights.random(graph)
    path = ag.export_onnx(graph, tmp_path / "m.onnx", weights=w, external_data=True)
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    x = random_inputs(graph, SIZES[0])
    np.testing.assert_allclose(ag.compile(path, "onnx")(x)["y"], ag.compile(graph, "numpy", weights=w)(x)["y"],
                               rtol=1e-5, atol=1e-6)


def test_bfloat16_and_float16_exports(tmp_path):
    pytest.importorskip("ml_dtypes")
    for dtype in ("float16", "bfloat16"):
        graph = ag.causal_self_attention(16, 4, num_kv_heads=2, dtype=dtype)
        w = ag.Weights.random(graph)
        x = random_inputs(graph, SIZES[1])
        got = ag.compile(ag.export_onnx(graph, tmp_path / f"{dtype}.onnx", weights=w), "onnx")(x)["y"]
        want, *_ = oracle.mha(x["x"], x["x"], x["x"], w, num_heads=4, num_kv_heads=2, causal=True)
        assert got.dtype == x["x"].dtype
        assert_close(got, want, dtype)


# ---- bad input ------------------------------------------------------------------------------

def test_contrib_refuses_what_it_cannot_express(tmp_path):
    for feature, why in [("gqa", "GQA/MQA"), ("bool_mask", "a mask input"), ("softcap", "a mask input"),
                         ("kv_cache", "GQA/MQA"), ("weights_out", "attention weights")]:
        graph = _graph(feature)
        with pytest.raises(ag.LoweringError, match=f"style 'contrib' cannot express {why}"):
            ag.export_onnx(graph, tmp_path / "x.onnx", weights=ag.Weights.random(graph), style="contrib")
    assert not (tmp_path / "x.onnx").exists(), "a failed export leaves no file"


def test_opset_too_old_and_unknown_style(tmp_path):
    graph = _graph("self")
    w = ag.Weights.random(graph)
    with pytest.raises(ag.AttnGraphError, match=r"opset 18 is too old for style 'attention' \(the Attention "
                                                 r"operator needs opset >= 23\)"):
        ag.export_onnx(graph, tmp_path / "x.onnx", weights=w, style="attention", opset=18)
    with pytest.raises(ag.AttnGraphError, match="unknown ONNX style 'fast'"):
        ag.export_onnx(graph, tmp_path / "x.onnx", weights=w, style="fast")


def test_unwritable_path_is_a_clear_error(tmp_path):
    graph = _graph("self")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ag.AttnGraphError, match="cannot write the ONNX file"):
        ag.export_onnx(graph, blocker / "m.onnx", weights=ag.Weights.random(graph))


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(ag.WeightError, match="needs weight"):
        ag.export_onnx(_graph("self"), tmp_path / "m.onnx")


def test_import_refuses_broken_and_foreign_models(tmp_path):
    graph = _graph("causal")
    path = ag.export_onnx(graph, tmp_path / "m.onnx", weights=ag.Weights.random(graph))
    data = path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ag.SerializationError, match="not a valid ONNX file|holds no ONNX graph"):
        ag.from_onnx(tmp_path / "cut.onnx")
    with pytest.raises(ag.SerializationError, match="cannot read ONNX file"):
        ag.from_onnx(tmp_path / "missing.onnx")
    model = onnx.load(str(path))
    model.metadata_props.clear()
    with pytest.raises(ag.SerializationError, match=r"unsupported op\(s\) \[.*'MatMul'.*\] in the imported model"):
        ag.from_onnx(model)
    from onnx import TensorProto, helper

    node = helper.make_node("Attention", ["q", "k", "v", "m"], ["y"])
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 3, 4]) for n in "qkv"]
    ins.append(helper.make_tensor_value_info("m", TensorProto.INT64, [3, 3]))
    bad = helper.make_model(helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", 1, None)]))
    with pytest.raises(ag.SerializationError, match="attn_mask 'm' has an integer type"):
        ag.from_onnx(bad)


def test_from_onnx_then_export_round_trip(tmp_path):
    """An imported Attention model runs on every backend and re-exports to an equal model."""
    from onnx import TensorProto, helper

    node = helper.make_node("Attention", ["Q", "K", "V", "M"], ["Y", "", "", "W"], is_causal=1, softcap=3.0,
                            qk_matmul_output_mode=3, q_num_heads=4, kv_num_heads=2)
    ins = [helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["B", "S", 32]),
           helper.make_tensor_value_info("K", TensorProto.FLOAT, ["B", "L", 16]),
           helper.make_tensor_value_info("V", TensorProto.FLOAT, ["B", "L", 24]),
           helper.make_tensor_value_info("M", TensorProto.BOOL, ["S", "L"])]
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs), opset_imports=[helper.make_opsetid("", 23)])
    graph = ag.from_onnx(model)
    assert [v.name for v in graph.inputs] == ["Q", "K", "V", "M"] and [v.name for v in graph.outputs] == ["Y", "W"]
    rng = np.random.default_rng(0)
    x = {"Q": rng.standard_normal((2, 5, 32), dtype=np.float32), "K": rng.standard_normal((2, 7, 16), dtype=np.float32),
         "V": rng.standard_normal((2, 7, 24), dtype=np.float32), "M": rng.random((5, 7)) > 0.3}
    model.ir_version = 10
    import onnxruntime as ort

    direct = ort.InferenceSession(model.SerializeToString()).run(None, x)
    for backend in ("numpy", "onnx"):
        got = ag.compile(graph, backend)(x)
        np.testing.assert_allclose(got["Y"], direct[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["W"], direct[1], rtol=1e-5, atol=1e-6)


# ---- a loaded file is never taken on its word ----------------------------------------------------

from attngraph.errors import UnsupportedModel


def _exported(tmp_path, feature="causal", style="attention", **kw):
    graph = _graph(feature)
    w = ag.Weights.random(graph, seed=3)
    return graph, w, ag.export_onnx(graph, tmp_path / f"{feature}-{style}.onnx", weights=w, style=style, **kw)


def _edit(path, change) -> str:
    """Load ``path`` (external data left where it is), apply ``change(model)``, save beside it."""
    model = onnx.load(str(path), load_external_data=False)
    change(model)
    out = path.with_name("edited-" + path.name)
    out.write_bytes(model.SerializeToString())
    return out


def _set_metadata_graph(model, edit_json) -> None:
    import json

    prop = next(p for p in model.metadata_props if p.key == "attngraph.graph")
    data = json.loads(prop.value)
    edit_json(data["graph"])
    prop.value = json.dumps(data)


@pytest.mark.parametrize("external_data", [False, True])
@pytest.mark.parametrize("style", ["decomposed", "attention", "contrib"])
def test_faithful_exports_compile_and_match_numpy(style, external_data, tmp_path):
    graph, w, path = _exported(tmp_path, style=style, external_data=external_data)
    if external_data:
        assert (tmp_path / f"{path.name}.data").stat().st_size > 0
    run = ag.compile(path, "onnx")
    assert run.graph == graph, "a faithful export is described by the graph it embeds"
    x = random_inputs(graph, SIZES[0], seed=4)
    want = ag.compile(graph, "numpy", weights=w)(x)
    for name, arr in run(x).items():
        np.testing.assert_allclose(arr, want[name], rtol=1e-5, atol=1e-6, err_msg=f"{style}/{name}")


def test_nodes_replaced_under_kept_metadata_are_refused(tmp_path):
    """The repro: an exported self-attention whose nodes became one Neg; the metadata still says attention."""
    from onnx import helper

    _, _, path = _exported(tmp_path, feature="self")

    def to_neg(model):
        del model.graph.node[:]
        model.graph.node.append(helper.make_node("Neg", ["x"], ["y"]))

    with pytest.raises(UnsupportedModel, match=r"the model's nodes do not match its embedded attngraph graph: "
                                                  r"it has 1 node\(s\) where the export has \d+; .*'Neg'"):
        ag.compile(_edit(path, to_neg), "onnx")


@pytest.mark.parametrize("what", ["scale_in_json", "causal_in_json", "input_shape", "input_dtype", "constant_data",
                                  "param_shape", "extra_node", "node_scale"])
def test_model_and_metadata_that_disagree_are_caught(what, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    _, _, path = _exported(tmp_path)

    def edit_attrs(op, key, value):
        def edit(g):
            for n in g["nodes"]:
                if n["op"] == op:
                    n["attrs"][key] = value
        return lambda model: _set_metadata_graph(model, edit)

    def constant(model):
        t = next(t for t in model.graph.initializer if not t.name.startswith(("w_", "b_")))
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1, t.name))

    def param_shape(model):
        t = next(t for t in model.graph.initializer if t.name == "w_q")
        t.CopyFrom(numpy_helper.from_array(np.zeros((16, 8), np.float32), "w_q"))

    def node_scale(model):
        def nodes(g):  # subgraphs (If branches) included
            for n in g.node:
                yield n
                for a in n.attribute:
                    yield from (x for sub in [a.g, *a.graphs] for x in nodes(sub))

        node = next(n for n in nodes(model.graph) if n.op_type == "Attention")
        next(a for a in node.attribute if a.name == "scale").f *= 2

    changes = {
        "scale_in_json": edit_attrs("scale", "value", 0.123),
        "causal_in_json": edit_attrs("mask", "causal", False),
        "input_shape": lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 32),
        "input_dtype": lambda m: m.graph.input[0].type.tensor_type.__setattr__("elem_type", TensorProto.DOUBLE),
        "constant_data": constant,
        "param_shape": param_shape,
        "extra_node": lambda m: m.graph.node.append(helper.make_node("Identity", ["x"], ["x_copy"])),
        "node_scale": node_scale,
    }
    with pytest.raises(UnsupportedModel, match="do not match its embedded attngraph graph"):
        ag.compile(_edit(path, changes[what]), "onnx")


def test_truncated_external_weights_are_refused_before_anything_is_allocated(tmp_path):
    _, _, path = _exported(tmp_path, external_data=True)
    data = tmp_path / f"{path.name}.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UnsupportedModel, match=r"initializer '\w+' stores fewer elements than its shape"):
        ag.compile(path, "onnx")


def test_a_single_attention_node_under_foreign_metadata_runs_as_what_it_is(tmp_path):
    """Metadata that does not describe the nodes is ignored: the model is read from its own nodes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("Attention", ["X", "X", "X"], ["Y"], is_causal=1, q_num_heads=4, kv_num_heads=4)
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "S", 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    claimed = ag.self_attention(16, 4)  # what the metadata says: a projected, non-causal self-attention
    helper.set_model_props(model, {"attngraph.graph": ag.to_json(claimed), "attngraph.style": "attention"})
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    run = ag.compile(path, "onnx")
    assert run.graph == ag.from_onnx(model) and [v.name for v in run.graph.inputs] == ["X"]
    x = np.random.default_rng(0).standard_normal((2, 5, 16), dtype=np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(["Y"], {"X": x})[0]
    np.testing.assert_allclose(run(X=x)["Y"], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ag.compile(run.graph, "numpy")(X=x)["Y"], want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("spinning, entry", [(True, "1"), (False, "0")])
def test_spinning_option_reaches_the_session_and_changes_no_number(spinning, entry):
    """``spinning=False``: onnxruntime's threads sleep after each run (for processes shared with other thread
    pools); the session says so, and the outputs are the same."""
    from attngraph_backends.onnx.backend import OnnxBackend

    g = ag.causal_self_attention(32, 4, num_kv_heads=2)
    w = ag.Weights.random(g, seed=0)
    backend = OnnxBackend()
    opts = backend.resolve_options({"spinning": spinning})
    sess = backend.session(backend.to_model(g, w).SerializeToString(), opts)
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == entry
    x = np.random.default_rng(0).standard_normal((2, 5, 32), dtype=np.float32)
    np.testing.assert_array_equal(ag.compile(g, "onnx", weights=w, spinning=spinning)(x=x)["y"],
                                  ag.compile(g, "onnx", weights=w)(x=x)["y"])
