"""Packed variable-length batches (``varlen_attention``): the conformance cases on every backend (as built and
after O1, both ONNX export styles), every backend against an independent per-sequence oracle, bad cu_seqlens
refused by name, the numba kernel's own rule and tiling, the exported ONNX model run by onnxruntime alone."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import assert_close, rand

import attngraph as ag
from attngraph.conformance import run_conformance, targets_for
from attngraph.conformance.varlen_cases import cu, varlen_cases
from attngraph.errors import ConfigError, GraphError, InputError
from attngraph.ir import Op
from attngraph.passes.decompose import decompose


def test_varlen_cases_pass_on_every_backend(backend):
    results = run_conformance(varlen_cases(), targets_for([backend.name], ("O0", "O1")), progress=False)
    failed = [f"{r.case} {r.target}: {r.detail}" for r in results if r.status != "passed"]
    assert not failed, failed
    assert {r.case for r in results} == {c.name for c in varlen_cases()}


def _packed(rng, q_lens, k_lens, hq=4, hkv=2, d=8, dv=8):
    cu_q, cu_k = cu(q_lens), cu(k_lens)
    return {"q": rand(rng, (1, hq, cu_q[-1], d)), "k": rand(rng, (1, hkv, cu_k[-1], d)),
            "v": rand(rng, (1, hkv, cu_k[-1], dv)), "cu_seqlens_q": np.asarray(cu_q, np.int32),
            "cu_seqlens_k": np.asarray(cu_k, np.int32)}


def _per_sequence(inputs, causal, align, window=None):
    """The independent oracle (tests/oracle.py) run on each sequence alone, rows concatenated."""
    cu_q, cu_k = inputs["cu_seqlens_q"], inputs["cu_seqlens_k"]
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    out = np.zeros(q.shape[:3] + (v.shape[3],))
    for s in range(len(cu_q) - 1):
        q0, q1, k0, k1 = (int(x) for x in (cu_q[s], cu_q[s + 1], cu_k[s], cu_k[s + 1]))
        offset = (k1 - k0) - (q1 - q0) if align == "bottom_right" else 0
        y, _ = oracle.core(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], causal=causal, offset=offset,
                           window=window or (-1, -1))
        out[:, :, q0:q1] = y
    return out


@pytest.mark.parametrize("causal,align", [(False, "bottom_right"), (True, "bottom_right"), (True, "top_left")])
def test_every_backend_matches_the_per_sequence_oracle(backend, causal, align):
    rng = np.random.default_rng(7)
    inputs = _packed(rng, [5, 0, 1, 9, 3], [7, 2, 0, 4, 3])
    g = ag.varlen_attention(4, 8, num_kv_heads=2, causal=causal, align=align)
    # the backend's own rule, and the default decomposition (the block-diagonal bool mask) on the same backend
    dense = decompose(g, keep=frozenset(set(Op) - {Op.VARLEN_ATTENTION}))
    assert dense.count(Op.VARLEN_ATTENTION) == 0
    want = _per_sequence(inputs, causal, align)
    for graph, how in ((g, "rule"), (dense, "decomposition")):
        got = ag.compile(graph, backend)(inputs)["y"]
        assert_close(got, want, "float32", f"varlen {align} causal={causal} by {how}")


def test_bottom_right_and_top_left_differ_where_q_len_differs_from_k_len():
    """The alignment is not cosmetic: with q_len != k_len the two give different rows (a negative control)."""
    inputs = _packed(np.random.default_rng(3), [2, 4], [5, 2])
    br = ag.compile(ag.varlen_attention(4, 8, num_kv_heads=2, causal=True), "numpy")(inputs)["y"]
    tl = ag.compile(ag.varlen_attention(4, 8, num_kv_heads=2, causal=True, align="top_left"), "numpy")(inputs)["y"]
    assert not np.allclose(br, tl)
    assert np.all(br[0, :, 2:4] == 0)  # sequence 1: 4 queries over 2 keys, bottom-right: its first 2 rows see none


BAD = {
    "not_starting_at_0": ([1, 3, 5], [0, 2, 5], "cu_seqlens_q", "starts at 1"),
    "decreasing": ([0, 4, 3, 5], [0, 2, 4, 5], "cu_seqlens_q", "decreases"),
    "last_is_not_total": ([0, 2, 5], [0, 2, 4], "cu_seqlens_k", "ends at 4"),
    "q_and_k_batches_differ": ([0, 2, 5], [0, 2, 4, 5], "cu_seqlens_k", "cu_len"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_cu_seqlens_is_an_input_error_naming_it(backend, kind):
    cu_q, cu_k, name, says = BAD[kind]
    run = ag.compile(ag.varlen_attention(2, 4, causal=True), backend)
    z = np.zeros((1, 2, 5, 4), np.float32)
    with pytest.raises(InputError, match=says) as e:
        run(q=z, k=z, v=z, cu_seqlens_q=np.asarray(cu_q, np.int32), cu_seqlens_k=np.asarray(cu_k, np.int32))
    assert repr(name) in str(e.value) and "Fix" in str(e.value)


def test_bad_configurations_are_refused_by_name():
    with pytest.raises(ConfigError, match="align"):
        ag.varlen_attention(2, 4, causal=True, align="bottom-right")
    with pytest.raises(ConfigError, match="multiple"):
        ag.varlen_attention(3, 4, num_kv_heads=2)
    b = ag.GraphBuilder("batched")
    q = b.input("q", "float32", (2, 2, "t", 4))
    c = b.input("c", "int32", ("n",))
    with pytest.raises(GraphError, match="batch axis must be 1"):
        b.op(Op.VARLEN_ATTENTION, q, q, q, c, c, scale=0.5)


def test_numba_runs_its_own_kernel_with_tiles_inside_each_sequence():
    pytest.importorskip("numba")
    from attngraph_backends.numba.varlen import plan_tiles

    g = ag.varlen_attention(2, 8, causal=True)
    assert [n.op for n in ag.compile(g, "numba").graph.nodes] == [Op.VARLEN_ATTENTION]  # not the dense mask
    cu_q = np.array(cu([130, 0, 1, 64]))
    tiles = plan_tiles(cu_q, cu_q, 2, 64, True, True)
    # every query row of every head in exactly one tile, and no tile for the empty sequence
    assert sorted(map(tuple, tiles[:, :2].tolist())) == sorted((h, s) for h in range(2) for s, n in
                                                            ((0, 3), (2, 1), (3, 1)) for _ in range(n))
    assert {tuple(t) for t in tiles[:, 1:].tolist()} == {(0, 0), (0, 64), (0, 128), (2, 0), (3, 0)}


def test_exported_onnx_runs_in_onnxruntime_alone(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    g = ag.varlen_attention(4, 8, num_kv_heads=2, causal=True)
    inputs = _packed(np.random.default_rng(5), [3, 0, 6], [4, 2, 6])
    path = ag.export_onnx(g, tmp_path / "varlen.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    assert_close(got, _per_sequence(inputs, True, "bottom_right"), "float32", "onnxruntime")


def test_json_round_trip_is_bitwise_equal():
    g = ag.varlen_attention(4, 8, num_kv_heads=2, causal=True, align="top_left")
    inputs = _packed(np.random.default_rng(2), [3, 4], [4, 1])
    a = ag.compile(g, "numpy")(inputs)["y"]
    b = ag.compile(ag.from_json(ag.to_json(g)), "numpy")(inputs)["y"]
    assert np.array_equal(a, b)


def test_selection_prefers_the_kernel_that_skips_cross_sequence_work():
    from attngraph.selection import problem_of

    g = ag.varlen_attention(4, 8, num_kv_heads=2, causal=True)
    p = problem_of(g, {"total_q": 300, "total_k": 400})
    assert (p.varlen, p.heads, p.q_len, p.kv_len, p.head_dim, p.causal) == (True, 4, 300, 400, 8, True)
    s = ag.select_backend(g)
    if not s.hardware.cuda and "numba" in s.hardware.backends:
        assert (s.rule, s.choice) == ("cpu-varlen", "numba")


def test_random_inputs_give_valid_cu_seqlens_at_the_usual_size_flags():
    """``attngraph run`` sizes (batch, q_len, kv_len) become ``batch`` packed sequences with valid cu_seqlens."""
    from attngraph.testing.random_inputs import random_inputs

    g = ag.varlen_attention(2, 4, causal=True)
    inputs = random_inputs(g, {"batch": 3, "q_len": 5, "kv_len": 7}, seed=1)
    assert inputs["q"].shape == (1, 2, 15, 4) and inputs["k"].shape == (1, 2, 21, 4)
    for name, total in (("cu_seqlens_q", 15), ("cu_seqlens_k", 21)):
        cu_ = inputs[name]
        assert cu_.shape == (4,) and cu_[0] == 0 and cu_[-1] == total and np.all(np.diff(cu_) >= 0)
    assert_close(ag.compile(g, "numpy")(inputs)["y"], _per_sequence(inputs, True, "bottom_right"), "float32")


@pytest.mark.parametrize("window", [None, (5, 0), (3, 2)])
@pytest.mark.parametrize("align", ["bottom_right", "top_left"])
def test_numba_small_tiles_cross_the_causal_frontier_inside_each_sequence(align, window):
    """8x8 tiles: many query blocks per sequence, blocks cut by the frontier and the window's start, sequences
    shorter than a tile (with 30 queries the kernel copies K into blocks; the conformance cases, <= 16, do not)."""
    pytest.importorskip("numba")
    inputs = _packed(np.random.default_rng(11), [17, 3, 0, 8, 30], [9, 20, 4, 8, 31])
    g = ag.varlen_attention(4, 8, num_kv_heads=2, causal=True, align=align, window=window)
    got = ag.compile(g, "numba", block_q=8, block_k=8)(inputs)["y"]
    assert_close(got, _per_sequence(inputs, True, align, window), "float32", f"numba 8x8 tiles {align} {window}")


def test_numba_checks_a_computed_cu_seqlens_before_its_kernel_indexes_with_it():
    """A cu_seqlens computed in the graph (here: input + 1) escapes the input value checks; numba's rule refuses
    it by name instead of reading past the packed axis."""
    pytest.importorskip("numba")
    b = ag.GraphBuilder("computed_cu")
    q = b.input("q", "float32", (1, 2, "t", 4))
    c = b.input("c", "int32", ("n",))
    shifted = b.op(Op.ADD, c, b.op(Op.CONST, value=1, dtype="int32"), name="shifted")
    g = b.build([b.op(Op.VARLEN_ATTENTION, q, q, q, shifted, shifted, scale=0.5, name="y")])
    z = np.zeros((1, 2, 5, 4), np.float32)
    with pytest.raises(InputError, match="'shifted' starts at 1"):
        ag.compile(g, "numba")(q=z, c=np.array([0, 2, 5], np.int32))


def test_cli_builds_runs_and_refuses_a_packed_core(capsys):
    from attngraph.cli import main

    assert main(["run", "--varlen", "top_left", "--causal", "--heads", "4", "--kv-heads", "2", "--batch", "3",
                 "--q-len", "5", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "graph varlen_attention on numpy" in out and "cu_seqlens_q int32[4]" in out
    assert "y               [1, 4, 15" in out
    assert main(["run", "--varlen", "--mask", "bool", "--repeat", "1"]) == 2
    assert "--varlen builds the packed core alone" in capsys.readouterr().err


def test_numba_softcap_with_copied_key_blocks():
    """Softcap in the numba kernel's block-copy path too (30 queries > 16), against the float64 reference."""
    pytest.importorskip("numba")
    from attngraph.conformance.reference import evaluate

    inputs = _packed(np.random.default_rng(4), [30, 5], [31, 9])
    inputs["q"] *= 3  # scores large enough that the cap changes them
    g = ag.varlen_attention(4, 8, num_kv_heads=2, causal=True, softcap=1.5, window=(12, 0))
    got = ag.compile(g, "numba", block_q=8, block_k=8)(inputs)["y"]
    ref = evaluate(g, {}, inputs)["y"]
    assert_close(got, ref, "float32", "numba softcap")
    uncapped = evaluate(ag.varlen_attention(4, 8, num_kv_heads=2, causal=True, window=(12, 0)), {}, inputs)["y"]
    assert not np.allclose(ref, uncapped, atol=1e-3)  # the cap is not a no-op here
