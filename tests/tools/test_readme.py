"""The README's quick start runs as written (so the README cannot drift from the code)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python quick start"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["y"].shape == (2, 128, 64)
    assert (tmp_path / "causal.json").exists()


def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    """Every python block, in README order, in one namespace (later blocks use earlier names)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README block {i}", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["y"].shape == (2, 128, 64) and namespace["attn"].shape == (2, 128, 128)
    namespace["test_my_attention"](["numpy", "numba"])   # the pytest-plugin example, with its fixtures' values
    namespace["test_runs_everywhere"]("numpy")
    assert namespace["fast"].backend.startswith("auto:")


def test_semantics_table_is_the_packages():
    """The README's table is the normative table in attngraph.ir.semantics, row for row."""
    from attngraph.ir.semantics import markdown_table

    text = README.read_text()
    start = text.index("| question | answer in attngraph |")
    assert text[start:text.index("\n\n", start)] == markdown_table()


def test_every_semantics_row_is_pinned_by_conformance_cases():
    from attngraph.conformance import all_cases
    from attngraph.ir.semantics import SEMANTICS

    names = {c.name for c in all_cases(include_onnx=False)}
    for rule in SEMANTICS:
        missing = [c for c in rule.cases if c not in names]
        assert not missing, f"semantics row {rule.question!r} names cases that do not exist: {missing}"
    unpinned = [r.question for r in SEMANTICS if not r.cases]
    assert unpinned == ["integer mask"], "only the refusal row is pinned by a test instead of a case"
