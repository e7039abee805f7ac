"""The allocator thresholds: large buffers made and dropped in turn stop faulting their pages in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Makes and drops ~1 MiB of 300 KB buffers 100 times (as stream chunks are); prints whether
# tuning took and the minor page faults the loop cost.
PROBE = """
import json, resource, sys
from app.allocator import tune_allocator
tuned = tune_allocator(json.loads(sys.argv[1]))
data = bytes(1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    b"".join([data[:300000], data[300000:600000], data[600000:]])
print(json.dumps([tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


def probe(environ: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(environ)], capture_output=True, check=True, text=True)
    tuned, faults = json.loads(out.stdout)
    return bool(tuned), int(faults)


def test_tuned_buffers_are_reused_instead_of_faulted_in_again() -> None:
    tuned, faults = probe({})
    if not tuned:
        pytest.skip("not glibc: no mallopt to set")
    # 100 MiB passed through: untuned that is ~25,600 faults (every page, every time).
    assert faults < 2_000, faults


def test_the_operators_own_malloc_settings_win() -> None:
    tuned, faults = probe({"MALLOC_ARENA_MAX": "2"})
    assert not tuned
    assert faults > 5_000, faults  # glibc's defaults: the pages fault in again
