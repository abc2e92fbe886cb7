"""Giving memory the process no longer uses back to the system.

Python frees large buffers (a blob transfer's parts, a validation's tables) to the C
allocator, which keeps much of it: glibc gives each thread that allocates (asyncio's
worker threads, the S3 driver's) an arena of its own and returns an arena's free pages
only from its top. The resident size then stays at the highest it has been. After such
work, ``release_free_memory`` asks the allocator to return every free page now
(glibc's ``malloc_trim``), and ``tune_allocator`` at start caps how many arenas there
are (as ``MALLOC_ARENA_MAX`` would) and keeps large buffers out of them (as
``MALLOC_MMAP_THRESHOLD_`` would); elsewhere both do nothing."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
ARENAS = 2  # the main thread's, and one that every other thread shares
# Blocks this large or larger are mapped on their own and unmapped when freed, so a
# transfer's or a page's buffers never stay behind in an arena. (Left alone, glibc raises
# this threshold to the largest block freed so far, up to 32 MiB: then every later buffer
# of that size comes from an arena and stays resident after it is freed.)
MMAP_THRESHOLD = 256 * 1024


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


def tune_allocator(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> None:
    """Cap the allocator's arenas, before the process starts its threads (the driver of
    S3, asyncio's and the web server's workers): each arena keeps memory of its own; and
    fix the size from which blocks are mapped on their own. ``MALLOC_ARENA_MAX`` and
    ``MALLOC_MMAP_THRESHOLD_`` in the environment, if set, win."""
    mallopt = _function("mallopt")
    if mallopt is None:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(M_ARENA_MAX, arenas)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(M_MMAP_THRESHOLD, mmap_threshold)


def release_free_memory() -> None:
    """Return the C allocator's free pages to the system (a few milliseconds)."""
    trim = _function("malloc_trim")
    if trim is not None:
        trim(0)
