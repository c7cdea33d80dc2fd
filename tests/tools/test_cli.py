"""The command line: info, show (build, save, load) and run, including its error path."""

from __future__ import annotations

import re

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
    from attngraph.conformance import installed_backends

    assert main(["check", "--no-progress", "--d-model", "64", "--heads", "4", "--onnx", str(tmp_path / "m.onnx")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # kernels compile before the conformance run, saying so (numba's first run is a silent minute otherwise)
    warm = captured.err.splitlines()
    assert [ln.split(" ")[1] for ln in warm if ln.startswith("preparing ")] == installed_backends()
    assert all(" done in " in ln for ln in warm if ln.startswith("preparing ")), warm
    if "numba" in installed_backends():
        assert "preparing numba (compiling kernels on first run" in captured.err
    assert "backend: " in out and "hardware: " in out
    assert "bool_mask_polarity" in out and "rerun by onnxruntime: ok" in out
    assert (tmp_path / "m.onnx").exists()
    last = out.rstrip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed, \d+ skipped", last), last
    # a skip is a refusal by name, never a hidden failure: float64 where the backend has none, float8 on onnx
    skipped_rows = {ln.split()[0] for ln in out.splitlines() if " skip " in f" {ln} " and not ln.startswith(" ")}
    assert skipped_rows <= {"causal_mha_float64"} | {n for n in skipped_rows if n.startswith("quant_float8_")}, skipped_rows


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


# ---- usage errors: one line on stderr, exit 2, before any work

def _npz(path, **arrays):
    import numpy as np

    np.savez(path, **arrays)
    return str(path)


def _bad_inputs(tmp_path):
    import numpy as np

    (tmp_path / "text.npz").write_text("not an archive")
    good = ag.Weights.random(ag.self_attention(64, 4), seed=0)
    wrong_shape = {**good, "w_q": np.zeros((3, 3), np.float32)}
    return {
        "kv-len 0": (["run", "--kind", "cross", "--kv-len", "0"], "argument --kv-len: expected an integer >= 1, got 0"),
        "heads 0": (["run", "--heads", "0"], "argument --heads: expected an integer >= 1, got 0"),
        "dtype int8": (["run", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        "batch -1": (["run", "--batch", "-1"], "argument --batch: expected an integer >= 1, got -1"),
        "q-len x": (["run", "--q-len", "x"], "argument --q-len: expected an integer >= 1, got 'x'"),
        "past-len -1": (["run", "--past-len", "-1"], "argument --past-len: expected an integer >= 0, got -1"),
        "softcap nan": (["run", "--softcap", "nan"], "argument --softcap: expected a finite number, got 'nan'"),
        "tune q-len 0": (["tune", "--q-len", "0"], "argument --q-len: expected an integer >= 1, got 0"),
        "check heads 0": (["check", "--heads", "0"], "argument --heads: expected an integer >= 1, got 0"),
        "unknown backend": (["conformance", "--backends", "numpy,nosuch"],
                            f"unknown backend(s) 'nosuch'; choose from {', '.join(ag.available_backends())}"),
        "unknown pipeline": (["conformance", "--pipelines", "O9"], "unknown pipeline(s) 'O9'; choose from O0, O1"),
        "no case": (["conformance", "--cases", "no_such_case*"], "no case matches --cases 'no_such_case*'"),
        "export non-npz": (["export", str(tmp_path / "m.onnx"), "--weights", str(tmp_path / "text.npz")],
                           "is not an .npz file: expected a zip archive of named arrays"),
        "run non-npz": (["run", "--weights", str(tmp_path / "text.npz")], "is not an .npz file"),
        "run missing npz": (["run", "--weights", str(tmp_path / "none.npz")], "none.npz': no such file"),
        "run wrong names": (["run", "--weights", _npz(tmp_path / "names.npz", w=np.zeros(2, np.float32))],
                            "needs weight(s) ['w_q'"),
        "run wrong shape": (["run", "--weights", _npz(tmp_path / "shape.npz", **wrong_shape)],
                            "weight 'w_q' has shape (3, 3), expected (64, 64)"),
    }


def test_usage_errors_are_one_line_and_exit_2_before_any_work(tmp_path, capsys):
    for name, (argv, message) in _bad_inputs(tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (name, err)
        assert err[0].startswith(f"attngraph {argv[0]}: error: ") and message in err[0], (name, err[0])
    assert not (tmp_path / "m.onnx").exists()


def test_run_takes_weights_from_an_npz(tmp_path, capsys):
    from attngraph.testing.random_inputs import random_inputs

    g = ag.cross_attention(64, 4)
    weights = ag.Weights.random(g, seed=7)
    weights.save(tmp_path / "w.npz")
    assert main(["run", "--kind", "cross", "--q-len", "3", "--kv-len", "5", "--weights", str(tmp_path / "w.npz"),
                 "--repeat", "1"]) == 0
    y = ag.compile(g, "numpy", weights=weights)(random_inputs(g, {"batch": 2, "q_len": 3, "kv_len": 5}))["y"]
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("y "))
    assert f"{y.astype('float64').mean():>11.4g}" in line  # the summary is of the given weights, not random ones


def test_help_of_every_command_shows_defaults_and_choices(capsys):
    import argparse

    from attngraph.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert main([name, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"attngraph {name} {action.option_strings} has no help text"
            for choice in action.choices or ():
                assert choice in text, f"attngraph {name} --help does not list {choice!r}"
            if action.default not in (None, False) and "default" not in action.help:
                assert f"(default: {action.default})" in text, f"attngraph {name} --help hides {action.dest}'s default"


def test_position_and_cache_flags_build_the_graph(tmp_path, capsys):
    """Issue 14/16 knobs from the command line: the graph printed is the builder's for the same knobs."""
    flags = ["--causal", "--kv-heads", "2", "--rotary", "half", "--rotary-dim", "8", "--qk-norm", "rms_plus_one",
             "--sinks", "--kv-cache", "static", "--max-len", "32", "--bias-on", "qkv"]
    assert main(["show", *flags]) == 0
    printed = capsys.readouterr().out.strip()
    built = ag.causal_self_attention(64, 4, num_kv_heads=2, rotary="half", rotary_dim=8, qk_norm="rms_plus_one",
                                     sinks=True, kv_cache="static", max_len=32, bias="qkv")
    assert printed == str(built)
    assert main(["show", "--alibi", "before_scale", "--causal"]) == 0
    assert "alibi" in capsys.readouterr().out
    assert main(["show", "--rel-bias", "--rel-buckets", "8", "--rel-max-distance", "20"]) == 0
    assert "rel_bias" in capsys.readouterr().out
    out = tmp_path / "step.onnx"
    assert main(["export", str(out), *flags]) == 0
    assert "TensorScatter" in capsys.readouterr().out


def test_run_a_static_cache_step(capsys):
    assert main(["run", "--causal", "--rotary", "half", "--kv-cache", "static", "--max-len", "16", "--q-len", "1",
                 "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "present_key     [2, 4, 16, 16]" in out


def test_bad_position_flags_are_usage_errors(capsys):
    assert main(["show", "--bias-on", "qq"]) == 2
    assert "expected some of the letters q, k, v, o" in capsys.readouterr().err
    assert main(["show", "--rotary", "sideways"]) == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
    assert main(["show", "--kv-cache", "static"]) == 2  # static needs max_len
    assert "max_len" in capsys.readouterr().err
