"""``from_onnx``: an ONNX ``Attention`` node (opsets 23-25) as an attngraph graph, or, with ``subgraph=N``,
the N-th attention subgraph that discovery finds in a whole model.

Everything the IR expresses is mapped: 3D and 4D layouts, bool and float masks of any
broadcastable rank, ``is_causal``, ``scale``, ``softcap``, GQA/MQA, past/present KV cache,
``nonpad_kv_seqlen`` (as key lengths, when not causal), the opset-25 windows, the
``qk_matmul_output`` modes, and one tensor feeding Q, K and V (as torch exports self-attention).
The model is first checked against the operator's schema and its shapes (``onnx_validate``);
anything invalid or inexpressible is refused with a message naming the attribute or tensor.
Loading parses protobuf only; it never executes code.

The single-node import lives in ``onnx_node_import`` and discovery in ``onnx_discovery``; this module sits
above both, so the imports run one way.
"""

from __future__ import annotations

from attngraph.errors import ConfigError
from attngraph.frontends.onnx_node_import import import_node_model, load_model

__all__ = ["from_onnx", "load_model"]


def from_onnx(source, subgraph: int | None = None):
    """The attngraph graph equal to the model's single ``Attention`` node, named as in the model.

    With ``subgraph=N``: the N-th attention subgraph that discovery finds in any model
    (``attngraph.frontends.onnx_discovery.discover``), a ``Subgraph`` with ``.graph`` and ``.weights``
    that ``attngraph.compile`` runs; a bad N is a ``ConfigError`` saying how many there are.

    Raises ``SerializationError`` for a model that breaks the operator's schema or shapes and
    ``UnsupportedModel`` (a subclass) for a valid one attngraph cannot express; both name the defect.
    """
    if subgraph is None:
        return import_node_model(source)
    from attngraph.frontends.onnx_discovery import discover

    if isinstance(subgraph, bool) or not isinstance(subgraph, int):
        raise ConfigError(f"subgraph must be an int (the index of a discovered attention subgraph), got "
                          f"{type(subgraph).__name__} {subgraph!r}")
    found = discover(source)
    n = len(found.found)
    if not 0 <= subgraph < n:
        what = (f"found {n} attention subgraph(s): choose subgraph=0..{n - 1}" if n else
                "found no attention subgraph in the model")
        left = f" ({len(found.unrecognised)} not lifted: see attngraph inspect)" if found.unrecognised else ""
        raise ConfigError(f"subgraph={subgraph} is out of range: discovery {what}{left}")
    return found.found[subgraph]
