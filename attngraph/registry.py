"""Moved to ``attngraph.lowering.registry``; this alias keeps the old import path working."""

from attngraph.lowering.registry import *  # noqa: F403
from attngraph.lowering.registry import BUILTIN, unregister_backend  # noqa: F401
