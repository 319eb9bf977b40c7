"""A two-rank region in memory, with guard pages, for hostile-peer tests.

The region window sits between two PROT_NONE pages: any read or write the
ring or engine code makes outside the window kills the process at once
instead of going unnoticed.  Rank 0 is the engine under test; rank 1 is
played by hand (`RawPeer`), writing whatever it likes into the parts of the
region it owns: its ring to rank 0 (head word and data), its slot, and the
tail word of the ring from rank 0.
"""
import ctypes
import mmap
import struct

from ivmpi import _fastcopy, layout
from ivmpi.engine import Engine

PAGE = mmap.PAGESIZE
RING_BYTES = 4096
NRANKS = 2
GUARD = 0xA5
PROT_NONE = 0


def _protect(address, length):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(ctypes.c_void_p(address), length, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")


class Stand:
    """Whatever an Engine needs from a Region: just `.mem`."""

    def __init__(self, mem):
        self.mem = mem
        self.closed = False


class GuardedRegion:
    """An anonymous mapping laid out for NRANKS ranks, fenced by PROT_NONE pages."""

    def __init__(self, ring_bytes=RING_BYTES, nranks=NRANKS):
        need = layout.rings_offset(nranks) + nranks * nranks * (layout.RING_CTRL_BYTES + ring_bytes)
        self.size = (need + PAGE - 1) // PAGE * PAGE
        self._map = mmap.mmap(-1, self.size + 2 * PAGE)
        probe = _fastcopy.Mapping(self._map)
        base = probe.address
        probe.release()
        _protect(base, PAGE)
        _protect(base + PAGE + self.size, PAGE)
        self.mem = _fastcopy.Mapping(memoryview(self._map)[PAGE:PAGE + self.size])
        self.geo = layout.Geometry.choose(self.size, nranks, max_ring_bytes=ring_bytes)

    def reset(self, job_id=0x1234567):
        layout.write_header(self.mem, self.geo, job_id)
        for rank in range(self.geo.nranks):
            layout.Slot(self.mem, rank).attach(job_id)

    def engine(self, rank):
        return Engine(Stand(self.mem), self.geo, rank)


class RawPeer:
    """Rank `src` writing frames into its ring to `dst` by hand."""

    def __init__(self, region, src=1, dst=0):
        self.mem = region.mem
        self.ring = region.geo.ring(src, dst)
        self.reverse = region.geo.ring(dst, src)
        self.head_word = region.geo.head(src, dst)
        self.reverse_head_word = region.geo.head(dst, src)
        self.ring_bytes = region.geo.ring_bytes
        self.head = 0

    @property
    def data(self):
        return self.ring + layout.RING_CTRL_BYTES

    def put(self, kind, length=0, tag=0, context=0, a=0, b=0, payload=b"", publish=True):
        """Write one frame at the current head (no wrap handling) and publish it."""
        pos = self.head % self.ring_bytes
        words = struct.pack("<QQQQ", (kind & 0xFFFFFFFF) | ((length & 0xFFFFFFFF) << 32),
                            (tag & 0xFFFFFFFF) | ((context & 0xFFFFFFFF) << 32),
                            a & (2**64 - 1), b & (2**64 - 1))
        body = bytes(payload) + bytes(-len(payload) % 8)
        self.mem.write(self.data + pos, words + body)
        self.head += 32 + (length + 7) // 8 * 8
        if publish:
            self.publish()

    def write_data(self, pos, blob):
        self.mem.write(self.data + pos, blob)

    def publish(self, head=None):
        if head is not None:
            self.head = head
        self.mem.store_release(self.head_word, self.head)

    def set_reverse_tail(self, value):
        """The tail word of the ring dst -> src, which this peer consumes."""
        self.mem.store_release(self.reverse + layout.R_TAIL, value)

    def reverse_frames(self):
        """Frames rank dst published to us: [(kind, length, tag, context, a, b)], consumed."""
        head = self.mem.load_acquire(self.reverse_head_word)
        tail = self.mem.load(self.reverse + layout.R_TAIL)
        out = []
        while tail < head:
            pos = tail % self.ring_bytes
            w0, w1, a, b = struct.unpack("<QQQQ", self.mem.read_bytes(
                self.reverse + layout.RING_CTRL_BYTES + pos, 32))
            kind, length = w0 & 0xFFFFFFFF, w0 >> 32
            if kind == 7:
                tail += self.ring_bytes - pos
                continue
            out.append((kind, length, struct.unpack("<i", struct.pack("<I", w1 & 0xFFFFFFFF))[0],
                        w1 >> 32, a, b))
            tail += 32 + (length + 7) // 8 * 8
        self.set_reverse_tail(tail)
        return out


class GuardedBuffer:
    """A receive buffer with guard bytes on both sides."""

    def __init__(self, n, guard=64):
        self.n = n
        self.guard = guard
        self.raw = bytearray([GUARD]) * (n + 2 * guard)
        self.view = memoryview(self.raw)[guard:guard + n]

    def intact(self):
        g = self.guard
        return (self.raw[:g] == bytes([GUARD]) * g
                and self.raw[g + self.n:] == bytes([GUARD]) * g)


def writable_by(geo, rank):
    """Byte ranges of the region that `rank` may write (docs/layout.md owners)."""
    ranges = [(geo.slot(rank), geo.slot(rank) + 128)]
    for peer in range(geo.nranks):
        if peer == rank:
            continue
        out = geo.ring(rank, peer)
        ranges.append((geo.head(rank, peer), geo.head(rank, peer) + 8))
        ranges.append((out + layout.RING_CTRL_BYTES, out + layout.RING_CTRL_BYTES + geo.ring_bytes))
        inbound = geo.ring(peer, rank)
        ranges.append((inbound + layout.R_TAIL, inbound + layout.R_TAIL + 8))
    return ranges


def foreign_writes(before, after, geo, rank):
    """Offsets where the region changed outside what `rank` may write."""
    allowed = bytearray(len(before))
    for lo, hi in writable_by(geo, rank):
        allowed[lo:hi] = b"\x01" * (hi - lo)
    return [i for i in range(0, len(before), 8)
            if before[i:i + 8] != after[i:i + 8] and not all(allowed[i:i + 8])]


def snapshot(region):
    return bytes(region.mem.read_bytes(0, region.size))
