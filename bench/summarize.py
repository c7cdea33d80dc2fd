"""``python -m bench.summarize bench.json``: the issue targets from one run's JSON, as Markdown tables.

- Numba vs torch SDPA (time and peak RSS ratios) and Numba's causal/full time ratio;
- the torch backend's overhead over calling SDPA directly;
- ``auto`` (rule table) and ``auto`` with autotune against the fastest attngraph backend.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

BACKENDS = ("attngraph-numba", "attngraph-numpy", "attngraph-onnx", "attngraph-torch")


def _table(data: dict) -> dict:
    t = defaultdict(dict)
    for r in data["results"]:
        if r.get("status") == "ok":
            t[r["case_key"]][r["impl"]] = r
    return t


def summarize(data: dict) -> str:
    t = _table(data)
    out = ["| case | numba ms | SDPA ms | SDPA/numba (>=1 wins) | numba RSS / SDPA RSS | numba causal/full |",
           "|---|---|---|---|---|---|"]
    for key, row in t.items():
        n, s = row.get("attngraph-numba"), row.get("torch-sdpa")
        if not (n and s):
            continue
        causal_full = ""
        if " causal " in key:
            full = t.get(key.replace(" causal ", " full "), {}).get("attngraph-numba")
            causal_full = f"{n['median_s'] / full['median_s']:.2f}" if full else ""
        out.append(f"| {key} | {n['median_s'] * 1e3:.1f} | {s['median_s'] * 1e3:.1f} | "
                   f"{s['median_s'] / n['median_s']:.2f} | {n['peak_rss_mib'] / s['peak_rss_mib']:.2f} | {causal_full} |")
    out += ["", "| case | attngraph-torch ms | torch-sdpa ms | overhead |", "|---|---|---|---|"]
    for key, row in t.items():
        a, s = row.get("attngraph-torch"), row.get("torch-sdpa")
        if a and s:
            out.append(f"| {key} | {a['median_s'] * 1e3:.1f} | {s['median_s'] * 1e3:.1f} | "
                       f"{(a['median_s'] / s['median_s'] - 1) * 100:+.0f}% |")
    out += ["", "Decision quality: the picked backend's own row / the fastest row (same process kind), then the",
            "auto process's time / the fastest (adds process-to-process variance, large below ~10 ms).", "",
            "| case | fastest backend | ms | auto / auto-tuned pick | picked / fastest (auto, tuned) "
            "| auto / fastest | auto-tuned / fastest |", "|---|---|---|---|---|---|---|"]
    for key, row in t.items():
        mine = {k: row[k]["median_s"] for k in BACKENDS if k in row}
        if not mine or "attngraph-auto" not in row:
            continue
        best = min(mine, key=mine.get)
        auto = row["attngraph-auto"]["median_s"] / mine[best]
        tuned = row["attngraph-auto-tuned"]["median_s"] / mine[best] if "attngraph-auto-tuned" in row else float("nan")
        picks = [row.get(k, {}).get("note", "?").removeprefix("auto:") for k in ("attngraph-auto", "attngraph-auto-tuned")]
        quality = [f"{mine['attngraph-' + p] / mine[best]:.2f}" if "attngraph-" + p in mine else "?" for p in picks]
        out.append(f"| {key} | {best.removeprefix('attngraph-')} | {mine[best] * 1e3:.1f} | {picks[0]} / {picks[1]} | "
                   f"{quality[0]}, {quality[1]} | {auto:.2f} | {tuned:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(json.load(open(sys.argv[1], encoding="utf-8"))))
