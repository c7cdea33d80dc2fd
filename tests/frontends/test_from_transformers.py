"""``from_transformers``: every family's attention layer, imported, matches the module itself (called by its own
model: masks, positions, cache) on every backend, after O1, exported to ONNX, and against sdpa; dropping one
feature on our side makes it fail; quirks are handled by name; the listing and the CLI work from a checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_cases as hc
from hf_checks import TOL, check, recorded, rel

import attngraph as ag
from attngraph.errors import ConfigError, UnsupportedConfig

CASES = [(f.name, p) for f in hc.FAMILIES.values() for p in f.layers]


@pytest.mark.parametrize("case", CASES, ids=[f"{n}-{p.replace('.', '_')}" for n, p in CASES])
def test_layer_matches_module_on_every_backend(case, backend):
    name, path = case
    _, imports, steps = recorded(name)
    imported = imports[path]
    for pipeline in ("O0", "O1"):
        graph = imported.graph if pipeline == "O0" else ag.run_pipeline(imported.graph, "O1")
        run = ag.compile(graph, backend, weights=imported.weights)
        check(imported, run, steps[path], hc.FAMILIES[name], f"{name} {path} {backend.name} {pipeline}")


SDPA = [f.name for f in hc.FAMILIES.values() if f.sdpa]


@pytest.mark.parametrize("name", SDPA)
def test_layer_matches_the_sdpa_implementation(name):
    """The same layer under attn_implementation='sdpa' (a deep-copied config: _from_config mutates it)."""
    model, imports, steps = recorded(name, "sdpa")
    assert model.config._attn_implementation == "sdpa"
    for path, imported in imports.items():
        check(imported, ag.compile(imported, "numpy"), steps[path], hc.FAMILIES[name], f"{name} sdpa {path}")


@pytest.mark.parametrize("name", [f.name for f in hc.FAMILIES.values()])
def test_exported_onnx_file_matches_module(name, tmp_path):
    """export_onnx, then the file under onnxruntime: prefill and decode through the same dynamic-axis model."""
    pytest.importorskip("onnxruntime")
    _, imports, steps = recorded(name)
    path = hc.FAMILIES[name].layers[0]
    imported = imports[path]
    file = ag.export_onnx(imported.graph, tmp_path / f"{name}.onnx", weights=imported.weights)
    check(imported, ag.compile(file, "onnx"), steps[path], hc.FAMILIES[name], f"{name} onnx file")


_OFF = {"rotary": {"rotary": None, "rotary_dim": None, "position_ids": False, "rope_cache": False,
                   "rope_scaling": None},
        "window": {"window": None}, "qk_norm": {"qk_norm": None}, "softcap": {"softcap": None},
        "sinks": {"sinks": False}}


@pytest.mark.parametrize("name", [f.name for f in hc.FAMILIES.values() if f.feature])
def test_dropping_the_feature_breaks_the_match(name):
    """Negative control: the family's distinctive knob turned off on our side gives an error far above TOL."""
    family = hc.FAMILIES[name]
    _, imports, steps = recorded(name)
    imported = imports[family.layers[0]]
    graph = ag.build_attention(imported.config.with_(**_OFF[family.feature]))
    params = {p.name for p in graph.params}
    run = ag.compile(graph, "numpy", weights={k: v for k, v in imported.weights.items() if k in params})
    inputs = {v.name for v in graph.inputs}
    step = steps[family.layers[0]][0]
    out = imported.outputs(run({k: v for k, v in step.feed.items() if k in inputs}))
    assert rel(out.output, step.output) > 100 * TOL, f"{name} without {family.feature} still matches"


