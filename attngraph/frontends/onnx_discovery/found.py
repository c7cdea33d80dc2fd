"""What discovery returns: the attention subgraphs found in an ONNX model, lifted into the IR, and the
parts it saw but could not lift (with the reason). Shared by ``discover`` (finding), ``optimize``
(rewriting the model) and ``attngraph inspect`` (the listing)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attngraph.ir import Graph


@dataclass(frozen=True)
class Subgraph:
    """One attention subgraph of a model, lifted: ``graph`` computes exactly what ``nodes`` compute.

    * ``nodes``: the names of the model's nodes it replaces (every node between ``inputs`` and ``outputs``
      that nothing else reads; node names are made unique when the model is loaded);
    * ``inputs``: IR graph input name -> the model's value name that feeds it;
    * ``outputs``: IR graph output name -> the model's value name it produces;
    * ``weights``: IR param name -> array (read from the model's initializers and constants);
    * ``summary``: what ``attngraph inspect`` shows (kind, heads, kv_heads, head_dim, causal, mask, rotary,
      cache), and ``notes``: how a convention of the model was mapped (e.g. a -10000 fill lifted as an
      additive mask, not as -inf);
    * ``unspecified``: IR output name -> (IR input name, k): the output's positions j on axis 2 at or past
      ``input[b] + k`` in batch row b are left unspecified by the model's operator (onnxruntime's
      GroupQueryAttention says so of its shared cache buffer's rows past ``seqlens_k + 1``); comparisons of
      that output read the rest only.

    Iterates as ``(graph, weights)`` and ``attngraph.compile(subgraph, backend)`` takes it, as the
    other importers' results."""

    index: int
    graph: Graph
    weights: Mapping[str, np.ndarray]
    nodes: tuple[str, ...]
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    summary: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    unspecified: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.graph, self.weights))


def source_op(sub: Subgraph) -> str:
    """What a subgraph was lifted from: the onnxruntime contrib op, an attngraph export, one ONNX ``Attention``
    node, or the nodes of a decomposed attention."""
    s = sub.summary
    if s.get("op"):
        return str(s["op"])
    if s.get("export"):
        return "attngraph export"
    return "Attention" if len(sub.nodes) == 1 else f"{s.get('kind', 'attention')} ({len(sub.nodes)} nodes)"


@dataclass(frozen=True)
class Unrecognised:
    """Nodes that look like attention (a Softmax between two MatMuls, an ``Attention`` node) that were not
    lifted, and why (never a guess: lifted only when the IR provably computes the same)."""

    nodes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Discovery:
    """Every attention subgraph of a model (``found``, in model order) and what was not lifted."""

    found: tuple[Subgraph, ...]
    unrecognised: tuple[Unrecognised, ...] = ()
