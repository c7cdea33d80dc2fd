"""The prefill and decode benches of ``python -m bench.gpu``: the contenders of ``bench.gpu_contenders`` on one
shape at a time, round-robin in this process (``bench.roundrobin``), one Markdown table per shape.

Prefill: causal core attention, batch 1, each sequence length and dtype: attngraph's torch backend against SDPA
pinned to its flash and its efficient kernel. Decode: one new token per row against a cache of ``cache`` slots
(full after the step), the static-cache graph against ``index_copy_`` + SDPA over the valid prefix, each row
beside the copy floor (a device-to-device copy of the valid K and V, measured in the same rounds).
"""

from __future__ import annotations

import time

import torch

from bench import gpu_contenders as gc
from bench.roundrobin import round_robin, table

SDPA = ("flash", "efficient")


def _measure(factories: dict, settings, budget_s: float, causal: bool):
    """Build each contender (one that cannot run here gets its reason), check its output once against float64,
    then time the working ones round-robin. Returns (timings, errors, notes)."""
    runs, errors, notes = {}, {}, {}
    for name, (factory, problem) in factories.items():
        try:
            step, read = factory()
            step()
            runs[name] = step
            notes[name] = getattr(step, "note", "")
            if read is not None:
                errors[name] = gc.error_vs_float64(read(), problem, causal)
        except gc.Unavailable as e:
            notes[name] = f"not available: {e}"
        except Exception as e:  # noqa: BLE001 - one contender's failure is a row of the table, not the end
            notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    timings = round_robin(runs, rounds=settings.rounds, warmup=2, budget_s=budget_s, inner=3) if runs else {}
    return timings, errors, notes


def _rows(names, timings, errors, notes, extra):
    """Table rows: median, range, ``extra(name, ms)`` columns, error; a contender that did not run says why."""
    best = min((t.median_ms for n, t in timings.items() if n.startswith("SDPA")), default=None)
    rows = []
    for name in names:
        if name not in timings:
            rows.append([name, "-", "-", *(["-"] * len(extra(name, None))), "-", "", notes.get(name, "")])
            continue
        ms = timings[name].median_ms
        vs = f"{ms / best:.2f}" if best else "-"
        err = f"{errors[name]:.1e}" if name in errors else ""
        rows.append([name, f"{ms:.3f}", timings[name].spread, *extra(name, ms), vs, err, notes.get(name, "").strip()])
    return rows


def _best_line(what: str, timings) -> str:
    mine = timings.get("attngraph-torch")
    sdpa = {n: t.median_ms for n, t in timings.items() if n.startswith("SDPA")}
    if mine is None or not sdpa:
        return f"{what}: attngraph-torch or every SDPA kernel did not run"
    best = min(sdpa, key=sdpa.get)
    return f"{what}: attngraph-torch {mine.median_ms:.3f} ms = {mine.median_ms / sdpa[best]:.2f}x {best}"


