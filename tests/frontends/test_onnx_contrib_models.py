"""Deployed ONNX models with onnxruntime's ``com.microsoft`` attention, end to end (``contrib_models`` builds them
once per session): onnxruntime-genai's model builder for Llama, Qwen2, Qwen3, Phi-3, Mistral, Gemma and Gemma 2,
onnxruntime's transformer optimizer for BERT, and GPT-2 in the optimizer's Attention form. Every attention layer
is found (as many as the config's layers) and lifted; ``check_model`` holds each lifted layer, on every backend,
and onnxruntime's own value at that layer to the float64 reference, at a padded prompt and at a decode step;
``optimize --contrib-ops rewrite`` gives a model equal to the original under onnxruntime."""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("transformers")
pytest.importorskip("torch")

import contrib_models as cm

from attngraph.cli.main import main
from attngraph.conformance.model_check import check_model
from attngraph.frontends.onnx_discovery import discover
from attngraph.frontends.onnx_discovery.optimize import optimize_onnx

DECODE = {"past": 5, "seq": 1}  # a decode step: batch 2, five cached tokens (row 1 right-padded by the mask)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("contrib-models"))


@pytest.fixture(scope="module")
def genai_models(folder):
    """``{family: path or BuilderUnsupported}``: every family built once."""
    pytest.importorskip("onnxruntime_genai")
    built = {}
    for family in cm.GENAI_FAMILIES + ("gemma2_windowed",):
        try:
            built[family] = cm.genai(family, folder)
        except cm.BuilderUnsupported as e:
            built[family] = e
    return built


def _model(genai_models, family: str) -> str:
    got = genai_models[family]
    if isinstance(got, cm.BuilderUnsupported):
        pytest.skip(str(got))
    return got


@pytest.mark.parametrize("family", cm.GENAI_FAMILIES)
def test_genai_every_layer_is_lifted_and_matches_onnxruntime(genai_models, family):
    path = _model(genai_models, family)
    found = discover(path)
    assert not found.unrecognised, [u.reason for u in found.unrecognised]
    assert len(found.found) == cm.LAYERS
    assert {s.summary["op"] for s in found.found} == {"com.microsoft.GroupQueryAttention"}
    for sizes in ({}, DECODE):
        report = check_model(path, sizes=sizes)
        assert report.passed and len(report.rows) == cm.LAYERS, report.table()
        assert all(r.cells["onnxruntime"][1] <= 1.0 for r in report.rows)


def test_genai_family_knobs_are_read(genai_models):
    """What each family's attention carries reached the lifted graphs: Phi-3's partial rotary, Mistral's and Gemma
    2's window on the sliding layer only, Gemma 2's softcap, Qwen3's separate Q/K/V (its QK-norm stays in the
    model, before the operator)."""
    summaries = {f: [s.summary for s in discover(_model(genai_models, f)).found]
                 for f in ("phi3", "mistral", "gemma2", "qwen3")}
    assert summaries["phi3"][0]["rotary"] == "half 16/32"
    assert [s["window"] for s in summaries["mistral"]] == [(3, 0), None]
    assert [s["window"] for s in summaries["gemma2"]] == [(3, 0), None]
    assert {s["softcap"] for s in summaries["gemma2"]} == {5.0}
    assert "Q, K, V" in summaries["qwen3"][0]["computes"]


def test_genai_window_sized_cache_is_refused_by_name(genai_models):
    found = discover(_model(genai_models, "gemma2_windowed"))
    assert len(found.found) == 1 and len(found.unrecognised) == 1
    assert "sliding_window_cache=1" in found.unrecognised[0].reason


@pytest.mark.parametrize("family,steps", [("llama", ({}, DECODE)), ("gemma2", ({},))], ids=["llama", "gemma2"])
def test_genai_optimize_rewrite_equals_the_original(genai_models, family, steps, tmp_path):
    path = _model(genai_models, family)
    for sizes in steps:
        report = optimize_onnx(path, str(tmp_path / "out.onnx"), contrib="rewrite", sizes=sizes)
        assert len(report.rewritten) == cm.LAYERS and report.checked and report.max_ratio <= 1.0, str(report)
    kept = optimize_onnx(path, None)
    assert not kept.rewritten and all("kept as it is" in x.reason for x in kept.left)