def test_falcon_alibi_follows_the_implementation():
    """Falcon's ALiBi depends on the transformers release: before 5.25 its eager path added it twice (slopes
    doubled) and sdpa once; from 5.25 on both add it once, through the mask. Each import matches its own module."""
    eager = recorded("falcon_alibi")
    sdpa = recorded("falcon_alibi", "sdpa")
    path = hc.FAMILIES["falcon_alibi"].layers[0]
    (_, ei, es), (_, si, ss) = eager, sdpa
    module = ei[path].spec
    twice = any("twice" in n for n in ei[path].notes)
    factor = 2 if twice else 1
    assert np.allclose(np.array(ei[path].config.alibi_slopes), factor * np.array(si[path].config.alibi_slopes))
    assert module.alibi == "before_scale" and module.alibi_counts_tokens
    family = hc.FAMILIES["falcon_alibi"]
    for impl, imported, steps in (("eager", ei[path], es[path]), ("sdpa", si[path], ss[path])):
        check(imported, ag.compile(imported, "numpy"), steps, family, f"falcon_alibi {impl}")
    if twice:  # the two imports differ, and each matches its own module only
        wrong = ag.compile(si[path], "numpy")(es[path][0].feed)["y"]
        assert rel(wrong, es[path][0].output) > 100 * TOL


def test_fully_masked_rows_give_zero_while_eager_gives_the_mean_of_v():
    """Left padding: the pad queries see no key. Real rows match; ours are exactly 0 (Llama has no o bias)."""
    family = dataclasses.replace(hc.FAMILIES["llama"], left_pad=True)
    _, imports, steps = recorded("llama", family=family)
    path = family.layers[0]
    step = steps[path][0]
    out = imports[path].outputs(ag.compile(imports[path], "numpy")(step.feed)).output
    assert rel(out, step.output, step.rows) < TOL
    assert np.all(out[~step.rows] == 0) and np.abs(step.output[~step.rows]).max() > 1e-3


def test_s3_3_bloom_outputs_require_the_residual():
    """Defect s3-3: BloomAttention returns dense(ctx) + residual, and outputs() without residual= returned
    dense(ctx) alone (relative error 0.84 against the module, no warning). Now it is required, and checked."""
    _, imports, steps = recorded("bloom")
    path = hc.FAMILIES["bloom"].layers[0]
    imported, step = imports[path], steps[path][0]
    result = ag.compile(imported, "numpy")(step.feed)
    with pytest.raises(ConfigError, match=r"BloomAttention returns dense\(attention\) \+ residual: pass the module's "
                                          r"residual argument \(its second\) as outputs\(result, residual=\.\.\.\)"):
        imported.outputs(result)
    assert rel(imported.outputs(result, residual=step.residual).output, step.output, step.rows) < TOL
    assert rel(result["y"], step.output, step.rows) > 0.1  # the graph's own output: the attention alone
    with pytest.raises(ConfigError, match=r"residual= must have the output's shape \(2, 6, 64\)"):
        imported.outputs(result, residual=step.residual[0])
    llama = recorded("llama")[1]["model.layers.1.self_attn"]
    with pytest.raises(ConfigError, match="LlamaAttention does not add a residual to its output; drop residual="):
        llama.outputs(ag.compile(llama, "numpy")(recorded("llama")[2]["model.layers.1.self_attn"][0].feed),
                      residual=step.residual)


def test_decode_from_bare_cache_tensors_needs_positions_on_a_sliding_layer():
    """(keys, values) instead of the Cache: the sliding cache keeps W-1 tokens, so positions must be given."""
    _model, imports, steps = recorded("mistral")
    imported = imports[hc.FAMILIES["mistral"].layers[0]]
    decode = steps[hc.FAMILIES["mistral"].layers[0]][1]
    past = (decode.feed["past_key"], decode.feed["past_value"])
    x = np.random.default_rng(0).standard_normal((hc.B, 1, hc.D)).astype(np.float32)
    mask = np.ones((hc.B, hc.S + 1), np.int64)
    with pytest.raises(ConfigError, match="position_ids"):
        imported.inputs(x, mask, past_key_values=past)
    feed = imported.inputs(x, mask, past_key_values=past, position_ids=np.full((hc.B, 1), hc.S))
    assert feed["past_key"].shape[2] == hc.W - 1 and (feed["position_ids"] == hc.S).all()


@pytest.mark.parametrize("name", ["gemma2", "gpt_oss", "t5"])
def test_attention_weights_match_the_modules(name):
    """output_attentions=True: the weights the eager module returns (sliding, softcap, sinks, T5 bias, decode)."""
    model, _, _ = recorded(name)
    family = hc.FAMILIES[name]
    imports = hc.import_layers(model, family, output_attentions=True)
    steps = hc.record(model, family, imports)
    for path, imported in imports.items():
        run = ag.compile(imported, "numpy")
        for step in steps[path]:
            weights = imported.outputs(run(step.feed)).attn_weights
            assert weights.shape == step.weights.shape and rel(weights, step.weights) < TOL, path


