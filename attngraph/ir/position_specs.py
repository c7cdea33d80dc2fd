"""Type rules of the position and normalisation ops: ``rotary``, ``rms_norm``, ``alibi``, ``rel_bias``.

Conventions (the normative table is ``attngraph.ir.semantics``):

* ``rotary(x[, positions][, cos_cache, sin_cache])``: x is (B, H, S, D); the first ``rotary_dim`` dims
  of each head rotate, the rest pass through. ``layout="half"`` pairs dim k with k + rd/2 (rotate_half:
  Llama, NeoX, Qwen, Gemma, Phi); ``"interleaved"`` pairs 2k with 2k + 1 (GPT-J, ONNX interleaved=1).
  Token s sits at ``positions[b, s]`` when that input is given, else at ``offset + s``. The angle of pair
  k is ``position * inv_freq[k]``, or cos/sin are read from the caches (max_pos, rd/2) at the position;
  both are multiplied by ``attention_scaling``.
* ``rms_norm(x, w)``: ``x / sqrt(mean(x^2, last axis) + eps) * w``, or ``* (1 + w)`` with ``add_one``
  (Gemma), computed in float32.
* ``alibi(scores[, lengths])``: ``scores + slope_h * (j - pos_i)`` where ``pos_i`` is the query's
  position (``i + offset``, or ``lengths[b] - q_len + i`` with ``align="lengths"``).
* ``rel_bias(scores, table[, lengths])``: ``scores + table[bucket(j - pos_i), h]`` with T5's buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir import dims
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import REQUIRED, OpSpec, need_float, need_rank, need_static, same
from attngraph.ir.types import INT_DTYPES, TensorType

TS = Sequence[TensorType]
POSITION_ATTRS = {"offset": 0, "align": "start"}  # where the queries sit: i + offset, or at the end of lengths


def _finite(values, what: str) -> None:
    for v in values if isinstance(values, tuple) else (values,):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise GraphError(f"{what} must be finite numbers, got {v!r}")


def _operands(a: dict[str, Attr], allowed: tuple[str, ...], n: int, op: str) -> tuple[str, ...]:
    kinds = tuple(a["operands"])
    if list(kinds) != [k for k in allowed if k in kinds]:
        raise GraphError(f"{op} operands {kinds} must be a subset of {allowed} in that order")
    if n != sum(2 if k == "cos_sin" else 1 for k in kinds):
        raise GraphError(f"{op} lists operands {kinds} but has {n} of them")
    return kinds


def _rotary(ts: TS, a: dict[str, Attr]) -> tuple[TensorType, ...]:
    x = ts[0]
    need_float(x, "rotary input")
    need_rank(x, 4, "rotary input", "(batch, heads, seq, head_dim)")
    size = need_static(x.shape[3], "head_dim")
    rd = int(a["rotary_dim"]) or size
    if a["layout"] not in ("half", "interleaved"):
        raise GraphError(f"rotary layout must be 'half' (rotate_half) or 'interleaved' (GPT-J), got {a['layout']!r}")
    if rd <= 0 or rd % 2 or rd > size:
        raise GraphError(f"rotary_dim must be even and in 2..{size} (0 = all), got {a['rotary_dim']}")
    kinds = _operands(a, ("positions", "cos_sin"), len(ts) - 1, "rotary")
    freqs = tuple(a["inv_freq"])
    if ("cos_sin" in kinds) == bool(freqs):
        raise GraphError(f"rotary needs either inv_freq ({rd // 2} values) or cos_cache/sin_cache inputs, not both")
    if freqs and len(freqs) != rd // 2:
        raise GraphError(f"rotary inv_freq has {len(freqs)} values; rotary_dim {rd} needs {rd // 2}")
    _finite(freqs, "rotary inv_freq")
    _finite(a["attention_scaling"], "rotary attention_scaling")
    dims.canonical(a["offset"])
    rest = list(ts[1:])
    if "positions" in kinds:
        p = rest.pop(0)
        if p.dtype not in INT_DTYPES or p.rank != 2 or not (p.shape[0] == 1 or same(p.shape[0], x.shape[0])) \
                or not same(p.shape[1], x.shape[2]):
            raise GraphError(f"rotary positions must be int (batch or 1, seq) = ({x.shape[0]}, {x.shape[2]}), got {p}")
    for cache in rest:
        need_float(cache, "rotary cos/sin cache")
        if cache.rank != 2 or not same(cache.shape[1], rd // 2):
            raise GraphError(f"rotary cos/sin caches must be (max_position, {rd // 2}), got {cache}")
    return (x,)


def _rms_norm(ts: TS, a: dict[str, Attr]) -> tuple[TensorType, ...]:
    x, w = ts
    need_float(x, "rms_norm input")
    need_float(w, "rms_norm weight")
    if w.rank != 1 or not same(w.shape[0], x.shape[-1]):
        raise GraphError(f"rms_norm weight must be ({x.shape[-1]},), the size of the normalised axis, got {w}")
    _finite(a["eps"], "rms_norm eps")
    if not float(a["eps"]) > 0:
        raise GraphError(f"rms_norm eps must be > 0, got {a['eps']}")
    return (x,)


def _scores_and_lengths(ts: TS, a: dict[str, Attr], op: str) -> TensorType:
    scores = ts[0]
    need_float(scores, f"{op} scores")
    need_rank(scores, 4, f"{op} scores", "(batch, heads, q_len, kv_len)")
    dims.canonical(a["offset"])
    if a["align"] not in ("start", "lengths"):
        raise GraphError(f"{op} align must be 'start' or 'lengths', got {a['align']!r}")
    if (a["align"] == "lengths") != (ts[-1].dtype in INT_DTYPES and len(ts) > 1):
        raise GraphError(f"{op} with align='lengths' takes the key lengths as its last input, and only then")
    if a["align"] == "lengths" and (ts[-1].rank != 1 or not same(ts[-1].shape[0], scores.shape[0])):
        raise GraphError(f"{op} key lengths must be ({scores.shape[0]},), got {ts[-1]}")
    return scores


def _alibi(ts: TS, a: dict[str, Attr]) -> tuple[TensorType, ...]:
    scores = _scores_and_lengths(ts, a, "alibi")
    slopes = tuple(a["slopes"])
    _finite(slopes, "alibi slopes")
    if len(slopes) != need_static(scores.shape[1], "heads"):
        raise GraphError(f"alibi has {len(slopes)} slopes for {scores.shape[1]} heads")
    return (scores,)


def _rel_bias(ts: TS, a: dict[str, Attr]) -> tuple[TensorType, ...]:
    scores = _scores_and_lengths(ts, a, "rel_bias")
    table, buckets, distance = ts[1], int(a["num_buckets"]), int(a["max_distance"])
    need_float(table, "rel_bias table")
    if table.rank != 2 or not same(table.shape[0], buckets) or not same(table.shape[1], scores.shape[1]):
        raise GraphError(f"rel_bias table must be (num_buckets, heads) = ({buckets}, {scores.shape[1]}), got {table}")
    exact = (buckets // 2 if a["bidirectional"] else buckets) // 2
    if exact < 1 or distance <= exact:
        raise GraphError(f"rel_bias needs num_buckets >= {4 if a['bidirectional'] else 2} and max_distance > "
                         f"{exact} (the exact range), got num_buckets={buckets}, max_distance={distance}")
    return (scores,)


POSITION_SPECS: dict[Op, OpSpec] = {
    Op.ROTARY: OpSpec(1, 4, {"layout": REQUIRED, "rotary_dim": 0, "inv_freq": (), "attention_scaling": 1.0,
                             "operands": (), "offset": 0}, _rotary),
    Op.RMS_NORM: OpSpec(2, 2, {"eps": 1e-6, "add_one": False}, _rms_norm),
    Op.ALIBI: OpSpec(1, 2, {"slopes": REQUIRED, **POSITION_ATTRS}, _alibi),
    Op.REL_BIAS: OpSpec(2, 3, {"num_buckets": 32, "max_distance": 128, "bidirectional": True, **POSITION_ATTRS},
                        _rel_bias),
}
