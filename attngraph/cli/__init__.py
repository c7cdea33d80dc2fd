"""``attngraph``: the command line, one module per command (``main.COMMANDS``)."""

from attngraph.cli.main import COMMANDS, console, main

__all__ = ["COMMANDS", "console", "main"]
