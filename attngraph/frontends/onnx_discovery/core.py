"""The attention core: ``softmax(scale * Q @ K^T [softcapped] [+ mask]) @ V`` as exporters write it, or
the ONNX ``Attention`` node.

The decomposed core is an onnxscript pattern rooted at the second MatMul:
``MatMul(Q, Kt) -> [Mul|Div by a scalar] -> [Div, Tanh, Mul: softcap] -> [Add mask | Where(cond, s, fill)]
-> Softmax(last axis) -> [Cast to its own type] -> [Where(IsNaN(p), 0, p)] -> MatMul(., V)``. Scalings of Q
and K before the product (the dynamo exporter puts sqrt(scale) on each) are not part of it: they are
folded when the operands' chains are followed (``chain``). Every optional part is one ``OrValue`` branch,
and the commuted orders of ``Add``/``Mul`` are spelled out, so the pattern matches what it says and no more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Core:
    """One attention core. ``q``/``kt``/``v``: the operands as the model has them (``kt`` is K transposed;
    for an ``Attention`` node it is K itself, ``node`` is that node); ``probs``: the softmax output the rest
    of the model may read; ``scale`` (on the scores; None: the ``Attention`` default), ``softcap``;
    ``mask``: None, ("add", bias), ("where", cond, fill) or ("input", mask) for an ``Attention`` node."""

    root: object
    q: object
    kt: object
    v: object
    out: object
    probs: object = None
    scale: float | None = 1.0
    softcap: float | None = None
    mask: tuple | None = None
    causal: bool = False
    node: object = None
    nan_guard: bool = False
    nodes: list = field(default_factory=list)
    past: tuple = ()
    presents: tuple = ()


_MASKINGS = ("add", "add_r", "add2", "add2_r", "add2_rr", "add2_rrr", "where", "none")


def _build_rules():
    from onnxscript.rewriter import pattern

    def make(scaling: str, capped: bool, masking: str, casts: int, guard: bool):
        def core(op, q, kt, v, scale, cap_in, cap_out, mask, bias, cond, fill, zero):
            s = op.MatMul(q, kt, _outputs=["scores"])
            if scaling == "mul":
                s = op.Mul(s, scale)
            elif scaling == "mul_r":
                s = op.Mul(scale, s)
            elif scaling == "div":
                s = op.Div(s, scale)
            if capped:
                s = op.Mul(op.Tanh(op.Div(s, cap_in)), cap_out)
            if masking == "add":
                s = op.Add(s, mask)
            elif masking == "add_r":
                s = op.Add(mask, s)
            elif masking.startswith("add2"):  # two biases in turn (T5: position bias, then the mask)
                first = op.Add(mask, s) if masking in ("add2_rr", "add2_rrr") else op.Add(s, mask)
                s = op.Add(bias, first) if masking in ("add2_r", "add2_rrr") else op.Add(first, bias)
            elif masking == "where":
                s = op.Where(cond, s, fill)
            p = op.Softmax(s, axis=pattern.AttrVar("axis"), _outputs=["softmax"])
            for i in range(casts):
                p = op.Cast(p, to=pattern.AttrVar(f"to{i}"), _outputs=[f"cast{i}"])
            if guard:
                p = op.Where(op.IsNaN(p), zero, p, _outputs=["guarded"])
            return op.MatMul(p, v, _outputs=["out"])

        name = f"Core_{scaling}_{'cap' if capped else 'nocap'}_{masking}_{casts}{int(guard)}"
        return pattern.RewriteRule(core, lambda op, **_: None, name=name)

    rules: dict[tuple[int, bool], list] = {}
    for casts in (0, 1, 2):
        for guard in (False, True):
            group = rules.setdefault((casts, guard), [])
            for scaling in ("mul", "mul_r", "div", "none"):
                for capped in (False, True):
                    for masking in _MASKINGS:
                        group.append((scaling, capped, masking, make(scaling, capped, masking, casts, guard)))
    return rules


_RULES = None


def core_rules() -> dict:
    """The variants of the decomposed core (built once), grouped by (number of casts, NaN guard): each
    ``(scaling, capped, masking, rule)``."""
    global _RULES
    if _RULES is None:
        _RULES = _build_rules()
    return _RULES


def _tail(node) -> tuple[int, bool] | None:
    """How many casts and whether a NaN guard sit between the softmax and ``node`` (the MatMul with V)."""
    v, casts, guard = node.inputs[0], 0, False
    made = v.producer()
    if made is not None and made.op_type == "Where" and made.inputs[0] is not None and \
            made.inputs[0].producer() is not None and made.inputs[0].producer().op_type == "IsNaN":
        guard, v = True, made.inputs[2]
        made = v.producer() if v is not None else None
    while made is not None and made.op_type == "Cast" and casts < 2:
        casts, v = casts + 1, made.inputs[0]
        made = v.producer()
    return (casts, guard) if made is not None and made.op_type == "Softmax" else None


def match_decomposed(model, node, ev, dims_of) -> tuple[Core | None, str | None]:
    """The decomposed core whose last MatMul is ``node``, or ``(None, why)``; ``(None, None)`` when ``node``
    is not the product of a softmax with V at all."""
    tail = _tail(node) if node.inputs and node.inputs[0] is not None else None
    if tail is None:
        return None, None
    casts, guard = tail
    for scaling, capped, masking, rule in core_rules()[tail]:
        m = rule.match(model, model.graph, node, check_nodes_are_removable=False)
        if not m:
            continue
        b = m.bindings
        softmax = b["softmax"].producer()
        rank = len(dims_of(b["softmax"]) or ())
        axis = b["axis"].value if b.get("axis") is not None else (-1 if _opset(model) >= 13 else 1)
        if rank != 4 or axis not in (-1, rank - 1):
            return None, f"Softmax {softmax.name!r} is not over the last axis of a rank-4 score tensor"
        for i in range(casts):
            if b[f"cast{i}"].dtype != b["softmax"].dtype:
                return None, f"the softmax output is cast to another type at {b[f'cast{i}'].producer().name!r}"
        core = Core(node, b["q"], b["kt"], b["v"], b["out"], probs=b[f"cast{casts - 1}"] if casts else b["softmax"],
                    nodes=list(m.nodes))
        if guard:
            z = ev.value(b["zero"])
            if z is None or z.size != 1 or float(z.reshape(())) != 0.0:
                return None, "the NaN guard after the softmax does not write 0"
            core.probs, core.nan_guard = b["guarded"], True
        if scaling != "none":
            c = ev.scalar(b["scale"])
            if c is None or not math.isfinite(c) or c == 0:
                return None, "the scores are scaled by a value that is not a finite constant"
            core.scale = 1.0 / c if scaling == "div" else c
        if capped:
            a, c = ev.scalar(b["cap_in"]), ev.scalar(b["cap_out"])
            if a is None or a != c or not a > 0 or not math.isfinite(a):
                return None, "the tanh soft-cap does not divide and multiply by one positive constant"
            core.softcap = a
        if masking in ("add", "add_r"):
            core.mask = ("add", b["mask"])
        elif masking.startswith("add2"):
            core.mask = ("add", b["mask"], b["bias"])
        elif masking == "where":
            fill = ev.value(b["fill"])
            if fill is None or fill.dtype == object or fill.size != 1:
                return None, "Where on the scores fills with a value that is not a constant scalar"
            core.mask = ("where", b["cond"], float(fill.reshape(())))
        return core, None
    return None, _why_not(node)


def _why_not(node) -> str:
    """A readable reason why a Softmax-then-MatMul did not match the core."""
    chain, v = [], node.inputs[0]
    for _ in range(8):
        made = v.producer() if v is not None else None
        if made is None:
            break
        chain.append(made.op_type)
        if made.op_type == "MatMul":
            break
        v = made.inputs[0]
    return ("the ops between the two MatMuls (" + " <- ".join(chain) + ") are not the attention core attngraph "
            "lifts: MatMul(Q, K^T), a scalar scale, an optional tanh soft-cap, an optional mask added (or a "
            "Where on a bool), Softmax over the last axis, MatMul(V)")


def _opset(model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 18)))


def match_attention_node(node, ev, dims_of) -> tuple[Core | None, str | None]:
    """An ONNX ``Attention`` node with 4-D Q/K/V as a ``Core`` (the other forms go through ``from_onnx``)."""
    attrs = {k: a.value for k, a in node.attributes.items()}
    ins = list(node.inputs) + [None] * (7 - len(node.inputs))
    q, k, v, mask, past_k, past_v, nonpad = ins[:7]
    qd = dims_of(q)
    if qd is None or len(qd) != 4:
        return None, "3-D"
    if nonpad is not None or attrs.get("qk_matmul_output_mode", 0) or len(node.outputs) > 3 and node.outputs[3]:
        return None, "extras"
    if attrs.get("softmax_precision") not in (None, 0, 1) or (past_k is None) != (past_v is None):
        return None, "extras"
    if attrs.get("left_window_size", -1) != -1 or attrs.get("right_window_size", -1) != -1:
        return None, "extras"
    scale = attrs.get("scale")
    core = Core(node, q, k, v, node.outputs[0], scale=None if scale is None else float(np.float32(scale)),
                softcap=float(attrs["softcap"]) if attrs.get("softcap") else None,
                mask=("input", mask) if mask is not None else None, causal=bool(attrs.get("is_causal", 0)),
                node=node, nodes=[node])
    if past_k is not None:
        core.past = (past_k, past_v)
        core.presents = tuple(o for o in node.outputs[1:3])
    return core, None
