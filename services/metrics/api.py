"""The interface every metric handler implements (one module per family in handlers/).

A handler is created from its options (Hubble syntax, already split into a dict),
registers its metric families in the series store, and counts flows in
``process``. Like Hubble's, handlers that count nothing for a flow return at once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping

from webb.api.flow import flow_pb2 as fpb

from .context import OPTION_KEYS, OPTION_NAMES, ContextOptions
from .errors import ConfigError
from .series import SeriesStore, Vec

NAMESPACE = "hubble"


class ContextCache:
    """Hands out one ContextOptions per distinct configuration, so that handlers with
    the same context compute a flow's context labels once."""

    def __init__(self) -> None:
        self._by_status: dict[str, ContextOptions] = {}

    def get(self, options: Mapping[str, str]) -> ContextOptions:
        ctx = ContextOptions(options)
        return self._by_status.setdefault(ctx.status(), ctx)

    def all(self) -> list[ContextOptions]:
        return list(self._by_status.values())


class Handler(ABC):
    #: plugin name, as written in --metrics ("port-distribution", "httpV2", ...)
    name: ClassVar[str]
    #: options of this handler besides the context options: lower-case key -> help
    handler_options: ClassVar[dict[str, str]] = {}
    #: plugins that cannot be enabled together with this one
    conflicts: ClassVar[tuple[str, ...]] = ()
    #: does it understand context options (all of Hubble's flow metrics do)
    uses_context: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, str], store: SeriesStore,
                 contexts: ContextCache | None = None) -> None:
        self.options = dict(options)
        allowed = set(self.handler_options) | (OPTION_KEYS if self.uses_context else set())
        for key in self.options:
            if key.lower() not in allowed:
                valid = ", ".join(sorted(OPTION_NAMES.get(k, self._spelling(k)) for k in allowed))
                raise ConfigError(f"metric '{self.name}': unknown option '{key}' (valid: {valid})")
        self.context = (contexts or ContextCache()).get(self.options)
        self.vecs: list[Vec] = []
        self.init(store)

    @classmethod
    def _spelling(cls, key: str) -> str:
        return {"ignoreaaaa": "ignoreAAAA"}.get(key, key)

    def flag(self, key: str) -> bool:
        """A value-less option such as ``query`` or ``any-drop`` (case-insensitive)."""
        return any(k.lower() == key for k in self.options)

    def option(self, key: str) -> str | None:
        for k, v in self.options.items():
            if k.lower() == key:
                return v
        return None

    @abstractmethod
    def init(self, store: SeriesStore) -> None:
        """Registers the handler's metric families (append them to self.vecs)."""

    @abstractmethod
    def process(self, flow: fpb.Flow) -> None:
        """Counts one flow."""

    def status(self) -> str:
        return self.context.status()
