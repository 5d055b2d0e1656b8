"""--tls-allow-insecure: gRPC's Python TLS cannot skip certificate verification, so
the channel talks plaintext HTTP/2 to a loopback socket and this proxy carries the
bytes over TLS (ALPN h2, optional client certificate) without verifying the server.
It runs an asyncio loop in a daemon thread (asyncio's TLS is safe for the full
duplex traffic that threads on one ssl socket are not)."""
from __future__ import annotations

import asyncio
import ssl
import threading

from webb.timeouts import wait_for


class TLSProxyError(ConnectionError):
    pass


class InsecureTLSProxy:
    def __init__(self, host: str, port: int, server_name: str, timeout: float,
                 cert_file: str = "", key_file: str = "") -> None:
        self.host, self.port = host, port
        self.server_name = server_name or host
        self.timeout = timeout
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        if cert_file and key_file:
            ctx.load_cert_chain(cert_file, key_file)
        self.ctx = ctx
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tls-proxy")

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _dial(self):
        return await wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ctx,
                                    server_hostname=self.server_name),
            self.timeout)

    async def _check(self) -> None:
        _, w = await self._dial()
        w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        # Ends normally even when cancelled at shutdown: asyncio's stream callback would
        # otherwise report the cancelled task on stderr.
        uw = None
        try:
            ur, uw = await self._dial()
            await asyncio.gather(_pump(cr, uw), _pump(ur, cw))
        except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.CancelledError):
            pass
        finally:
            for w in (cw, uw):
                if w is not None:
                    try:
                        w.close()
                    except (OSError, RuntimeError):
                        pass

    def start(self) -> "InsecureTLSProxy":
        """Check one handshake (errors read as TLS errors), then listen on loopback."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._check(), self._loop).result()
        except asyncio.TimeoutError:
            raise TLSProxyError(f"timed out after {self.timeout:g}s") from None
        except (OSError, ssl.SSLError) as e:
            raise TLSProxyError(str(e) or e.__class__.__name__) from None
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result()
        return self

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Cancel the connections' tasks, stop the loop and its thread."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await src.read(65536)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        try:
            dst.close()
        except (OSError, RuntimeError):
            pass
