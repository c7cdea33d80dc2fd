"""The Executable's per-signature input check (lowering/signatures.py): a repeated call skips the shape walk,
and every changed shape, dtype, name or array type is still checked in full."""

from __future__ import annotations

import numpy as np
import pytest

import attngraph as ag
from attngraph.errors import InputError
from attngraph.lowering.signatures import SIGNATURES_KEPT


def _feed(batch=2, q_len=1, max_len=8, length=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"q": rng.standard_normal((batch, 4, q_len, 8), dtype=np.float32),
            "k": rng.standard_normal((batch, 2, q_len, 8), dtype=np.float32),
            "v": rng.standard_normal((batch, 2, q_len, 8), dtype=np.float32),
            "past_key": np.zeros((batch, 2, max_len, 8), np.float32),
            "past_value": np.zeros((batch, 2, max_len, 8), np.float32),
            "cache_lengths": np.full(batch, length, np.int64)}


@pytest.fixture
def executable():
    g = ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=8)
    return ag.compile(g, "numpy")


def test_repeated_signature_is_checked_once(executable, monkeypatch):
    import attngraph.lowering.signatures as sig

    calls = []
    real = sig.check_inputs
    monkeypatch.setattr(sig, "check_inputs", lambda g, given: calls.append(1) or real(g, given))
    feed = _feed()
    first = executable(feed)["y"].copy()
    for _ in range(3):
        feed["past_key"][...] = 0
        feed["past_value"][...] = 0
        again = executable(feed)["y"]
    assert len(calls) == 1
    np.testing.assert_array_equal(again, first)  # same inputs, same numbers on the fast path


@pytest.mark.parametrize("change", ["shape", "dtype", "missing", "extra", "not_an_array"])
def test_changed_signature_is_checked_again(executable, change):
    executable(_feed())  # the good signature is now remembered
    feed = _feed()
    if change == "shape":
        feed["k"] = feed["k"][:, :1]  # 1 kv head where the graph takes 2
    elif change == "dtype":
        feed["q"] = feed["q"].astype(np.float64)
    elif change == "missing":
        del feed["v"]
    elif change == "extra":
        feed["mask"] = np.ones(3)
    else:
        feed["q"] = feed["q"].tolist()
    with pytest.raises(InputError):
        executable(feed)


def test_values_are_still_checked_every_call(executable):
    feed = _feed(length=3)
    executable(feed)
    feed["cache_lengths"][...] = 8  # same signature, but the cache is full: an overflow
    with pytest.raises(InputError, match="cache overflow"):
        executable(feed)


def test_bound_dims_follow_the_signature(executable):
    """Two signatures (a prefill of 3 tokens, a step of 1) alternate; each gets its own dims, and more
    signatures than are kept only cost the full check."""
    for _ in range(2):
        assert executable(_feed(q_len=3, length=0))["y"].shape == (2, 4, 3, 8)
        assert executable(_feed(q_len=1, length=3))["y"].shape == (2, 4, 1, 8)
    for batch in range(1, SIGNATURES_KEPT + 3):
        assert executable(_feed(batch=batch))["y"].shape == (batch, 4, 1, 8)
    assert len(executable.checked._bound) <= SIGNATURES_KEPT
