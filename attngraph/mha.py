"""Moved to ``attngraph.frontends.constructors``; this alias keeps the old import path working."""

from attngraph.frontends.constructors import *  # noqa: F403
from attngraph.frontends.constructors import SCORE_STAGES  # noqa: F401
