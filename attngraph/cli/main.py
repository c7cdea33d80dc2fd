"""``attngraph``: the command line. Each sub-command is one module with ``configure`` and ``run``,
listed once in ``COMMANDS``.

    attngraph info                         Python, packages, hardware, backends (available or why not)
    attngraph show [graph flags] [--save]  build or load a graph and print its text form
    attngraph run  [graph flags] --backend numpy --batch 2 --q-len 16
    attngraph export OUT.onnx [graph flags] --style auto|decomposed|attention|contrib
    attngraph conformance [--backends ...] [--cases PATTERN] [--dtype ...] [--json F] [--markdown F] [--html F]
    attngraph check                        the first command: backend choice, quick conformance, ONNX export
    attngraph tune [graph flags] --batch 8 --q-len 1024 [--refresh | --clear]

Usage errors (bad flags, an unknown backend, a missing file) exit with status 2 and one line on
stderr; a failed check or conformance run exits with 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from attngraph.cli import check, conformance, export, info, run, show, tune
from attngraph.errors import AttnGraphError


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "info": Command("show Python, packages, hardware and which backends are available", info.configure, info.run),
    "show": Command("build (or load) a graph and print its text form", show.configure, show.run),
    "run": Command("run a graph on random inputs on a backend and summarise the outputs", run.configure, run.run),
    "export": Command("export a graph (from flags or --load) to an ONNX file", export.configure, export.run),
    "conformance": Command("run the conformance corpus on every backend against the float64 reference",
                           conformance.configure, conformance.run),
    "check": Command("pick a backend for this machine, run the quick conformance, export and verify ONNX",
                     check.configure, check.run),
    "tune": Command("time the eligible backends for a graph at given sizes and cache the winner",
                    tune.configure, tune.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attngraph", description="attention graphs on every backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (AttnGraphError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"attngraph {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
