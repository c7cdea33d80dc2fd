"""``select_backend``: the eligible backends for a graph on this hardware, ranked, with a reason each.

The ranking is one table (``RANKING``): the first row whose condition holds orders the backends.
Backends that cannot express the graph exactly, are not installed, or would not fit in memory are
passed over, each with its reason. Measured basis: bench/reports (d_model 512, 8 heads, fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from attngraph.ir import Graph, Op
from attngraph.selection.capabilities import Capabilities, capabilities_of, graph_features
from attngraph.selection.hardware import Hardware, current_hardware


@dataclass(frozen=True)
class Problem:
    """The sizes that decide speed and memory."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool
    itemsize: int
    dense_mask: bool = False  # a mask SDPA can only take as a dense (q_len, kv_len) tensor
    varlen: bool = False  # packed variable-length sequences (varlen_attention): q_len / kv_len are the totals

    @property
    def scores_bytes(self) -> int:
        return self.batch * self.heads * self.q_len * self.kv_len * 4


# (name, condition, order, reason): the first row whose condition holds gives the order. CPU rows
# from bench/reports/cpu-default.md (d_model 512, 8 heads, fp32, B 1 and 8, T 128..4096, 2 cores) and,
# for decode, bench/reports/cpu-decode.md (32/8 heads, head dim 128, B 1 and 8, cache 1024..16384).
RANKING: list[tuple[str, Callable[[Hardware, Problem], bool], tuple[str, ...], str]] = [
    ("cuda", lambda hw, p: bool(hw.cuda) and "torch" in hw.backends, ("torch", "onnx", "numba", "numpy"),
     "a CUDA GPU is present: torch runs SDPA's fused flash / memory-efficient kernels on it"),
    ("cpu-varlen", lambda hw, p: p.varlen, ("numba", "torch", "onnx", "numpy"),
     "CPU, packed variable-length sequences: Numba's varlen kernel computes each sequence's own tiles only "
     "(bench/reports/cpu-serving-varlen.md, prefill: 7.7x faster than SDPA with the block-diagonal mask, 4.3x than "
     "SDPA on the padded batch); the other backends run the dense block-diagonal mask"),
    ("cpu-decode", lambda hw, p: p.q_len <= 16 and p.kv_len >= 512, ("numba", "onnx", "torch", "numpy"),
     "CPU, a decode step (q_len <= 16) against a long cache: Numba's split-K decode kernel reads each cached "
     "byte once, straight from the caller's buffer (bench/reports/cpu-decode.md: fastest of the backends at "
     "cache >= 4096, within 16% of the fastest at 1024); onnxruntime's Attention reads the whole max_len buffer"),
    ("cpu-full", lambda hw, p: not p.causal and p.kv_len <= 2048, ("onnx", "torch", "numba", "numpy"),
     "CPU, no causal mask, kv_len <= 2048: onnxruntime's fused graph measured fastest or within a few %"),
    ("cpu", lambda hw, p: True, ("torch", "numba", "onnx", "numpy"),
     "CPU, causal or long: torch SDPA's flash kernel skips the causal half in O(T) memory; Numba's "
     "streaming kernel next; onnxruntime holds every score"),
]

@dataclass(frozen=True)
class Candidate:
    name: str
    reason: str
    memory_bytes: int


@dataclass
class Selection:
    """The chosen backend, the ranked eligible ones, and the rejected ones with why."""

    choice: str
    ranked: list[Candidate]
    rejected: list[tuple[str, str]]
    rule: str
    hardware: Hardware
    problem: Problem
    tuned: dict | None = field(default=None)

    @property
    def order(self) -> list[str]:
        return [c.name for c in self.ranked]

    def explain(self) -> str:
        p = self.problem
        lines = [f"backend: {self.choice}  (rule '{self.rule}' for batch {p.batch}, {p.heads} heads, "
                 f"q_len {p.q_len}, kv_len {p.kv_len}{', causal' if p.causal else ''})",
                 f"hardware: {self.hardware.describe()}"]
        for i, c in enumerate(self.ranked, 1):
            lines.append(f"  {i}. {c.name:<6} {c.reason} (working set ~{c.memory_bytes / 2**20:.0f} MiB)")
        for name, why in self.rejected:
            lines.append(f"  -  {name:<6} passed over: {why}")
        if self.tuned:
            times = ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(self.tuned.items(), key=lambda kv: kv[1]))
            lines.append(f"  autotune: {times}")
        return "\n".join(lines)


