"""Errors of the local stack: one root, one-line subclasses."""

from streamcart.errors import StreamcartError


class StackError(StreamcartError):
    """Something about the local stack (its processes, ports or artifacts) is wrong."""


class SetupError(StackError):
    """A tool or artifact the stack needs is missing and could not be installed."""


class NotReadyError(StackError):
    """A process did not pass its readiness check in time."""
