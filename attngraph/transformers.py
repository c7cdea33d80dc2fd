"""attngraph as a Hugging Face transformers attention implementation.

    import attngraph.transformers as agt
    run = agt.use(model, backend="numba")   # checks every attention layer, then model.set_attn_implementation
    print(run)                              # one row per layer kind: what runs where
    model.generate(input_ids, attention_mask=pad, max_new_tokens=32)

``register()`` makes the names ``"attngraph"`` (auto backend choice) and ``"attngraph-numpy"``,
``"attngraph-numba"``, ``"attngraph-torch"``, ``"attngraph-onnx"`` known to transformers (``AttentionInterface``
and ``AttentionMaskInterface``); ``use`` calls it. The implementation lives in
``attngraph.frontends.transformers.integration``; importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from attngraph.frontends.transformers.integration import (
    IMPLEMENTATIONS,
    AttentionUse,
    implementation_name,
    register,
    use,
)

__all__ = ["IMPLEMENTATIONS", "AttentionUse", "implementation_name", "register", "use"]
