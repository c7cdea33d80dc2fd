"""attngraph's built-in backends; each module imports its framework at the top, so load them lazily
through ``attngraph.lowering.registry.get_backend``."""
