"""Tiny authoritative DNS server (UDP and TCP) for the DNS policy tests, run inside a pod.

usage: dns_server.py PORT ZONE_JSON
ZONE_JSON maps names to [ttl, [addresses...]], e.g. {"api.example.com.": [2, ["10.1.1.1"]]}.
A/AAAA questions get the name's addresses of that family, unknown names NXDOMAIN;
a name mapped to null is never answered (a server that does not answer), one mapped to
[ttl, "peer"] is answered with the address the question came from.
Prints "ready" once it listens (IPv4 and IPv6); logs each question on stderr.
"""
import ipaddress, json, socket, struct, sys, threading

port, zone = int(sys.argv[1]), {k.lower(): v for k, v in json.loads(sys.argv[2]).items()}

def question(data):
    off, labels = 12, []
    while data[off]:
        n = data[off]; labels.append(data[off + 1: off + 1 + n].decode()); off += 1 + n
    qtype, = struct.unpack_from("!H", data, off + 1)
    return ".".join(labels).lower() + ".", qtype, off + 5

def answer(data, peer=None):
    ident, flags = struct.unpack_from("!2H", data)
    name, qtype, end = question(data)
    print(f"question {name} {qtype}", file=sys.stderr, flush=True)
    rrs = []
    if name in zone and zone[name] is None:
        return None
    if name in zone:
        ttl, addrs = zone[name]
        if addrs == "peer":
            addrs = [peer.removeprefix("::ffff:")] if peer else []
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if (qtype, ip.version) in ((1, 4), (28, 6)):
                rrs.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(ip.packed)) + ip.packed)
    rcode = 0 if name in zone else 3
    head = struct.pack("!6H", ident, 0x8400 | (flags & 0x0100) | rcode, 1, len(rrs), 0, 0)
    return head + data[12:end] + b"".join(rrs)

def tcp_conn(c):
    with c:
        peer = c.getpeername()[0]
        f = c.makefile("rb")
        try:
            while (h := f.read(2)) and len(h) == 2:
                a = answer(f.read(struct.unpack("!H", h)[0]), peer)
                if a is None:
                    continue
                c.sendall(struct.pack("!H", len(a)) + a)
        except ConnectionResetError:  # the DNS proxy resets once it has the answer
            pass

def tcp_server():
    t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("::", port)); t.listen(64)
    ready.set()
    while True:
        threading.Thread(target=tcp_conn, args=(t.accept()[0],), daemon=True).start()

ready = threading.Event()
threading.Thread(target=tcp_server, daemon=True).start()
ready.wait()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    try:
        a = answer(data, addr[0])
        if a is not None:
            s.sendto(a, addr)
    except Exception as e:  # a malformed question: no answer
        print(f"bad question: {e}", file=sys.stderr, flush=True)
