"""The one error type a bad metrics configuration raises."""
from __future__ import annotations


class ConfigError(ValueError):
    """A metrics option string or config file that cannot be used; the message is one line."""
