"""The on-region format: header, rank slots and the ring table.

docs/layout.md is the specification; this module is its one implementation
on the Python side (the ring and frame code is in the Cython core).  It
computes the geometry, initialises a region, and validates a header written
by someone else before anything trusts it.
"""
import os
import secrets

from .errors import CorruptRegionError, RegionError

MAGIC = int.from_bytes(b"IVMPIRGN", "little")
VERSION = 3
HEADER_BYTES = 4096
SLOTS_OFFSET = 4096
SLOT_BYTES = 256
RING_CTRL_BYTES = 128
MIN_RING_BYTES = 4096
MAX_RING_BYTES = 1 << 30
MAX_RANKS = 4096
DEFAULT_RING_BYTES = 1 << 20
MAX_EAGER = 65536
MAX_CHUNK = 65536

# Header word offsets.
H_MAGIC, H_VERSION, H_REGION_SIZE, H_NRANKS, H_RING_BYTES = 0, 8, 16, 24, 32
H_SLOTS_OFFSET, H_RINGS_OFFSET, H_RING_STRIDE, H_EAGER, H_CHUNK = 40, 48, 56, 64, 72
H_JOB_ID, H_HEAP_OFFSET, H_HEAP_BYTES, H_READY = 80, 88, 96, 128
H_HEADS_OFFSET, H_HEADS_STRIDE = 104, 112
# The region's identity: a random non-zero word that tells ranks whether
# they share this region (paths differ between a host and its guests).
H_REGION_ID = 136
HEAP_ALIGN = 4096
MAX_HEAP_BYTES = 1 << 40

# Slot word offsets (relative to the slot).
S_STATE, S_JOB_ID, S_NONCE, S_PID, S_HEARTBEAT, S_HEARTBEAT_NS, S_ADMITTED = 0, 8, 16, 24, 64, 72, 128
STATE_EMPTY, STATE_JOINING, STATE_ATTACHED, STATE_FINALIZED, STATE_ABORTED = 0, 1, 2, 3, 4
STATE_NAMES = {0: "empty", 1: "joining", 2: "attached", 3: "finalized", 4: "aborted"}

# Ring control word offsets (relative to the ring).  A ring's head is not
# in its control block but in its receiver's head array (heads_offset).
R_TAIL = 64


def _round_up(n, m):
    return (n + m - 1) // m * m


def heads_offset(nranks):
    return SLOTS_OFFSET + _round_up(nranks * SLOT_BYTES, 4096)


def heads_stride(nranks):
    """Bytes of one receiver's head array: a word per sender, in whole pairs of
    cache lines (x86 prefetches lines in 128-byte pairs: two receivers' arrays
    never share one)."""
    return _round_up(nranks * 8, 128)


def rings_offset(nranks):
    return heads_offset(nranks) + _round_up(nranks * heads_stride(nranks), 4096)


def _env_int(name, default):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value, 0)
    except ValueError:
        raise RegionError(f"{name}={value!r} is not an integer") from None


