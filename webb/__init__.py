"""Shared code of webb's deployables: the generated API and helpers every service uses."""

__version__ = "0.1.0"
