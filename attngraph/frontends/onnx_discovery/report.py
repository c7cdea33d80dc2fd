"""What ``optimize_onnx`` reports: each subgraph rewritten (``Rewritten``) or left with the reason (``Left``),
the whole run (``OptimizeReport``), the error of a rewritten model that fails its check (``CheckFailed``), and
``one_line``, how an exception becomes a reason in the report.

Splicing (``splice``) and checking (``check``) both make these; ``optimize`` gathers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attngraph.errors import AttnGraphError


@dataclass(frozen=True)
class Rewritten:
    """A subgraph replaced by the export of its graph: ``removed`` model nodes out, ``added`` nodes in."""

    index: int
    removed: tuple[str, ...]
    added: int
    ops: tuple[str, ...]  # the op types of the inserted nodes, each once, sorted
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Left:
    """A subgraph (``index``; None for what discovery did not lift) left as it is, and why."""

    index: int | None
    nodes: tuple[str, ...]
    reason: str


@dataclass
class OptimizeReport:
    """What ``optimize_onnx`` did. ``max_error``: the largest absolute difference between the original's and
    the rewritten model's outputs under onnxruntime; ``max_ratio``: the worst error as a fraction of its
    dtype budget (<= 1 passes); both None without the check."""

    source: str
    destination: str | None
    style: str
    opset_before: int | None
    opset_after: int | None
    rewritten: list[Rewritten] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)
    checked: bool = False
    check_note: str = ""
    max_error: float | None = None
    max_ratio: float | None = None
    outputs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "style": self.style,
                "opset_before": self.opset_before, "opset_after": self.opset_after,
                "rewritten": [{"index": r.index, "removed": list(r.removed), "added": r.added, "ops": list(r.ops),
                               "summary": dict(r.summary)} for r in self.rewritten],
                "left": [{"index": x.index, "nodes": list(x.nodes), "reason": x.reason} for x in self.left],
                "checked": self.checked, "check_note": self.check_note, "max_error": self.max_error,
                "max_ratio": self.max_ratio, "outputs": dict(self.outputs), "seconds": self.seconds}

    def __str__(self) -> str:
        opset = (f"opset {self.opset_before}" if self.opset_before == self.opset_after
                 else f"opset {self.opset_before} -> {self.opset_after}")
        lines = [(f"optimize {self.source} -> {self.destination or '(not written)'}: style {self.style}, {opset}, "
                  f"{len(self.rewritten)} attention subgraph(s) rewritten, {len(self.left)} left")]
        for r in self.rewritten:
            what = ", ".join(f"{k}={v}" for k, v in r.summary.items())
            lines.append(f"  rewritten #{r.index}: {len(r.removed)} nodes -> {r.added} ({', '.join(r.ops)})"
                         + (f"; {what}" if what else ""))
        for x in self.left:
            label = f"#{x.index}" if x.index is not None else "(not lifted)"
            nodes = ", ".join(x.nodes[:4]) + (f", ... ({len(x.nodes)} nodes)" if len(x.nodes) > 4 else "")
            lines.append(f"  left {label} [{nodes}]: {x.reason}")
        if self.checked:
            worst = max(self.outputs, key=self.outputs.get) if self.outputs else None
            lines.append(f"  checked under onnxruntime: max |error| {self.max_error:.2e} "
                         f"({self.max_ratio:.2f} of the budget{f', output {worst!r}' if worst else ''})")
            if self.check_note:
                lines.append(f"  note: {self.check_note}")
        elif self.check_note:
            lines.append(f"  not checked: {self.check_note}")
        return "\n".join(lines)


class CheckFailed(AttnGraphError):
    """The rewritten model's outputs differ from the original's beyond the budget (``verdicts`` says where)."""

    def __init__(self, message: str, errors: dict[str, float] | None = None):
        super().__init__(message)
        self.errors = errors or {}


def one_line(e: Exception) -> str:
    """The first line of ``e``'s message (at most 300 characters), or its type's name: a reason in the report."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
