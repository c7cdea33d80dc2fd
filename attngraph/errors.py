"""attngraph's own error types. Every message names the thing at fault, what was expected, and the fix."""

from __future__ import annotations


class AttnGraphError(Exception):
    """Base class of every error attngraph raises on purpose."""


class GraphError(AttnGraphError, ValueError):
    """A graph breaks an IR rule (types, SSA, arity, attributes). Quotes the node's text line."""


class ConfigError(AttnGraphError, ValueError):
    """An attention configuration cannot be built (e.g. heads do not divide d_model)."""


class InputError(AttnGraphError, ValueError):
    """An array given to a compiled graph does not match the graph's declared input."""


class WeightError(AttnGraphError, ValueError):
    """A weight is missing, unexpected, or has the wrong shape or dtype."""


class SerializationError(AttnGraphError, ValueError):
    """A saved graph file is malformed or of an unknown format version."""


class BackendUnavailable(AttnGraphError, ImportError):
    """A backend's package is not installed; the message names the pip extra that brings it."""


class LoweringError(AttnGraphError, RuntimeError):
    """A backend cannot lower or run a node; names the op, the backend and the node's text line."""


class Unsupported(AttnGraphError):
    """Something a backend, an export style or an importer refuses on purpose, because it cannot
    compute it exactly; the message names what and what to use instead. The conformance runner
    reports these as skipped, every other error as failed."""


class UnsupportedLowering(Unsupported, LoweringError):
    """A backend or export style refuses a graph it cannot lower exactly (names what, and the alternative)."""


class UnsupportedModel(Unsupported, SerializationError):
    """A model file an importer cannot express as an attngraph graph (names the node or attribute)."""


class UnsupportedConfig(Unsupported, ConfigError):
    """A module or option an importer cannot express in the IR (names it, and what to do instead)."""
