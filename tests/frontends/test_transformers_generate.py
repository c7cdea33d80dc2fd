"""attngraph as a transformers attention implementation: whole models' ``generate()`` on every backend against
``eager`` (greedy tokens equal, each step's logits within the float32 budget), with ``DynamicCache`` and
``StaticCache``, a batch of 2 with left padding; negative controls that show the comparison catches a missing
window, softcap, sinks or padding; output_attentions, right padding, no copy of a static cache, and the layers
refused at ``use()`` by name.

BERT is ``BertLMHeadModel`` with ``is_decoder=True`` for ``generate()`` (causal self-attention with a cache), and
``BertModel``'s encoder forward (bidirectional, right padding) against eager in ``test_right_padding_forward``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_cases as hc
import hf_generate_cases as gc

import attngraph.transformers as agt
from attngraph.conformance.budgets import BUDGETS, compare
from attngraph.errors import ConfigError, UnsupportedConfig
from attngraph.frontends.transformers import hf_attention, hf_layers



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: torch's thread pool costs more than it saves (on 2 shared cores, ~10x per generate())."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_same_generation(got, ref, what: str) -> None:
    verdict = compare(gc.logits(got), gc.logits(ref), BUDGETS["float32"], "logits")
    assert verdict.ok, f"{what}: {verdict.detail}"
    assert torch.equal(got.sequences, ref.sequences), f"{what}: greedy tokens differ from eager"
    assert got.sequences.shape[1] == gc.PROMPT + gc.NEW_TOKENS


@pytest.mark.parametrize("cache", gc.CACHES)
@pytest.mark.parametrize("name", gc.GENERATE_FAMILIES)
def test_generate_matches_eager(name, backend, cache):
    got = gc.generate(gc.on_attngraph(name, backend.name), cache)
    _assert_same_generation(got, gc.reference(name, cache), f"{name} {backend.name} {cache}")


def _patched(monkeypatch, model, change):
    """Every layer plan of ``model`` replaced by ``change(plan)``, and the call checks off: a deliberately wrong
    attention must then show in the comparison."""
    for module in model.modules():
        if module in hf_layers._PLANS:
            monkeypatch.setitem(hf_layers._PLANS, module, change(hf_layers._PLANS[module]))
    monkeypatch.setattr(hf_attention, "_check_call", lambda *a: None)
    monkeypatch.setattr(hf_attention, "_check_pattern", lambda *a: None)


CONTROLS = {
    "mistral-window": ("mistral", lambda p: dataclasses.replace(p, config=p.config.with_(window=None))),
    "gemma2-softcap": ("gemma2", lambda p: dataclasses.replace(p, config=p.config.with_(softcap=None))),
    "gpt_oss-sinks": ("gpt_oss", lambda p: dataclasses.replace(p, sinks=torch.full_like(p.sinks, -torch.inf))),
}


@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_negative_controls_fail_the_comparison(control, monkeypatch):
    """Dropping the sliding window, the softcap or the sinks on attngraph's side moves the logits past the
    budget: the comparison above would catch a layer kind built without them."""
    name, change = CONTROLS[control]
    model = gc.on_attngraph(name, "numpy")
    _patched(monkeypatch, model, change)
    got = gc.generate(model, "dynamic")
    assert not compare(gc.logits(got), gc.logits(gc.reference(name, "dynamic")), BUDGETS["float32"]).ok


def test_negative_control_padding_ignored(monkeypatch):
    """Attending to the left padding (the compact mask's padding dropped) changes the padded row's logits."""
    model = gc.on_attngraph("llama", "numpy")
    real = hf_attention.mask_info
    monkeypatch.setattr(hf_attention, "mask_info", lambda *a: dataclasses.replace(real(*a), padding=None))
    got, ref = gc.logits(gc.generate(model, "dynamic")), gc.logits(gc.reference("llama", "dynamic"))
    assert compare(got[:, 0], ref[:, 0], BUDGETS["float32"]).ok  # the unpadded row is unchanged
    assert not compare(got[:, 1], ref[:, 1], BUDGETS["float32"]).ok


# ---- what use() refuses, by name, before anything runs ---------------------------------------------------

def _falcon_alibi():
    return hc.build(hc.FAMILIES["falcon_alibi"])


def _unknown_attention_class():
    """A Llama whose second layer's attention is a class no family adapter knows."""
    model = gc.fresh("llama")
    original = model.model.layers[1].self_attn
    kind = type("MyCustomAttention", (type(original),), {})
    original.__class__ = kind
    return model


REFUSED = {
    "alibi": (_falcon_alibi, r"transformer\.h\.0\.self_attention.*ALiBi"),
    "unknown-class": (_unknown_attention_class, r"model\.layers\.1\.self_attn.*MyCustomAttention"),
    "own-forward": (lambda: hc.build(hc.FAMILIES["bloom"]), r"BloomForCausalLM.*AttentionInterface"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_use_refuses_by_name(case):
    """Refused at use() with the layer (or model), the feature and the fix; the model keeps its implementation."""
    build, pattern = REFUSED[case]
    model = build()
    before = model.config._attn_implementation
    with pytest.raises(UnsupportedConfig, match=pattern):
        agt.use(model, "numpy")
    assert model.config._attn_implementation == before


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="'auto' or one of numpy, numba, torch, onnx"):
        agt.use(gc.fresh("llama"), "tensorrt")


def test_masks_it_cannot_express_are_refused_at_the_call():
    """Packed sequences (position ids restarting, no mask, no cache) and a dense 4-D mask: refused, not run."""
    model = gc.on_attngraph("llama", "numpy")
    ids = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode(), pytest.raises(UnsupportedConfig, match="Packed sequences"):
        model(ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]), use_cache=False)
    dense = torch.zeros((1, 1, 6, 6))
    with torch.inference_mode(), pytest.raises(UnsupportedConfig, match="dense mask"):
        model(ids, attention_mask=dense, use_cache=False)


