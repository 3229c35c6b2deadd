"""The root of every error streamcart raises on purpose.

Each package adds one-line subclasses; library errors are wrapped at the edge with ``raise ... from exc``.
"""


class StreamcartError(Exception):
    """Base class of every error raised by streamcart itself."""


class ConfigurationError(StreamcartError):
    """A setting is missing or inconsistent."""