def problem_of(graph: Graph, sizes: Mapping[str, int] | None = None) -> Problem:
    """Sizes from ``sizes`` (batch, q_len, kv_len, past_len) with defaults batch 1, q_len 512."""
    from attngraph.ir import dims
    from attngraph.passes import fuse_attention

    sizes = {"batch": 1, "q_len": 512, **(sizes or {})}
    sizes.setdefault("kv_len", sizes["q_len"])
    sizes.setdefault("past_len", 0)
    packed = next((n for n in graph.nodes if n.op is Op.VARLEN_ATTENTION), None)
    if packed is not None:  # the totals of the packed axes (total_q / total_k), q_len by default
        q, k = packed.inputs[0].type, packed.inputs[1].type
        total_q = sizes.get("total_q", sizes["q_len"])
        total_k = sizes.get("total_k", sizes.get("kv_len", total_q))
        return Problem(1, int(q.shape[1]), total_q, total_k, int(q.shape[3]), bool(packed.attr("causal")),
                       8 if q.dtype.value == "float64" else 4, False, True)
    fused = fuse_attention(graph)
    node = next((n for n in fused.nodes if n.op is Op.ATTENTION), None)
    if node is None:
        return Problem(sizes["batch"], 1, sizes["q_len"], sizes["kv_len"], 1, False, 4)

    def size(d):
        try:
            return int(dims.evaluate(d, sizes))
        except (KeyError, ValueError):
            return 1

    q, k = node.inputs[0].type, node.inputs[1].type
    a = node.attr_dict
    dense = bool(a["operands"]) or a["offset"] != 0 or a["window_left"] >= 0 or a["window_right"] >= 0
    return Problem(size(q.shape[0]), size(q.shape[1]), size(q.shape[2]), size(k.shape[2]), size(q.shape[3]),
                   bool(a["causal"]), 8 if q.dtype.value == "float64" else 4, dense)


def backend_classes(names) -> dict[str, type]:
    """The loaded backend classes by name (names that do not load are left out)."""
    from attngraph.lowering.registry import get_backend

    classes = {}
    for name in names:
        try:
            classes[name] = type(get_backend(name))
        except Exception:  # noqa: BLE001 - a backend that does not load is reported by detect_hardware
            continue
    return classes


def select_backend(graph: Graph, *, sizes: Mapping[str, int] | None = None, hardware: Hardware | None = None,
                   capabilities: Mapping[str, Capabilities] | None = None) -> Selection:
    """Rank the backends for ``graph`` at ``sizes`` on ``hardware`` (this machine by default).

    Every backend that loads is considered, plug-ins too: each describes itself (capabilities from
    its rules, devices, working set); ``RANKING`` orders the built-ins and plug-ins follow them."""
    hw = hardware or current_hardware()
    classes = backend_classes(hw.backends)
    caps = dict(capabilities) if capabilities is not None else {n: capabilities_of(c) for n, c in classes.items()}
    problem = problem_of(graph, sizes)
    need = graph_features(graph)
    rule, order, why = next((name, order, why) for name, cond, order, why in RANKING if cond(hw, problem))
    on_gpu = bool(hw.cuda)
    budget_cpu = hw.memory_gib * 2**30 * 0.7
    ranked, rejected = [], []
    for name in list(order) + sorted((set(caps) | set(hw.backends)) - set(order)):
        if name not in hw.backends:
            rejected.append((name, hw.unavailable.get(name, "not installed")))
            continue
        cap = caps.get(name)
        if cap is None:
            rejected.append((name, "declares no capabilities"))
            continue
        missing = cap.missing(need)
        refusal = classes[name].supports(graph) if name in classes else None
        if missing or refusal:
            rejected.append((name, f"cannot express {', '.join(missing)} exactly" if missing else refusal))
            continue
        mem = classes[name].working_set(problem) if name in classes else 3 * problem.scores_bytes
        limit = min(d.memory_gib for d in hw.cuda) * 2**30 * 0.8 if on_gpu and "cuda" in cap.devices else budget_cpu
        if mem > limit:
            rejected.append((name, f"needs ~{mem / 2**30:.1f} GiB of working memory, more than the "
                                   f"{limit / 2**30:.1f} GiB available"))
            continue
        device = "cuda" if on_gpu and "cuda" in cap.devices else "cpu"
        note = cap.note or ("a plug-in backend" if name not in order else "")
        ranked.append(Candidate(name, f"{why}" if not ranked else f"on {device}; {note}", mem))
    if not ranked:
        raise RuntimeError("no backend can run this graph here: " + "; ".join(f"{n}: {w}" for n, w in rejected))
    return Selection(ranked[0].name, ranked, rejected, rule, hw, problem)
