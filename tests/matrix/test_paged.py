"""The paged KV cache (``paged_cache_update`` + ``paged_attention``): the conformance cases on every backend (as
built and after O1, both ONNX export styles), every backend against an independent oracle built on a contiguous
copy of each row's keys, bad tables and lengths refused by name, the numba kernel reading the pool in place, and
the exported model's ScatterND / Gather."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import assert_close, rand

import attngraph as ag
from attngraph.conformance import run_conformance, targets_for
from attngraph.conformance.paged_cases import paged_cases
from attngraph.errors import ConfigError, GraphError, InputError
from attngraph.ir import Op
from attngraph.passes.decompose import decompose

BS, NB, MB = 4, 8, 3  # block size, pool blocks, table columns


def test_paged_cases_pass_on_every_backend(backend):
    results = run_conformance(paged_cases(), targets_for([backend.name], ("O0", "O1")), progress=False)
    failed = [f"{r.case} {r.target}: {r.detail}" for r in results if r.status != "passed"]
    assert not failed, failed
    assert {r.case for r in results} == {c.name for c in paged_cases()}


def _inputs(rng, table, lengths, seq=1, layout="NHD", hq=4, hkv=2, d=8):
    pool = (NB, BS, hkv, d) if layout == "NHD" else (NB, hkv, BS, d)
    b = len(table)
    return {"q": rand(rng, (b, hq, seq, d)), "k": rand(rng, (b, hkv, seq, d)), "v": rand(rng, (b, hkv, seq, d)),
            "key_cache": rand(rng, pool), "value_cache": rand(rng, pool),
            "block_table": np.asarray(table, np.int32), "cache_lengths": np.asarray(lengths, np.int64)}


def _contiguous_oracle(inputs, layout):
    """tests/oracle.py on each row's keys laid out contiguously by hand (the write done here too)."""
    kc, vc = inputs["key_cache"].copy(), inputs["value_cache"].copy()
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    table, lengths = inputs["block_table"], inputs["cache_lengths"]
    seq = q.shape[2]

    def slot(pool, blk, off):  # (heads, dim) at one slot
        return pool[blk, off] if layout == "NHD" else pool[blk, :, off]

    out = np.zeros(q.shape)
    for b in range(q.shape[0]):
        for s in range(seq):
            p = int(lengths[b]) + s
            slot(kc, table[b, p // BS], p % BS)[...] = k[b, :, s]
            slot(vc, table[b, p // BS], p % BS)[...] = v[b, :, s]
        n = int(lengths[b]) + seq
        keys = np.stack([slot(kc, table[b, j // BS], j % BS) for j in range(n)], axis=1)[None]  # (1, H, n, D)
        values = np.stack([slot(vc, table[b, j // BS], j % BS) for j in range(n)], axis=1)[None]
        y, _ = oracle.core(q[b:b + 1], keys, values, causal=True, offset=n - seq)
        out[b] = y[0]
    return out, kc, vc


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_every_backend_matches_the_contiguous_oracle(backend, layout):
    rng = np.random.default_rng(5)
    inputs = _inputs(rng, [[6, 1, 3], [0, 7, -1], [2, -1, -1]], [9, 5, 0], seq=2, layout=layout)
    g = ag.paged_attention(4, 8, num_kv_heads=2, block_size=BS, num_blocks=NB, max_blocks=MB, layout=layout)
    dense = decompose(g, keep=frozenset(set(Op) - {Op.PAGED_ATTENTION, Op.PAGED_CACHE_UPDATE}))
    assert not dense.count(Op.PAGED_ATTENTION) and not dense.count(Op.PAGED_CACHE_UPDATE)
    want, kc, vc = _contiguous_oracle(inputs, layout)
    for graph, how in ((g, "rule"), (dense, "decomposition")):
        got = ag.compile(graph, backend)({n: a.copy() for n, a in inputs.items()})
        assert_close(got["y"], want, "float32", f"paged {layout} by {how}")
        np.testing.assert_array_equal(np.asarray(got["present_key_cache"]), kc, err_msg=how)
        np.testing.assert_array_equal(np.asarray(got["present_value_cache"]), vc, err_msg=how)


def test_the_table_order_matters():
    """A negative control: the same blocks in another order give another row: 7 keys read the first block whole and
    3 slots of the second, so the order decides which slot is left out (the read follows the table)."""
    rng = np.random.default_rng(2)
    inputs = _inputs(rng, [[6, 1, 3]], [6])
    g = ag.paged_attention(4, 8, num_kv_heads=2, block_size=BS, num_blocks=NB, max_blocks=MB)
    run = ag.compile(g, "numpy")
    a = run({n: x.copy() for n, x in inputs.items()})["y"]
    inputs["block_table"] = np.asarray([[1, 6, 3]], np.int32)
    assert not np.allclose(a, run(inputs)["y"])


BAD = {  # table, cache_lengths, what the message must say
    "block_id_out_of_range": ([[5, 9, -1], [1, 0, -1]], [6, 3], "block id out of range: block_table[0, 1] = 9"),
    "negative_block_id": ([[5, 2, -1], [-1, 0, -1]], [6, 3], "block id out of range: block_table[1, 0] = -1"),
    "table_too_short": ([[5, 2, 7], [1, 0, -1]], [12, 3], "block table too short: row 0"),
    "same_block_twice_in_a_row": ([[5, 5, -1], [1, 0, -1]], [6, 3], "row 0 of 'block_table' lists block 5 twice"),
    "two_rows_write_one_slot": ([[5, 2, -1], [2, 0, -1]], [7, 3], "slot collision: rows 0 and 1 both write"),
    "write_into_a_shared_block": ([[5, 2, -1], [5, 0, -1]], [7, 3], "writing into a shared block: row 1 writes "
                                                                    "into block 5"),
    "negative_length": ([[5, 2, -1], [1, 0, -1]], [-1, 3], "input 'cache_lengths' row 0 is -1"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_table_or_length_is_an_input_error_naming_it(backend, kind):
    table, lengths, message = BAD[kind]
    g = ag.paged_attention(4, 8, num_kv_heads=2, block_size=BS, num_blocks=NB, max_blocks=MB)
    inputs = _inputs(np.random.default_rng(0), table, lengths)
    with pytest.raises(InputError, match="paged_cache_update") as e:
        ag.compile(g, backend)(inputs)
    assert message in str(e.value) and "Fix:" in str(e.value)


def test_a_read_alone_checks_its_table_too():
    """A graph with the read only (no write): seq_lens past the table, or a used entry out of range, refused."""
    b = ag.GraphBuilder("read")
    q = b.input("q", "float32", ("batch", 4, 1, 8))
    kc = b.input("kc", "float32", (NB, BS, 2, 8))
    table = b.input("table", "int32", ("batch", MB))
    n = b.input("seq_lens", "int64", ("batch",))
    g = b.build([b.op(Op.PAGED_ATTENTION, q, kc, kc, table, n, scale=0.3, name="y")])
    run = ag.compile(g, "numpy")
    rng = np.random.default_rng(0)
    feed = {"q": rand(rng, (1, 4, 1, 8)), "kc": rand(rng, (NB, BS, 2, 8)), "table": np.asarray([[1, 2, -1]], np.int32)}
    assert run({**feed, "seq_lens": np.asarray([8])})["y"].shape == (1, 4, 1, 8)  # two blocks: column 2 unread
    with pytest.raises(InputError, match="block id out of range: table\\[0, 2\\] = -1"):
        run({**feed, "seq_lens": np.asarray([9])})
    with pytest.raises(InputError, match="block table too short"):
        run({**feed, "seq_lens": np.asarray([13])})


def test_bad_graphs_are_graph_errors():
    with pytest.raises(ConfigError, match="layout must be one of"):
        ag.paged_attention(4, 8, block_size=4, num_blocks=4, max_blocks=2, layout="BHSD")
    b = ag.GraphBuilder("bad")
    pool = b.input("pool", "float32", (4, "bs", 2, 8))
    new = b.input("new", "float32", ("batch", 2, 1, 8))
    table = b.input("table", "int32", ("batch", 2))
    n = b.input("n", "int64", ("batch",))
    with pytest.raises(GraphError, match="block_size must be a fixed integer"):
        b.op(Op.PAGED_CACHE_UPDATE, pool, new, table, n)


def test_numba_reads_the_pool_in_place(monkeypatch):
    """The numba rule hands the caller's pool buffers themselves to its kernel (no gathered copy of any row)."""
    from attngraph_backends.numba import paged_decode

    seen = []
    kernel = paged_decode.paged_decode_attention

    def spy(q, k_pool, v_pool, *rest):
        seen.append((k_pool, v_pool))
        return kernel(q, k_pool, v_pool, *rest)

    monkeypatch.setattr(paged_decode, "paged_decode_attention", spy)
    inputs = _inputs(np.random.default_rng(1), [[6, 1, 3], [0, 7, -1]], [9, 5])
    g = ag.paged_attention(4, 8, num_kv_heads=2, block_size=BS, num_blocks=NB, max_blocks=MB)
    want, _, _ = _contiguous_oracle(inputs, "NHD")
    out = ag.compile(g, "numba")(inputs)
    assert len(seen) == 1
    for given, pool in zip(seen[0], (inputs["key_cache"], inputs["value_cache"]), strict=True):
        assert given.base is pool and given.shape == (NB * BS * 2, 8)  # a view of the pool's rows: no copy
    assert out["present_key_cache"] is inputs["key_cache"]  # the write went into the caller's buffer
    assert_close(out["y"], want, "float32", "numba paged kernel")


def test_onnx_export_writes_with_scatternd_and_reads_with_gather():
    pytest.importorskip("onnxruntime")
    from attngraph_backends.onnx.export import to_onnx

    g = ag.paged_attention(4, 8, num_kv_heads=2, block_size=BS, num_blocks=NB, max_blocks=MB)
    for style in ("decomposed", "attention"):
        ops = {n.op_type for n in to_onnx(g, style=style).graph.node}
        assert {"ScatterND", "Gather", "GatherElements"} <= ops, (style, sorted(ops))


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_numba_kernel_splits_a_long_row_across_tiles(layout):
    """600 keys in 38 blocks of 16 (the last one ends mid-block), scrambled: several 256-key tiles and split-K
    partials, a 3-token chunk (causal bottom-right), GQA; against the float64 reference of the same graph."""
    from attngraph.conformance.reference import evaluate

    rng = np.random.default_rng(4)
    bs, nb, mb = 16, 48, 40
    g = ag.paged_attention(4, 8, num_kv_heads=2, block_size=bs, num_blocks=nb, max_blocks=mb, layout=layout)
    pool = (nb, bs, 2, 8) if layout == "NHD" else (nb, 2, bs, 8)
    table = np.full((1, mb), -1, np.int32)
    table[0, :38] = rng.permutation(nb)[:38]
    inputs = {"q": rand(rng, (1, 4, 3, 8)), "k": rand(rng, (1, 2, 3, 8)), "v": rand(rng, (1, 2, 3, 8)),
              "key_cache": rand(rng, pool), "value_cache": rand(rng, pool), "block_table": table,
              "cache_lengths": np.asarray([597], np.int64)}
    ref = evaluate(g, {}, inputs)
    got = ag.compile(g, "numba")(inputs)
    assert_close(got["y"], ref["y"], "float32", f"numba paged {layout}, 600 keys")
