"""``from_onnx``: a model of one ONNX ``Attention`` node is checked like the operator's schema and its
shapes; invalid models are refused by name, one tensor feeding Q, K and V imports and runs, and no
mutation of a valid model escapes as anything but a verified graph or an ``AttnGraphError``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attngraph as ag

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper

H = {"q_num_heads": 4, "kv_num_heads": 4}
SHAPES_3D = {"Q": ["B", "S", 24], "K": ["B", "L", 24], "V": ["B", "L", 24]}


def attention_model(attrs: dict, shapes: dict | None = None, *, inputs=("Q", "K", "V"), outputs=("Y",),
                    opset: int = 23, domain: str = "", types: dict | None = None) -> onnx.ModelProto:
    """One Attention node; graph inputs typed from ``shapes`` (float32 unless ``types`` says otherwise)."""
    node = helper.make_node("Attention", list(inputs), list(outputs), domain=domain)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    shapes = SHAPES_3D if shapes is None else shapes
    ins = [helper.make_tensor_value_info(n, (types or {}).get(n, TensorProto.FLOAT), s) for n, s in shapes.items()]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid(domain, opset)])
    model.ir_version = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 rejects
    return model


# ---- refusals, by name --------------------------------------------------------------------------

REFUSED = {
    "heads_zero": (dict(attrs={"q_num_heads": 0, "kv_num_heads": 0}), r"q_num_heads=0 is invalid: expected a positive"),
    "causal_string": (dict(attrs={"is_causal": "yes", **H}), r"'is_causal' must be INT, got STRING \(b'yes'\)"),
    "heads_float": (dict(attrs={"q_num_heads": 3.7, "kv_num_heads": 4}), r"'q_num_heads' must be INT, got FLOAT"),
    "heads_list": (dict(attrs={"q_num_heads": [4], "kv_num_heads": 4}), r"'q_num_heads' must be INT, got INTS"),
    "hidden_not_divisible": (dict(attrs={"q_num_heads": 5, "kv_num_heads": 5}),
                             r"'Q' has hidden size 24, which q_num_heads=5 does not divide"),
    "unknown_attribute": (dict(attrs={"dropout": 0.1, **H}), r"has no attribute 'dropout'; its attributes are \["),
    "window_before_opset_25": (dict(attrs={"left_window_size": 2, **H}), r"\(opset 23\) has no attribute 'left_window"),
    "opset_99": (dict(attrs=H, opset=99), r"imports ONNX opset 99; from_onnx reads the Attention operator of opsets"),
    "opset_22": (dict(attrs=H, opset=22), r"imports ONNX opset 22"),
    "causal_2": (dict(attrs={"is_causal": 2, **H}), r"is_causal=2 is invalid: expected 0 or 1"),
    "mode_4": (dict(attrs={"qk_matmul_output_mode": 4, **H}), r"qk_matmul_output_mode=4 is invalid"),
    "softcap_negative": (dict(attrs={"softcap": -1.0, **H}), r"softcap=-1.0 is invalid: expected a finite float >= 0"),
    "softcap_nan": (dict(attrs={"softcap": math.nan, **H}), r"softcap=nan is invalid"),
    "scale_inf": (dict(attrs={"scale": math.inf, **H}), r"scale=inf is invalid: expected a finite float"),
    "scale_negative": (dict(attrs={"scale": -0.5, **H}), r"scale=-0.5 is negative"),
    "softmax_precision_int": (dict(attrs={"softmax_precision": 7, **H}), r"softmax_precision=7 is invalid"),
    "missing_heads_3d": (dict(attrs={"q_num_heads": 4}), r"3D Q/K/V need the attributes.*\['kv_num_heads'\] missing"),
    "gqa_not_multiple": (dict(attrs={"q_num_heads": 4, "kv_num_heads": 3},
                              shapes={"Q": ["B", "S", 24], "K": ["B", "L", 18], "V": ["B", "L", 18]}),
                         r"q heads \(4\) must be a multiple of kv heads \(3\)"),
    "head_sizes_differ": (dict(attrs={"q_num_heads": 4, "kv_num_heads": 2}), r"Q and K head sizes .* differ: 6 != 12"),
    "4d_heads_disagree": (dict(attrs={"q_num_heads": 3},
                               shapes={"Q": [2, 4, 3, 8], "K": [2, 4, 5, 8], "V": [2, 4, 5, 8]}),
                          r"q_num_heads=3 disagrees with the 4D inputs' 4 heads"),
    "foreign_domain": (dict(attrs=H, domain="com.microsoft"), r"has domain 'com.microsoft', expected '' or 'ai.onnx'"),
    "ranks_differ": (dict(attrs=H, shapes={"Q": [2, 3, 24], "K": [2, 1, 4, 24], "V": [2, 4, 24]}),
                     r"Q/K/V must all be 3D or all 4D"),
    "symbolic_hidden": (dict(attrs=H, shapes={"Q": [2, 3, "E"], "K": [2, 4, 24], "V": [2, 4, 24]}),
                        r"'Q' dim 2 \(hidden size\) must be a fixed number > 0, got 'E'"),
    "mask_rank_5": (dict(attrs=H, inputs=("Q", "K", "V", "M"), shapes={**SHAPES_3D, "M": [1, 1, 1, "S", "L"]}),
                    r"attn_mask 'M' has rank 5"),
    "mask_wrong_heads": (dict(attrs=H, inputs=("Q", "K", "V", "M"), shapes={**SHAPES_3D, "M": [3, "S", "L"]}),
                         r"attn_mask 'M' dim 3 does not broadcast to the q_num_heads 4"),
    "mask_other_float": (dict(attrs=H, inputs=("Q", "K", "V", "M"), shapes={**SHAPES_3D, "M": ["S", "L"]},
                              types={"M": TensorProto.DOUBLE}), r"float attn_mask 'M' is float64, expected Q's type"),
    "past_3d": (dict(attrs=H, inputs=("Q", "K", "V", "", "PK", "PV"), outputs=("Y", "PKo", "PVo"),
                     shapes={**SHAPES_3D, "PK": [2, 4, 6], "PV": [2, 4, 6, 6]}), r"past input 'PK' must be 4D"),
    "past_alone": (dict(attrs=H, inputs=("Q", "K", "V", "", "PK"), shapes={**SHAPES_3D, "PK": [2, 4, 3, 6]}),
                   r"past_key and past_value must come together"),
    "nonpad_int32": (dict(attrs=H, opset=24, inputs=("Q", "K", "V", "", "", "", "N"), shapes={**SHAPES_3D, "N": ["B"]},
                          types={"N": TensorProto.INT32}), r"nonpad_kv_seqlen 'N' must be int64 of shape \(batch,\)"),
    "nonpad_rank_2": (dict(attrs=H, opset=24, inputs=("Q", "K", "V", "", "", "", "N"),
                           shapes={**SHAPES_3D, "N": ["B", 1]}, types={"N": TensorProto.INT64}),
                      r"nonpad_kv_seqlen 'N' must be int64 of shape \(batch,\), got int64\['B', 1\]"),
    "nonpad_in_opset_23": (dict(attrs=H, inputs=("Q", "K", "V", "", "", "", "N"), shapes={**SHAPES_3D, "N": ["B"]},
                                types={"N": TensorProto.INT64}), r"\(opset 23\) takes at most 6 inputs"),
    "mask_shares_q": (dict(attrs=H, inputs=("Q", "K", "V", "Q")),
                      r"tensor 'Q' feeds Attention inputs \['Q', 'attn_mask'\]"),
    "output_reuses_input": (dict(attrs=H, outputs=("Q",), shapes=SHAPES_3D), r"reuse an input name"),
    "not_a_graph_input": (dict(attrs=H, inputs=("Q", "K", "W")), r"input V \('W'\) is not a graph input"),
    "name_with_slash": (dict(attrs=H, outputs=("attn/Y",)), r"tensor name 'attn/Y' is not an attngraph value name"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_invalid_models_are_refused_by_name(case):
    kwargs, message = REFUSED[case]
    kwargs = dict(kwargs)
    model = attention_model(kwargs.pop("attrs"), **kwargs)
    with pytest.raises(ag.SerializationError, match=message):
        ag.from_onnx(model)


def test_bad_sources_are_serialization_errors(tmp_path):
    with pytest.raises(ag.SerializationError, match="path, bytes or an onnx.ModelProto, got int"):
        ag.from_onnx(3)
    with pytest.raises(ag.SerializationError, match="not a valid ONNX file|holds no ONNX graph"):
        ag.from_onnx(b"\x08\x07garbage")


def test_valid_variants_still_import():
    """What the schema allows: 'ai.onnx' as the domain, newer opsets whose Attention is version 25, 4D heads
    given again as attributes, a graph that does not return an output the node makes."""
    assert ag.from_onnx(attention_model(H, domain="ai.onnx"))
    assert ag.from_onnx(attention_model(H, opset=onnx.defs.onnx_opset_version()))
    four = {"Q": [2, 4, 3, 8], "K": [2, 2, 5, 8], "V": [2, 2, 5, 8]}
    assert ag.from_onnx(attention_model({"q_num_heads": 4, "kv_num_heads": 2}, four))
    model = attention_model(H, outputs=("Y", "", "", "W"))
    del model.graph.output[1]
    assert [v.name for v in ag.from_onnx(model).outputs] == ["Y"]


# ---- one tensor as Q, K and V ---------------------------------------------------------------------

SHARED = {
    "xxx_3d_causal": (("X", "X", "X"), {"is_causal": 1, **H}, {"X": ["B", "S", 24]}),
    "vvv_4d": (("v", "v", "v"), {}, {"v": ["B", 4, "S", 8]}),
    "qkk_cross": (("Q", "M", "M"), {"q_num_heads": 4, "kv_num_heads": 2}, {"Q": ["B", "S", 24], "M": ["B", "L", 12]}),
    "qqv_gqa": (("Q", "Q", "V"), {"softcap": 2.0}, {"Q": ["B", 4, "S", 8], "V": ["B", 4, "S", 6]}),
    "qkq_mask": (("Q", "K", "Q", "M"), {"q_num_heads": 4, "kv_num_heads": 4},
                 {"Q": ["B", "S", 24], "K": ["B", "S", 24], "M": ["S", "S"]}),
}


@pytest.mark.parametrize("case", sorted(SHARED))
def test_shared_qkv_imports_as_one_input_and_matches_onnxruntime(case, tmp_path):
    inputs, attrs, shapes = SHARED[case]
    model = attention_model(attrs, shapes, inputs=inputs, types={"M": TensorProto.BOOL} if "M" in inputs[3:] else None)
    graph = ag.from_onnx(model)
    assert [v.name for v in graph.inputs] == list(shapes), "one IR input per ONNX tensor, in the model's order"
    assert ag.verify_graph(graph) is graph
    rng = np.random.default_rng(0)
    sizes = {"B": 2, "S": 5, "L": 7}
    feed = {}
    for name, shape in shapes.items():
        dims = [sizes.get(d, d) for d in shape]
        is_mask = name == "M" and "M" in inputs[3:]
        feed[name] = rng.random(dims) > 0.3 if is_mask else rng.standard_normal(dims).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(["Y"], feed)[0]
    np.testing.assert_allclose(ag.compile(graph, "numpy")(feed)["Y"], want, rtol=2e-5, atol=2e-6)
    path = tmp_path / "shared.onnx"
    path.write_bytes(model.SerializeToString())
    run = ag.compile(path, "onnx")  # a plain Attention file: described by from_onnx, run as it is
    assert [v.name for v in run.graph.inputs] == list(shapes)
    np.testing.assert_allclose(run(feed)["Y"], want, rtol=1e-6, atol=1e-7)


# ---- the fuzz: mutated valid models give a verified graph or an AttnGraphError, nothing else ------

def _onnx_seed_cases() -> list:
    """A few of ONNX's own Attention node cases. Importing only onnx's attention case module builds them in
    about a second (load_model_tests(kind="node") builds every operator's cases: ~10 s)."""
    import onnx.backend.test.case.node.attention  # noqa: F401  (registers the cases as it is imported)
    from onnx.backend.test.case.node import _NodeTestCases

    wanted = ("test_attention_3d_gqa", "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal",
              "test_attention_4d_gqa_causal_nonpad_decode", "test_attention_local_window_ext_cache_rank3_head_mask",
              "test_attention_4d_attn_mask_bool_4d", "test_attention_3d_with_past_and_present_qk_matmul_softcap")
    cases = {c.name: c.model for c in _NodeTestCases if c.name in wanted}
    return [cases[n] for n in wanted if n in cases]


def _seed_models() -> list:
    hand = [attention_model({"is_causal": 1, **H}, {"X": ["B", "S", 24]}, inputs=("X", "X", "X")),
            attention_model({"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.5}, {"Q": [2, 3, 24], "K": [2, 5, 12],
                            "V": [2, 5, 8], "M": [1, 3, 5]}, inputs=("Q", "K", "V", "M"), outputs=("Y", "", "", "W")),
            attention_model({"softcap": 3.0, "qk_matmul_output_mode": 1}, {"Q": ["B", 2, "S", 4], "K": ["B", 1, "L", 4],
                            "V": ["B", 1, "L", 4]}, outputs=("Y", "", "", "W"), opset=24)]
    return _onnx_seed_cases() + hand


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the fuzz needs hypothesis (the "test" extra)
    given = None

ATTR_NAMES = ["is_causal", "q_num_heads", "kv_num_heads", "qk_matmul_output_mode", "scale", "softcap",
              "softmax_precision", "left_window_size", "right_window_size", "dropout", ""]
ELEM_TYPES = [0, 1, 2, 6, 7, 8, 9, 10, 11, 16, 99]

if given is not None:
    ints = st.sampled_from([-(2**63), -2, -1, 0, 1, 2, 3, 4, 7, 9, 24, 2**31, 2**62])
    floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 0.01, 0.5, 3.0, 3.7, 1e30])
    attr_values = st.one_of(ints, floats, st.sampled_from(["", "yes", "1"]), st.lists(ints, max_size=3),
                            st.lists(floats, min_size=1, max_size=2), st.just([b"x", b"y"]))
    dims = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 12, 24, 2**40]), st.sampled_from(["S", "L", "B", None]))
    mutation = st.one_of(
        st.tuples(st.just("set_attr"), st.sampled_from(ATTR_NAMES), attr_values),
        st.tuples(st.just("drop_attr"), st.integers(0, 5)),
        st.tuples(st.just("dup_attr"), st.integers(0, 5)),
        st.tuples(st.just("dim"), st.integers(0, 6), st.integers(0, 4), dims),
        st.tuples(st.just("rank"), st.integers(0, 6), st.lists(dims, max_size=5)),
        st.tuples(st.just("no_shape"), st.integers(0, 6)),
        st.tuples(st.just("elem_type"), st.integers(0, 6), st.sampled_from(ELEM_TYPES)),
        st.tuples(st.just("node_input"), st.integers(0, 7), st.sampled_from(["", "Q", "K", "V", "X", "new", "a/b"])),
        st.tuples(st.just("node_output"), st.integers(0, 4), st.sampled_from(["", "Y", "Q", "extra", "W2"])),
        st.tuples(st.just("graph_output"), st.sampled_from(["drop", "extra", "dup"])),
        st.tuples(st.just("opset"), st.sampled_from([1, 17, 22, 23, 24, 25, 26, 28, 29, 99, -1]),
                  st.sampled_from(["", "ai.onnx", "com.microsoft"])),
        st.tuples(st.just("node_domain"), st.sampled_from(["", "ai.onnx", "com.microsoft", "x"])),
        st.tuples(st.just("initializer"), st.integers(0, 6)),
        st.tuples(st.just("clear"), st.sampled_from(["input", "output", "attribute", "opset_import"])),
    )


