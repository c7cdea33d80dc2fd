"""Saves clean up what killed saves left behind, and only that: our own stale temporaries."""

from __future__ import annotations

import os
import time

import pytest

import attngraph as ag
from attngraph.fileio import atomic_write_text

HOUR_AGO = time.time() - 3600


def _age(path, when=HOUR_AGO):
    """Backdate ``path`` (and a folder's files) as if a process killed an hour ago had left it."""
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (when, when))
    return path


def _file(path, text="partial"):
    path.write_text(text)
    return path


def test_a_save_removes_stale_temp_files_and_keeps_everything_else(tmp_path):
    stale = [_age(_file(tmp_path / ".g.json.abcd_123.tmp")), _age(_file(tmp_path / ".other.json.zz99yy88.tmp"))]
    kept = [
        _file(tmp_path / ".g.json.q1w2e3r4.tmp"),           # fresh: a concurrent save may still be writing it
        _age(_file(tmp_path / ".g.json.tmp")),               # not our pattern (no random part)
        _age(_file(tmp_path / "g.json.abcd1234.tmp")),       # not hidden
        _age(_file(tmp_path / ".notes.ABCD1234.tmp")),       # mkstemp never writes capitals
        _age(_file(tmp_path / "data.csv")),
    ]
    atomic_write_text(tmp_path / "g.json", "{}")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert (tmp_path / "g.json").read_text() == "{}"


def test_save_graph_cleans_its_folder(tmp_path):
    stale = _age(_file(tmp_path / ".g.json.k3j4h5g6.tmp", "x" * 1000))
    ag.save_graph(ag.core_attention(2, 4), tmp_path / "g.json")
    assert not stale.exists() and ag.load_graph(tmp_path / "g.json") == ag.core_attention(2, 4)


def _temp_dir(parent, name, files):
    folder = parent / name
    folder.mkdir()
    for f in files:
        _file(folder / f, "weights")
    return folder


def test_export_removes_stale_temp_folders_of_killed_exports(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    stale = [_age(_temp_dir(tmp_path, ".m.onnx.ab12cd34", ["m.onnx", "m.onnx.data"])),
             _age(_temp_dir(tmp_path, ".old.onnx.zz00yy11", [])),              # killed right after mkdtemp
             _age(_file(tmp_path / ".m.onnx.data.r4t5y6u7.tmp"))]
    fresh = _temp_dir(tmp_path, ".m.onnx.qq11ww22", ["m.onnx"])                 # an export in flight elsewhere
    foreign = [_age(_temp_dir(tmp_path, ".cache.ab12cd34", ["index.db"])),      # the pattern, not our layout
               _age(_temp_dir(tmp_path, ".m.onnx.ee55rr66", ["m.onnx", "notes.txt"]))]
    g = ag.core_attention(2, 4)
    ag.export_onnx(g, tmp_path / "m.onnx", style="decomposed")
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in foreign)
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_a_folder_is_in_use_while_any_file_in_it_is_young(tmp_path):
    folder = _age(_temp_dir(tmp_path, ".m.onnx.ab12cd34", ["m.onnx", "m.onnx.data"]))
    os.utime(folder / "m.onnx.data")  # still being written: the folder itself is old, its data file is not
    atomic_write_text(tmp_path / "x.json", "{}")
    assert folder.exists()
