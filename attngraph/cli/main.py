"""``attngraph``: the command line. Each sub-command is one module with ``configure`` and ``run``,
listed once in ``COMMANDS``.

    attngraph info                         Python, packages, hardware, backends (available or why not)
    attngraph show [graph flags] [--save]  build or load a graph and print its text form
    attngraph run  [graph flags] --backend numpy --batch 2 --q-len 16
    attngraph export OUT.onnx [graph flags] --style auto|decomposed|attention|contrib
    attngraph conformance [--backends ...] [--cases PATTERN] [--dtype ...] [--json F] [--markdown F] [--html F]
    attngraph check                        the first command: backend choice, quick conformance, ONNX export
    attngraph tune [graph flags] --batch 8 --q-len 1024 [--refresh | --clear]
    attngraph generate CHECKPOINT_DIR --backend numba --prompt-len 128 --new-tokens 64
    attngraph inspect MODEL.onnx           the attention subgraphs discovery finds, and what each computes
    attngraph optimize IN.onnx OUT.onnx    each attention rewritten in one export style, checked
    attngraph check-model MODEL.onnx       each attention layer on every backend on the model's own values

Usage errors (bad flags, an unknown backend, a missing file) exit with status 2 and one line on
stderr; a failed check or conformance run exits with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from attngraph.cli import check, conformance, export, generate, hf, info, run, show, tune
from attngraph.cli import check_model as check_model_cmd
from attngraph.cli import inspect as inspect_cmd
from attngraph.cli import optimize as optimize_cmd
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
    "hf-export": Command("list the attention layers of a local Hugging Face checkpoint and export them to ONNX",
                         hf.configure, hf.run),
    "generate": Command("greedy generation of a local checkpoint with attngraph's attention beside sdpa and eager: "
                        "tokens/s and the tokens checked", generate.configure, generate.run),
    "inspect": Command("list the attention subgraphs discovery finds in an ONNX model", inspect_cmd.configure,
                       inspect_cmd.run),
    "optimize": Command("rewrite every attention subgraph of an ONNX model in one export style, checked under "
                        "onnxruntime", optimize_cmd.configure, optimize_cmd.run),
    "check-model": Command("run every attention layer of an ONNX model on every backend on the model's own values "
                           "against the float64 reference", check_model_cmd.configure, check_model_cmd.run),
}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, ``attngraph <command>: error: ...``, exit status 2: the same
    form as the errors a command reports itself (argparse's default prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each help text ends with its default, except where that says nothing (None, a flag's False) or the
    help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``attngraph`` parser: one sub-command per ``COMMANDS`` entry; help shows defaults and choices."""
    parser = _Parser(prog="attngraph", description="attention graphs on every backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help,
                                     formatter_class=_HelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 a failed check, 2 a usage error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed): a status, not an exception
        return e.code if isinstance(e.code, int) else 2
    try:
        return COMMANDS[args.command].run(args)
    except (AttnGraphError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        # one line: a GraphError's "\n  at: <node>" context joins the message instead of starting a new line
        line = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
        print(f"attngraph {args.command}: error: {line}", file=sys.stderr)
        return 2


def console() -> None:
    """The ``attngraph`` command. The process is ours, so OpenMP workers sleep as soon as a parallel region ends
    (``OMP_WAIT_POLICY=PASSIVE`` unless the environment says otherwise): torch's and numba's then share the
    cores instead of starving each other, and numba runs on its OpenMP layer (see backends/numba/rules.py).
    ``main`` itself leaves the environment alone (tests and embedders call it in their own process)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())


if __name__ == "__main__":
    console()
