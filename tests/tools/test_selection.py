"""Backend selection on faked machines, capability checks, the autotune cache, and safe fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attngraph as ag
from attngraph.selection import (
    Capabilities,
    CudaDevice,
    Hardware,
    autotune,
    capabilities_of,
    graph_features,
    select_backend,
)
from attngraph.selection.capabilities import ALL
from attngraph.testing.random_inputs import random_inputs

ALL_BACKENDS = ("numba", "numpy", "onnx", "torch")
CPU = Hardware("test cpu", 8, ("avx2",), 64.0, (), ("CPUExecutionProvider",), ALL_BACKENDS)
GPU = Hardware("test cpu", 8, ("avx2",), 64.0, (CudaDevice("H100", (9, 0), 80.0),),
               ("CUDAExecutionProvider", "CPUExecutionProvider"), ALL_BACKENDS)


def test_a_cuda_gpu_puts_torch_first():
    s = select_backend(ag.causal_self_attention(512, 8), sizes={"batch": 8, "q_len": 2048}, hardware=GPU)
    assert s.choice == "torch" and s.rule == "cuda" and s.order[:2] == ["torch", "onnx"]
    assert "CUDA" in s.explain()


def test_cpu_rules_follow_the_problem():
    causal = select_backend(ag.causal_self_attention(512, 8), sizes={"batch": 8, "q_len": 2048}, hardware=CPU)
    full = select_backend(ag.self_attention(512, 8), sizes={"batch": 8, "q_len": 512}, hardware=CPU)
    assert causal.rule == "cpu" and causal.choice == "torch"
    assert full.rule == "cpu-full" and full.choice == "onnx"
    short = select_backend(ag.causal_self_attention(512, 8), sizes={"batch": 1, "q_len": 128}, hardware=CPU)
    assert short.rule == "cpu" and short.choice == "torch"  # causal T128: torch measured 10-40% ahead
    long_full = select_backend(ag.self_attention(512, 8), sizes={"batch": 1, "q_len": 4096}, hardware=CPU)
    assert long_full.rule == "cpu" and long_full.order[:2] == ["torch", "numba"]


def test_decode_steps_go_to_the_decode_kernel():
    """q_len 1 against a long static cache: the cpu-decode row (bench/reports/cpu-decode.md) puts numba first."""
    g = ag.causal_self_attention(4096, 32, num_kv_heads=8, kv_cache="static", max_len=4096)
    s = select_backend(g, sizes={"batch": 1, "q_len": 1}, hardware=CPU)
    assert s.rule == "cpu-decode" and s.order == ["numba", "onnx", "torch", "numpy"]
    assert "decode" in s.explain()
    prefill = select_backend(g, sizes={"batch": 1, "q_len": 512}, hardware=CPU)
    assert prefill.rule == "cpu"
    assert select_backend(g, sizes={"batch": 1, "q_len": 1}, hardware=GPU).rule == "cuda"


def test_missing_packages_are_passed_over_with_the_reason():
    no_torch = Hardware(**{**CPU.__dict__, "backends": ("numba", "numpy", "onnx"),
                           "unavailable": {"torch": "needs torch: pip install 'attngraph[torch]'"}})
    s = select_backend(ag.causal_self_attention(64, 4), hardware=no_torch)
    assert "torch" not in s.order and ("torch", "needs torch: pip install 'attngraph[torch]'") in s.rejected
    no_ort = Hardware(**{**CPU.__dict__, "backends": ("numba", "numpy")})
    assert select_backend(ag.self_attention(64, 4), sizes={"q_len": 128}, hardware=no_ort).choice == "numba"


def test_small_ram_passes_over_backends_that_hold_the_score_matrix():
    small = Hardware(**{**CPU.__dict__, "memory_gib": 2.0})
    s = select_backend(ag.self_attention(512, 8), sizes={"batch": 8, "q_len": 8192}, hardware=small)
    rejected = dict(s.rejected)
    assert "onnx" in rejected and "GiB of working memory" in rejected["onnx"]
    assert s.choice in ("torch", "numba") and "onnx" not in s.order


def test_a_backend_that_cannot_express_a_feature_is_never_chosen():
    caps = {n: capabilities_of(type(ag.get_backend(n))) for n in ALL_BACKENDS}
    caps["torch"] = Capabilities(ALL - {"softcap"}, ("cpu", "cuda"))
    g = ag.causal_self_attention(64, 4, softcap=30.0)
    s = select_backend(g, hardware=GPU, capabilities=caps)
    assert "torch" not in s.order and s.choice == "onnx"
    assert dict(s.rejected)["torch"] == "cannot express softcap exactly"
    assert select_backend(ag.causal_self_attention(64, 4), hardware=GPU, capabilities=caps).choice == "torch"


def test_graph_features_are_read_from_the_graph():
    f = graph_features(ag.causal_self_attention(64, 4, num_kv_heads=2, kv_cache=True, softcap=5.0, window=(8, 0),
                                                key_padding=True, return_weights=True, dtype="bfloat16"))
    assert {"dtype:bfloat16", "causal", "gqa", "kv_cache", "softcap", "window", "mask:lengths",
            "weights_output"} <= f
    assert graph_features(ag.self_attention(64, 4)) == {"dtype:float32"}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGRAPH_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_autotune_measures_once_then_reads_the_cache(cache_dir, monkeypatch):
    g = ag.causal_self_attention(32, 4)
    w = ag.Weights.random(g, seed=0)
    calls = []
    real = autotune.time_backends

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(autotune, "time_backends", counting)
    sizes = {"batch": 2, "q_len": 16}
    ex = ag.compile(g, "auto", weights=w, autotune=True, sizes=sizes)
    assert calls == [1] and ex.selection.tuned and ex.backend == f"auto:{ex.selection.choice}"
    assert ex.selection.choice == min(ex.selection.tuned, key=ex.selection.tuned.get)
    data = json.loads((cache_dir / "autotune.json").read_text())
    assert data["version"] == 1 and len(data["entries"]) == 1
    ag.compile(g, "auto", weights=w, autotune=True, sizes={"batch": 2, "q_len": 15})  # same bucket
    assert calls == [1]
    x = random_inputs(g, sizes)
    np.testing.assert_allclose(ex(x)["y"], ag.compile(g, "numpy", weights=w)(x)["y"], atol=1e-5)
    assert autotune.clear_cache() and not (cache_dir / "autotune.json").exists()


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(cache_dir):
    (cache_dir / "autotune.json").write_text("{not json")
    g = ag.self_attention(16, 2)
    with pytest.warns(UserWarning, match="unreadable autotune cache"):
        ag.compile(g, "auto", weights=ag.Weights.random(g, seed=0), autotune=True, sizes={"batch": 1, "q_len": 4})
    assert json.loads((cache_dir / "autotune.json").read_text())["version"] == 1


class _BrokenCompile(ag.get_backend("numpy").__class__):
    name = "broken-compile"

    def compile(self, graph, weights=None, **options):
        raise RuntimeError("no kernel for this CPU")


class _BrokenFirstCall(ag.get_backend("numpy").__class__):
    name = "broken-call"

    def compile(self, graph, weights=None, **options):
        ex = super().compile(graph, weights, **options)

        def run(given, bound):
            raise RuntimeError("device lost")
        ex.run = run
        return ex


@pytest.fixture
def broken_backends():
    from attngraph.lowering.registry import unregister_backend

    for cls in (_BrokenCompile, _BrokenFirstCall):
        ag.register_backend(cls.name, cls)
    yield
    for cls in (_BrokenCompile, _BrokenFirstCall):
        unregister_backend(cls.name)


def test_fallback_when_the_chosen_backend_fails(monkeypatch, broken_backends):
    import attngraph.selection as selection

    real = selection.select_backend

    def rigged(graph, **kw):
        s = real(graph, **kw)
        s.ranked = [selection.rules.Candidate(n, "rigged", 0) for n in ("broken-compile", "broken-call", "numpy")]
        return s

    monkeypatch.setattr(selection, "select_backend", rigged)
    g = ag.self_attention(16, 2)
    w = ag.Weights.random(g, seed=0)
    with pytest.warns(UserWarning, match="'broken-compile' failed to compile"):
        ex = ag.compile(g, "auto", weights=w)
    x = random_inputs(g, {"batch": 1, "q_len": 3})
    with pytest.warns(UserWarning, match="'broken-call' failed its first call"):
        y = ex(x)["y"]
    assert ex.backend == "auto:numpy"
    np.testing.assert_allclose(y, ag.compile(g, "numpy", weights=w)(x)["y"])
    with pytest.raises(ag.InputError):  # bad input is the user's error, not a reason to fall back
        ex(x=np.zeros((1, 3, 5), np.float32))


# ---- the autotune cache is advisory: bad files, bad entries and unwritable folders never stop a compile

def _fake_timer(monkeypatch):
    """Replace the subprocess measurement by a fixed one (numpy fastest) and count the calls."""
    calls = []

    def fake(graph, weights, sizes, names, **kwargs):
        calls.append(dict(sizes))
        return {n: (0.5 if n == "numpy" else 1.0 + i) for i, n in enumerate(names)}

    monkeypatch.setattr(autotune, "time_backends", fake)
    return calls


def _autotuned(g):
    return ag.compile(g, "auto", weights=ag.Weights.random(g, seed=0), autotune=True, sizes={"batch": 2, "q_len": 8})


def _cache_warnings(record):
    return [str(w.message) for w in record if "autotune" in str(w.message)]


@pytest.mark.parametrize("bad_entry", [
    [1, 2],                                             # an entry that is a list
    {"times_ms": [["numpy", 1.0]]},                     # times not a dict
    {"times_ms": {"numpy": "fast", "onnx": 1.0}},       # a time that is not a number
    {"times_ms": {"numpy": None}},
    {"times_ms": {}},                                   # nothing measured
    "garbage",
])
def test_a_malformed_cache_entry_is_ignored_with_one_warning_and_replaced(cache_dir, monkeypatch, bad_entry):
    import warnings

    calls = _fake_timer(monkeypatch)
    g = ag.causal_self_attention(16, 2)
    _autotuned(g)
    path = cache_dir / "autotune.json"
    data = json.loads(path.read_text())
    (key,) = data["entries"]
    data["entries"][key] = bad_entry
    data["entries"]["another|bad|key"] = bad_entry
    path.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ex = _autotuned(g)
    assert len(_cache_warnings(record)) == 1, _cache_warnings(record)
    assert "malformed entr" in _cache_warnings(record)[0] and str(path) in _cache_warnings(record)[0]
    assert len(calls) == 2 and ex.backend == "auto:numpy"
    entries = json.loads(path.read_text())["entries"]
    assert set(entries) == {key} and entries[key]["times_ms"]["numpy"] == 0.5  # measured again and replaced


@pytest.mark.parametrize("bad_file", ['{"version": 1, "entries": []}', '{"version": 1, "entries": "x"}', "[]",
                                      '{"version": 1}', "\x00\x01"])
def test_a_malformed_cache_file_is_ignored_with_one_warning(cache_dir, monkeypatch, bad_file):
    import warnings

    calls = _fake_timer(monkeypatch)
    (cache_dir / "autotune.json").write_text(bad_file)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ex = _autotuned(ag.self_attention(16, 2))
    assert len(_cache_warnings(record)) == 1 and "unreadable autotune cache" in _cache_warnings(record)[0]
    assert len(calls) == 1 and ex.backend == "auto:numpy"
    assert len(json.loads((cache_dir / "autotune.json").read_text())["entries"]) == 1


def _unwritable_folder(tmp_path):
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes anyway
        folder.chmod(0o700)
        pytest.skip("running as root: a read-only folder is still writable")
    return folder


@pytest.mark.parametrize("arrange", ["unwritable folder", "folder where the file goes", "file where the folder goes"])
def test_an_unusable_cache_location_skips_saving_with_one_warning(tmp_path, monkeypatch, arrange):
    import warnings

    if arrange == "unwritable folder":
        folder = _unwritable_folder(tmp_path)
    elif arrange == "folder where the file goes":
        folder = tmp_path / "cache"
        (folder / "autotune.json").mkdir(parents=True)
    else:
        (tmp_path / "blocker").write_text("a file, not a folder")
        folder = tmp_path / "blocker" / "cache"
    monkeypatch.setenv("ATTNGRAPH_CACHE_DIR", str(folder))
    calls = _fake_timer(monkeypatch)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ex = _autotuned(ag.self_attention(16, 2))
    finally:
        folder.chmod(0o700) if arrange == "unwritable folder" else None
    found = _cache_warnings(record)
    assert len(found) == 1 and "cannot save the measurement" in found[0] and "ATTNGRAPH_CACHE_DIR" in found[0], found
    assert len(calls) == 1 and ex.backend == "auto:numpy"  # the measured order is still used
    assert ex.selection.tuned == {n: (0.5 if n == "numpy" else 1.0 + i) for i, n in enumerate(ex.selection.order)}


def test_sizes_are_normalised_to_the_symbols_the_graph_uses():
    g = ag.causal_self_attention(16, 2)
    assert autotune.normalize_sizes(g, {"batch": 2, "q_len": 128}) == {"batch": 2, "q_len": 128}
    assert autotune.normalize_sizes(g, {"batch": 2, "q_len": 128, "kv_len": 128, "past_len": 0}) == \
        {"batch": 2, "q_len": 128}
    cached = ag.causal_self_attention(16, 2, kv_cache=True)
    assert autotune.normalize_sizes(cached, {"batch": 2, "q_len": 1}) == {"batch": 2, "past_len": 0, "q_len": 1}
    cross = ag.cross_attention(16, 2)
    assert autotune.normalize_sizes(cross, {"q_len": 4}) == {"batch": 1, "kv_len": 4, "q_len": 4}
    with pytest.raises(ag.ConfigError, match="autotune size q_len='128' must be an int >= 0"):
        autotune.normalize_sizes(g, {"q_len": "128"})


def test_the_tune_command_and_compile_share_one_cache_entry(cache_dir, monkeypatch, capsys):
    from attngraph.cli import main

    calls = _fake_timer(monkeypatch)
    assert main(["tune", "--causal", "--d-model", "32", "--heads", "4", "--batch", "2", "--q-len", "128"]) == 0
    assert len(calls) == 1 and "autotune: numpy 0.50 ms" in capsys.readouterr().out
    g = ag.causal_self_attention(32, 4)
    ex = ag.compile(g, "auto", weights=ag.Weights.random(g, seed=0), autotune=True,
                    sizes={"batch": 2, "q_len": 128})  # the README's form
    assert len(calls) == 1, "compile(autotune=True) measured again instead of reading the tune command's entry"
    assert ex.backend == "auto:numpy" and ex.selection.tuned["numpy"] == 0.5
