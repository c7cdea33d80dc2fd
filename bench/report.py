"""Turn raw worker results into figures: ratios, GFLOP/s, tables (terminal, Markdown), JSON, PNG plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

SCHEMA = "attngraph.bench/1"
# relative L2 error against the float64 reference above which a result counts as wrong
AGREE_BUDGET = {"float64": 1e-12, "float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}


def assemble(machine: dict, ceilings: dict, exports: dict, results: list[dict], args, wall_s: float) -> dict:
    """Add derived figures to each result and wrap everything with the machine and settings."""
    gemm = max((v.get("GFLOP/s", 0.0) for k, v in ceilings.items() if k.startswith("gemm")), default=0.0)
    best_peer: dict[str, float] = {}
    for r in results:
        if r["family"] == "peer" and r.get("status") == "ok":
            best_peer[r["case_key"]] = min(best_peer.get(r["case_key"], float("inf")), r["median_s"])
    for r in results:
        if r.get("status") != "ok":
            continue
        r["gflops"] = r["flops"] / r["median_s"] / 1e9
        r["ceiling_fraction"] = r["gflops"] / gemm if gemm else None
        peer = best_peer.get(r["case_key"])
        r["vs_best_peer"] = peer / r["median_s"] if peer else None
        r["agrees"] = r["nan_count"] == 0 and r["rel_err"] <= AGREE_BUDGET[r["case"]["dtype"]]
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": wall_s,
            "machine": machine, "settings": {k: v for k, v in vars(args).items()},
            "ceilings": ceilings, "gemm_ceiling_gflops": gemm, "exports": exports, "results": results}


def _fmt_row(r: dict) -> list[str]:
    if r.get("status") != "ok":
        return [r["impl"], r.get("status", "?"), "", "", "", "", "", r.get("reason", "")[:70]]
    ratio = f"{r['vs_best_peer']:.2f}x" if r.get("vs_best_peer") else "-"
    frac = f"{100 * r['ceiling_fraction']:.0f}%" if r.get("ceiling_fraction") else "-"
    ok = "ok" if r["agrees"] else "WRONG"
    return [r["impl"], f"{r['median_s'] * 1e3:.2f}", ratio, f"{r['gflops']:.1f}", frac,
            f"{r['peak_rss_mib']:.0f}", f"{r['setup_s'] + r['first_call_s']:.2f}", f"{r['rel_err']:.1e} {ok}"]


HEADER = ["impl", "median ms", "vs best peer", "GFLOP/s", "% GEMM", "peak RSS MiB", "setup+1st s", "rel err"]


def _by_case(data: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in data["results"]:
        groups.setdefault(r["case_key"], []).append(r)
    return groups


def terminal_table(data: dict) -> str:
    """Per case: one row per implementation; ratios > 1 mean faster than the fastest peer."""
    c = data["ceilings"]
    lines = ["ceilings: " + ", ".join(f"{k} {list(v.values())[0]:.1f} {list(v)[0]}" if v.get("status") != "killed"
                                      and "reason" not in v else f"{k} {v.get('reason')}" for k, v in c.items())]
    widths = [26, 11, 14, 10, 8, 14, 13, 18]
    for key, rows in _by_case(data).items():
        lines.append(f"\n{key}")
        lines.append("  " + "".join(h.ljust(w) for h, w in zip(HEADER, widths)))
        for r in rows:
            lines.append("  " + "".join(v.ljust(w) for v, w in zip(_fmt_row(r), widths)))
    ok = sum(r.get("status") == "ok" for r in data["results"])
    lines.append(f"\n{ok} measured, {len(data['results']) - ok} skipped/failed, in {data['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


def markdown(data: dict) -> str:
    m = data["machine"]
    out = [f"# attngraph benchmark ({data['created']})", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
           + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
           f"GEMM ceiling (best fp32 of NumPy/torch/onnxruntime): {data['gemm_ceiling_gflops']:.1f} GFLOP/s; "
           f"copy bandwidth {data['ceilings'].get('copy', {}).get('GB/s', float('nan')):.1f} GB/s.", "",
           "Ratios: the fastest peer's median time / this implementation's (> 1 = faster than every peer). "
           "GFLOP/s counts only the work an implementation does (causal halves attention only for kernels that "
           "skip the masked half). rel err: ||out - ref|| / ||ref|| against a float64 reference.", ""]
    out.append("| case | " + " | ".join(HEADER) + " |")
    out.append("|" + "---|" * (len(HEADER) + 1))
    for key, rows in _by_case(data).items():
        for r in rows:
            out.append(f"| {key} | " + " | ".join(_fmt_row(r)) + " |")
    return "\n".join(out) + "\n"


def plots(data: dict, folder: Path) -> list[Path]:
    """time_vs_seq.png and memory_vs_seq.png: one panel per (batch, causal), one line per implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ok = [r for r in data["results"] if r.get("status") == "ok"]
    panels = sorted({(r["case"]["batch"], r["case"]["causal"]) for r in ok})
    impls = sorted({r["impl"] for r in ok})
    written = []
    for metric, label, fname in (("median_s", "median time (ms)", "time_vs_seq.png"),
                                 ("peak_rss_mib", "peak RSS (MiB)", "memory_vs_seq.png")):
        fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.8), squeeze=False)
        for ax, (batch, causal) in zip(axes[0], panels):
            for name in impls:
                pts = sorted((r["case"]["seq"], r[metric] * (1e3 if metric == "median_s" else 1))
                             for r in ok if r["impl"] == name and r["case"]["batch"] == batch
                             and r["case"]["causal"] == causal)
                if pts:
                    style = "-o" if name.startswith("attngraph") else "--."
                    ax.plot(*zip(*pts), style, label=name, markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            seqs = sorted({r["case"]["seq"] for r in ok})
            ax.set_xticks(seqs, [str(t) for t in seqs])
            ax.set_title(f"B={batch}, {'causal' if causal else 'full'}")
            ax.set_xlabel("sequence length")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(label)
        axes[0][-1].legend(fontsize=7, loc="upper left")
        fig.suptitle(f"self-attention, d_model={ok[0]['case']['d_model'] if ok else '?'}; {data['machine']['cpu']}",
                     fontsize=9)
        fig.tight_layout()
        path = folder / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_all(data: dict, folder: Path, extra_json: str | None = None) -> list[Path]:
    """bench.json, bench.md and the plots under ``folder`` (atomic writes)."""
    from attngraph.fileio import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=str)
    files = [atomic_write_text(folder / "bench.json", text), atomic_write_text(folder / "bench.md", markdown(data))]
    if extra_json:
        files.append(atomic_write_text(extra_json, text))
    return files + plots(data, folder)
