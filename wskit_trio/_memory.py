"""Giving freed memory back to the operating system.

After a client that pushed megabytes through its connection is gone, Python has
freed its buffers, but glibc keeps large freed blocks on its heap (its mmap
threshold rises once a large block is freed), so the process's RSS stays up
until something trims the heap. :func:`trim_heap` asks glibc to do that
(``malloc_trim``); the server calls it a moment after such a connection ends
(once for a burst of them). Elsewhere (no glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Final

__all__ = ["LARGE_CONNECTION_BYTES", "trim_heap"]

#: A connection whose outbound queue held this much at once is worth a trim.
LARGE_CONNECTION_BYTES: Final = 1 << 20


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim: Final = _find_malloc_trim()


def trim_heap() -> bool:
    """Return freed heap memory to the OS; ``False`` where there is no glibc."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
