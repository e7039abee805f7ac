"""DirectoryWatch: woken by what lands in a directory, or by its timeout."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sandbox_runtime.dirwatch import DirectoryWatch


async def test_a_file_renamed_into_the_directory_wakes_the_wait(tmp_path: Path) -> None:
    with DirectoryWatch(tmp_path) as watch:
        assert watch.active
        assert await watch.changed(0.05) is False
        waiting = asyncio.create_task(watch.changed(30))
        await asyncio.sleep(0.05)
        (tmp_path / "claim.json.tmp").write_text("{}")  # elsewhere first...
        os.replace(tmp_path / "claim.json.tmp", tmp_path / "claim.json")  # ...then renamed in
        assert await asyncio.wait_for(waiting, timeout=5) is True
        assert await watch.changed(0.05) is False, "each change wakes one wait"


async def test_a_missing_directory_is_not_watched_and_waits_time_out(tmp_path: Path) -> None:
    with DirectoryWatch(tmp_path / "absent") as watch:
        assert not watch.active
        assert await watch.changed(0.05) is False
