"""Reading who listens on a port from /proc (``app.providers.procnet``), against real sockets."""

from __future__ import annotations

import os
import socket

from app.providers.procnet import (
    holder,
    holds_any,
    listening_inodes,
    listens,
    pid_namespace_members,
    read_listening_inodes,
)


def test_a_listening_socket_is_found_with_its_owner_and_holder() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        inodes = listening_inodes(os.getpid(), port)
        assert inodes == {os.fstat(listener.fileno()).st_ino}
        assert listens(os.getpid(), port, uid=os.geteuid())
        assert not listens(os.getpid(), port, uid=os.geteuid() + 1)
        assert holds_any([os.getpid()], inodes)
        assert holder([2**22 + 7, os.getpid()], inodes) == os.getpid()
        assert os.getpid() in pid_namespace_members(os.getpid())
    assert not listens(os.getpid(), port)


def test_a_connected_socket_is_not_a_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            listener.close()
            assert listening_inodes(os.getpid(), port) == set()


def test_nothing_is_held_by_no_process_or_for_no_inode() -> None:
    assert not holds_any([], {1})
    assert not holds_any([os.getpid()], set())
    assert pid_namespace_members(2**22 + 7) == []


def test_a_process_that_is_gone_says_nothing_about_its_namespace() -> None:
    # None, not "no listener": the caller asks another process of the namespace.
    assert read_listening_inodes(2**22 + 7, 80) is None
    assert listening_inodes(2**22 + 7, 80) == set()
    assert read_listening_inodes(os.getpid(), 1) == set()
