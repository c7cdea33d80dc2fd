"""attngraph's benchmark harness: every backend beside the peers, in one run, each in its own process.

Run from the repository root: ``python -m bench`` (``--quick`` for a one-minute smoke run).
Not collected by pytest (``testpaths = ["tests"]``).
"""
