"""webb-ui settings (command-line flags, see main.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    server: str = "127.0.0.1:4245"      # relay (or agent) gRPC address
    history: int = 2000                 # flows read from history when a view opens
    flows_window: int = 5000            # recent flows kept per view (table, details)
    max_views: int = 16                 # distinct filter sets served at once
    view_idle: float = 60.0             # seconds before an unwatched view closes
    max_cards: int = 500                # per view
    max_arrows: int = 2000              # per view
    map_ttl: float = 900.0              # seconds a card/arrow stays after its last flow
    table_rows: int = 1000              # rows a browser keeps (sent to the page)
    push_interval: float = 0.5          # seconds between live table updates
    map_interval: float = 1.0           # seconds between map updates (when changed)
    max_pending: int = 50_000           # flows a view's stream may hold for it before shedding
    max_rows_per_push: int = 500        # newest rows sent per update; older ones are counted
    poll_interval: float = 2.0          # relay status poll
    tls_ca: str = ""                    # PEM file: talk TLS to the relay
    tls_server_name: str = ""