def test_padding_as_key_lengths_takes_right_padding_only():
    """padding='lengths': the right-padded prefill matches; a decode mask with a hole is refused by name."""
    model, _, steps = recorded("llama")
    path = hc.FAMILIES["llama"].layers[0]
    imported = ag.from_transformers(model.get_submodule(path), padding="lengths")
    assert "key_lengths" in {v.name for v in imported.graph.inputs}
    prefill, decode = steps[path]
    feed = imported.inputs(prefill.feed["x"], prefill.feed["attn_mask"].reshape(hc.B, hc.S))
    assert (feed["key_lengths"] == [hc.S, hc.S - 2]).all()
    assert rel(imported.outputs(ag.compile(imported, "numpy")(feed)).output, prefill.output) < TOL
    x = np.zeros((hc.B, 1, hc.D), np.float32)
    with pytest.raises(ConfigError, match="right-padded"):
        imported.inputs(x, np.array([[1] * 7, [1] * 4 + [0, 0, 1]]), past_key_values=(decode.feed["past_key"],
                                                                                     decode.feed["past_value"]))


ROPE_VARIANTS = {
    "llama3": ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}, False),
    "yarn": ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}, False),
    "linear": ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 1234.0}, False),
    "dynamic": ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 4}, True),
}


@pytest.mark.parametrize("variant", ROPE_VARIANTS)
def test_rope_scaling_in_graph_or_by_cos_sin_cache(variant):
    """linear/llama3/yarn computed in the graph; dynamic NTK through the model's rotary module's cos/sin."""
    knobs, cached = ROPE_VARIANTS[variant]
    family = dataclasses.replace(hc.FAMILIES["llama"], name=f"llama_{variant}",
                                 config=lambda: transformers.LlamaConfig(**{**hc.LLAMA, **knobs}))
    model = hc.build(family)
    imports = hc.import_layers(model, family)
    steps = hc.record(model, family, imports)
    imported = imports[family.layers[0]]
    assert imported.spec.rope.cache is cached
    for backend in ("numpy", "onnx"):
        check(imported, ag.compile(imported, backend), steps[family.layers[0]], family, f"rope {variant} {backend}")


def test_phi3_longrope_uses_the_models_cos_sin():
    cfg = lambda: transformers.Phi3Config(**{**hc.LLAMA, "max_position_embeddings": 64}, pad_token_id=0,
                                          original_max_position_embeddings=4, partial_rotary_factor=0.5,
                                          rope_scaling={"type": "longrope", "short_factor": [1.0] * 4,
                                                        "long_factor": [3.0, 2.0, 1.5, 1.0]})
    family = dataclasses.replace(hc.FAMILIES["phi3"], name="phi3_longrope", config=cfg)
    model = hc.build(family)
    imports = hc.import_layers(model, family)
    imported = imports[family.layers[0]]
    assert imported.spec.rope.cache and "cos_cache" in {v.name for v in imported.graph.inputs}
    check(imported, ag.compile(imported, "numpy"), hc.record(model, family, imports)[family.layers[0]], family, "lr")


def test_refusals_name_the_problem():
    model = recorded("llama")[0]
    with pytest.raises(UnsupportedConfig, match="LlamaMLP"):
        ag.from_transformers(model.model.layers[0].mlp)
    with pytest.raises(ConfigError, match="unknown option"):
        ag.from_transformers(model.model.layers[0].self_attn, rotary=False)
    model.train()
    try:
        with pytest.raises(ConfigError, match="eval"):
            ag.from_transformers(model.model.layers[0].self_attn)
    finally:
        model.eval()
    imported = recorded("llama")[1]["model.layers.1.self_attn"]
    x = np.zeros((1, 2, hc.D), np.float32)
    with pytest.raises(ConfigError, match="2-D padding mask"):
        imported.inputs(x, np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ConfigError, match="position_ids"):
        imported.inputs(x, position_embeddings=None)
    with pytest.raises(UnsupportedConfig, match="packed"):
        imported.inputs(np.zeros((1, 4, hc.D), np.float32), position_ids=np.array([[0, 1, 0, 1]]))
    bloom = recorded("bloom")[1]["transformer.h.0.self_attention"]
    with pytest.raises(UnsupportedConfig, match="left"):  # right padding, then a decoded token: a hole
        bloom.inputs(np.zeros((1, 1, hc.D), np.float32), np.array([[1, 1, 0, 1]]),
                     past_key_values=(np.zeros((1, hc.H, 3, 16), np.float32),) * 2)
    t5 = recorded("t5")[0]
    with pytest.raises(ConfigError, match="relative_attention_bias"):
        ag.from_transformers(t5.encoder.block[1].layer[0].SelfAttention)


