"""This rank's heap in the region: message buffers that need no sender copy.

A buffer from `alloc` lives inside the shared region, in the part of it only
this rank writes (docs/layout.md, "Heaps").  A large send from such a buffer
is announced with its region offset, and the receiver copies it straight out
(one copy instead of two).  The allocator's bookkeeping is private to the
process; nothing about it is stored in the region.
"""
import bisect

from ._fastcopy import region_memoryview
from .errors import IvmpiError

ALIGN = 64


class Heap:
    """First-fit allocation over [offset, offset + size) of the region."""

    def __init__(self, mem, offset, size):
        self.mem = mem
        self.offset = offset
        self.size = size
        self.free = [(offset, size)]   # sorted, coalesced (start, length)
        self.used = {}                 # start -> length

    def alloc(self, nbytes, device_ok=False):
        """A region buffer of nbytes.  device_ok: the caller touches it only
        through the copy core (windows), so strict-align mode is fine."""
        if nbytes < 0:
            raise IvmpiError(f"cannot allocate a negative size ({nbytes})")
        if self.mem.strict and not device_ok:
            raise IvmpiError(
                "region buffers are not available in strict-align mode: the region is device "
                "memory there, and numpy's unaligned accesses to it would fault on ARM64")
        want = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
        for i, (start, length) in enumerate(self.free):
            if length >= want:
                if length == want:
                    del self.free[i]
                else:
                    self.free[i] = (start + want, length - want)
                self.used[start] = want
                return region_memoryview(self.mem, start, nbytes)
        raise IvmpiError(
            f"the region heap has no free block of {nbytes} bytes ({self.size} bytes per rank, "
            f"{self.available()} free); use a larger region or free buffers")

    def release(self, buf):
        from ._fastcopy import buffer_span
        address, _ = buffer_span(buf)
        start = address - self.mem.address
        length = self.used.pop(start, None)
        if length is None:
            raise IvmpiError("Free_mem: this buffer was not allocated by Alloc_mem here")
        i = bisect.bisect(self.free, (start, 0))
        self.free.insert(i, (start, length))
        # Coalesce with the neighbours so large blocks come back.
        if i + 1 < len(self.free) and start + length == self.free[i + 1][0]:
            self.free[i] = (start, length + self.free[i + 1][1])
            del self.free[i + 1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == start:
            self.free[i - 1] = (self.free[i - 1][0], self.free[i - 1][1] + self.free[i][1])
            del self.free[i]

    def available(self):
        return sum(length for _, length in self.free)

    def contains(self, address, length):
        """Region offset of [address, address+length) if it lies in this heap, else None."""
        start = address - self.mem.address
        if self.offset <= start and start + length <= self.offset + self.size:
            return start
        return None