def _mutate(model, m) -> None:
    """Apply one mutation in place; indices wrap around whatever the model has."""
    g, node = model.graph, model.graph.node[0]
    kind, *args = m
    if kind == "set_attr":
        name, value = args
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        try:
            node.attribute.append(helper.make_attribute(name, value))
        except (ValueError, TypeError):  # a value make_attribute itself refuses: not a model
            pass
    elif kind in ("drop_attr", "dup_attr") and node.attribute:
        at = node.attribute[args[0] % len(node.attribute)]
        if kind == "drop_attr":
            node.attribute.remove(at)
        else:
            node.attribute.append(at)
    elif kind in ("dim", "rank", "no_shape", "elem_type", "initializer") and g.input:
        vi = g.input[args[0] % len(g.input)]
        tt = vi.type.tensor_type
        if kind == "dim" and tt.shape.dim:
            _set_dim(tt.shape.dim[args[1] % len(tt.shape.dim)], args[2])
        elif kind == "rank":
            tt.shape.ClearField("dim")
            for d in args[1]:
                _set_dim(tt.shape.dim.add(), d)
        elif kind == "no_shape":
            tt.ClearField("shape")
        elif kind == "elem_type":
            tt.elem_type = args[1]
        elif kind == "initializer":
            g.initializer.append(helper.make_tensor(vi.name, TensorProto.FLOAT, [1], [0.0]))
    elif kind == "node_input":
        ins = list(node.input) + [""] * 8
        ins[args[0]] = args[1]
        del node.input[:]
        node.input.extend(ins[: max(len(node.input), args[0] + 1)])
    elif kind == "node_output":
        outs = list(node.output) + [""] * 5
        outs[args[0]] = args[1]
        del node.output[:]
        node.output.extend(outs[: max(len(node.output), args[0] + 1)])
    elif kind == "graph_output":
        if args[0] == "drop" and g.output:
            del g.output[0]
        elif args[0] == "extra":
            g.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
        elif g.output:
            g.output.append(g.output[0])
    elif kind == "opset":
        del model.opset_import[:]
        model.opset_import.append(helper.make_opsetid(args[1], args[0]))
    elif kind == "node_domain":
        node.domain = args[0]
    elif kind == "clear":
        (node if args[0] != "opset_import" else model).ClearField(args[0])


def _set_dim(dim, value) -> None:
    dim.Clear()
    if isinstance(value, int):
        dim.dim_value = value
    elif value is not None:
        dim.dim_param = value


if given is not None:
    SEEDS = _seed_models()

    @settings(max_examples=400, deadline=2000, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, len(SEEDS) - 1), mutations=st.lists(mutation, min_size=1, max_size=3))
    def test_mutated_models_give_a_verified_graph_or_an_attngraph_error(seed, mutations):
        model = onnx.ModelProto()
        model.CopyFrom(SEEDS[seed])
        for m in mutations:
            _mutate(model, m)
        try:
            graph = ag.from_onnx(model)
        except ag.AttnGraphError:
            return
        assert ag.verify_graph(graph) is graph


def test_fuzz_seeds_import():
    """Every seed of the fuzz is a valid model (so the mutations start from something that imports)."""
    seeds = _seed_models()
    assert len(seeds) >= 6
    for model in seeds:
        ag.verify_graph(ag.from_onnx(model))
