"""Guarded copies of array arguments: out-of-bounds global memory accesses fault or show.

Every array argument is copied for the launch into its own mapping, its end as close to a guard page
as alignment allows and its start after a guard page, with the slack around it filled with 0xFF. A
read or write across a guard page faults and is reported; a write into the slack is found by
checking it after the launch; a read of the slack returns NaN (0xFF bytes). The copies are written
back after a clean launch.
"""
from __future__ import annotations

import ctypes
import mmap

import numpy as np


def byte_span(a: np.ndarray) -> tuple[int, int]:
    """The lowest address and one past the highest byte the array's elements occupy."""
    low = high = a.ctypes.data
    if a.size == 0:
        return low, high
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + a.itemsize


class GuardedRegion:
    """A copy of [low, high) of host memory, between guard pages, with 0xFF slack around it."""

    GUARD = 16 << 20    # inaccessible bytes on each side: address space only
    ALIGN = 16          # the copy keeps the original address modulo this (float4, double2 loads)
    _libc = None

    def __init__(self, low: int, high: int, writable: bool, arguments: list[int]):
        libc = self._c()
        page = mmap.PAGESIZE
        self.low, self.size, self.writable, self.arguments = low, high - low, writable, arguments
        self.body = (self.size + self.ALIGN + page - 1) // page * page
        self.mapping_bytes = self.GUARD + self.body + self.GUARD
        base = libc.mmap(None, self.mapping_bytes, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise MemoryError(f"cannot map {self.mapping_bytes} bytes for a guarded copy")
        self.base = base
        self.body_start = base + self.GUARD
        if libc.mprotect(ctypes.c_void_p(self.body_start), self.body, mmap.PROT_READ | mmap.PROT_WRITE):
            libc.munmap(ctypes.c_void_p(base), self.mapping_bytes)
            raise MemoryError(f"cannot map {self.body} bytes for a guarded copy")
        end = self.body_start + self.body - self.size
        self.start = end - (end - low) % self.ALIGN   # as late as alignment allows
        self.view = np.ctypeslib.as_array((ctypes.c_ubyte * self.body).from_address(self.body_start))
        self.view.fill(0xFF)
        self.front = self.start - self.body_start
        self.view[self.front:self.front + self.size] = self._original()

    @classmethod
    def _c(cls):
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            cls._libc = libc
        return cls._libc

    def _original(self) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_ubyte * self.size).from_address(self.low)) \
            if self.size else np.empty(0, np.uint8)

    def address_of(self, original: int) -> int:
        return self.start + (original - self.low)

    def offset(self, address: int) -> int | None:
        """The byte offset of an address in the copy's mapping from the copy's start, or None."""
        return address - self.start if self.base <= address < self.base + self.mapping_bytes else None

    def check(self) -> str | None:
        """What the kernel wrote into the slack around the copy, or None."""
        front, back = self.view[:self.front], self.view[self.front + self.size:]
        if np.any(front != 0xFF):
            return f"out-of-bounds write at byte {int(np.flatnonzero(front != 0xFF)[0]) - self.front} of"
        if np.any(back != 0xFF):
            return f"out-of-bounds write at byte {self.size + int(np.flatnonzero(back != 0xFF)[0])} of"
        return None

    def commit(self) -> str | None:
        """Writes the copy back; for read-only memory, says so if the kernel changed it."""
        copy, original = self.view[self.front:self.front + self.size], self._original()
        if self.writable:
            original[...] = copy
        elif not np.array_equal(original, copy):
            return "a write into the read-only"
        return None

    def release(self) -> None:
        del self.view
        self._c().munmap(ctypes.c_void_p(self.base), self.mapping_bytes)
