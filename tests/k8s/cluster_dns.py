"""Cluster DNS for the kubelet tests' one-node cluster: answers A queries for
<service>.<namespace>.svc.<domain> with the Service's ClusterIP, from the API server
(in-cluster ServiceAccount credentials, a list every second), NXDOMAIN for other names
of the domain and for anything else (there is no upstream: nothing leaves the machine).

It plays kube-dns's part (the kubelet points pods at its ClusterIP) in a pod of the
tests' own Python image; standard library only. Not a general DNS server: one question
per query, A and AAAA (empty answer), UDP and TCP.
"""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import struct
import sys
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
DOMAIN = os.environ.get("CLUSTER_DOMAIN", "cluster.local")
# Unprivileged: the Service maps port 53 to this one.
PORT = int(os.environ.get("DNS_PORT", "5353"))
services: dict[str, str] = {}  # "name.namespace" -> ClusterIP


def api_list() -> dict[str, str]:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    req = urllib.request.Request(f"https://{host}:{port}/api/v1/services",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        items = json.load(r)["items"]
    return {f"{s['metadata']['name']}.{s['metadata']['namespace']}": s["spec"].get("clusterIP", "")
            for s in items if s["spec"].get("clusterIP") not in (None, "", "None")}


async def refresh() -> None:
    global services
    while True:
        try:
            services = await asyncio.to_thread(api_list)
        except Exception as e:  # the API server restarting: keep the last answer
            print(f"cluster-dns: listing services: {e}", file=sys.stderr, flush=True)
        await asyncio.sleep(1)


def answer(query: bytes) -> bytes:
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1:pos + 1 + n].decode("ascii", "replace").lower())
        pos += 1 + n
    qtype, _ = struct.unpack("!HH", query[pos + 1:pos + 5])
    question = query[12:pos + 5]
    name = ".".join(labels)
    suffix = f".svc.{DOMAIN}"
    ip = services.get(name[:-len(suffix)]) if name.endswith(suffix) else None
    rcode = 0 if ip else 3
    answers = b""
    if ip and qtype == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + bytes(int(x) for x in ip.split("."))
    # response, recursion desired copied, recursion available
    hdr = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1,
                      1 if answers else 0, 0, 0)
    return hdr + question + answers


class UDP(asyncio.DatagramProtocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        try:
            self.transport.sendto(answer(data), addr)
        except Exception as e:  # a malformed query is dropped, never fatal
            print(f"cluster-dns: bad query from {addr}: {e}", file=sys.stderr, flush=True)


async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
            out = answer(await reader.readexactly(n))
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError, struct.error):
        pass
    finally:
        writer.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(UDP, local_addr=("0.0.0.0", PORT))
    server = await asyncio.start_server(tcp, "0.0.0.0", PORT)
    asyncio.create_task(refresh())
    print(f"cluster-dns: serving :{PORT}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
