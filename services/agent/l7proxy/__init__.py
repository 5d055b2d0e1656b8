"""The agent's transparent HTTP proxy for L7 policy (HTTP rules of ingress and egress rules).

steering.py  the node namespace's routing for steered packets, the listeners
http1.py     HTTP/1.x heads and message framing, bodies streamed
rules.py     a request against the HTTP rules of a policed port
dnsproxy.py  DNS queries against DNS rules (UDP and TCP), REFUSED for denied ones
proxy.py     accepting steered connections, deciding, forwarding, 403 "Access denied"
"""
