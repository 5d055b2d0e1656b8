"""DNS flood for the DNS proxy's upstream bound, run inside a pod.

usage: dns_flood.py SERVER NAME COUNT WAIT
Sends COUNT A queries for NAME (distinct ids, one UDP socket) at once, then collects
answers for WAIT seconds. Prints JSON {"sent": n, "rcodes": {"2": n, ...}} (answers
by rcode; queries without an answer are not in it).
"""
import json, socket, struct, sys, time

server, name, count, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
for i in range(count):
    s.sendto(struct.pack("!6H", i, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1),
             (server, 53))
rcodes, seen = {}, set()
end = time.monotonic() + wait
while (left := end - time.monotonic()) > 0 and len(seen) < count:
    s.settimeout(left)
    try:
        data = s.recv(4096)
    except socket.timeout:
        break
    ident, flags = struct.unpack_from("!2H", data)
    if ident in seen:
        continue
    seen.add(ident)
    rcodes[str(flags & 0xF)] = rcodes.get(str(flags & 0xF), 0) + 1
print(json.dumps({"sent": count, "rcodes": rcodes}))