def test_summary_says_what_runs_where():
    run = agt.use(gc.pair("gemma2")[1], "numpy")
    text = str(run)
    assert "attn_implementation='attngraph-numpy'" in text and "2 kind(s)" in text
    assert "softcap 3" in text and "numpy" in text.splitlines()[-1]
    assert [paths for _, paths in run.kinds()] == [["model.layers.0.self_attn"], ["model.layers.1.self_attn"]]


# ---- output_attentions, right padding, the static cache's buffer ----------------------------------------

def _forward(model, ids, pad, **kwargs):
    with torch.inference_mode():
        return model(ids, attention_mask=pad, **kwargs)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_oss"])
def test_output_attentions(name, backend):
    """The attention weights of every layer, prefill and a decode step against a static cache, equal eager's on
    the real query rows (a left-padded row's pad queries see no key: eager spreads them evenly, attngraph gives 0).
    GPT-2 takes output_attentions itself, so attngraph reads transformers' output recorder."""
    eager, twin = gc.pair(name)
    agt.use(twin, backend.name)
    ids, pad = gc.prompt()
    step = torch.tensor([[5], [7]])
    pad1 = torch.cat([pad, torch.ones((2, 1), dtype=pad.dtype)], 1)
    outs = {}
    for which, model in (("eager", eager), ("ours", twin)):
        cache = transformers.StaticCache(config=model.config, max_cache_len=16)
        first = _forward(model, ids, pad, cache=cache, use_cache=True, output_attentions=True)
        second = _forward(model, step, pad1, cache=cache, use_cache=True, output_attentions=True)
        outs[which] = (first.attentions, second.attentions)
    real = pad.bool().numpy()
    for phase, rows in ((0, real), (1, np.ones((2, 1), bool))):
        for layer, (got, ref) in enumerate(zip(outs["ours"][phase], outs["eager"][phase], strict=True)):
            got, ref = got.numpy().transpose(0, 2, 1, 3)[rows], ref.numpy().transpose(0, 2, 1, 3)[rows]
            verdict = compare(got, ref, BUDGETS["float32"], f"{name} layer {layer} phase {phase} weights")
            assert verdict.ok, verdict.detail


