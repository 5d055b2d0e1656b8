"""The one exception type raised while building flow filters."""
from __future__ import annotations


class FilterError(ValueError):
    """A FlowFilter is malformed (bad CIDR, regex, selector, status code, ...).

    ``str(err)`` is a human-readable message naming the offending field and
    value; API layers can return it verbatim (gRPC INVALID_ARGUMENT, HTTP 400).
    """
