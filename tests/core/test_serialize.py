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
