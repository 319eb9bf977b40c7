# The rings: one single-producer/single-consumer ring per ordered pair of
# ranks, as specified in docs/layout.md ("Rings" and "Frames").
#
# Included at the end of _fastcopy.pyx so that it shares the Mapping type
# and the copy core.  The producer side (TxRing) and the consumer side
# (RxRing) each keep their own index privately and publish it with a
# store-release; the other side's index is read with a load-acquire and
# validated before use, because the peer owning it may be corrupt or hostile.

cimport cython
from libc.stdint cimport uint64_t, uint32_t, int32_t, int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from libc.string cimport memset, memcpy, memmove
from libc.stdlib cimport malloc, free
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE

from .errors import CorruptRegionError as _CorruptRegionError
from .errors import BufferSpecError as _BufferSpecError
from .errors import IvmpiTimeoutError as _IvmpiTimeoutError

cdef extern from "<sched.h>" nogil:
    int sched_yield()

# Frames this process has taken from its rings (RxRing.consume).  A poll
# that did not find what it looked for but moved this count still made
# progress (an acknowledgement, a frame set aside or delivered), and does
# not give the core away: Open MPI's progress yields only when it handled
# no event either.
cdef unsigned long long _frames_taken = 0


cdef extern from "_copycore.h":
    uint64_t rg_load_acquire "ivmpi_load_acquire_u64"(const void *p) nogil
    void rg_store_release "ivmpi_store_release_u64"(void *p, uint64_t v) nogil
    uint64_t rg_load "ivmpi_load_u64"(const void *p) nogil
    void rg_store "ivmpi_store_u64"(void *p, uint64_t v) nogil
    void rg_copy_to "ivmpi_copy_to_region"(void *dst, const void *src, size_t n, int strict) nogil
    void rg_copy_from "ivmpi_copy_from_region"(void *dst, const void *src, size_t n, int strict) nogil
    void rg_stream_to "ivmpi_stream_to_region"(void *dst, const void *src, size_t n) nogil
    void rg_relax "ivmpi_cpu_relax"() nogil

# Payloads of at least this many bytes are copied into a ring by streaming
# stores (ivmpi_stream_to_region).  Below it a plain copy wins when the two
# cores share a cache (1 KiB: 0.43 against 0.83 us); from 4 KiB streaming
# wins by up to 2.7x when they do not, and loses at most 18% when they do
# (docs/performance.md).  IVMPI_STREAM_MIN changes it for measurements.
import os as _os
cdef uint64_t _stream_min = int(_os.environ.get("IVMPI_STREAM_MIN", "4096"))

# Payloads of 16 KiB or more (DATA chunks of a rendezvous stream, large
# eager frames) go by plain stores, read by the receiver from our cache
# (1 MiB half round trip 50-65 us, against 75-100 us by streaming stores;
# on an Intel Xeon a 64 KiB eager ping-pong 22.8 us against 30).  But for
# seconds at a time (most likely when the host runs the two vCPUs on cores
# that share no cache), a plain 64 KiB chunk takes 15-40 us instead of 2-3:
# each store must first take its line back from the receiver's cache
# (1 MiB: 400-550 us).  So each plain copy of 16 KiB or more is timed
# (_note_copy); _SLOW_IN_A_ROW in a row slower than
# _SLOW_CHUNK_NS_PER_KIB (2 GB/s: about half the chunks of the slow phases,
# almost none otherwise, even with other load) send the next
# _STREAM_AFTER_SLOW payloads by streaming stores, which never take the
# line (75-125 us), and then plain stores are tried again.
cdef enum:
    _SLOW_CHUNK_NS_PER_KIB = 512
    _SLOW_IN_A_ROW = 3
    _STREAM_AFTER_SLOW = 256

# An eager payload of _PARTS_MIN bytes or more into an empty ring (its
# receiver has read everything before it, so it is most likely waiting for
# this one) goes as an EAGER_PARTS frame (EAGER_SYNC_PARTS for a synchronous
# send; docs/layout.md): published before its payload is copied in, then
# filled _PART_BYTES at a time, the fill word telling how far, so that the
# receiver copies one part out while the next is copied in.  A 64 KiB
# ping-pong between two processes in C: 11.7 us a half round trip copied
# whole, 8.7 in parts of 8-16 KiB; 16 KiB 3.4 and 2.8.  Into a ring that
# still holds frames (a stream, the receiver behind) a frame goes whole:
# the receiver is busy with earlier ones anyway, and
# reading right behind the sender's stores only slows both (a one-way
# stream of 64 KiB messages, each followed by a 64 KiB copy on the
# sender: 5.3 us a message whole, 9.2 in parts).  Neither kind of large
# frame restarts the ring at its start (_reserve): that would put it on
# the lines the receiver has just read, each of which the sender's stores
# must first take back.
cdef enum:
    _PARTS_MIN = 16384
    _PART_BYTES = 8192
# Seconds a partly filled frame may stand still before its reader gives up
# (the sender copies without waiting for anything, so only a dead or
# stopped sender leaves one): the engine sets IVMPI_TIMEOUT when it has one.
cdef double _FILL_TIMEOUT = 60.0

# Frame kinds (docs/layout.md, "Frames").
KIND_EAGER = 1
KIND_EAGER_SYNC = 2
KIND_RTS = 3
KIND_CTS = 4
KIND_DATA = 5
KIND_ACK = 6
KIND_PAD = 7
KIND_RTS_REGION = 8
KIND_EAGER_PARTS = 9
KIND_EAGER_SYNC_PARTS = 10
FRAME_HEADER_BYTES = 32

cdef enum:
    _K_FIRST = 1
    _K_LAST = 10             # 7 (PAD) is handled before the range check
    _K_PAD = 7
    _K_EAGER_PARTS = 9       # EAGER in parts; EAGER_SYNC in parts is 10
    _HDR = 32
    _INLINE_MAX = 224        # header + payload up to this size go in one copy
    _INLINE_WORDS = 28       # _INLINE_MAX / 8 (a C array size: no '//' here)
    _NOGIL_MIN = 16384       # copies this large release the GIL
    _RECYCLE_BYTES = 32768   # past this position an empty ring restarts at 0
    # The DATA chunks of a blocking send (which does nothing else until they
    # are out) restart at the ring's start rather than run past this
    # position when the receiver has read the start of the ring's current
    # lap already: the stream then cycles through the same quarter of a
    # 1 MiB ring, whose lines stay in the two cores' caches, instead of
    # walking all of it (1 MiB ping-pong 238-243 -> 198-208 us a round
    # trip).  Other streams keep the whole ring: a side that sends and
    # receives at once fills it while the other does the same, and both
    # then drain; paced by its receiver instead, one stream finished
    # before the other began (a 1 MiB object alltoall on two ranks 1.3x
    # slower).  Eager messages use the whole ring as before.
    _DATA_WINDOW = 262144

cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


# The pace of large plain copies into shared memory (above): each ring
# keeps its own, and this rank's staging copies one more.
cdef struct _CopyPace:
    int slow_in_a_row       # slow plain copies in a row
    int streamed_left       # large copies still to go by streaming stores


cdef inline bint _streamed_next(_CopyPace *pace) noexcept nogil:
    """Does the next large copy go by streaming stores (slow plain ones seen)?"""
    if pace.streamed_left > 0:
        pace.streamed_left -= 1
        return True
    return False


cdef inline void _note_copy(_CopyPace *pace, uint64_t n, int64_t took) noexcept nogil:
    """A plain copy of n >= _NOGIL_MIN bytes took `took` ns: _SLOW_IN_A_ROW
    slow ones in a row send the next _STREAM_AFTER_SLOW large copies by
    streaming stores (one alone is an interrupt, or the first plain copy
    after streaming ones)."""
    if <uint64_t>took <= (n >> 10) * <uint64_t>_SLOW_CHUNK_NS_PER_KIB:
        pace.slow_in_a_row = 0
    else:
        pace.slow_in_a_row += 1
        if pace.slow_in_a_row >= _SLOW_IN_A_ROW:
            pace.slow_in_a_row = 0
            pace.streamed_left = _STREAM_AFTER_SLOW


# Copies into this rank's staging buffers in its heap (blocks a collective
# stages for its peers to copy out, never in strict-align mode): plain
# stores, whose lines the peers then read from this core's cache (4 ranks,
# 1 MiB: Alltoall 1600 -> 1290 us, Bcast 290 -> 235, 16 MiB Bcast 3600 ->
# 2950, against streaming stores); in the slow phases the rings' plain
# copies detect, streaming ones, paced the same way (_note_copy).
cdef _CopyPace _stage_pace


cdef void stage_copy(char *dst, const char *src, size_t n) noexcept nogil:
    cdef int64_t took
    if _streamed_next(&_stage_pace):
        rg_stream_to(dst, src, n)
        return
    if n < _NOGIL_MIN:
        ivmpi_copy_plain(dst, src, n)
        return
    took = _now_ns()
    ivmpi_copy_plain(dst, src, n)
    _note_copy(&_stage_pace, n, _now_ns() - took)

cdef inline uint64_t _round8(uint64_t n) nogil:
    return (n + 7) & ~(<uint64_t>7)


from cpython.bytearray cimport PyByteArray_FromStringAndSize as _bytearray_from


cdef bytearray _unfilled_bytearray(Py_ssize_t n):
    """A bytearray of n bytes left as malloc gave them: for a message about
    to be copied over it whole (zero-filling 1 MiB first costs tens of us).
    Its bytes reach no one before they are overwritten."""
    return <bytearray>_bytearray_from(NULL, n)


