"""``import attngraph`` pulls in NumPy only; frameworks load when their backend is asked for."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light():
    code = ("import sys, attngraph, attngraph.cli; g = attngraph.causal_self_attention(8, 2); "
            "attngraph.compile(g, 'numpy', weights=attngraph.Weights.random(g)); "
            "heavy = [m for m in ('numba', 'torch', 'onnx', 'onnxruntime', 'scipy') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import attngraph loaded {out.stdout.strip()}"
