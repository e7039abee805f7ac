"""Process identity from /proc: PID reuse and zombies read as dead."""

from __future__ import annotations

import os
import subprocess
import time

from app.providers.local import procs


def test_own_process_is_alive_and_a_changed_start_time_is_not() -> None:
    me = procs.stamp(os.getpid())
    assert me is not None and procs.is_alive(me)
    assert not procs.is_alive(procs.ProcessStamp(me.pid, me.start_time + 1, me.boot_id))
    assert not procs.is_alive(procs.ProcessStamp(me.pid, me.start_time, "another-boot"))


def test_zombie_counts_as_dead() -> None:
    child = subprocess.Popen(["true"])
    try:
        for _ in range(200):  # bounded: wait until it has exited (but is not reaped yet)
            if procs.stamp(child.pid) is None:
                break
            time.sleep(0.01)
        assert procs.stamp(child.pid) is None
        assert os.path.exists(f"/proc/{child.pid}")  # still there, as a zombie
    finally:
        child.wait()


def test_children_and_process_group() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert child.pid in procs.children(os.getpid())
        assert procs.process_group(child.pid) == child.pid
        assert child.pid in procs.pids_of_uid(os.getuid())
    finally:
        child.kill()
        child.wait()
    assert procs.process_group(child.pid) is None
