"""Doing netlink work in another network namespace without moving the process.

The agent's own sockets (gRPC) stay where the agent runs; only the thread that
talks netlink to attach programs enters the node's namespace. Namespaces are per
thread, and a socket stays in the namespace it was created in.
"""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return name if name.startswith("/") else f"/var/run/netns/{name}"


def enter_netns(name: str | None) -> None:
    """Moves the calling thread (only) into a network namespace for good."""
    if not name:
        return
    target = os.open(netns_path(name), os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(target)


def netlink_executor(name: str | None) -> ThreadPoolExecutor:
    """A one-thread executor living in the namespace, for blocking netlink calls.

    pyroute2's synchronous API cannot run inside the agent's event loop, and a
    thread of its own can stay in the node's namespace instead of switching back
    and forth.
    """
    return ThreadPoolExecutor(1, thread_name_prefix=f"netlink-{name or 'self'}",
                              initializer=enter_netns, initargs=(name,))