class Geometry:
    """Where everything is, for a given region size and rank count."""

    __slots__ = ("region_size", "nranks", "ring_bytes", "rings_offset", "ring_stride",
                 "eager_limit", "chunk_bytes", "heap_offset", "heap_bytes", "heads_offset",
                 "heads_stride")

    def __init__(self, region_size, nranks, ring_bytes, eager_limit=None, chunk_bytes=None,
                 heap_bytes=None):
        self.region_size = region_size
        self.nranks = nranks
        self.ring_bytes = ring_bytes
        self.heads_offset = heads_offset(nranks)
        self.heads_stride = heads_stride(nranks)
        self.rings_offset = rings_offset(nranks)
        self.ring_stride = RING_CTRL_BYTES + ring_bytes
        if eager_limit is None:
            eager_limit = min(_env_int("IVMPI_EAGER_LIMIT", MAX_EAGER), ring_bytes // 4)
        if chunk_bytes is None:
            chunk_bytes = min(_env_int("IVMPI_CHUNK_BYTES", MAX_CHUNK), ring_bytes // 4)
        self.eager_limit = eager_limit
        self.chunk_bytes = chunk_bytes
        # What the rings leave over is split into one heap per rank (zero-copy buffers).
        self.heap_offset = _round_up(self.rings_end, HEAP_ALIGN)
        if heap_bytes is None:
            spare = max(0, region_size - self.heap_offset)
            heap_bytes = spare // nranks // HEAP_ALIGN * HEAP_ALIGN
        self.heap_bytes = heap_bytes

    @property
    def rings_end(self):
        return self.rings_offset + self.nranks * self.nranks * self.ring_stride

    def heap(self, rank):
        """(offset, size) of rank's heap: memory only that rank allocates from."""
        return self.heap_offset + rank * self.heap_bytes, self.heap_bytes

    @classmethod
    def choose(cls, region_size, nranks, max_ring_bytes=None):
        """The largest rings that fit; an error when not even the smallest does."""
        if not 1 <= nranks <= MAX_RANKS:
            raise RegionError(f"ivmpi supports 1..{MAX_RANKS} ranks per region, not {nranks}")
        if max_ring_bytes is None:
            max_ring_bytes = _env_int("IVMPI_RING_BYTES", DEFAULT_RING_BYTES)
        if max_ring_bytes < MIN_RING_BYTES or max_ring_bytes & (max_ring_bytes - 1):
            raise RegionError(f"ring size {max_ring_bytes} must be a power of two >= {MIN_RING_BYTES}")
        base = rings_offset(nranks)
        pairs = nranks * nranks
        ring = min(max_ring_bytes, MAX_RING_BYTES)
        while ring >= MIN_RING_BYTES and base + pairs * (RING_CTRL_BYTES + ring) > region_size:
            ring //= 2
        if ring < MIN_RING_BYTES:
            need = base + pairs * (RING_CTRL_BYTES + MIN_RING_BYTES)
            raise RegionError(
                f"region of {region_size} bytes is too small for {nranks} ranks: "
                f"it needs at least {need} bytes (ivmpi create PATH --size {_pow2_at_least(need)})")
        return cls(region_size, nranks, ring)

    def ring(self, src, dst):
        """Offset of the ring carrying messages from src to dst."""
        return self.rings_offset + (src * self.nranks + dst) * self.ring_stride

    def head(self, src, dst):
        """Offset of the head word of the ring from src to dst, in dst's head array."""
        return self.heads_offset + dst * self.heads_stride + src * 8

    def inbox(self, dst):
        """Offset of dst's head array: the heads of every ring into dst, by sender."""
        return self.heads_offset + dst * self.heads_stride

    def slot(self, rank):
        return SLOTS_OFFSET + rank * SLOT_BYTES

    @property
    def end(self):
        return self.heap_offset + self.nranks * self.heap_bytes


def _pow2_at_least(n):
    p = 1
    while p < n:
        p *= 2
    return p


def write_header(mem, geo, job_id, publish=True):
    """Initialise the region for a new job (the lowest world rank of the
    ranks sharing it).

    Clears `ready` first so that nobody trusts a half-written header, zeroes
    the slots and every ring's control block, then writes the fields and
    finally publishes `ready = job_id` with release.  The region's identity
    (H_REGION_ID, agreed at start-up before this) is kept.
    """
    if geo.end > mem.size:
        raise RegionError(f"layout needs {geo.end} bytes but the region has {mem.size}")
    region_id = region_identity(mem)
    clear(mem, geo)
    mem.store(H_REGION_ID, region_id)
    for off, value in ((H_MAGIC, MAGIC), (H_VERSION, VERSION), (H_REGION_SIZE, geo.region_size),
                       (H_NRANKS, geo.nranks), (H_RING_BYTES, geo.ring_bytes),
                       (H_SLOTS_OFFSET, SLOTS_OFFSET), (H_RINGS_OFFSET, geo.rings_offset),
                       (H_RING_STRIDE, geo.ring_stride), (H_EAGER, geo.eager_limit),
                       (H_CHUNK, geo.chunk_bytes), (H_JOB_ID, job_id),
                       (H_HEAP_OFFSET, geo.heap_offset), (H_HEAP_BYTES, geo.heap_bytes),
                       (H_HEADS_OFFSET, geo.heads_offset), (H_HEADS_STRIDE, geo.heads_stride)):
        mem.store(off, value)
    if publish:
        publish_header(mem, job_id)


def clear(mem, geo):
    """Zero the header, the slots, the head arrays and every ring's control
    block, `ready` first so that nobody trusts the header while it is being
    cleared."""
    mem.store_release(H_READY, 0)
    mem.fill(SLOTS_OFFSET, geo.rings_offset - SLOTS_OFFSET)     # slots and head arrays
    for src in range(geo.nranks):
        for dst in range(geo.nranks):
            mem.fill(geo.ring(src, dst), RING_CTRL_BYTES)
    mem.fill(0, HEADER_BYTES)


def publish_header(mem, job_id):
    # Every field above is visible before `ready` says the header is valid.
    mem.store_release(H_READY, job_id)


def region_identity(mem):
    """The identity word of the region (0: none written yet)."""
    if mem.size < HEADER_BYTES:
        return 0
    return mem.load_acquire(H_REGION_ID)


def set_region_identity(mem, value):
    mem.store_release(H_REGION_ID, value)


def new_job_id():
    return secrets.randbits(63) | 1


def read_header(mem, require_ready=True):
    """Validate the header written by another rank and return its Geometry.

    Raises CorruptRegionError naming the first field that is wrong.
    """
    if mem.size < HEADER_BYTES + SLOT_BYTES:
        raise RegionError(f"region of {mem.size} bytes is too small to hold an ivmpi header")
    ready = mem.load_acquire(H_READY)
    if require_ready and ready == 0:
        raise CorruptRegionError("region header is not initialised (ready = 0)")
    magic = mem.load(H_MAGIC)
    if magic != MAGIC:
        raise CorruptRegionError(
            f"region header has magic {magic:#018x}, expected {MAGIC:#018x} (not an ivmpi region, "
            f"or a different program uses it)")
    version = mem.load(H_VERSION)
    if version != VERSION:
        raise CorruptRegionError(f"region layout version {version}; this ivmpi speaks version {VERSION}")
    region_size = mem.load(H_REGION_SIZE)
    if not HEADER_BYTES < region_size <= mem.size:
        raise CorruptRegionError(
            f"region header says the region has {region_size} bytes but {mem.size} are mapped")
    nranks = mem.load(H_NRANKS)
    if not 1 <= nranks <= MAX_RANKS:
        raise CorruptRegionError(f"region header has {nranks} ranks (allowed 1..{MAX_RANKS})")
    ring_bytes = mem.load(H_RING_BYTES)
    if not MIN_RING_BYTES <= ring_bytes <= MAX_RING_BYTES or ring_bytes & (ring_bytes - 1):
        raise CorruptRegionError(f"region header has ring size {ring_bytes} (not a power of two in range)")
    heap_bytes = mem.load(H_HEAP_BYTES)
    if heap_bytes % HEAP_ALIGN or heap_bytes > MAX_HEAP_BYTES:
        raise CorruptRegionError(f"region header has heap size {heap_bytes} (not a multiple of "
                                 f"{HEAP_ALIGN} up to {MAX_HEAP_BYTES})")
    geo = Geometry(region_size, nranks, ring_bytes,
                   eager_limit=mem.load(H_EAGER), chunk_bytes=mem.load(H_CHUNK),
                   heap_bytes=heap_bytes)
    checks = (
        (H_SLOTS_OFFSET, "slots_offset", SLOTS_OFFSET),
        (H_HEADS_OFFSET, "heads_offset", geo.heads_offset),
        (H_HEADS_STRIDE, "heads_stride", geo.heads_stride),
        (H_RINGS_OFFSET, "rings_offset", geo.rings_offset),
        (H_RING_STRIDE, "ring_stride", geo.ring_stride),
    )
    for off, name, expected in checks:
        value = mem.load(off)
        if value != expected:
            raise CorruptRegionError(f"region header field {name} = {value}, expected {expected}")
    if geo.rings_end > region_size:
        raise CorruptRegionError(f"region header's rings end at {geo.rings_end}, past the region "
                                 f"({region_size})")
    value = mem.load(H_HEAP_OFFSET)
    if value != geo.heap_offset:
        raise CorruptRegionError(f"region header field heap_offset = {value}, expected {geo.heap_offset}")
    if geo.end > region_size:
        raise CorruptRegionError(f"region header's heaps end at {geo.end}, past the region "
                                 f"({region_size})")
    if not 0 < geo.eager_limit <= ring_bytes // 4:
        raise CorruptRegionError(f"region header has eager limit {geo.eager_limit} (ring {ring_bytes})")
    if not 0 < geo.chunk_bytes <= ring_bytes // 4:
        raise CorruptRegionError(f"region header has chunk size {geo.chunk_bytes} (ring {ring_bytes})")
    job_id = mem.load(H_JOB_ID)
    if require_ready and ready != job_id:
        raise CorruptRegionError(f"region header ready word {ready:#x} does not match job id {job_id:#x}")
    return geo, job_id


class Slot:
    """One rank's slot: its own fields, and the liveness view others take of it."""

    def __init__(self, mem, rank):
        self.mem = mem
        self.rank = rank
        self.offset = SLOTS_OFFSET + rank * SLOT_BYTES

    def word(self, field):
        return self.mem.load_acquire(self.offset + field)

    def set(self, field, value):
        self.mem.store_release(self.offset + field, value)

    @property
    def state(self):
        return self.word(S_STATE)

    def attach(self, job_id):
        self.set(S_JOB_ID, job_id)
        self.set(S_PID, os.getpid())
        self.set(S_STATE, STATE_ATTACHED)


def describe(mem):
    """A human summary of the job layout in a region (for `ivmpi info`)."""
    lines = []
    ready = mem.load_acquire(H_READY) if mem.size >= HEADER_BYTES else 0
    magic = mem.load(H_MAGIC) if mem.size >= HEADER_BYTES else 0
    if magic != MAGIC:
        return ["job: none (no ivmpi header: the region is free)"]
    try:
        geo, job_id = read_header(mem, require_ready=False)
    except (CorruptRegionError, RegionError) as exc:
        return [f"job: header present but invalid: {exc}"]
    lines.append(f"job: {job_id:#018x} ({'ready' if ready == job_id else 'initialising'}), "
                 f"layout v{VERSION}, {geo.nranks} ranks, region identity "
                 f"{mem.load(H_REGION_ID):#018x}")
    lines.append(f"heads: {geo.nranks} arrays of {geo.heads_stride} bytes at {geo.heads_offset:#x}")
    lines.append(f"rings: {geo.nranks}x{geo.nranks} of {geo.ring_bytes} bytes at {geo.rings_offset:#x}, "
                 f"eager limit {geo.eager_limit}, chunk {geo.chunk_bytes}")
    lines.append(f"heaps: {geo.nranks} of {geo.heap_bytes} bytes at {geo.heap_offset:#x}")
    for rank in range(geo.nranks):
        slot = Slot(mem, rank)
        state = slot.word(S_STATE)
        lines.append(f"  rank {rank}: {STATE_NAMES.get(state, f'invalid state {state}')}, "
                     f"pid {slot.word(S_PID)}, heartbeat {slot.word(S_HEARTBEAT)}")
    return lines