def unfilled_bytearray(Py_ssize_t n):
    """_unfilled_bytearray for the engine's receive buffers of objects."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    return _unfilled_bytearray(n)


cdef int _check_ring(Mapping mem, Py_ssize_t offset, uint64_t ring_bytes) except -1:
    if mem.base == NULL:
        raise ValueError("the region mapping is closed")
    if ring_bytes < 4096 or (ring_bytes & (ring_bytes - 1)) != 0:
        raise ValueError(f"ring size {ring_bytes} is not a power of two >= 4096")
    if offset < 0 or offset % 64 != 0 or <uint64_t>offset + 128 + ring_bytes > <uint64_t>mem.size:
        raise ValueError(f"ring at offset {offset} with {ring_bytes} bytes does not fit the region")
    return 0


cdef char *_head_word(Mapping mem, Py_ssize_t offset, Py_ssize_t head_offset) except NULL:
    """Where a ring's head word is: in its receiver's head array (the
    region's layout), or, with head_offset -1, first in the ring's own
    control block (a ring on its own, as the tests use)."""
    if head_offset < 0:
        return mem.base + offset
    if head_offset % 8 != 0 or head_offset > mem.size - 8:
        raise ValueError(f"ring head word at offset {head_offset} does not fit the region")
    return mem.base + head_offset


cdef int _scatter_region(RunPlan plan, char *dst, const char *src, Py_ssize_t count,
                         Py_ssize_t extent, int strict) except -1:
    """count whole elements of a derived datatype, packed at src in the
    region, scattered into dst (the first element's origin).  Device memory
    takes only the copy core's aligned accesses: in strict mode the bytes
    come out to private memory first."""
    cdef uint64_t n = <uint64_t>(plan.size * count)
    cdef char *staged
    if strict:
        staged = <char *>malloc(n if n else 1)
        if staged == NULL:
            raise MemoryError()
        try:
            with nogil:
                rg_copy_from(staged, src, n, strict)
                plan._scatter(dst, staged, count, extent)
        finally:
            free(staged)
    elif n >= _NOGIL_MIN:
        with nogil:
            plan._scatter(dst, src, count, extent)
    else:
        plan._scatter(dst, src, count, extent)
    return 0


cdef class TxRing:
    """The producer end of the ring from this rank to `peer`."""
    cdef Mapping mem
    cdef char *head_p
    cdef char *tail_p
    cdef char *data
    cdef uint64_t ring_bytes
    cdef uint64_t head
    cdef uint64_t tail_cache
    cdef uint64_t recycle_checked
    cdef int strict
    cdef readonly int peer
    cdef _CopyPace pace              # its large plain copies found slow (_note_copy)

    def __cinit__(self, Mapping mem, Py_ssize_t offset, uint64_t ring_bytes, int peer,
                  Py_ssize_t head_offset=-1):
        _check_ring(mem, offset, ring_bytes)
        self.mem = mem
        self.head_p = _head_word(mem, offset, head_offset)
        self.tail_p = mem.base + offset + 64
        self.data = mem.base + offset + 128
        self.ring_bytes = ring_bytes
        self.strict = mem.strict
        self.peer = peer
        # Start-up zeroed both indices; the producer owns `head`.
        self.head = 0
        self.tail_cache = 0
        self.recycle_checked = 0

    cdef int _has_room(self, uint64_t need) except -1:
        cdef uint64_t tail
        if self.head + need - self.tail_cache <= self.ring_bytes:
            return 1
        tail = rg_load_acquire(self.tail_p)
        if tail > self.head or self.head - tail > self.ring_bytes or (tail & 7) != 0 \
                or tail < self.tail_cache:
            raise _CorruptRegionError(
                f"peer {self.peer}: ring tail {tail} is impossible (head {self.head}, "
                f"last tail {self.tail_cache}, ring {self.ring_bytes} bytes)")
        self.tail_cache = tail
        return 1 if self.head + need - tail <= self.ring_bytes else 0

    cdef uint64_t _recycle(self, uint64_t pos) except? 0:
        """Bytes to skip back to the ring's start when the consumer has caught up.

        Small messages then keep reusing the same few cache lines, which stay
        hot in both cores' caches, instead of walking cold memory through the
        whole ring; a stream that keeps the ring busy is not affected.  The
        consumer's index is read at most once per _RECYCLE_BYTES published.
        """
        self.recycle_checked = self.head
        self._has_room(self.ring_bytes + 1)    # refreshes tail_cache (and validates it)
        if self.tail_cache == self.head:
            return self.ring_bytes - pos
        return 0

    cdef char *_reserve(self, uint64_t fsize, bint windowed=False) except? NULL:
        """Where a frame of fsize bytes goes, with room for it (a PAD frame
        written first when it would run past the ring's end, or for a DATA
        chunk past _DATA_WINDOW); NULL when the ring has no room yet.
        _publish_frame then makes it visible."""
        cdef uint64_t pos = self.head & (self.ring_bytes - 1)
        cdef uint64_t pad = 0
        if fsize > self.ring_bytes:
            raise ValueError(f"frame of {fsize} bytes does not fit a ring of {self.ring_bytes}")
        if self.ring_bytes - pos < fsize:
            pad = self.ring_bytes - pos
        elif windowed and pos and pos + fsize > _DATA_WINDOW \
                and self.ring_bytes >= 2 * _DATA_WINDOW \
                and self._has_room(self.ring_bytes - pos + fsize):
            # Only when the receiver has already read the start of this lap:
            # a receiver busy with other things gets the whole ring.
            pad = self.ring_bytes - pos
        elif pos >= _RECYCLE_BYTES and fsize <= pos and fsize < _PARTS_MIN \
                and self.head - self.recycle_checked >= _RECYCLE_BYTES:
            # (A frame longer than pos would not fit after the PAD even in
            # an empty ring: it goes where it is; a large one stays off the
            # lines just read, above.)
            pad = self._recycle(pos)
        if not self._has_room(pad + fsize):
            return NULL
        if pad:
            # Only the first word of a PAD frame is read (layout.md).
            rg_store(self.data + pos, _K_PAD)
            self.head += pad
            pos = 0
        return self.data + pos

    cdef inline void _publish_frame(self, uint64_t fsize) noexcept:
        self.head += fsize
        # The frame is complete in the region before the head says so.
        rg_store_release(self.head_p, self.head)

    cdef int write_gathered(self, uint32_t kind, int32_t tag, uint32_t context, uint64_t b,
                            RunPlan plan, const char *src, Py_ssize_t count,
                            Py_ssize_t extent) except -1:
        """Publish one frame whose payload is count elements of a derived
        datatype gathered from src (the first element's origin) straight
        into the ring; 1 when published, 0 when the ring has no room yet.
        The caller has checked the elements against the user's buffer."""
        cdef uint64_t length = <uint64_t>(plan.size * count)
        cdef uint64_t fsize = _HDR + _round8(length)
        cdef uint64_t words[4]
        cdef char *staged
        cdef char *dst = self._reserve(fsize)
        if dst == NULL:
            return 0
        words[0] = kind | (length << 32)
        words[1] = <uint32_t>tag | (<uint64_t>context << 32)
        words[2] = 0
        words[3] = b
        rg_copy_to(dst, words, _HDR, self.strict)
        if self.strict:
            # Device memory takes only the copy core's aligned accesses: the
            # runs are gathered in private memory first.
            staged = <char *>malloc(length if length else 1)
            if staged == NULL:
                raise MemoryError()
            try:
                plan._gather(staged, src, count, extent)
                rg_copy_to(dst + _HDR, staged, length, self.strict)
            finally:
                free(staged)
        elif length >= _NOGIL_MIN:
            with nogil:
                plan._gather_to_region(dst + _HDR, src, count, extent)
        elif length >= _stream_min:
            plan._gather_to_region(dst + _HDR, src, count, extent)
        else:
            plan._gather(dst + _HDR, src, count, extent)
        self._publish_frame(fsize)
        return 1

    cdef int _write_parts(self, char *dst, uint64_t *words, const char *payload,
                          uint64_t length, uint64_t fsize, bint stream) except -1:
        """The eager payload of write_frame (words: its header) as an
        EAGER_PARTS or EAGER_SYNC_PARTS frame (kind 9 or 10, the send id
        kept in b): header (fill word 0) and head published first, then the
        payload part by part, each part's end stored with release in the
        fill word.  Stores as write_frame's for large payloads (plain and
        timed, or streaming while plain ones are slow)."""
        cdef uint64_t done = 0, n
        cdef char *fill = dst + 16
        cdef bint streamed = False
        cdef int64_t started
        words[0] = ((words[0] & 0xffffffffu) + 8) | (length << 32)
        words[2] = 0
        rg_copy_to(dst, words, _HDR, self.strict)
        self._publish_frame(fsize)
        if stream and not self.strict and _streamed_next(&self.pace):
            streamed = True
        started = _now_ns()
        with nogil:
            while done < length:
                n = length - done
                if n > _PART_BYTES:
                    n = _PART_BYTES
                if streamed:
                    rg_stream_to(dst + _HDR + done, payload + done, n)
                else:
                    rg_copy_to(dst + _HDR + done, payload + done, n, self.strict)
                done += n
                rg_store_release(fill, done)
        if stream and not streamed and not self.strict:
            _note_copy(&self.pace, length, _now_ns() - started)
        return 0

    cdef int write_frame(self, uint32_t kind, int32_t tag, uint32_t context, uint64_t a,
                         uint64_t b, const char *payload, uint64_t length,
                         bint stream=True, bint windowed=False) except -1:
        """Publish one frame; 1 when published, 0 when the ring has no room yet.
        An EAGER or EAGER_SYNC payload of _PARTS_MIN bytes or more into an
        empty ring goes in parts (_write_parts).
        stream: a payload of _stream_min bytes or more may go by streaming
        stores (the receiver reads it later, from memory), one of
        _NOGIL_MIN or more only while plain stores are found slow (above);
        False: plain stores (a small last DATA chunk, read soon from our
        cache).  windowed: a DATA chunk kept within _DATA_WINDOW."""
        cdef uint64_t fsize = _HDR + _round8(length)
        cdef uint64_t words[_INLINE_WORDS]
        cdef int64_t started
        cdef bint in_parts = (kind == 1 or kind == 2) and length >= _PARTS_MIN \
            and rg_load_acquire(self.tail_p) == self.head
        cdef char *dst = self._reserve(fsize, windowed)
        if dst == NULL:
            return 0
        words[0] = kind | (<uint64_t>length << 32)
        words[1] = <uint32_t>tag | (<uint64_t>context << 32)
        words[2] = a
        words[3] = b
        if fsize <= _INLINE_MAX:
            # Header and payload in one aligned copy; the padding is zeroed
            # so no private bytes leak into the region.
            if length & 7:
                words[(fsize >> 3) - 1] = 0
            if length:
                memcpy(<char *>words + _HDR, payload, length)
            rg_copy_to(dst, words, fsize, self.strict)
        elif in_parts:
            self._write_parts(dst, words, payload, length, fsize, stream)
            return 1
        else:
            rg_copy_to(dst, words, _HDR, self.strict)
            if stream and length >= _NOGIL_MIN and not self.strict:
                # Large: plain stores, timed, unless slow ones sent this
                # ring to streaming stores for a while (_note_copy).
                if _streamed_next(&self.pace):
                    with nogil:
                        rg_stream_to(dst + _HDR, payload, length)
                else:
                    started = _now_ns()
                    with nogil:
                        rg_copy_to(dst + _HDR, payload, length, 0)
                    _note_copy(&self.pace, length, _now_ns() - started)
            elif stream and length >= _stream_min and not self.strict:
                rg_stream_to(dst + _HDR, payload, length)
            elif length >= _NOGIL_MIN:
                with nogil:
                    rg_copy_to(dst + _HDR, payload, length, self.strict)
            else:
                rg_copy_to(dst + _HDR, payload, length, self.strict)
        self._publish_frame(fsize)
        return 1

    def send(self, uint32_t kind, int32_t tag, uint32_t context, uint64_t a, uint64_t b,
             payload=None, Py_ssize_t offset=0, Py_ssize_t length=-1):
        """Publish a frame whose payload is payload[offset:offset+length] (bytes).

        Returns True when published, False when the ring is full (try later).
        """
        cdef Py_buffer view
        cdef int done
        if payload is None:
            if length > 0 or offset:
                raise ValueError("a payload length was given without a payload")
            return self.write_frame(kind, tag, context, a, b, NULL, 0) == 1
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            if length < 0:
                length = view.len - offset
            if offset < 0 or length < 0 or offset > view.len or length > view.len - offset:
                raise _BufferSpecError(
                    f"payload range [{offset}, {offset}+{length}) is outside a buffer of {view.len} bytes")
            done = self.write_frame(kind, tag, context, a, b, <const char *>view.buf + offset,
                                    <uint64_t>length)
        finally:
            PyBuffer_Release(&view)
        return done == 1

    def stream(self, payload, uint64_t offset, uint64_t chunk, uint64_t send_id, int spins=0,
               RxRing watch=None, bint windowed=False):
        """Publish DATA frames of payload from offset on, as many as fit.

        Returns the new offset (== len(payload) once everything is out).
        Each chunk is published on its own, so the receiver copies chunk k
        while we copy chunk k+1.  When the ring is full, up to `spins` polls
        wait here for the receiver to make room, instead of a trip back
        through the Python wait loop for every chunk; the wait ends early
        when a frame arrives on `watch` (the receiver's ring to us): a
        receiver that is streaming to us as well makes room only once we
        drain its frames, so waiting longer would only stall both.
        """
        cdef Py_buffer view
        if chunk == 0:
            raise ValueError("chunk size must be positive")
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            return self.stream_from(<const char *>view.buf, <uint64_t>view.len, offset, chunk,
                                    send_id, spins, watch, windowed)
        finally:
            PyBuffer_Release(&view)

    cdef uint64_t stream_from(self, const char *data, uint64_t total, uint64_t offset,
                              uint64_t chunk, uint64_t send_id, int spins,
                              RxRing watch, bint windowed=False) except? 0:
        """stream() for a payload of total bytes at data (pinned by the
        caller).  windowed: the chunks may restart early (_DATA_WINDOW), for
        a sender doing nothing else meanwhile."""
        cdef uint64_t n
        cdef int waited
        while offset < total:
            n = total - offset
            if n > chunk:
                n = chunk
            waited = 0
            while True:
                if self.write_frame(5, 0, 0, offset, send_id, data + offset, n,
                                    n >= _NOGIL_MIN, windowed):
                    break
                if waited >= spins or (watch is not None and watch.poll()):
                    return offset
                waited += 1
                rg_relax()
            offset += n
        return offset

    def note_plain_copy(self, uint64_t n, int64_t took_ns):
        """Record a plain copy of n bytes that took took_ns (as write_frame
        does for large payloads); the number of large payloads that will now
        go by streaming stores."""
        _note_copy(&self.pace, n, took_ns)
        return self.pace.streamed_left

    @property
    def streaming_left(self):
        """Large payloads still to go by streaming stores (slow plain copies seen)."""
        return self.pace.streamed_left

    @property
    def head_index(self):
        return self.head

    def max_payload(self):
        """The largest payload a single frame may carry in this ring."""
        return self.ring_bytes - _HDR


cdef class RxRing:
    """The consumer end of the ring from `peer` to this rank.

    poll() exposes the next frame's header fields (kind, tag, context, a, b,
    length) after validating them; the payload is then copied out and the
    frame released with consume().
    """
    cdef Mapping mem
    cdef char *head_p
    cdef char *tail_p
    cdef char *data
    cdef uint64_t ring_bytes
    cdef uint64_t tail
    cdef uint64_t *tail_copy     # where an Inbox reads our tail (see _inbox.pxi)
    cdef object inbox            # keeps that copy's memory alive
    cdef uint64_t head_seen
    cdef uint64_t fsize
    cdef uint64_t pos
    cdef int strict
    cdef readonly int peer
    cdef readonly bint ready
    cdef readonly uint32_t kind
    cdef readonly int32_t tag
    cdef readonly uint32_t context
    cdef readonly uint64_t a
    cdef readonly uint64_t b
    cdef readonly uint64_t length
    cdef public int32_t last_tag     # tag of the last frame a fast path delivered
    # The current frame came in parts (kind 9 or 10, presented as EAGER or
    # EAGER_SYNC): its payload is there up to `filled` bytes, the sender
    # still copying the rest.
    cdef readonly bint parts
    cdef readonly uint64_t filled
    cdef public double fill_timeout  # seconds a partly filled frame may stand still
    # Called (no arguments) every millisecond or so while such a frame stands
    # still: raises when its sender is known to be gone (the engine's
    # liveness check), so that a death mid-send is named as any other.
    cdef public object stall_check

    def __cinit__(self, Mapping mem, Py_ssize_t offset, uint64_t ring_bytes, int peer,
                  Py_ssize_t head_offset=-1):
        _check_ring(mem, offset, ring_bytes)
        self.mem = mem
        self.head_p = _head_word(mem, offset, head_offset)
        self.tail_p = mem.base + offset + 64
        self.data = mem.base + offset + 128
        self.ring_bytes = ring_bytes
        self.strict = mem.strict
        self.peer = peer
        self.tail = 0
        self.tail_copy = &self.tail         # until an Inbox keeps the copy
        self.head_seen = 0
        self.ready = False
        self.fill_timeout = _FILL_TIMEOUT

    cdef int _corrupt(self, str what) except -1:
        raise _CorruptRegionError(
            f"peer {self.peer}: {what} (ring tail {self.tail}, head {self.head_seen}, "
            f"ring {self.ring_bytes} bytes)")

    cpdef bint poll(self) except -1:
        """True when a validated frame is ready to be read."""
        cdef uint64_t h, avail, w0, w1, skip
        if self.ready:
            return True
        while True:
            if self.tail == self.head_seen:
                h = rg_load_acquire(self.head_p)
                if h == self.head_seen:
                    return False
                if h < self.head_seen:
                    self._corrupt(f"ring head went backwards to {h}")
                if h - self.tail > self.ring_bytes:
                    self._corrupt(f"ring head {h} is more than a ring ahead")
                if h & 7:
                    self._corrupt(f"ring head {h} is not a multiple of 8")
                self.head_seen = h
            avail = self.head_seen - self.tail
            self.pos = self.tail & (self.ring_bytes - 1)
            w0 = rg_load(self.data + self.pos)
            self.kind = <uint32_t>(w0 & 0xffffffffu)
            if self.kind == _K_PAD:
                skip = self.ring_bytes - self.pos
                if skip > avail:
                    self._corrupt(f"PAD frame at {self.pos} skips {skip} bytes, only {avail} published")
                self.tail += skip
                self.tail_copy[0] = self.tail
                rg_store_release(self.tail_p, self.tail)
                continue
            if self.kind < _K_FIRST or self.kind > _K_LAST:
                self._corrupt(f"frame at {self.pos} has unknown kind {self.kind}")
            self.length = w0 >> 32
            self.fsize = _HDR + _round8(self.length)
            if self.pos + self.fsize > self.ring_bytes:
                self._corrupt(f"frame at {self.pos} of {self.fsize} bytes runs past the ring's end")
            if self.fsize > avail:
                self._corrupt(f"frame at {self.pos} of {self.fsize} bytes is longer than the "
                              f"{avail} bytes published")
            w1 = rg_load(self.data + self.pos + 8)
            self.tag = <int32_t>(<uint32_t>(w1 & 0xffffffffu))
            self.context = <uint32_t>(w1 >> 32)
            self.a = rg_load(self.data + self.pos + 16)
            self.b = rg_load(self.data + self.pos + 24)
            self.parts = self.kind >= _K_EAGER_PARTS
            if self.parts:
                # An eager message like any other to every reader: its
                # payload is read only through copy_out, scatter_out or
                # after wait_filled, which follow the fill word.
                self.kind -= 8
                self.a = 0
                self.filled = 0
            self.ready = True
            return True

    cdef int wait_filled(self, uint64_t upto) except -1:
        """Until the current frame's payload is there up to `upto` bytes
        (at most its length): nothing to wait for unless it came in parts.
        The fill word is the sender's: checked, and waited for at most
        fill_timeout seconds without a change (stall_check names a sender
        that died meanwhile)."""
        cdef uint64_t f
        cdef unsigned long polls = 0
        cdef int64_t since = 0, now
        while self.parts and self.filled < upto:
            f = rg_load_acquire(self.data + self.pos + 16)
            if f > self.length or f < self.filled:
                self._corrupt(f"eager frame at {self.pos} of {self.length} bytes says "
                              f"{f} are filled, after {self.filled}")
            if f > self.filled:
                self.filled = f
                polls = 0
                since = 0
                continue
            polls += 1
            if polls < 256:
                rg_relax()
                continue
            # The sender is off its core (or gone): give ours away meanwhile.
            with nogil:
                sched_yield()
            if polls & 63:
                continue
            if self.stall_check is not None:
                self.stall_check()
            now = _now_ns()
            if since == 0:
                since = now
            elif now - since > <int64_t>(self.fill_timeout * 1e9):
                raise _IvmpiTimeoutError(
                    f"peer {self.peer}: an eager message of {self.length} bytes stayed "
                    f"filled to {self.filled} bytes for {self.fill_timeout:g} s (the peer "
                    f"stopped or died while sending it)")
        return 0

    cdef int copy_out(self, char *dst, uint64_t n) except -1:
        # n <= self.length is the caller's promise (checked by the callers).
        # A frame in parts: each part as it lands, while the sender copies
        # the next; any other frame in one go (wait_filled returns at once).
        cdef uint64_t done = 0, upto, k
        cdef const char *src = self.data + self.pos + _HDR
        while done < n:
            self.wait_filled(done + 1)
            upto = self.filled if self.parts and self.filled < n else n
            k = upto - done
            if k >= _NOGIL_MIN:
                with nogil:
                    rg_copy_from(dst + done, src + done, k, self.strict)
            else:
                rg_copy_from(dst + done, src + done, k, self.strict)
            done = upto
        return 0

    cdef int scatter_out(self, RunPlan plan, char *dst, Py_ssize_t count,
                         Py_ssize_t extent) except -1:
        """The current frame's payload, count whole elements of a derived
        datatype (count * plan.size <= length is the caller's promise),
        scattered from the ring into dst (the first element's origin)."""
        self.wait_filled(self.length)
        return _scatter_region(plan, dst, self.data + self.pos + _HDR, count, extent,
                               self.strict)

    def read_into(self, out, Py_ssize_t offset=0):
        """Copy the current frame's payload into out[offset:offset+length]."""
        cdef Py_buffer view
        if not self.ready:
            raise RuntimeError("no frame is ready")
        PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            if offset < 0 or offset > view.len or <uint64_t>(view.len - offset) < self.length:
                raise _BufferSpecError(
                    f"a payload of {self.length} bytes does not fit at offset {offset} "
                    f"of a buffer of {view.len} bytes")
            self.copy_out(<char *>view.buf + offset, self.length)
        finally:
            PyBuffer_Release(&view)

    def drain_data(self, out, uint64_t send_id, uint64_t received, uint64_t total,
                   uint64_t chunk_limit, bint discard, int spins=0):
        """Copy consecutive DATA frames of one rendezvous message into out.

        The current frame must be a DATA frame for send_id.  Every chunk is
        checked: it must start where the previous one ended, carry 1 to
        chunk_limit bytes and stay within the announced total.  Returns the
        bytes received so far; stops at the message's end, at a frame of
        another kind or message, or when nothing more arrives within `spins`
        polls (so a stream keeps flowing without a trip through Python per chunk).
        """
        cdef Py_buffer view
        if not self.ready or self.kind != 5 or self.b != send_id:
            raise RuntimeError("the current frame is not data for this message")
        if discard:
            return self.drain_into(NULL, send_id, received, total, chunk_limit, spins, True)
        PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            if <uint64_t>view.len < total:
                raise _BufferSpecError(f"a message of {total} bytes does not fit a buffer of "
                                       f"{view.len} bytes")
            return self.drain_into(<char *>view.buf, send_id, received, total, chunk_limit,
                                   spins, True)
        finally:
            PyBuffer_Release(&view)

    cdef uint64_t drain_into(self, char *dst, uint64_t send_id, uint64_t received,
                             uint64_t total, uint64_t chunk_limit, int spins,
                             bint strict_order) except? 0:
        """drain_data() into dst (total bytes, pinned by the caller; NULL:
        discard), the current frame being DATA for send_id.  strict_order
        False: a frame that does not follow is left in the ring, with the
        bytes received so far returned, for the caller's general path to
        report."""
        cdef uint64_t start = received
        cdef int waited
        while True:
            if self.a != received or self.length == 0 or self.length > chunk_limit \
                    or self.length > total - received:
                if received != start or not strict_order:
                    # Report the progress first; the next call raises on
                    # this frame with the caller's count up to date.
                    break
                raise _CorruptRegionError(
                    f"peer {self.peer}: data chunk at offset {self.a} of {self.length} bytes "
                    f"does not follow the {received} of {total} bytes received for "
                    f"send id {send_id}")
            if dst != NULL:
                self.copy_out(dst + received, self.length)
            received += self.length
            self.consume()
            if received == total:
                break
            waited = 0
            while not self.poll() and waited < spins:
                waited += 1
                rg_relax()
            if not self.ready or self.kind != 5 or self.b != send_id:
                break
        return received

    def payload(self):
        """The current frame's payload as a new bytearray (unexpected messages)."""
        cdef bytearray out
        if not self.ready:
            raise RuntimeError("no frame is ready")
        out = _unfilled_bytearray(self.length)
        if self.length:
            self.copy_out(<char *>out, self.length)
        return out

    cdef bint more_behind(self) noexcept:
        """Has the sender published bytes after the frame at the head (poll()
        True)?  A hint only: what follows is read and checked by poll() once
        this frame is consumed."""
        return rg_load_acquire(self.head_p) - self.tail > self.fsize

    cpdef consume(self):
        """Release the current frame's space to the producer."""
        global _frames_taken
        if not self.ready:
            raise RuntimeError("no frame is ready")
        _frames_taken += 1
        # Never hand space back while the sender may still write into it.
        self.wait_filled(self.length)
        self.ready = False
        self.tail += self.fsize
        self.tail_copy[0] = self.tail
        # Our reads of the frame are done before the producer may reuse it.
        rg_store_release(self.tail_p, self.tail)

    def pending(self):
        """True when the producer has published bytes we have not consumed."""
        return self.ready or rg_load_acquire(self.head_p) != self.tail


cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)

from cpython.pythread cimport PyThread_get_thread_ident


@cython.final
cdef class EngineLock:
    """The re-entrant lock of one engine: whoever holds it may touch the
    engine's queues and rings (and the fast paths' view of them).

    Its fields change only while the GIL is held, so the GIL makes each
    change atomic and taking a free lock costs a few C operations (the fast
    paths take it on every call).  A thread that finds it held by another
    gives the GIL and its core away until it is free: the holder is running
    engine code or copying without the GIL, both brief, since nobody holds
    it while idling in a wait.
    """
    cdef unsigned long owner
    cdef readonly long depth
    cdef readonly long waiting      # threads blocked in acquire()

    cdef inline bint enter(self) noexcept:
        """Take the lock if it is free or already ours; False when another
        thread holds it (then the caller takes its general path)."""
        cdef unsigned long me = PyThread_get_thread_ident()
        if self.depth == 0:
            self.owner = me
        elif self.owner != me:
            return False
        self.depth += 1
        return True

    cdef inline void leave(self) noexcept:
        self.depth -= 1

    cdef int _wait(self) except -1:
        """Block until the lock, held by another thread, is ours."""
        cdef long waited = 0
        self.waiting += 1
        try:
            while not self.enter():
                with nogil:
                    if waited < 64:
                        sched_yield()
                    else:
                        usleep(20)
                waited += 1
        finally:
            self.waiting -= 1
        return 0

    cdef int _release(self) except -1:
        if self.depth <= 0 or self.owner != PyThread_get_thread_ident():
            raise RuntimeError("release of an engine lock this thread does not hold")
        self.depth -= 1
        if self.depth == 0 and self.waiting:
            # Hand over: a waiter needs the GIL while the lock is free, or
            # a thread that polls in a loop would take it back every time.
            with nogil:
                usleep(50)
        return 0

    def acquire(self):
        if not self.enter():
            self._wait()
        return True

    def release(self):
        self._release()

    def __enter__(self):
        if not self.enter():
            self._wait()

    def __exit__(self, exc_type, exc_value, traceback):
        self._release()


cdef inline bint _accepts_head(RecvOp op, RxRing rx):
    """MPI matching of a posted receive against the envelope of rx's head
    frame (the engine's _wanted, for its C types): -1 is the wildcard."""
    return (op.context == rx.context and (op.source == -1 or op.source == rx.peer)
            and (op.tag == -1 or op.tag == rx.tag))


def deliver_eager(RxRing rx, list posted, uint64_t eager_limit, TxRing tx=None):
    return _deliver_eager(rx, posted, eager_limit, tx)


cdef bint _deliver_eager(RxRing rx, list posted, uint64_t eager_limit, TxRing tx) except -1:
    """The engine's commonest step in one call: the EAGER frame at the head
    of rx goes straight into the first posted receive that matches it (MPI
    order), which completes.  With tx (the ring back to rx's peer, nothing
    queued for it) an EAGER_SYNC frame is delivered too, and acknowledged
    on tx.  Returns False, touching nothing, for anything else (another
    kind, no match, a payload that would not fit, a bad tag or length, no
    room for the ACK): the engine's general handler then deals with the
    frame and reports what is wrong with it."""
    cdef Py_ssize_t i, n
    cdef RecvOp op
    cdef Py_buffer view
    cdef bint sync
    if not rx.ready or rx.tag < 0 or rx.length > eager_limit:
        return False
    sync = rx.kind == 2
    if not (rx.kind == 1 or (sync and tx is not None)):
        return False
    n = len(posted)
    for i in range(n):
        op = <RecvOp?>posted[i]
        if not _accepts_head(op, rx):
            continue
        if op.mem is None:                  # an object receive: keep the bytes
            if sync and not tx.write_frame(6, 0, 0, 0, rx.b, NULL, 0):
                return False
            op.data = rx.payload()
        else:
            PyObject_GetBuffer(op.mem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                if <uint64_t>view.len < rx.length:
                    return False
                # The ACK goes first, once nothing can fail: the payload
                # stays in the ring until consumed, so the sender may go on.
                if sync and not tx.write_frame(6, 0, 0, 0, rx.b, NULL, 0):
                    return False
                if rx.length:
                    rx.copy_out(<char *>view.buf, rx.length)
            finally:
                PyBuffer_Release(&view)
        del posted[i]
        op.status_source = rx.peer
        op.status_tag = rx.tag
        op.total = rx.length
        op.count = rx.length
        op.done = True
        rx.consume()
        return True
    return False


# The engine's MAX_MESSAGE: no message is announced larger.
cdef uint64_t _MAX_MESSAGE = <uint64_t>1 << 48


cdef bint _heap_span(RxRing rx, uint64_t at, uint64_t total, uint64_t eager_limit,
                     object bounds) except -1:
    """Does a region rendezvous of total bytes at region offset `at` lie
    inside the sender's heap `bounds` ((region offset, bytes), in the
    region of rx), and is it over the eager limit?  Anything else is the
    engine's, which reports it."""
    cdef uint64_t lo = bounds[0], room = bounds[1]
    if total <= eager_limit or total > _MAX_MESSAGE:
        return False
    # The sender says where: only inside its own heap, checked without overflow.
    return not (at < lo or total > room or at - lo > room - total
                or at + total > <uint64_t>rx.mem.size)


cdef inline bint _rts_total_ok(RxRing rx, uint64_t eager_limit) noexcept:
    """May the RTS at the head of rx announce its total?  Over the eager
    limit, or any size with the sender's address (_rts_floor); never over
    _MAX_MESSAGE."""
    return _rts_floor(rx.length == 8, eager_limit) < rx.a <= _MAX_MESSAGE


@cython.final
cdef class Rendezvous:
    """The engine's rendezvous state, for the steps poll_eager takes in C:
    receives being streamed into (receiving) and sends awaiting their
    clear-to-send (awaiting_cts), both keyed by (world rank, send id), as
    ivmpi/engine.py keeps them; post_stream queues the rest of a stream
    that does not fit the ring now (the engine's _post_stream)."""
    cdef public dict receiving, awaiting_cts
    cdef public object post_stream
    cdef public uint64_t chunk_bytes
    cdef public int stream_spins
    # World rank -> (region offset, bytes) of each region member's heap,
    # where its region rendezvous (RTS_REGION) may point; None: those
    # frames are left to the engine.
    cdef public dict heaps

    def __cinit__(self, dict receiving, dict awaiting_cts, object post_stream,
                  uint64_t chunk_bytes, int stream_spins):
        self.receiving = receiving
        self.awaiting_cts = awaiting_cts
        self.post_stream = post_stream
        self.chunk_bytes = chunk_bytes
        self.stream_spins = stream_spins

    cdef bint announced(self, RxRing rx, list posted, uint64_t eager_limit,
                        TxRing tx) except -1:
        """The RTS at the head of rx matches a posted receive whose buffer
        holds it: cleared (the engine's _accept_rendezvous).  False,
        touching nothing, for anything else (no match: the engine queues
        it; an object receive, a buffer too small, a bad envelope, no room
        for the CTS: the engine's general handler)."""
        cdef Py_ssize_t i
        cdef RecvOp op
        cdef uint64_t address = 0
        cdef Py_buffer view
        cdef bint copied = False
        if (rx.length != 0 and rx.length != 8) or rx.tag < 0 \
                or not _rts_total_ok(rx, eager_limit):
            return False
        for i in range(len(posted)):
            op = <RecvOp?>posted[i]
            if not _accepts_head(op, rx):
                continue
            mem = op.mem
            if mem is None:
                # An object receive, into the buffer its caller offered.
                mem = object_room(op, rx.a)
                if mem is None:
                    return False
            elif <uint64_t>len(mem) < rx.a:
                return False
            key = (rx.peer, rx.b)
            if key in self.receiving:
                return False
            if rx.length == 8:
                # The sender's address: copy from its memory if we may (_single_copy.pxi).
                rx.copy_out(<char *>&address, 8)
                PyObject_GetBuffer(mem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
                try:
                    copied = <uint64_t>view.len >= rx.a and _sc_read_shared(
                        rx.peer, rx.b, address, <char *>view.buf, rx.a, rx.mem)
                finally:
                    PyBuffer_Release(&view)
            if tx.write_frame(4, 0, 0, rx.a if copied else 0, rx.b, NULL, 0) != 1:
                return False        # (a copy made is made again by the engine's handler)
            if op.mem is None:
                op.mem = op.data = mem
            del posted[i]
            op.status_source = rx.peer
            op.status_tag = rx.tag
            op.total = rx.a
            if copied:
                op.count = rx.a
                op.done = True
            else:
                self.receiving[key] = op
            rx.consume()
            return True
        return False

    cdef bint cleared(self, RxRing rx, TxRing tx) except -1:
        """The CTS at the head of rx clears a send of ours: taken, and the
        send streamed as far as the ring has room (the rest queued by the
        engine)."""
        cdef SendOp op
        cdef Py_buffer view
        cdef uint64_t sent, total
        if rx.a != 0:
            # A count: the receiver copied the message from our memory.
            return _take_copied_cts(rx, self.awaiting_cts)
        if rx.length != 0:
            return False
        key = (rx.peer, rx.b)
        op = self.awaiting_cts.get(key)
        if op is None:
            return False            # the engine reports the stray CTS
        del self.awaiting_cts[key]
        rx.consume()
        op.state = "streaming"
        PyObject_GetBuffer(op.mem, &view, PyBUF_SIMPLE)
        try:
            sent = tx.stream_from(<const char *>view.buf, <uint64_t>view.len, op.offset,
                                  self.chunk_bytes, op.send_id, self.stream_spins, rx)
            total = <uint64_t>view.len
        finally:
            PyBuffer_Release(&view)
        op.offset = sent
        if sent == total:
            op.done = True
            op.state = "done"
        else:
            self.post_stream(rx.peer, op)
        return True

    cdef bint data(self, RxRing rx) except -1:
        """DATA at the head of rx for a receive being streamed into: the
        chunks there copied out (the engine's DATA step).  False for a
        chunk the engine must judge (unknown send id, out of place)."""
        cdef RecvOp op
        cdef Py_buffer view
        cdef uint64_t before, got, total
        key = (rx.peer, rx.b)
        op = self.receiving.get(key)
        if op is None:
            return False
        before = op.received
        total = op.total
        if op.discard:
            got = rx.drain_into(NULL, rx.b, before, total, self.chunk_bytes,
                                self.stream_spins, False)
        else:
            PyObject_GetBuffer(op.mem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                if <uint64_t>view.len < total:
                    return False
                got = rx.drain_into(<char *>view.buf, rx.b, before, total, self.chunk_bytes,
                                    self.stream_spins, False)
            finally:
                PyBuffer_Release(&view)
        if got == before:
            return False
        op.received = got
        if got == total:
            del self.receiving[key]
            op.count = op.total if op.error is None else 0
            op.done = True
        return True

    cdef bint region(self, RxRing rx, list posted, uint64_t eager_limit, TxRing tx) except -1:
        """The region rendezvous (RTS_REGION) at the head of rx, for a
        posted receive that matches it: copied straight out of the sender's
        heap, then acknowledged on tx (the sender may reuse the block), as
        the engine's _copy_from_heap does.  False, touching nothing, for
        anything else (no match: the engine queues it; a buffer too small,
        an announcement outside the sender's heap, no room for the ACK:
        the engine's general handler, which reports what is wrong)."""
        cdef uint64_t at, total = rx.a
        cdef Py_ssize_t i
        cdef RecvOp op
        cdef Py_buffer view
        cdef object fresh = None
        if self.heaps is None or rx.length != 8 or rx.tag < 0:
            return False
        bounds = self.heaps.get(rx.peer)
        if bounds is None:
            return False
        rx.copy_out(<char *>&at, 8)
        if not _heap_span(rx, at, total, eager_limit, bounds):
            return False
        for i in range(len(posted)):
            op = <RecvOp?>posted[i]
            if not _accepts_head(op, rx):
                continue
            mem = op.mem
            if mem is None:
                # An object receive: into the buffer its caller offered, or
                # one of its own.
                fresh = object_room(op, total)
                if fresh is None:
                    fresh = _unfilled_bytearray(<Py_ssize_t>total)
                mem = fresh
            PyObject_GetBuffer(mem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                if <uint64_t>view.len < total:
                    return False
                with nogil:
                    rg_copy_from(<char *>view.buf, rx.mem.base + at, total, rx.strict)
            finally:
                PyBuffer_Release(&view)
            # Only after the copy: the sender reuses the block on this ACK.
            if tx.write_frame(6, 0, 0, 0, rx.b, NULL, 0) != 1:
                return False        # (the engine copies it again)
            if fresh is not None:
                op.data = fresh
            del posted[i]
            op.status_source = rx.peer
            op.status_tag = rx.tag
            op.total = total
            op.count = total
            op.done = True
            rx.consume()
            return True
        return False

    cdef bint step(self, RxRing rx, list posted, uint64_t eager_limit, TxRing tx) except -1:
        """The RTS, CTS, DATA or RTS_REGION frame at the head of rx, by the
        step above for its kind; False when the engine's handler must take
        it."""
        if rx.kind == 5:
            return self.data(rx)
        if rx.kind == 4:
            return self.cleared(rx, tx)
        if rx.kind == 8:
            return self.region(rx, posted, eager_limit, tx)
        return self.announced(rx, posted, eager_limit, tx)


def rendezvous_step(RxRing rx, list posted, uint64_t eager_limit, TxRing tx, set backlog,
                    Rendezvous rendezvous):
    """The engine's progress, for the frame at the head of rx: a step of a
    large message (RTS, CTS, DATA or RTS_REGION) taken in C, as poll_eager
    takes it.  False, touching nothing, when the engine's handler must take
    it (any other frame, anything Rendezvous leaves to it, or frames of
    ours queued for that peer, which must go out first)."""
    if not rx.ready or not (3 <= rx.kind <= 5 or rx.kind == 8) or tx is None \
            or rx.peer in backlog:
        return False
    return rendezvous.step(rx, posted, eager_limit, tx)


cdef bint _take_ack(RxRing rx, dict awaiting_ack) except -1:
    """The ACK at the head of rx, of a send in awaiting_ack: taken, and the
    send completes.  False for a stray one, or without a table (the
    engine's round reports it)."""
    if awaiting_ack is None:
        return False
    cdef SendOp acked = awaiting_ack.pop((rx.peer, rx.b), None)
    if acked is None:
        return False
    rx.consume()
    acked.done = True
    return True


cdef bint _take_copied_cts(RxRing rx, dict awaiting_cts) except -1:
    """The CTS at the head of rx saying the receiver copied the whole of a
    send of ours from our memory (_single_copy.pxi): taken, and the send
    completes, as the engine's round does.  False for anything else (a CTS
    to stream, a stray one, any count but the whole: the engine's, which
    reports it), or without a table."""
    cdef SendOp op
    if awaiting_cts is None or rx.length != 0 or rx.a == 0:
        return False
    key = (rx.peer, rx.b)
    op = awaiting_cts.get(key)
    if op is None or rx.a != <uint64_t>len(op.mem):
        return False
    del awaiting_cts[key]
    rx.consume()
    op.done = True
    op.state = "done"
    return True


cpdef int poll_eager(EngineLock lock, RxRing rx, list posted, uint64_t eager_limit,
                     set backlog, Op op, TxRing tx=None, dict awaiting_ack=None,
                     int spins=0, Rendezvous rendezvous=None) except -2:
    """A wait's round for an operation with rx's peer, in one call when only
    eager frames for posted receives (synchronous ones acknowledged on tx)
    and acknowledgements of sends in awaiting_ack arrive: they are handled
    (under the lock) until op is done.  With `rendezvous` (the engine's
    state), the steps of large messages too: an RTS for a posted receive is
    cleared, a CTS for a send of ours streams it, DATA is copied out.
    While nothing arrives, up to |spins|
    polls wait here (negative: yielding the core between polls), as the
    blocking fast paths do.  1: something was handled, 0: nothing arrived,
    -1: the engine's own round is needed (another thread holds the lock,
    frames wait to be sent, or the next frame is something else)."""
    cdef int moved = 0, waited = 0, polls = spins if spins >= 0 else -spins
    cdef uint32_t kind
    if not lock.enter():
        return -1
    try:
        if backlog:
            return -1
        while not op.done:
            if backlog:
                return -1               # a stream the ring could not take: the engine's
            if not rx.poll():
                if waited >= polls:
                    break
                waited += 1
                if spins >= 0:
                    rg_relax()
                else:
                    sched_yield()
                continue
            kind = rx.kind
            if kind == 6 and awaiting_ack is not None:
                if not _take_ack(rx, awaiting_ack):
                    return -1           # the engine reports the stray ACK
            elif rendezvous is not None and tx is not None and (3 <= kind <= 5 or kind == 8):
                if not rendezvous.step(rx, posted, eager_limit, tx):
                    return -1
            elif not _deliver_eager(rx, posted, eager_limit, tx):
                return -1
            moved = 1
        return moved
    finally:
        lock.leave()