def prefill_tables(s) -> tuple[str, str, str]:
    """(status, summary, Markdown) of the prefill bench at ``s``'s shapes (a ``gpu_steps.Settings``)."""
    device, budget = torch.device(s.device), s.budgets.get("prefill", 60)
    shapes = [(dtype, seq) for dtype in s.dtypes for seq in s.seqs]
    deadline, sections, lines = time.monotonic() + budget * 0.9, [], []
    headers = ["contender", "median ms", "range ms", "TFLOP/s", "x best SDPA", "max err / max |y|", "note"]
    for dtype, seq in shapes:
        if time.monotonic() > deadline:
            sections.append(f"### {dtype}, T {seq}\n\nnot run: the step's {budget:.0f} s budget was spent")
            continue
        p = gc.prefill_problem(1, s.heads, s.kv_heads, s.head_dim, seq, getattr(torch, dtype), device)
        factories = {"attngraph-torch": (lambda p=p: gc.attngraph_prefill(p), p)}
        factories.update({f"SDPA {k}": (lambda k=k, p=p: gc.sdpa_prefill(k, p), p) for k in SDPA})
        timings, errors, notes = _measure(factories, s, budget / len(shapes) / 2, causal=True)
        flops = 4 * s.heads * seq * seq * s.head_dim / 2  # causal: half the score matrix

        def tflops(name, ms, flops=flops):
            return ["-" if ms is None else f"{flops / (ms / 1e3) / 1e12:.3g}"]
        rows = _rows(factories, timings, errors, notes, tflops)
        sections.append(f"### {dtype}, T {seq}\n\n" + table(headers, rows))
        lines.append(_best_line(f"{dtype} T{seq}", timings))
        del p
    _free(device)
    intro = (f"Causal core attention, batch 1, {s.heads} q heads, {s.kv_heads} kv heads, head dim {s.head_dim}; "
             "TFLOP/s counts the causal half of the scores; x best SDPA: time / the fastest SDPA kernel's "
             "(below 1 is faster).")
    return ("ok" if lines else "failed", "; ".join(lines[-len(s.dtypes):]) or "nothing ran",
            intro + "\n\n" + "\n\n".join(sections))


def decode_tables(s) -> tuple[str, str, str]:
    """(status, summary, Markdown) of the decode bench at ``s``'s shapes (a ``gpu_steps.Settings``)."""
    device, budget = torch.device(s.device), s.budgets.get("decode", 60)
    shapes = [(dtype, b, c) for dtype in s.dtypes for b in s.batches for c in s.caches]
    deadline, sections, lines = time.monotonic() + budget * 0.9, [], []
    headers = ["contender", "median ms", "range ms", "x floor", "cache GB/s", "x best SDPA", "max err / max |y|",
               "note"]
    for dtype, batch, cache in shapes:
        title = f"### {dtype}, batch {batch}, cache {cache}"
        if time.monotonic() > deadline:
            sections.append(f"{title}\n\nnot run: the step's {budget:.0f} s budget was spent")
            continue
        p = gc.decode_problem(batch, s.heads, s.kv_heads, s.head_dim, cache, cache, getattr(torch, dtype), device)
        factories = {"floor: copy the cache": (lambda p=p: gc.copy_floor(p), p),
                     "attngraph-torch": (lambda p=p: gc.attngraph_decode(p), p)}
        factories.update({f"SDPA {k}": (lambda k=k, p=p: gc.sdpa_decode(k, p), p) for k in SDPA})
        timings, errors, notes = _measure(factories, s, budget / len(shapes) / 2, causal=False)
        floor = timings["floor: copy the cache"].median_ms if "floor: copy the cache" in timings else None
        nbytes = 2 * p.cache_k[:, :, :cache].numel() * p.cache_k.element_size()

        def bandwidth(name, ms, floor=floor, nbytes=nbytes):
            if ms is None:
                return ["-", "-"]
            return [f"{ms / floor:.2f}" if floor else "-", f"{nbytes / (ms / 1e3) / 1e9:.3g}"]
        sections.append(f"{title}\n\n" + table(headers, _rows(factories, timings, errors, notes, bandwidth)))
        lines.append(_best_line(f"{dtype} B{batch} cache {cache}", timings)
                     + (f" ({timings['attngraph-torch'].median_ms / floor:.2f}x the floor)"
                        if floor and "attngraph-torch" in timings else ""))
        del p
        _free(device)
    intro = (f"One new token per row, {s.heads} q heads, {s.kv_heads} kv heads, head dim {s.head_dim}; the cache is "
             "full after the step. floor: a device-to-device copy of the valid K and V (it reads and writes them; "
             "a step reads them once); cache GB/s: bytes of the valid K and V / the step's time.")
    return ("ok" if lines else "failed", "; ".join(lines[-1:]) or "nothing ran",
            intro + "\n\n" + "\n\n".join(sections))


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
