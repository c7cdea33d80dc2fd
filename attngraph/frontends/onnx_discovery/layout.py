"""Proofs about data movement: what a chain of Reshape/Transpose/Split/Expand/... does to a tensor.

Exporters spell the head split, the head merge, the key transpose, a fused QKV split and the GQA repeat
with many different chains of layout ops. Rather than match each spelling, discovery follows the chain
symbolically. A tensor's ``View`` is a list of axes; each axis is a product of *atoms*, most significant
first. An atom is either *opaque* (a batch or sequence size, possibly symbolic: it is never split) or a
*feature* atom (a static size); ``View.cols`` says, for every index of the feature atoms, which column of
the source it holds. A Reshape regroups the atoms (splitting a feature atom where a target dim needs part
of it; an opaque atom must land whole in one target dim, with the target computed symbolically), a
Transpose permutes axes, Gather/Slice/Split pick feature indices, Expand repeats them (GQA), Unsqueeze and
Squeeze add and drop unit axes. When a step cannot be followed exactly, ``LayoutError`` says why and
nothing is concluded. At the end the view says exactly which source column every output element reads:
the head split (B, S, H*D) -> (B, H, S, D) is the view ``[[b], [h], [s], [d]]`` with ``cols[h, d]`` the
projection column of head h, dim d, whatever the ops were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attngraph.frontends.onnx_discovery.symbolic import Poly


class LayoutError(Exception):
    """A layout step that cannot be followed exactly (the message says why)."""


@dataclass(frozen=True)
class Atom:
    """One factor of an axis: ``size``; ``feat`` atoms index ``View.cols``, opaque ones are whole dims."""

    size: Poly
    feat: bool


@dataclass
class View:
    """A tensor as a regrouping of its source: ``axes`` (atoms per axis) and ``cols`` (one NumPy axis per
    feature atom, in the atoms' flat order; each entry a source column)."""

    axes: list[list[Atom]]
    cols: np.ndarray

    @property
    def rank(self) -> int:
        return len(self.axes)

    def dims(self) -> list[Poly]:
        """The size of each axis."""
        out = []
        for axis in self.axes:
            size = Poly.of(1)
            for a in axis:
                size = size * a.size
            out.append(size)
        return out

    def flat(self) -> list[Atom]:
        return [a for axis in self.axes for a in axis]

    def copy(self, axes=None, cols=None) -> View:
        return View([list(a) for a in (self.axes if axes is None else axes)],
                    self.cols if cols is None else cols)


def source(dims: list[Poly], feature_axes: set[int]) -> View:
    """The view of a source tensor: the axes in ``feature_axes`` (static) are feature atoms, the rest opaque.
    ``cols`` numbers the feature elements row-major."""
    axes, sizes = [], []
    for i, d in enumerate(dims):
        if d is None:
            raise LayoutError(f"dim {i} of the source has no known size")
        if i in feature_axes:
            if not d.is_const:
                raise LayoutError(f"feature dim {i} of the source is symbolic ({d}); it must be a fixed size")
            axes.append([Atom(d, True)] if d.value != 1 else [])
            if d.value != 1:
                sizes.append(d.value)
        else:
            axes.append([Atom(d, False)] if d != 1 else [])
    return View(axes, np.arange(int(np.prod(sizes)) if sizes else 1, dtype=np.int64).reshape(sizes))


def _feat_positions(view: View) -> list[int]:
    """For each flat atom, its index among the feature atoms (or -1)."""
    out, k = [], 0
    for a in view.flat():
        out.append(k if a.feat else -1)
        k += a.feat
    return out


def transpose(view: View, perm: list[int]) -> View:
    if sorted(perm) != list(range(view.rank)):
        raise LayoutError(f"Transpose perm {perm} does not permute rank {view.rank}")
    pos = _feat_positions(view)
    starts, k = [], 0
    for axis in view.axes:
        starts.append(k)
        k += len(axis)
    order = [pos[starts[p] + j] for p in perm for j in range(len(view.axes[p])) if pos[starts[p] + j] >= 0]
    return view.copy(axes=[view.axes[p] for p in perm], cols=view.cols.transpose(order) if order else view.cols)


def reshape(view: View, target: list[Poly]) -> View:
    """Regroup the atoms into ``target`` dims (0 and -1 already resolved). Feature atoms split where a
    target dim needs part of one; opaque atoms must land whole."""
    flat = view.flat()
    cols = view.cols
    feat_index = [i for i, a in enumerate(flat) if a.feat]
    new_axes: list[list[Atom]] = []
    i = 0

    def split(at: int, hi: int):
        """Split flat atom ``at`` (a feature atom) into (hi, size / hi)."""
        nonlocal cols, feat_index
        a = flat[at]
        k = feat_index.index(at)
        lo = a.size.value // hi
        shape = list(cols.shape)
        cols = cols.reshape(shape[:k] + [hi, lo] + shape[k + 1:])
        flat[at:at + 1] = [Atom(Poly.of(hi), True), Atom(Poly.of(lo), True)]
        feat_index = [j for j, x in enumerate(flat) if x.feat]

    for t in target:
        group: list[Atom] = []
        need = t
        while need != 1:
            if i >= len(flat):
                raise LayoutError(f"Reshape to {target}: the tensor has too few elements for dim {t}")
            a = flat[i]
            rest = need.divide(a.size)
            if rest is not None:
                group.append(a)
                need = rest
                i += 1
                continue
            if a.feat and need.is_const and a.size.value % need.value == 0 and need.value > 1:
                split(i, need.value)
                continue
            raise LayoutError(f"Reshape to {target}: dim {t} does not group the axes' factors "
                              f"({', '.join(str(x.size) for x in flat[i:])}) exactly")
        new_axes.append(group)
    leftover = [a for a in flat[i:] if a.size != 1]
    if leftover:
        raise LayoutError(f"Reshape to {target} leaves factors {[str(a.size) for a in leftover]} unplaced")
    kept = sum(1 for axis in new_axes for a in axis if a.feat)
    return View(new_axes, cols.reshape(cols.shape[:kept]) if cols.ndim > kept else cols)


def resolve_target(view: View, shape: list[Poly], allowzero: bool) -> list[Poly]:
    """ONNX Reshape's target with 0 (copy the input dim, unless ``allowzero``) and -1 (inferred) resolved."""
    dims = view.dims()
    out: list[Poly | None] = []
    for k, d in enumerate(shape):
        if d == 0 and not allowzero:
            if k >= len(dims):
                raise LayoutError(f"Reshape target {shape} copies dim {k} the input lacks")
            out.append(dims[k])
        elif d == -1:
            out.append(None)
        elif d.is_const and d.value < 0:
            raise LayoutError(f"Reshape target {shape} has a negative dim")
        else:
            out.append(d)
    if out.count(None) > 1:
        raise LayoutError(f"Reshape target {shape} has more than one -1")
    if None in out:
        total = Poly.of(1)
        for d in dims:
            total = total * d
        known = Poly.of(1)
        for d in out:
            if d is not None:
                known = known * d
        rest = total.divide(known)
        if rest is None:
            raise LayoutError(f"Reshape target {shape}: the -1 dim is not a whole size ({total} / {known})")
        out[out.index(None)] = rest
    return out  # type: ignore[return-value]


def _merge_axis(view: View, axis: int) -> tuple[View, int]:
    """The view with the feature atoms of ``axis`` merged into one (the axis must have only feature atoms);
    returns the view and the index of that atom's NumPy axis in ``cols``."""
    atoms = view.axes[axis]
    if any(not a.feat for a in atoms):
        raise LayoutError(f"axis {axis} holds a batch or sequence size; it cannot be indexed or sliced here")
    pos = _feat_positions(view)
    before = sum(len(a) for a in view.axes[:axis])
    ks = [pos[before + j] for j in range(len(atoms))]
    size = int(np.prod([a.size.value for a in atoms])) if atoms else 1
    shape = list(view.cols.shape)
    if ks:
        first = ks[0]
        cols = view.cols.reshape(shape[:first] + [size] + shape[first + len(ks):])
    else:  # a unit axis: give it a NumPy axis of size 1
        first = sum(1 for a in view.flat()[:before] if a.feat)
        cols = np.expand_dims(view.cols, first)
    axes = [list(a) for a in view.axes]
    axes[axis] = [Atom(Poly.of(size), True)]
    return View(axes, cols), first


def _finish_axis(view: View, axis: int) -> View:
    """Drop the atom of ``axis`` again if it has size 1 (a unit axis has no atoms)."""
    atoms = view.axes[axis]
    if len(atoms) == 1 and atoms[0].size == 1:
        k = sum(1 for a in view.flat()[:sum(len(a) for a in view.axes[:axis])] if a.feat)
        axes = [list(a) for a in view.axes]
        axes[axis] = []
        return View(axes, view.cols.reshape(view.cols.shape[:k] + view.cols.shape[k + 1:]))
    return view


def gather(view: View, axis: int, index, scalar: bool) -> View:
    """Gather feature indices ``index`` (an int or a list) along ``axis``; a scalar index drops the axis."""
    merged, k = _merge_axis(view, axis)
    size = merged.axes[axis][0].size.value
    idx = np.asarray(index, dtype=np.int64)
    idx = np.where(idx < 0, idx + size, idx)
    if np.any(idx < 0) or np.any(idx >= size):
        raise LayoutError(f"Gather index {index} is out of range for size {size}")
    cols = np.take(merged.cols, idx, axis=k)
    axes = [list(a) for a in merged.axes]
    if scalar:
        del axes[axis]
        return View(axes, cols)
    axes[axis] = [Atom(Poly.of(int(idx.size)), True)]
    return _finish_axis(View(axes, cols), axis)


def slice_axis(view: View, axis: int, start: int, end: int, step: int) -> View:
    dims = view.dims()
    if not view.axes[axis] or any(not a.feat for a in view.axes[axis]):
        size = dims[axis]
        if start == 0 and step == 1 and (size.is_const and end >= size.value or end >= 2**62):
            return view  # the whole axis: nothing to do
        raise LayoutError(f"Slice {start}:{end}:{step} of axis {axis} cuts a batch or sequence size")
    merged, k = _merge_axis(view, axis)
    size = merged.axes[axis][0].size.value
    picked = np.arange(size)[slice(start, end, step)]
    cols = np.take(merged.cols, picked, axis=k)
    axes = [list(a) for a in merged.axes]
    axes[axis] = [Atom(Poly.of(int(picked.size)), True)] if picked.size != 1 else [Atom(Poly.of(1), True)]
    return _finish_axis(View(axes, cols), axis)


def unsqueeze(view: View, axes: list[int]) -> View:
    rank = view.rank + len(axes)
    out = [list(a) for a in view.axes]
    for a in sorted(x + rank if x < 0 else x for x in axes):
        out.insert(a, [])
    return View(out, view.cols)


def squeeze(view: View, axes: list[int] | None) -> View:
    dims = view.dims()
    if axes is None:
        axes = [i for i, d in enumerate(dims) if d == 1]
    axes = sorted(a + view.rank if a < 0 else a for a in axes)
    for a in axes:
        if dims[a] != 1:
            raise LayoutError(f"Squeeze axis {a} has size {dims[a]}, not 1")
    cols = view.cols
    for a in reversed(axes):
        if view.axes[a]:  # size-1 feature atoms: drop their NumPy axes
            k = sum(1 for x in view.flat()[:sum(len(b) for b in view.axes[:a])] if x.feat)
            for _ in view.axes[a]:
                cols = cols.reshape(cols.shape[:k] + cols.shape[k + 1:])
    return View([list(x) for i, x in enumerate(view.axes) if i not in axes], cols)


def expand(view: View, target: list[Poly]) -> View:
    """ONNX Expand (NumPy broadcasting): unit axes grow into repeated feature atoms (the GQA repeat)."""
    if len(target) < view.rank:
        target = [Poly.of(1)] * (view.rank - len(target)) + list(target)
    v = unsqueeze(view, list(range(len(target) - view.rank))) if len(target) > view.rank else view
    dims = v.dims()
    for axis, (have, want) in enumerate(zip(dims, target)):
        if want == 1 or want == have:
            continue
        if have != 1:
            raise LayoutError(f"Expand to {target}: axis {axis} of size {have} cannot become {want}")
        if not want.is_const:
            raise LayoutError(f"Expand to {target} repeats along a batch or sequence size ({want})")
        k = sum(1 for a in v.flat()[:sum(len(b) for b in v.axes[:axis])] if a.feat)
        squeezed = _drop_atoms(v, axis)
        cols = np.repeat(np.expand_dims(squeezed.cols, k), want.value, axis=k)
        axes = [list(a) for a in squeezed.axes]
        axes[axis] = [Atom(want, True)]
        v = View(axes, cols)
    return v


def _drop_atoms(view: View, axis: int) -> View:
    """``view`` with the (size-1) atoms of ``axis`` removed: the axis stays, as a unit axis."""
    cols = view.cols
    k = sum(1 for x in view.flat()[:sum(len(b) for b in view.axes[:axis])] if x.feat)
    for a in view.axes[axis]:
        if a.feat:
            cols = cols.reshape(cols.shape[:k] + cols.shape[k + 1:])
    axes = [list(a) for a in view.axes]
    axes[axis] = []
    return View(axes, cols)


def linear(view: View, n_in: int, n_out: int) -> View:
    """A projection on the last axis (``x @ W``): the last axis must hold the whole source feature axis in
    order, and nothing else may be a feature; the result's last axis is a new feature atom of ``n_out``."""
    if view.rank < 1:
        raise LayoutError("a projection needs a tensor of rank >= 1")
    last = view.axes[-1]
    others = [a for axis in view.axes[:-1] for a in axis if a.feat]
    size = int(np.prod([a.size.value for a in last])) if last and all(a.feat for a in last) else None
    if others or size != n_in or not np.array_equal(view.cols.reshape(-1), np.arange(n_in)):
        raise LayoutError("the projection's input is not the source's features in their own order")
    return View([list(a) for a in view.axes[:-1]] + [[Atom(Poly.of(n_out), True)]], np.arange(n_out, dtype=np.int64))


def heads(view: View, transposed: bool = False) -> tuple[Poly, Poly, np.ndarray]:
    """``(batch, seq, cols[h, d])`` of a view shaped (B, H, S, D), or (B, H, D, S) when ``transposed``:
    the batch and sequence axes must each be one opaque atom, the head and dim axes feature atoms only."""
    if view.rank != 4:
        raise LayoutError(f"expected a rank-4 (batch, heads, seq, dim) tensor, got rank {view.rank}")
    seq_axis, dim_axis = (3, 2) if transposed else (2, 3)
    for axis in (0, seq_axis):
        atoms = view.axes[axis]
        if len(atoms) != 1 or atoms[0].feat:
            raise LayoutError(f"axis {axis} is not one batch/sequence size ({[str(a.size) for a in atoms]})")
    for axis in (1, dim_axis):
        if any(not a.feat for a in view.axes[axis]):
            raise LayoutError(f"axis {axis} mixes a batch or sequence size into the heads or head dims")
    h = int(np.prod([a.size.value for a in view.axes[1]])) if view.axes[1] else 1
    d = int(np.prod([a.size.value for a in view.axes[dim_axis]])) if view.axes[dim_axis] else 1
    return view.axes[0][0].size, view.axes[seq_axis][0].size, view.cols.reshape(h, d)


def tokens(view: View) -> tuple[Poly, Poly, np.ndarray]:
    """``(batch, seq, cols)`` of a view shaped (B, S, N): two opaque atoms and a feature axis."""
    if view.rank != 3:
        raise LayoutError(f"expected a rank-3 (batch, seq, features) tensor, got rank {view.rank}")
    for axis in (0, 1):
        atoms = view.axes[axis]
        if len(atoms) != 1 or atoms[0].feat:
            raise LayoutError(f"axis {axis} is not one batch/sequence size")
    if any(not a.feat for a in view.axes[2]):
        raise LayoutError("the feature axis mixes in a batch or sequence size")
    return view.axes[0][0].size, view.axes[1][0].size, view.cols.reshape(-1)
