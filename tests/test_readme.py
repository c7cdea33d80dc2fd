"""The README's quick start runs as written (so the README cannot drift from the code)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python quick start"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["y"].shape == (2, 128, 64)
    assert (tmp_path / "causal.json").exists()
