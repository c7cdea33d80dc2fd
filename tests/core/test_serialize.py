"""JSON round trip: exact, versioned, and safe on hostile or broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import rand

import attngraph as ag
from attngraph.ir.serialize import graph_to_dict


@pytest.mark.parametrize("pipeline", ["O0", "O1"])
def test_round_trip_is_identical_and_bitwise_equal(tmp_path, pipeline):
    g = ag.run_pipeline(ag.causal_self_attention(32, 4, num_kv_heads=2, kv_cache=True, softcap=5.0,
                                                 scale=0.123456789012345, return_weights=True), pipeline)
    path = tmp_path / "g.json"
    ag.save_graph(g, path)
    loaded = ag.load_graph(path)
    assert loaded == g and str(loaded) == str(g)
    w = ag.Weights.random(g, seed=0)
    rng = np.random.default_rng(0)
    x = {"x": rand(rng, (2, 3, 32)), "past_key": rand(rng, (2, 2, 4, 8)), "past_value": rand(rng, (2, 2, 4, 8))}
    a = ag.compile(g, "numpy", weights=w)(x)
    b = ag.compile(loaded, "numpy", weights=w)(x)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    g = ag.core_attention(2, 4)
    ag.save_graph(g, tmp_path / "g.json")
    ag.save_graph(g, tmp_path / "g.json")
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "g.json").stat().st_mode & 0o777 == 0o666 & ~mask, "saved files get the usual permissions"


def test_unknown_version_is_a_clear_error():
    data = graph_to_dict(ag.core_attention(2, 4))
    data["version"] = 99
    with pytest.raises(ag.SerializationError, match="version 99 is not supported; this attngraph reads version 1"):
        ag.from_json(json.dumps(data))


@pytest.mark.parametrize("text,match", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not an attngraph graph file"),
    ('{"format": "attngraph.graph", "version": 1}', "no 'graph' object"),
    ('{"format": "attngraph.graph", "version": 1, "graph": {"name": "g"}}', "malformed graph file"),
])
def test_malformed_files_are_refused(text, match):
    with pytest.raises(ag.SerializationError, match=match):
        ag.from_json(text)


def test_hostile_content_is_data_not_code():
    data = graph_to_dict(ag.core_attention(2, 4))
    data["graph"]["nodes"][0]["op"] = "__import__('os').system('echo pwned')"
    with pytest.raises(ag.SerializationError, match="unknown op"):
        ag.from_json(json.dumps(data))
    data = graph_to_dict(ag.core_attention(2, 4))
    data["graph"]["nodes"][1]["attrs"]["value"] = {"py/object": "os.system"}
    with pytest.raises(ag.SerializationError, match="not a number, string, bool or list"):
        ag.from_json(json.dumps(data))


def test_a_file_that_breaks_ir_rules_is_refused():
    data = graph_to_dict(ag.core_attention(2, 4))
    data["graph"]["nodes"][0]["outputs"][0][1] = "float64"
    with pytest.raises(ag.SerializationError, match="invalid graph: declared output types differ"):
        ag.from_json(json.dumps(data))


def test_weights_npz_round_trip(tmp_path):
    g = ag.self_attention(16, 2)
    w = ag.Weights.random(g, seed=3)
    w.save(tmp_path / "w.npz")
    back = ag.Weights.load(tmp_path / "w.npz").check(g)
    for name in w:
        np.testing.assert_array_equal(w[name], back[name])


def test_weight_files_that_are_not_npz_of_arrays_are_weight_errors(tmp_path):
    """Weights.load never raises NumPy's or zipfile's own errors: each is a WeightError naming the file."""
    import zipfile

    from attngraph.errors import WeightError

    (tmp_path / "text.npz").write_text("hello")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("w_q.npy", b"not an npy")
    np.savez(tmp_path / "objects.npz", w_q=np.array([{"a": 1}], dtype=object))
    cases = {"missing.npz": "no such file", "text.npz": "is not an .npz file", "other.npz": "not numeric arrays",
             "objects.npz": "not an .npz of named"}
    for name, message in cases.items():
        with pytest.raises(WeightError, match=message) as err:
            ag.Weights.load(tmp_path / name)
        assert name in str(err.value)


# ---- hostile and unusual files: non-finite numbers, depth, size, and a fuzz over mutated graphs

def _o1_text(**kw) -> str:
    return ag.to_json(ag.run_pipeline(ag.causal_self_attention(16, 4, **kw), "O1"))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_refused_naming_node_and_attribute(literal):
    text = _o1_text(softcap=5.0).replace('"softcap": 5.0', f'"softcap": {literal}')
    assert literal in text
    with pytest.raises(ag.SerializationError, match=rf"node \d+ \(attention\) attribute 'softcap' is the JSON "
                                                    rf"literal {literal}: graph files hold finite numbers only"):
        ag.from_json(text)


@pytest.mark.parametrize("op,attr", [("scale", "value"), ("softcap", "cap"), ("clamp", "low"), ("clamp", "high"),
                                     ("attention", "scale"), ("attention", "softcap")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_ir_refuses_non_finite_float_attributes(op, attr, bad):
    g = ag.causal_self_attention(16, 4, softcap=5.0, clip_qkv=0.5)
    g = ag.run_pipeline(g, "O1") if op == "attention" else g
    node = next(n for n in g.nodes if n.op.value == op)
    broken = node.__class__(node.op, node.inputs, node.outputs,
                            tuple((k, bad if k == attr else v) for k, v in node.attrs))
    bad_graph = g.replace(nodes=tuple(broken if n is node else n for n in g.nodes))
    with pytest.raises(ag.GraphError, match=f"{op} {attr} must be a finite number"):
        ag.verify_graph(bad_graph)
    # in a file, the {"float": "-inf"} spelling reaches the same rule
    data = graph_to_dict(g)
    index = g.nodes.index(node)
    data["graph"]["nodes"][index]["attrs"][attr] = {"float": "-inf"}
    with pytest.raises(ag.SerializationError, match=f"invalid graph: {op} {attr} must be a finite number"):
        ag.from_json(json.dumps(data))


def test_an_infinite_const_still_round_trips():
    from attngraph.passes import decompose

    g = decompose(ag.core_attention(2, 4, mask="bool"))
    text = ag.to_json(g)
    assert '"float": "-inf"' in text and ag.from_json(text) == g


def test_a_nan_const_is_refused():
    from attngraph.passes import decompose

    data = graph_to_dict(decompose(ag.core_attention(2, 4, mask="bool")))
    const = next(nd for nd in data["graph"]["nodes"] if nd["op"] == "const")
    const["attrs"]["value"] = float("nan")
    with pytest.raises(ag.SerializationError, match=r"node \d+ \(const\) attribute 'value' is the JSON literal NaN"):
        ag.from_json(json.dumps(data))


def test_deep_nesting_is_refused_not_a_recursion_error():
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ag.SerializationError, match="nested too deeply"):
        ag.from_json(deep)
    data = graph_to_dict(ag.core_attention(2, 4))
    data["graph"]["nodes"][0]["attrs"]["deep"] = "@@"
    text = json.dumps(data).replace('"@@"', "[" * 50_000 + "]" * 50_000)
    with pytest.raises(ag.SerializationError, match="nested too deeply"):
        ag.from_json(text)


def test_size_limits(tmp_path):
    from attngraph.ir import serialize

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(serialize.MAX_TEXT + 1)  # sparse: nothing is written, the size alone is refused
    with pytest.raises(ag.SerializationError, match=r"big.json' is 32 MiB, more than the 32 MiB attngraph reads"):
        ag.load_graph(big)
    with pytest.raises(ag.SerializationError, match="more than the 32 MiB"):
        ag.from_json(" " * (serialize.MAX_TEXT + 1))
    data = graph_to_dict(ag.core_attention(2, 4))
    data["graph"]["nodes"] = data["graph"]["nodes"][:1] * (serialize.MAX_NODES + 1)
    with pytest.raises(ag.SerializationError, match="100001 nodes, more than the 100000 attngraph reads"):
        serialize.graph_from_dict(data)


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "g.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ag.SerializationError, match="not UTF-8 text"):
        ag.load_graph(path)


@pytest.mark.parametrize("where,value,match", [
    ("heads", "four", "attribute 'heads' must be an int, got 'four'"),
    ("heads", 2.0, "attribute 'heads' must be an int, got 2.0"),
    ("heads", [4], "attribute 'heads' must be an int"),
    ("transpose_b", "yes", "attribute 'transpose_b' must be true or false"),
    ("operands", 3, "attribute 'operands' must be a list, each a string"),
    ("axis", None, "attribute 'axis' must be an int, got None"),
])
def test_wrong_typed_attributes_are_named(where, value, match):
    data = graph_to_dict(ag.causal_self_attention(16, 4, kv_cache=True))
    node = next(nd for nd in data["graph"]["nodes"] if where in nd["attrs"])
    node["attrs"][where] = value
    with pytest.raises(ag.SerializationError, match=match):
        ag.from_json(json.dumps(data))


# ---- the fuzz: mutated valid graphs give a valid Graph or an AttnGraphError, nothing else, never a hang

def _seed_graphs():
    from attngraph.passes import decompose

    return [ag.causal_self_attention(16, 4, num_kv_heads=2, kv_cache=True, softcap=5.0),
            ag.core_attention(2, 4, mask="bool"),
            ag.run_pipeline(ag.causal_self_attention(16, 4, clip_qkv=0.5, window=(4, 0)), "O1"),
            decompose(ag.core_attention(2, 4, mask="additive"))]


SEEDS = [graph_to_dict(g) for g in _seed_graphs()]


def _paths(tree, prefix=()):
    """Every place in a JSON tree (as a key path), the root excluded."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _json_values():
    from hypothesis import strategies as st

    from attngraph.ir import Op

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-5, 70), st.integers(), st.just(10**300), st.just(-1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["", "nan", "NaN", "inf", "-inf", "Infinity", "batch", "q_len+1", "past_len+q_len",
                         "-3", "float32", "int8", "bool", "bias", "lengths", "start", "x y", "%x", "a" * 300]),
        st.sampled_from([o.value for o in Op]), st.text(max_size=8),
        st.just({"float": "-inf"}), st.just({"float": "nan"}), st.just({"py/object": "os.system"}))
    nested = st.integers(2, 60).map(lambda n: json.loads("[" * n + "]" * n))
    keys = st.sampled_from(["float", "op", "inputs", "outputs", "attrs", "name"]) | st.text(max_size=6)
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=3)),
                        max_leaves=8) | nested


