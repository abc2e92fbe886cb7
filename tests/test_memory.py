"""barge.memory: memory freed in a thread's arena goes back to the system on request."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

CHURN = """
import threading
from barge.memory import release_free_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

pinned = []

def churn():
    chunks = [b"x" * (64 * 1024) for _ in range(800)]  # 50 MiB in this thread's arena
    pinned.append(b"y" * (64 * 1024))  # past them and still used: the arena cannot shrink
    chunks.clear()

before = rss()
t = threading.Thread(target=churn)
t.start()
t.join()
held = rss()
release_free_memory()
print(before, held, rss())
"""


BUFFERS = """
import sys
from barge.memory import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

big = bytearray(8 << 20)
del big  # a large block freed: left alone, glibc now takes blocks up to 8 MiB from arenas
before = rss()
pinned, buffers = [], []
for i in range(80):
    buffers.append(b"x" * (1 << 20))  # 80 MiB in 1 MiB buffers, as parts and pages are
    pinned.append(b"p" * (2000 + i))  # small and kept, between them
buffers.clear()
print(before, rss())
"""


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc's allocator only")
def test_release_returns_what_a_thread_freed() -> None:
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    before, held, after = (int(x) for x in out.split())
    assert held - before >= 40, out  # freed, yet still resident
    assert after - before <= 10, out  # given back


def test_both_are_harmless_anywhere() -> None:
    # In a process of its own: the cap on arenas holds for the rest of a process's life.
    code = "from barge.memory import *; tune_allocator(); release_free_memory(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "ok"


@pytest.mark.skipif(not _glibc(), reason="glibc's allocator only")
def test_large_buffers_are_given_back_when_freed() -> None:
    """With the allocator tuned, 1 MiB buffers are mapped on their own and unmapped when
    freed, with no trim; left alone, small blocks kept between them hold them resident."""
    def held(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", BUFFERS, mode], capture_output=True,
                             text=True, check=True, timeout=60).stdout
        before, after = (int(x) for x in out.split())
        return after - before

    assert held("plain") >= 60  # the case tune_allocator is for
    assert held("tuned") <= 8
