"""A UDP flow that only the answering side keeps busy, run inside pods.

usage: udp_push.py push PORT COUNT INTERVAL
         binds PORT, prints "ready"; to the first datagram's sender: COUNT datagrams,
         INTERVAL s apart; then waits (10 s at most) for one more datagram, exits.
       udp_push.py pull HOST PORT SPORT COUNT
         from SPORT: one datagram to HOST:PORT, then COUNT answers, then one more
         datagram; prints "ok" (or "timeout" when an answer does not come in 10 s).
"""
import socket, sys, time

role = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
if role == "push":
    port, count, interval = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    _, peer = s.recvfrom(2048)
    for i in range(count):
        s.sendto(b"push %d" % i, peer)
        time.sleep(interval)
    try:
        s.recvfrom(2048)
    except socket.timeout:
        pass
else:
    host, port, sport, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    s.bind(("0.0.0.0", sport))
    s.sendto(b"hello", (host, port))
    try:
        for _ in range(count):
            s.recvfrom(2048)
    except socket.timeout:
        print("timeout")
        sys.exit(0)
    s.sendto(b"again", (host, port))
    print("ok")