def _mutate(data, draw):
    """Apply one random edit: replace a value, drop a key or item, duplicate an item, or swap an op."""
    import copy

    from hypothesis import strategies as st

    from attngraph.ir import Op

    data = copy.deepcopy(data)
    action = draw(st.sampled_from(["replace", "replace", "drop", "duplicate", "op"]))
    paths = [p for p in _paths(data) if action != "op" or p[-1] == "op"]
    if not paths:
        return data
    path = draw(st.sampled_from(paths))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "replace":
        parent[key] = draw(_json_values())
    elif action == "drop":
        del parent[key]
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif action == "op":  # a valid op name on the wrong inputs and attributes: the type rules must refuse
        parent[key] = draw(st.sampled_from([o.value for o in Op]))
    return data


def test_fuzz_mutated_graph_files_give_a_graph_or_an_attngraph_error():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=600, deadline=2000, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def check(data):
        doc = data.draw(st.sampled_from(SEEDS))
        for _ in range(data.draw(st.integers(1, 3))):
            doc = _mutate(doc, data.draw)
        text = json.dumps(doc)  # NaN and Infinity come out as JSON literals, as a hostile file may hold them
        if data.draw(st.integers(0, 3)) == 0:  # and now and then broken JSON text
            cut = data.draw(st.integers(0, len(text)))
            text = text[:cut] + data.draw(st.sampled_from(["", "NaN", "]", "}", '"', "1e999", "[[[[", "\\u0000"])) \
                + text[cut:]
        try:
            graph = ag.from_json(text)
        except ag.AttnGraphError:
            return
        ag.verify_graph(graph)

    check()
