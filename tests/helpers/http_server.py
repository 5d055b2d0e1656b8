"""HTTP/1.1 test server for the L7 policy tests: keep-alive, sized and chunked bodies,
an answer cut in the middle (/cut), and in every answer what it got and from whom."""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size); self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""
    def _reply(self, body):
        if self.path.startswith("/cut"):  # closes in the middle of its answer
            self.send_response(200); self.send_header("Content-Length", "1000"); self.end_headers()
            self.wfile.write(b"x" * 10); self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path.startswith("/chunked"):
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        out = (f"{self.command} {self.path} peer={self.client_address[0]} body={len(body)}").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Peer", self.client_address[0])
        self.end_headers()
        self.wfile.write(out)
    def do_GET(self): self._reply(self._body())
    do_POST = do_PUT = do_DELETE = do_GET

class S(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionResetError):  # a client's reset: no error
            super().handle_error(request, client_address)

srv = S(("::", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