def test_gemma3_bidirectional_is_refused_by_name():
    cfg = transformers.Gemma3TextConfig(**hc.LLAMA, head_dim=16, use_bidirectional_attention=True)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedConfig, match="use_bidirectional_attention"):
        ag.from_transformers(model.model.layers[0].self_attn)


def test_model_listing_from_a_saved_checkpoint(tmp_path):
    model = recorded("gemma2")[0]
    model.save_pretrained(tmp_path / "ckpt")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", local_files_only=True).eval()
    layers = ag.from_transformers(loaded)
    text = str(layers)
    assert len(layers) == 2 and "model.layers.1.self_attn" in text and "softcap 3" in text, text
    assert [row["window"] for row in layers.rows()] == [str(hc.W), "-"]
    assert [rows for _, rows in layers.distinct()] == [[0], [1]]
    assert layers[1] is layers["model.layers.1.self_attn"] and layers[1].spec.layer_type == "full_attention"
    model.extra_attention = torch.nn.MultiheadAttention(hc.D, hc.H)  # an attention class no adapter reads
    try:
        listed = ag.from_transformers(model)
        assert len(listed) == 3 and listed.rows()[2]["kind"] == "unsupported" and "MultiheadAttention" in str(listed)
        with pytest.raises(ag.Unsupported, match="MultiheadAttention"):
            listed[2]
    finally:
        del model.extra_attention
    t5 = ag.from_transformers(recorded("t5")[0])
    assert len(t5) == 2 + 2 + 2 and "t5 rel_bias 32/128" in str(t5) and "cross" in str(t5)


def test_cli_exports_each_distinct_layer_of_a_checkpoint(tmp_path, capsys):
    """hf-export on a save_pretrained folder: one file per distinct layer, dynamic axes, same numbers."""
    from attngraph.cli.main import main

    model, imports, steps = recorded("gemma2")
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["hf-export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    files = sorted((tmp_path / "out").glob("*.onnx"))
    assert [f.name for f in files] == ["layer000-layers_0_self_attn.onnx", "layer001-layers_1_self_attn.onnx"]
    assert "softcap 3" in capsys.readouterr().out
    family = hc.FAMILIES["gemma2"]
    for file, path in zip(files, family.layers, strict=True):  # prefill (6 tokens) and decode (1 + cache)
        check(imports[path], ag.compile(file, "onnx"), steps[path], family, f"cli {file.name}")
    assert main(["hf-export", str(tmp_path / "ckpt"), str(tmp_path / "one"), "--layer", "1"]) == 0
    assert [f.name for f in (tmp_path / "one").glob("*.onnx")] == ["layer001-layers_1_self_attn.onnx"]


@pytest.mark.parametrize("argv", [["missing-dir", "out"], ["{ckpt}", "out", "--layer", "7"],
                                  ["{ckpt}", "out", "--layer", "1", "--distinct"], ["{ckpt}", "out", "--style", "x"]])
def test_cli_usage_errors_exit_2_with_one_line(argv, tmp_path, capsys):
    from attngraph.cli.main import main

    ckpt = tmp_path / "ckpt"
    recorded("llama")[0].save_pretrained(ckpt)
    capsys.readouterr()
    assert main(["hf-export", *[a.format(ckpt=ckpt) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attngraph hf-export: error:"), err


def test_cli_help_shows_defaults_and_choices(capsys):
    from attngraph.cli.main import main

    assert main(["hf-export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "{auto,decomposed,attention,contrib}" in text and "(default: auto)" in text and "CHECKPOINT_DIR" in text
