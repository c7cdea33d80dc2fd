"""``attngraph``: the command line, one module per command (``main.COMMANDS``)."""

from attngraph.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
