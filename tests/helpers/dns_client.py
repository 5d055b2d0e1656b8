"""DNS client for the DNS policy tests, run inside a pod: one UDP query, one answer.

usage: dns_client.py SERVER NAME [TYPE] [TIMEOUT] [udp|tcp] [PORT] [SPORT]
Prints JSON {"rcode": n, "ips": [...], "ttl": n, "from": "addr:port"} or "timeout";
with PORT (0: none), at once after the answer, "GET /" to its first address on that port:
"get": the HTTP status, or "timeout" / "refused". SPORT: the query's source port (else
the kernel picks one).
"""
import json, socket, struct, sys, os, ipaddress

server, name = sys.argv[1], sys.argv[2]
qtype = {"A": 1, "AAAA": 28}[sys.argv[3] if len(sys.argv) > 3 else "A"]
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
ident = int.from_bytes(os.urandom(2), "big")
q = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
q += struct.pack("!HH", qtype, 1)
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
tcp = len(sys.argv) > 5 and sys.argv[5] == "tcp"
s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
s.settimeout(timeout)
if len(sys.argv) > 7:
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[7])))
try:
    if tcp:
        s.connect((server, 53))
        s.sendall(struct.pack("!H", len(q)) + q)
        f = s.makefile("rb")
        head = f.read(2)
        if len(head) < 2:
            print(json.dumps("closed")); sys.exit(0)
        data, addr = f.read(struct.unpack("!H", head)[0]), s.getpeername()
    else:
        s.sendto(q, (server, 53))
        data, addr = s.recvfrom(4096)
except socket.timeout:
    print(json.dumps("timeout")); sys.exit(0)
rid, flags, qd, an = struct.unpack_from("!4H", data)
assert rid == ident, "wrong id"
off = 12
for _ in range(qd):
    while data[off]:
        off += 1 + data[off]
    off += 5
ips, ttl = [], None
for _ in range(an):
    off += 2  # a compression pointer to the question (the test server's answers)
    rtype, _, t, rdlen = struct.unpack_from("!HHIH", data, off)
    off += 10
    if rtype in (1, 28):
        ips.append(str(ipaddress.ip_address(data[off: off + rdlen])))
    ttl = t if ttl is None else min(ttl, t)
    off += rdlen
out = {"rcode": flags & 0xF, "ips": ips, "ttl": ttl, "from": f"{addr[0]}:{addr[1]}"}
if len(sys.argv) > 6 and int(sys.argv[6]) and ips:
    try:
        c = socket.create_connection((ips[0], int(sys.argv[6])), timeout=timeout)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out["get"] = int(c.makefile("rb").readline().split()[1])
    except socket.timeout:
        out["get"] = "timeout"
    except ConnectionRefusedError:
        out["get"] = "refused"
print(json.dumps(out))
