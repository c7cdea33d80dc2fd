"""``attngraph info``: Python, packages, CPU, memory, and which backends load here (or why not)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from attngraph.lowering.registry import available_backends, backend_status
    from attngraph.sysinfo import describe_machine

    m = describe_machine()
    print(f"Python     {m['python']} on {m['platform']}")
    print(f"CPU        {m['cpu']} ({m['cores']} cores; {' '.join(m['cpu_flags']) or 'no vector flags read'})")
    print(f"Memory     {m['memory_gib']} GiB")
    print("Packages   " + ", ".join(f"{k} {v or '-'}" for k, v in m["packages"].items()))
    print("Backends")
    for name in available_backends():
        ok, why = backend_status(name)
        print(f"  {name:<8} {'available' if ok else 'unavailable: ' + why}")
    from attngraph.frontends.constructors import causal_self_attention
    from attngraph.selection import select_backend

    print("\nChoice for a causal MHA (d_model 512, 8 heads, batch 8, seq 1024); `attngraph tune` measures:")
    print(select_backend(causal_self_attention(512, 8), sizes={"batch": 8, "q_len": 1024}).explain())
    return 0
