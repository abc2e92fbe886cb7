"""Giving memory the process no longer uses back to the system.

Python frees large buffers (a blob transfer's parts, a validation's tables) to the C
allocator, which keeps much of it: glibc gives each thread that allocates (asyncio's
worker threads, the S3 driver's) an arena of its own and returns an arena's free pages
only from its top. The resident size then stays at the highest it has been. After such
work, ``release_free_memory`` asks the allocator to return every free page now
(glibc's ``malloc_trim``), and ``limit_arenas`` at start caps how many arenas there are
(as ``MALLOC_ARENA_MAX`` would); elsewhere both do nothing."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2  # the main thread's, and one that every other thread shares


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _function(name: str) -> Callable[..., int] | None:
    libc = _libc()
    found: Callable[..., int] | None = getattr(libc, name, None) if libc else None
    return found


def limit_arenas(arenas: int = ARENAS) -> None:
    """Cap the allocator's arenas, before the process starts its threads (the driver of
    S3, asyncio's and the web server's workers): each arena keeps memory of its own.
    ``MALLOC_ARENA_MAX`` in the environment, if set, wins."""
    mallopt = _function("mallopt")
    if mallopt is not None and "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Return the C allocator's free pages to the system (a few milliseconds)."""
    trim = _function("malloc_trim")
    if trim is not None:
        trim(0)
