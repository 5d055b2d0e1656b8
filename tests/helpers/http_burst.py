"""N HTTP/1.1 GETs at once, one connection each, for the L7 proxy's error paths.

usage: http_burst.py HOST PORT N TIMEOUT PATH
Prints a JSON list, one outcome per connection: the status code of the answer,
"closed" (closed without an answer), "reset", or "timeout" (nothing within TIMEOUT).
"""
import json
import socket
import sys
import threading

host, port, n, timeout, path = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                float(sys.argv[4]), sys.argv[5])
out: list = [None] * n


def one(i: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: server\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        out[i] = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else (
            "closed" if not data else data.decode("latin-1"))
    except socket.timeout:
        out[i] = "timeout"
    except ConnectionResetError:
        out[i] = "reset"
    except OSError as e:
        out[i] = f"error: {e}"
    finally:
        s.close()


threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
