"""bench/relay.c (l7_policy_bench's "relay" mode, the ceiling of a user-space proxy):
built with gcc as the bench builds it and run in a network namespace of its own
(`unshare -n`, loopback only) in front of an echo server. Every byte comes back, and a
connection that ended leaves no file descriptor open in the relay."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

RELAY_C = Path(__file__).resolve().parents[2] / "bench" / "relay.c"

# Runs inside `unshare -n`: an echo server on 127.0.0.1:9000, the relay on 9001, then
# CONNS connections through it, one after another, each echoing a payload larger than one
# recv() of the relay, read back whole, then closed by the client. Prints the relay's open
# descriptors once it is ready and once every connection's descriptors are gone (or 5 s
# passed: the relay kept them).
INNER = r"""
import json, os, socket, subprocess, sys, threading, time
relay, conns = sys.argv[1], int(sys.argv[2])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = socket.socket()
srv.bind(("127.0.0.1", 9000))
srv.listen(64)

def echo(c):
    with c:
        while data := c.recv(1 << 16):
            c.sendall(data)

def serve():
    while True:
        threading.Thread(target=echo, args=(srv.accept()[0],), daemon=True).start()

threading.Thread(target=serve, daemon=True).start()
p = subprocess.Popen([relay, "9001", "127.0.0.1", "9000"], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
assert p.stdout.readline().strip() == "ready"
fds = lambda: len(os.listdir(f"/proc/{p.pid}/fd"))
before = fds()
payload = os.urandom(300_000)
echoed = 0
for _ in range(conns):
    with socket.create_connection(("127.0.0.1", 9001), timeout=10) as c:
        # Sent from a thread: the echo comes back while it is sent (no buffer deadlock).
        t = threading.Thread(target=c.sendall, args=(payload,))
        t.start()
        got = b""
        while len(got) < len(payload) and (data := c.recv(1 << 16)):
            got += data
        t.join()
        echoed += got == payload
deadline = time.monotonic() + 5
while fds() > before and time.monotonic() < deadline:
    time.sleep(0.02)
after = fds()
p.stdin.close()
p.wait(10)
print(json.dumps({"before": before, "after": after, "echoed": echoed}))
"""


def test_relay_echoes_and_closes_each_finished_connection(tmp_path):
    exe = tmp_path / "relay"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(RELAY_C),
                    "-lpthread"], check=True)
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", INNER, str(exe), "20"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["echoed"] == 20, got
    assert got["after"] == got["before"], got  # was 2 more per connection, never closed
