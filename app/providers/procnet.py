"""Who listens on a TCP port, read from ``/proc``: for sandboxes that share the host's network.

A sandbox on the host network listens on host ports, so "port 3000 of the
sandbox" is only the sandbox's while one of *its* processes holds the
listening socket; otherwise it is whatever host service took the port. These
helpers answer that from the kernel's tables: the sockets listening on a port
(``/proc/<pid>/net/tcp{,6}``, with their owner uid and inode) and the
processes holding a socket inode (``/proc/<pid>/fd``). They read files only and
run in worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: TCP state LISTEN in /proc/<pid>/net/tcp.
_LISTEN = "0A"


def listening_inodes(pid: int, port: int, *, uid: int | None = None) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` in ``pid``'s network namespace (owned by ``uid``)."""
    return read_listening_inodes(pid, port, uid=uid) or set()


def read_listening_inodes(pid: int, port: int, *, uid: int | None = None) -> set[int] | None:
    """``listening_inodes``, but None when ``pid``'s tables cannot be read (it exited meanwhile).

    An empty set says the namespace has no such listener; None says nothing about it
    (ask another of its processes).
    """
    wanted = f":{port:04X}"
    found: set[int] = set()
    read = False
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            if len(fields) <= 9 or fields[3] != _LISTEN or not fields[1].endswith(wanted):
                continue
            if uid is None or fields[7] == str(uid):
                found.add(int(fields[9]))
    return found if read else None


def listens(pid: int, port: int, *, uid: int | None = None) -> bool:
    """Whether ``pid``'s network namespace has a TCP socket listening on ``port`` (owned by ``uid``)."""
    return bool(listening_inodes(pid, port, uid=uid))


def pid_namespace_members(pid: int) -> list[int]:
    """Every process visible here that shares ``pid``'s PID namespace (a container's processes)."""
    try:
        wanted = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return []
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/pid").st_ino == wanted:
                members.append(int(entry.name))
        except OSError:
            continue  # exited while we looked
    return members


def holds_any(pids: Iterable[int], inodes: set[int]) -> bool:
    """Whether one of ``pids`` has one of the socket ``inodes`` open."""
    return holder(pids, inodes) is not None


def holder(pids: Iterable[int], inodes: set[int]) -> int | None:
    """The first of ``pids`` that has one of the socket ``inodes`` open, or None."""
    if not inodes:
        return None
    links = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in links:
                        return pid
                except OSError:
                    continue
    return None
