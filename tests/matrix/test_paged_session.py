"""``PagedDecodeSession`` on every backend: 8 sequences of different prompt lengths, steps interleaved, sequences
finishing and their blocks reused by new ones, each sequence's outputs equal to running it alone on the contiguous
static cache (``DecodeSession``, a peer built from the same weights); a forked prefix shared and copied on write;
an exhausted pool and unknown sequences refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

import attngraph as ag
from attngraph.errors import InputError

D, HEADS, KV, BS = 32, 4, 2, 4


def _graphs(num_blocks: int = 14, max_blocks: int = 5):
    paged = ag.paged_self_attention(D, HEADS, num_kv_heads=KV, block_size=BS, num_blocks=num_blocks,
                                    max_blocks=max_blocks, rotary="half")
    static = ag.causal_self_attention(D, HEADS, num_kv_heads=KV, rotary="half", kv_cache="static",
                                      max_len=BS * max_blocks)
    return paged, static, ag.Weights.random(paged, seed=3)


def _alone(static, backend, weights, prompt, tokens) -> np.ndarray:
    """The sequence run by itself on a contiguous static cache: its prefill rows then one row per token."""
    s = ag.DecodeSession(static, backend, weights=weights, batch=1)
    return np.concatenate([s.prefill(prompt)] + [s.step(t) for t in tokens], axis=1)


def test_eight_sequences_grow_and_finish_independently(backend):
    paged, static, w = _graphs()
    session = ag.PagedDecodeSession(paged, backend, weights=w)
    rng = np.random.default_rng(0)
    prompts = [rng.standard_normal((1, n, D)).astype(np.float32) for n in (1, 3, 4, 5, 7, 9, 2, 6)]
    steps = [6, 2, 5, 3, 4, 7, 3, 2]  # decode steps of each sequence before it finishes
    waiting, live, record, ever_held = list(range(8)), {}, {}, set()
    reused = False
    while waiting or live:
        while waiting and len(live) < 4 and session.allocator.num_free >= 3:  # admit while blocks allow
            i = waiting.pop(0)
            sid = session.add()
            live[sid] = i
            record[i] = ([session.prefill(sid, prompts[i])], [])
            reused |= bool(set(session.blocks(sid)) & ever_held)
        tokens = {sid: rng.standard_normal((1, 1, D)).astype(np.float32) for sid in live}
        for sid, y in session.step(tokens).items():
            record[live[sid]][0].append(y)
            record[live[sid]][1].append(tokens[sid])
        for sid in list(live):
            ever_held |= set(session.blocks(sid))
            if len(record[live[sid]][1]) == steps[live[sid]]:
                session.finish(sid)
                del live[sid]
    assert reused, "a new sequence should have taken blocks a finished one gave back"
    assert session.allocator.num_free == session.num_blocks
    for i in range(8):
        got = np.concatenate(record[i][0], axis=1)
        want = _alone(static, backend, w, prompts[i], record[i][1])
        assert got.shape == (1, prompts[i].shape[1] + steps[i], D)
        assert_close(got, want.astype(np.float64), "float32", f"sequence {i} on {backend.name}")


def test_a_forked_prefix_is_shared_then_copied_on_write(backend):
    paged, static, w = _graphs()
    session = ag.PagedDecodeSession(paged, backend, weights=w)
    rng = np.random.default_rng(1)
    prompt = rng.standard_normal((1, 6, D)).astype(np.float32)  # block 0 full, block 1 holds 2 of 4
    parent = session.add()
    session.prefill(parent, prompt)
    child = session.fork(parent)
    assert session.blocks(child) == session.blocks(parent)
    held = session.allocator.num_free
    a, b = (rng.standard_normal((1, 1, D)).astype(np.float32) for _ in range(2))
    ys = session.step({parent: a, child: b})
    assert session.blocks(child)[0] == session.blocks(parent)[0]  # the full prefix block stays shared
    assert session.blocks(child)[1] != session.blocks(parent)[1]  # the tail was copied before the write
    assert session.allocator.num_free == held - 1
    for sid, token in ((parent, a), (child, b)):
        want = _alone(static, backend, w, prompt, [token])[:, -1:]
        assert_close(ys[sid], want.astype(np.float64), "float32", f"sequence {sid} after the fork")


def test_exhausted_pool_and_unknown_sequences_are_refused():
    paged, _, w = _graphs(num_blocks=3, max_blocks=5)
    session = ag.PagedDecodeSession(paged, "numpy", weights=w)
    sid = session.add()
    session.prefill(sid, np.ones((1, 8, D), np.float32))  # 2 blocks
    other = session.add()
    with pytest.raises(InputError, match="has 1 free blocks but this call needs 2"):
        session.prefill(other, np.ones((1, 5, D), np.float32))
    assert session.length(other) == 0 and session.blocks(other) == ()  # the refusal changed nothing
    with pytest.raises(InputError, match="past the graph's 5 blocks"):
        session.prefill(sid, np.ones((1, 13, D), np.float32))
    session.finish(sid)
    with pytest.raises(InputError, match="sequence 0 is not in this session"):
        session.step({sid: np.ones((1, 1, D), np.float32)})
    with pytest.raises(ag.ConfigError, match="paged-cache graph"):
        ag.PagedDecodeSession(ag.causal_self_attention(D, HEADS), "numpy")