@functools.cache
def _bert(folder: str) -> str:
    return cm.bert(folder)


def test_bert_optimizer_attention_is_lifted_checked_and_rewritten(folder, tmp_path):
    path = _bert(folder)
    found = discover(path)
    assert len(found.found) == cm.LAYERS and not found.unrecognised
    assert {s.summary["op"] for s in found.found} == {"com.microsoft.Attention"}
    assert "mask_index (lengths)" in found.found[0].summary["computes"]
    report = check_model(path)
    assert report.passed, report.table()
    moved = optimize_onnx(path, str(tmp_path / "bert.onnx"), contrib="rewrite")
    assert len(moved.rewritten) == cm.LAYERS and moved.max_ratio <= 1.0, str(moved)


@pytest.fixture(scope="module")
def gpt2(folder):
    hf = cm.gpt2_hf()
    return hf, cm.gpt2(folder, hf)


def test_gpt2_attention_form_is_gpt2(gpt2):
    """The assembled model is GPT-2: its hidden states equal the Hugging Face module's (eager, float32), for a
    right-padded prompt and for the next token with the prompt's cache."""
    import onnxruntime as ort
    import torch

    hf, path = gpt2
    ids = np.array([[5, 7, 9, 11], [13, 17, 19, 3]], np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    past = {f"past_{i}": np.zeros((2, 2, 4, 0, 16), np.float32) for i in range(cm.LAYERS)}
    pos = np.broadcast_to(np.arange(4), (2, 4)).copy()
    got = sess.run(None, {"input_ids": ids, "position_ids": pos, "attention_mask": mask, **past})
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos),
                  use_cache=False).last_hidden_state.numpy()
    assert np.allclose(got[0][0], want[0], atol=2e-5) and np.allclose(got[0][1, :3], want[1, :3], atol=2e-5)


def test_gpt2_attention_is_lifted_checked_and_rewritten(gpt2, tmp_path):
    _, path = gpt2
    found = discover(path)
    assert len(found.found) == cm.LAYERS and not found.unrecognised
    assert "past (2, B, H, P, D)" in found.found[0].summary["computes"]
    for sizes in ({"past": 0}, {"past": 3, "seq": 1}, {"past": 2, "seq": 3}):
        report = check_model(path, sizes=sizes)
        assert report.passed, report.table()
    moved = optimize_onnx(path, str(tmp_path / "gpt2.onnx"), contrib="rewrite", sizes={"past": 3})
    assert len(moved.rewritten) == cm.LAYERS and moved.max_ratio <= 1.0, str(moved)


def test_check_model_command_prints_one_row_per_layer_and_writes_html(genai_models, tmp_path, capsys):
    path = _model(genai_models, "llama")
    html = tmp_path / "report.html"
    assert main(["check-model", path, "--backends", "numpy,onnx", "--html", str(html), "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "com.microsoft.GroupQueryAttention" in line]
    assert len(rows) == cm.LAYERS and all(line.rstrip().endswith("pass") for line in rows)
    assert "2 of 2 layer(s) passed; passed" in out
    page = html.read_text()
    assert page.count("com.microsoft.GroupQueryAttention") >= cm.LAYERS and "onnxruntime" in page
    windowed = _model(genai_models, "gemma2_windowed")  # a window-sized cache needs room for its window: past 8
    args = ["check-model", windowed, "--backends", "numpy", "--no-progress", "--size", "batch=1", "--size", "past=8"]
    assert main(args) == 1  # a layer left unlifted
    assert "sliding_window_cache=1" in capsys.readouterr().out
    assert main(args + ["--allow-unlifted"]) == 0
