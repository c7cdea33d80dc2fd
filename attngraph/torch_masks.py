"""Moved to ``attngraph.frontends.torch_masks``; this alias keeps the old import path working."""

from attngraph.frontends.torch_masks import *  # noqa: F403
