"""The version of attngraph (a module of its own so that no internal module imports the package facade)."""

__version__ = "0.1.0"