@pytest.mark.parametrize("name", ["bert_encoder", "llama"])
def test_right_padding_forward(name, backend):
    """A right-padded batch through one forward: BERT's encoder (bidirectional: every position) and a Llama
    prefill (causal: every position, pad positions included: they see the real keys before them)."""
    if name == "bert_encoder":
        eager = hc.build(hc.FAMILIES["bert"])
        twin = hc.build(hc.FAMILIES["bert"], base=eager)
    else:
        eager, twin = gc.pair(name)
    agt.use(twin, backend.name)
    ids, _ = gc.prompt()
    pad = torch.tensor([[1] * gc.PROMPT, [1] * (gc.PROMPT - 3) + [0] * 3])
    key = "last_hidden_state" if name == "bert_encoder" else "logits"
    got, ref = (_forward(m, ids, pad)[key].double().numpy() for m in (twin, eager))
    verdict = compare(got, ref, BUDGETS["float32"], f"{name} right padding")
    assert verdict.ok, verdict.detail


class _Spy:
    """Records what the attention function hands the backend, then runs it."""

    def __init__(self, ex, seen):
        self.ex, self.seen, self.backend = ex, seen, ex.backend

    def __call__(self, feed):
        self.seen.append(feed)
        return self.ex(feed)

    def run(self, feed, dims):
        self.seen.append(feed)
        return self.ex.run(feed, dims)


def test_static_cache_reaches_the_backend_without_a_copy(backend, monkeypatch):
    """Each decode step hands the backend transformers' own static buffers (batch, kv heads, max_len, head dim),
    the same memory, not a copy, and only key_lengths of it hold tokens."""
    model = gc.on_attngraph("llama", backend.name)
    seen = []
    real = hf_attention.executable
    monkeypatch.setattr(hf_attention, "executable", lambda *a: _Spy(real(*a), seen))
    ids, pad = gc.prompt()
    cache = transformers.StaticCache(config=model.config, max_cache_len=32)
    _forward(model, ids, pad, cache=cache, use_cache=True)
    del seen[:]
    pad1 = torch.cat([pad, torch.ones((2, 1), dtype=pad.dtype)], 1)
    _forward(model, torch.tensor([[5], [7]]), pad1, cache=cache, use_cache=True)
    assert len(seen) == len(cache.layers) == 2
    for feed, layer in zip(seen, cache.layers, strict=True):
        for name, buffer in (("k", layer.keys), ("v", layer.values)):
            given = feed[name]
            pointer = given.data_ptr() if isinstance(given, torch.Tensor) else given.ctypes.data
            assert tuple(given.shape) == (2, hc.KV, 32, 16) and pointer == buffer.data_ptr(), name
        assert list(feed["key_lengths"]) == [gc.PROMPT + 1] * 2


# ---- attngraph generate ------------------------------------------------------------------------------------

def test_cli_generate_on_a_saved_checkpoint(tmp_path, capsys):
    """A save_pretrained folder, loaded offline: a row per implementation with tokens/s and the ratio to sdpa,
    and attngraph's greedy tokens checked against eager's."""
    from attngraph.cli.main import main

    gc.pair("llama")[0].save_pretrained(tmp_path / "ckpt")
    argv = ["generate", str(tmp_path / "ckpt"), "--backend", "numpy", "--prompt-len", "6", "--new-tokens", "4",
            "--batch", "2", "--cache", "static"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert {"attngraph-numpy", "sdpa", "eager"} <= set(rows)
    assert rows["sdpa"][-2:] == ["1.00x", "1.00x"] and rows["attngraph-numpy"][-1].endswith("x")
    assert "greedy tokens: attngraph-numpy matches eager (8 of 8)" in out
    assert "attngraph-numpy: token 4/4" in err  # progress on stderr


@pytest.mark.parametrize("argv", [["{tmp}/missing"], ["{tmp}", "--backend", "tensorrt"],
                                  ["{tmp}", "--new-tokens", "1"]])
def test_cli_generate_usage_errors_exit_2_with_one_line(argv, tmp_path, capsys):
    from attngraph.cli.main import main

    assert main(["generate", *[a.format(tmp=tmp_path) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attngraph generate: error:"), err


def test_cli_generate_help_shows_defaults_and_choices(capsys):
    from attngraph.cli.main import main

    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "{auto,numpy,numba,torch,onnx}" in text and "(default: 128)" in text and "(default: 64)" in text
    assert "CHECKPOINT_DIR" in text and "never downloads" in text
