"""The command line: info, show (build, save, load) and run, including its error path."""

from __future__ import annotations

import attngraph as ag
from attngraph.cli import COMMANDS, main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "Packages" in out and "numpy" in out and "available" in out


def test_show_builds_saves_and_loads(tmp_path, capsys):
    path = tmp_path / "g.json"
    assert main(["show", "--causal", "--kv-heads", "2", "--kv-cache", "--save", str(path)]) == 0
    printed = capsys.readouterr().out
    graph = ag.load_graph(path)
    assert printed.strip() == str(graph)
    assert "mask(%qk_scaled) {align='start', causal=True, offset='past_len'" in printed
    assert main(["show", "--load", str(path), "--pipeline", "O1"]) == 0
    assert "attention(%qh, %present_key, %present_value)" in capsys.readouterr().out


def test_run_prints_a_summary(capsys):
    assert main(["run", "--kind", "cross", "--kdim", "24", "--mask", "additive", "--q-len", "5", "--kv-len", "9",
                 "--return-weights", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "graph cross_attention on numpy" in out
    assert "y               [2, 5, 64]" in out and "attn_weights    [2, 4, 5, 9]" in out


def test_errors_are_one_line_and_exit_2(capsys):
    assert main(["run", "--heads", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attngraph run: error: num_heads=3 does not divide d_model=64")
    assert main(["run", "--backend", "nope", "--repeat", "1"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


def test_commands_are_a_table_later_issues_extend():
    assert {"info", "show", "run"} <= set(COMMANDS)


def test_export_writes_a_model_that_runs(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "m.onnx"
    assert main(["export", str(out), "--causal", "--kv-heads", "2", "--mask", "bool", "--style", "attention"]) == 0
    printed = capsys.readouterr().out
    assert "style attention, opset 23" in printed and "Attention" in printed
    run = ag.compile(out, "onnx")
    x = {"x": np.ones((1, 3, 64), np.float32), "attn_mask": np.ones((3, 3), bool)}
    assert run(x)["y"].shape == (1, 3, 64)
    assert main(["export", str(tmp_path / "c.onnx"), "--kv-heads", "2", "--style", "contrib"]) == 2
    assert "cannot express GQA/MQA" in capsys.readouterr().err
    assert not (tmp_path / "c.onnx").exists()


def test_check_picks_a_backend_runs_the_quick_corpus_and_verifies_onnx(capsys, tmp_path):
    from attngraph.cli import main

    assert main(["check", "--no-progress", "--d-model", "64", "--heads", "4", "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "backend: " in out and "hardware: " in out
    assert "bool_mask_polarity" in out and "rerun by onnxruntime: ok" in out
    assert (tmp_path / "m.onnx").exists()
    last = out.rstrip().splitlines()[-1]
    assert last.endswith("0 failed, 1 skipped") or last.endswith("0 failed, 0 skipped"), last


def test_tune_measures_caches_and_clears(capsys, tmp_path, monkeypatch):
    from attngraph.cli import main

    monkeypatch.setenv("ATTNGRAPH_CACHE_DIR", str(tmp_path))
    assert main(["tune", "--causal", "--d-model", "32", "--heads", "4", "--batch", "1", "--q-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "autotune: " in out and (tmp_path / "autotune.json").exists()
    assert main(["tune", "--clear"]) == 0 and not (tmp_path / "autotune.json").exists()


def test_export_without_onnx_prints_the_pip_hint(tmp_path, monkeypatch, capsys):
    from attngraph.lowering import registry

    monkeypatch.setitem(registry.BUILTIN, "onnx", ("attngraph_no_onnx_here:Backend", "onnx"))
    monkeypatch.delitem(registry._loaded, "onnx", raising=False)
    assert main(["export", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'attngraph[onnx]'" in err[0], err
