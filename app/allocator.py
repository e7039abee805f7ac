"""glibc's allocator, set for a process that moves large buffers (streams, snapshots, proxied bodies).

glibc serves an allocation over its mmap threshold (128 KiB, adapting) with a
fresh mapping, and hands the free top of the heap back to the kernel past its
trim threshold. A streamed command's chunks are a few hundred KiB each, made and
dropped by the thousand, so both sides fault their pages in again and again
(``bench/streams.py`` prints faults and CPU per MiB; with ``MALLOC_PERTURB_=0``
these thresholds are off). Fixed thresholds keep such buffers in the heap, where
the next chunk reuses them;
what stays mapped is bounded by ``TRIM_THRESHOLD`` per arena.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

#: Allocations up to this size come from the heap (glibc's ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD = 4 << 20
#: Free heap top kept rather than returned to the kernel (glibc's ``M_TRIM_THRESHOLD``).
TRIM_THRESHOLD = 16 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(environ: Mapping[str, str]) -> bool:
    """Set the thresholds above; whether they took (False off glibc, or when the
    operator set any ``MALLOC_*`` variable: their own tuning wins)."""
    if any(name.startswith("MALLOC_") for name in environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to load, or one without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Both or neither: setting only the trim threshold pins the mmap one at 128 KiB.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
