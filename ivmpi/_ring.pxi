# The rings: one single-producer/single-consumer ring per ordered pair of
# ranks, as specified in docs/layout.md ("Rings" and "Frames").
#
# Included at the end of _fastcopy.pyx so that it shares the Mapping type
# and the copy core.  The producer side (TxRing) and the consumer side
# (RxRing) each keep their own index privately and publish it with a
# store-release; the other side's index is read with a load-acquire and
# validated before use, because the peer owning it may be corrupt or hostile.

from libc.stdint cimport uint64_t, uint32_t, int32_t
from libc.string cimport memset, memcpy, memmove
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE

from .errors import CorruptRegionError as _CorruptRegionError
from .errors import BufferSpecError as _BufferSpecError

cdef extern from "_copycore.h":
    uint64_t rg_load_acquire "ivmpi_load_acquire_u64"(const void *p) nogil
    void rg_store_release "ivmpi_store_release_u64"(void *p, uint64_t v) nogil
    uint64_t rg_load "ivmpi_load_u64"(const void *p) nogil
    void rg_store "ivmpi_store_u64"(void *p, uint64_t v) nogil
    void rg_copy_to "ivmpi_copy_to_region"(void *dst, const void *src, size_t n, int strict) nogil
    void rg_copy_from "ivmpi_copy_from_region"(void *dst, const void *src, size_t n, int strict) nogil
    void rg_relax "ivmpi_cpu_relax"() nogil

# Frame kinds (docs/layout.md, "Frames").
KIND_EAGER = 1
KIND_EAGER_SYNC = 2
KIND_RTS = 3
KIND_CTS = 4
KIND_DATA = 5
KIND_ACK = 6
KIND_PAD = 7
KIND_RTS_REGION = 8
FRAME_HEADER_BYTES = 32

cdef enum:
    _K_FIRST = 1
    _K_LAST = 8              # 7 (PAD) is handled before the range check
    _K_PAD = 7
    _HDR = 32
    _INLINE_MAX = 224        # header + payload up to this size go in one copy
    _INLINE_WORDS = 28       # _INLINE_MAX / 8 (a C array size: no '//' here)
    _NOGIL_MIN = 16384       # copies this large release the GIL
    _RECYCLE_BYTES = 32768   # past this position an empty ring restarts at 0

cdef inline uint64_t _round8(uint64_t n) nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef int _check_ring(Mapping mem, Py_ssize_t offset, uint64_t ring_bytes) except -1:
    if mem.base == NULL:
        raise ValueError("the region mapping is closed")
    if ring_bytes < 4096 or (ring_bytes & (ring_bytes - 1)) != 0:
        raise ValueError(f"ring size {ring_bytes} is not a power of two >= 4096")
    if offset < 0 or offset % 64 != 0 or <uint64_t>offset + 128 + ring_bytes > <uint64_t>mem.size:
        raise ValueError(f"ring at offset {offset} with {ring_bytes} bytes does not fit the region")
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

    def __cinit__(self, Mapping mem, Py_ssize_t offset, uint64_t ring_bytes, int peer):
        _check_ring(mem, offset, ring_bytes)
        self.mem = mem
        self.head_p = mem.base + offset
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

    cdef int write_frame(self, uint32_t kind, int32_t tag, uint32_t context, uint64_t a,
                         uint64_t b, const char *payload, uint64_t length) except -1:
        """Publish one frame; 1 when published, 0 when the ring has no room yet."""
        cdef uint64_t fsize = _HDR + _round8(length)
        cdef uint64_t pos = self.head & (self.ring_bytes - 1)
        cdef uint64_t pad = 0
        cdef uint64_t words[_INLINE_WORDS]
        cdef char *dst
        if fsize > self.ring_bytes:
            raise ValueError(f"frame of {fsize} bytes does not fit a ring of {self.ring_bytes}")
        if self.ring_bytes - pos < fsize:
            pad = self.ring_bytes - pos
        elif pos >= _RECYCLE_BYTES and self.head - self.recycle_checked >= _RECYCLE_BYTES:
            pad = self._recycle(pos)
        if not self._has_room(pad + fsize):
            return 0
        if pad:
            # Only the first word of a PAD frame is read (layout.md).
            rg_store(self.data + pos, _K_PAD)
            pos = 0
        dst = self.data + pos
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
        else:
            rg_copy_to(dst, words, _HDR, self.strict)
            if length >= _NOGIL_MIN:
                with nogil:
                    rg_copy_to(dst + _HDR, payload, length, self.strict)
            else:
                rg_copy_to(dst + _HDR, payload, length, self.strict)
        self.head += pad + fsize
        # The frame is complete in the region before the head says so.
        rg_store_release(self.head_p, self.head)
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

    def stream(self, payload, uint64_t offset, uint64_t chunk, uint64_t send_id, int spins=0):
        """Publish DATA frames of payload from offset on, as many as fit.

        Returns the new offset (== len(payload) once everything is out).
        Each chunk is published on its own, so the receiver copies chunk k
        while we copy chunk k+1.  When the ring is full, up to `spins` polls
        wait here for the receiver to make room, instead of a trip back
        through the Python wait loop for every chunk.
        """
        cdef Py_buffer view
        cdef uint64_t total, n
        cdef int waited
        if chunk == 0:
            raise ValueError("chunk size must be positive")
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            total = <uint64_t>view.len
            while offset < total:
                n = total - offset
                if n > chunk:
                    n = chunk
                waited = 0
                while not self.write_frame(5, 0, 0, offset, send_id,
                                           <const char *>view.buf + offset, n):
                    if waited >= spins:
                        return offset
                    waited += 1
                    rg_relax()
                offset += n
        finally:
            PyBuffer_Release(&view)
        return offset

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

    def __cinit__(self, Mapping mem, Py_ssize_t offset, uint64_t ring_bytes, int peer):
        _check_ring(mem, offset, ring_bytes)
        self.mem = mem
        self.head_p = mem.base + offset
        self.tail_p = mem.base + offset + 64
        self.data = mem.base + offset + 128
        self.ring_bytes = ring_bytes
        self.strict = mem.strict
        self.peer = peer
        self.tail = 0
        self.head_seen = 0
        self.ready = False

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
            self.ready = True
            return True

    cdef int copy_out(self, char *dst, uint64_t n) except -1:
        # n <= self.length is the caller's promise (checked by the callers).
        if n >= _NOGIL_MIN:
            with nogil:
                rg_copy_from(dst, self.data + self.pos + _HDR, n, self.strict)
        else:
            rg_copy_from(dst, self.data + self.pos + _HDR, n, self.strict)
        return 0

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
        cdef bint have_view = False
        cdef uint64_t start
        cdef int waited
        if not self.ready or self.kind != 5 or self.b != send_id:
            raise RuntimeError("the current frame is not data for this message")
        if not discard:
            PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            have_view = True
        try:
            if have_view and <uint64_t>view.len < total:
                raise _BufferSpecError(f"a message of {total} bytes does not fit a buffer of "
                                       f"{view.len} bytes")
            start = received
            while True:
                if self.a != received or self.length == 0 or self.length > chunk_limit \
                        or self.length > total - received:
                    if received != start:
                        # Report the progress first; the next call raises on
                        # this frame with the caller's count up to date.
                        break
                    raise _CorruptRegionError(
                        f"peer {self.peer}: data chunk at offset {self.a} of {self.length} bytes "
                        f"does not follow the {received} of {total} bytes received for "
                        f"send id {send_id}")
                if have_view:
                    self.copy_out(<char *>view.buf + received, self.length)
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
        finally:
            if have_view:
                PyBuffer_Release(&view)
        return received

    def payload(self):
        """The current frame's payload as a new bytearray (unexpected messages)."""
        cdef bytearray out
        if not self.ready:
            raise RuntimeError("no frame is ready")
        out = bytearray(self.length)
        if self.length:
            self.copy_out(<char *>out, self.length)
        return out

    cpdef consume(self):
        """Release the current frame's space to the producer."""
        if not self.ready:
            raise RuntimeError("no frame is ready")
        self.ready = False
        self.tail += self.fsize
        # Our reads of the frame are done before the producer may reuse it.
        rg_store_release(self.tail_p, self.tail)

    def pending(self):
        """True when the producer has published bytes we have not consumed."""
        return self.ready or rg_load_acquire(self.head_p) != self.tail


def deliver_eager(RxRing rx, list posted, uint64_t eager_limit):
    """The engine's commonest step in one call: the EAGER frame at the head
    of rx goes straight into the first posted receive that matches it (MPI
    order), which completes.  Returns False, touching nothing, for anything
    else (another kind, a synchronous send, no match, a payload that would
    not fit, a bad tag or length): the engine's general
    handler then deals with the frame and reports what is wrong with it."""
    cdef Py_ssize_t i, n
    cdef RecvOp op
    cdef Py_buffer view
    if not rx.ready or rx.kind != 1 or rx.tag < 0 or rx.length > eager_limit:
        return False
    n = len(posted)
    for i in range(n):
        op = <RecvOp?>posted[i]
        if (op.context != rx.context or (op.source != -1 and op.source != rx.peer)
                or (op.tag != -1 and op.tag != rx.tag)):
            continue
        if op.mem is None:                  # an object receive: keep the bytes
            op.data = rx.payload()
        elif rx.length:
            PyObject_GetBuffer(op.mem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                if <uint64_t>view.len < rx.length:
                    return False
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


# --- Fast paths -----------------------------------------------------------
# The common blocking cases in one call each, with no per-message Python
# objects: a small send that fits the ring now, and a receive from a known
# source whose next frame is the eager message it wants.  Anything else
# (ring full, queued work in the engine, another kind of frame, a tag that
# does not match, a buffer too small, a buffer spec that is not a plain
# buffer) returns "not handled" and the caller takes the engine's general
# path, which handles every case; a fast path never consumes a frame it does
# not fully deliver, so falling back is always safe.

from cpython.object cimport PyObject

cdef extern from "<sched.h>" nogil:
    int sched_yield()
from cpython.buffer cimport PyObject_CheckBuffer

FAST_NOT_HANDLED = -1
FAST_NOTHING_YET = -2

cimport numpy as cnp
from libc.string cimport strchr
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport (PyByteArray_AS_STRING, PyByteArray_GET_SIZE,
                                PyByteArray_FromStringAndSize)
from cpython.buffer cimport PyBUF_FORMAT, PyBuffer_IsContiguous
from cpython.memoryview cimport PyMemoryView_FromObject, PyMemoryView_GET_BUFFER

cnp.import_array()


cdef bint _simple_format(const char *fmt) noexcept:
    """A buffer format of plain numbers in native order (never 'O': raw object
    pointers must not cross to another process)."""
    if fmt == NULL:
        return True
    if fmt[0] == b'@' or fmt[0] == b'=' or fmt[0] == b'<':
        fmt += 1
    return fmt[0] != 0 and fmt[1] == 0 and strchr("?bBhHiIlLqQnNefdFDgGc", fmt[0]) != NULL


cdef bint _direct(object obj, bint writable, char **data, Py_ssize_t *length) noexcept:
    """Data and size of a numpy array of numbers, bytes or bytearray, read
    without a buffer export (valid only while the GIL is held); False for
    anything else, which goes through the buffer protocol instead."""
    cdef cnp.ndarray arr
    cdef int num
    cdef type t = type(obj)
    if t is cnp.ndarray:
        arr = <cnp.ndarray>obj
        num = cnp.PyArray_TYPE(arr)
        if not (num <= cnp.NPY_CLONGDOUBLE or num == cnp.NPY_FLOAT16) \
                or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr) \
                or (writable and not cnp.PyArray_ISWRITEABLE(arr)):
            return False
        data[0] = <char *>cnp.PyArray_DATA(arr)
        length[0] = cnp.PyArray_NBYTES(arr)
        return True
    if t is bytearray:
        data[0] = PyByteArray_AS_STRING(obj)
        length[0] = PyByteArray_GET_SIZE(obj)
        return True
    if t is bytes and not writable:
        data[0] = PyBytes_AS_STRING(obj)
        length[0] = PyBytes_GET_SIZE(obj)
        return True
    return False


cdef object _byte_view(object obj, Py_ssize_t nbytes, Py_ssize_t extent):
    """A writable flat byte memoryview of obj's first nbytes (all when
    nbytes < 0, which must be a multiple of extent), or None when obj is not
    a writable C-contiguous buffer of plain numbers."""
    cdef object view
    cdef Py_buffer *info
    try:
        view = PyMemoryView_FromObject(obj)
    except (BufferError, TypeError, ValueError):
        return None
    info = PyMemoryView_GET_BUFFER(view)
    if info.readonly or not PyBuffer_IsContiguous(info, b'C') or not _simple_format(info.format):
        return None
    if info.ndim != 1 or info.itemsize != 1 or (info.format != NULL and info.format[0] != b'B'):
        try:
            view = view.cast("B")
        except (TypeError, ValueError):
            return None
    if nbytes >= 0:
        if nbytes > len(view) or nbytes % extent:
            return None
        if nbytes != len(view):
            view = view[:nbytes]
    return view


cdef int _pin(object obj, bint writable, Py_buffer *view) except -1:
    """A buffer export of obj, for copies that may run without the GIL.
    0 when obj is not a plain contiguous buffer of numbers."""
    cdef int flags = PyBUF_SIMPLE | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    if type(obj) is memoryview:
        # A memoryview refuses PyBUF_SIMPLE together with PyBUF_FORMAT, and
        # the collectives hand their blocks over as memoryviews: read its
        # format from the view itself.
        if not _simple_format(PyMemoryView_GET_BUFFER(obj).format):
            return 0
        flags = PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0)
    try:
        PyObject_GetBuffer(obj, view, flags)
    except (BufferError, ValueError, TypeError):   # numpy: ValueError when not contiguous
        return 0
    if not _simple_format(view.format):
        PyBuffer_Release(view)
        return 0
    return 1

cdef enum:
    _TAG_UB = 0x7fffffff


cdef class FastPath:
    """One communicator's fast paths: its rings by communicator rank.

    It shares the engine's queues (the same list and set objects), because a
    fast path is only correct while the engine has nothing queued that could
    come first: no posted or unexpected receive, no frame waiting to be sent.
    """
    cdef list tx
    cdef list rx
    cdef list posted
    cdef list unexpected
    cdef set backlog
    cdef uint32_t context
    cdef uint64_t eager_limit
    cdef int size
    cdef public bint enabled
    cdef readonly int32_t last_tag
    cdef dict extents
    cdef object last_datatype, last_extent
    cdef public int spins                 # polls of a fast receive (negative: yield between)
    # The communicator's general paths and helpers, for the bound calls below.
    cdef public object general_Send, general_Recv, general_send, general_recv
    cdef public object fill_status, dumps, loads
    cdef public long any_source, any_tag
    cdef readonly long last_source       # communicator rank of the last fast receive
    # For Irecv: world rank of each communicator rank, the engine's
    # operation and request types, the communicator, its collective scope.
    cdef public list world_ranks
    cdef public object general_Irecv, new_request, comm, scope, engine_irecv
    cdef public object general_Isend, sent_op, general_irecv, unpickle_op
    cdef public dict comm_rank_of          # world rank -> communicator rank
    cdef long next_any                    # where the next ANY_SOURCE scan starts

    def __cinit__(self, list tx, list rx, list posted, list unexpected, set backlog,
                  uint32_t context, uint64_t eager_limit, dict extents=None):
        if len(tx) != len(rx):
            raise ValueError("tx and rx must list one ring (or None) per rank")
        self.tx = tx
        self.rx = rx
        self.posted = posted
        self.unexpected = unexpected
        self.backlog = backlog
        self.context = context
        self.eager_limit = eager_limit
        self.size = len(tx)
        self.enabled = True
        # Open MPI's values; the communicator sets its MPI library's own.
        self.any_source = -1
        self.any_tag = -1
        self.spins = 1
        # Datatype handle -> extent, for the predefined types a spec
        # [buf, datatype] may name and still be taken as plain bytes.
        self.extents = extents if extents is not None else {}

    cdef object _extent_of(self, object datatype):
        # The same Datatype object comes back call after call: remember it.
        if datatype is self.last_datatype:
            return self.last_extent
        entry = self.extents.get(getattr(datatype, "handle", None))
        if entry is not None:
            self.last_datatype = datatype
            self.last_extent = entry
        return entry

    cdef object _plain(self, object spec, Py_ssize_t *extent, Py_ssize_t *nbytes):
        """The buffer of spec if it is a plain buffer, [buf, datatype] or
        [buf, count, datatype] with a predefined datatype; else None.

        nbytes is set to the message size the spec names (count * extent),
        or -1 for "the whole buffer".
        """
        cdef object entry
        cdef Py_ssize_t n
        extent[0] = 1
        nbytes[0] = -1
        if PyObject_CheckBuffer(spec):
            return spec
        if type(spec) is not list and type(spec) is not tuple:
            return None
        n = len(spec)
        if n == 2:
            entry = self._extent_of(spec[1])
        elif n == 3 and type(spec[1]) is int:
            entry = self._extent_of(spec[2])
            if entry is not None:
                if spec[1] < 0:
                    return None
                nbytes[0] = <Py_ssize_t>spec[1] * <Py_ssize_t>entry
        else:
            return None
        if entry is None or not PyObject_CheckBuffer(spec[0]):
            return None
        extent[0] = <Py_ssize_t>entry
        return spec[0]

    cpdef bint send(self, object buf, long dest, long tag) except -1:
        """Publish buf to dest as one EAGER frame; False: use the general path."""
        cdef Py_buffer view
        cdef int done
        cdef object ring
        cdef Py_ssize_t extent, nbytes, length
        cdef char *data
        if not self.enabled or dest < 0 or dest >= self.size or tag < 0 or tag > _TAG_UB:
            return False
        if self.backlog:
            return False
        buf = self._plain(buf, &extent, &nbytes)
        ring = self.tx[dest]
        if ring is None or buf is None:
            return False
        if _direct(buf, False, &data, &length) and length < _NOGIL_MIN:
            # Small: the copy keeps the GIL, so nothing can free the memory meanwhile.
            if nbytes < 0:
                nbytes = length
            if <uint64_t>nbytes > self.eager_limit or nbytes > length or nbytes % extent:
                return False
            return (<TxRing>ring).write_frame(1, <int32_t>tag, self.context, 0, 0, data,
                                              <uint64_t>nbytes) == 1
        if not _pin(buf, False, &view):
            return False
        try:
            if nbytes < 0:
                nbytes = view.len
            if <uint64_t>nbytes > self.eager_limit or nbytes > view.len or nbytes % extent:
                return False
            done = (<TxRing>ring).write_frame(1, <int32_t>tag, self.context, 0, 0,
                                              <const char *>view.buf, <uint64_t>nbytes)
        finally:
            PyBuffer_Release(&view)
        return done == 1

    # mpi4py's signatures; a communicator binds these as its own methods.

    def Send(self, buf, long dest, long tag=0):
        if not self.send(buf, dest, tag):
            self.general_Send(buf, dest, tag)

    def Recv(self, buf, source=None, tag=None, status=None):
        # None: MPI's ANY_SOURCE / ANY_TAG, whose values depend on the MPI library.
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        cdef long n = self.recv(buf, source, tag, self.spins)
        if n < 0:
            self.general_Recv(buf, source, tag, status)
        elif status is not None:
            self.fill_status(status, self.last_source, self.last_tag, n)

    def Isend(self, buf, long dest, long tag=0):
        """A small message that fits the ring now is sent at once: the
        request is born complete, with no engine operation behind it."""
        if self.send(buf, dest, tag):
            return self.new_request(self.comm, self.sent_op, None, "Isend")
        return self.general_Isend(buf, dest, tag)

    def Irecv(self, buf, source=None, tag=None):
        """Post a receive in one call: the engine's posted list gets the
        operation directly.  Anything unusual (PROC_NULL, a bad rank or tag,
        a buffer spec that is not plain) takes the general path, which
        handles and reports it."""
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        cdef long src = source, tg = tag
        cdef Py_ssize_t extent, nbytes
        cdef object plain, mem, op
        if (not self.enabled
                or not (0 <= src < self.size or src == self.any_source)
                or not (0 <= tg <= _TAG_UB or tg == self.any_tag)):
            return self.general_Irecv(buf, source, tag)
        plain = self._plain(buf, &extent, &nbytes)
        mem = None if plain is None else _byte_view(plain, nbytes, extent)
        if mem is None:
            return self.general_Irecv(buf, source, tag)
        if self.unexpected:
            # Match what already arrived first: the engine's own call.
            op = self.engine_irecv(-1 if src == self.any_source else self.world_ranks[src],
                                   -1 if tg == self.any_tag else tg, self.context, mem)
        else:
            op = _new_recv_op(-1 if src == self.any_source else self.world_ranks[src],
                              -1 if tg == self.any_tag else tg, self.context, mem)
            self.posted.append(op)
        if self.scope is not None:
            op.scope = self.scope
        return self.new_request(self.comm, op, None, ("Irecv", "from", source))

    cdef bint send_ptr(self, const char *data, Py_ssize_t n, long dest, long tag) except -1:
        """One EAGER frame of n bytes at data to dest; False: use the general path."""
        if not self.enabled or self.backlog or dest < 0 or dest >= self.size \
                or <uint64_t>n > self.eager_limit:
            return False
        ring = self.tx[dest]
        if ring is None:
            return False
        return (<TxRing>ring).write_frame(1, <int32_t>tag, self.context, 0, 0, data,
                                          <uint64_t>n) == 1

    cdef Py_ssize_t recv_ptr(self, char *dst, Py_ssize_t capacity, long source, long tag,
                             int spins) except -3:
        """The next eager message from source with tag, into dst: its length,
        or FAST_NOT_HANDLED (then the general path receives it)."""
        cdef RxRing rx
        cdef Py_ssize_t n
        if self.unexpected:
            return FAST_NOT_HANDLED
        ring = self._ready_ring(source, tag, spins)
        if ring is None:
            return FAST_NOT_HANDLED
        rx = <RxRing>ring
        n = <Py_ssize_t>rx.length
        if n > capacity:
            return FAST_NOT_HANDLED
        if n:
            rx.copy_out(dst, n)
        self.last_tag = rx.tag
        rx.consume()
        return n

    def irecv(self, buf=None, source=None, tag=None):
        """Post an object receive in one call (mpi4py's buffer hint is not
        needed: the message's own size is used)."""
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        cdef long src = source, tg = tag
        cdef object op
        if (not self.enabled
                or not (0 <= src < self.size or src == self.any_source)
                or not (0 <= tg <= _TAG_UB or tg == self.any_tag)):
            return self.general_irecv(buf, source, tag)
        if self.unexpected:
            op = self.engine_irecv(-1 if src == self.any_source else self.world_ranks[src],
                                   -1 if tg == self.any_tag else tg, self.context, None)
        else:
            op = _new_recv_op(-1 if src == self.any_source else self.world_ranks[src],
                              -1 if tg == self.any_tag else tg, self.context, None)
            self.posted.append(op)
        if self.scope is not None:
            op.scope = self.scope
        return self.new_request(self.comm, op, self.unpickle_op, ("irecv", "from", source))

    def send_object(self, obj, long dest, long tag=0):
        data = self.dumps(obj)
        if not self.send(data, dest, tag):
            self.general_send(data, dest, tag)

    def recv_object(self, buf=None, source=None, tag=None, status=None):
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        data = self.recv_bytes(source, tag, self.spins)
        if data is None:
            return self.general_recv(buf, source, tag, status)
        if status is not None:
            self.fill_status(status, self.last_source, self.last_tag, len(data))
        return self.loads(data)

    cdef bint _wanted(self, RxRing rx, long tag):
        # An over-limit eager frame is left to the engine, which reports it.
        return (rx.kind == 1 and rx.context == self.context and rx.tag >= 0
                and (tag < 0 or rx.tag == tag) and rx.length <= self.eager_limit)

    cdef bint _posted_takes(self, RxRing rx):
        """Does a receive posted earlier match the frame at the head of rx?
        Then that frame is its, in MPI order, and the engine delivers it."""
        cdef RecvOp op
        for item in self.posted:
            op = <RecvOp?>item
            if (op.context == rx.context and (op.source == -1 or op.source == rx.peer)
                    and (op.tag == -1 or op.tag == rx.tag)):
                return True
        return False

    cdef Py_ssize_t _unexpected_match(self, long source, long tag) except -2:
        """Index of the first unexpected message a receive (communicator rank
        or ANY_SOURCE, tag or -1) on this communicator would match, or -1."""
        cdef Py_ssize_t i
        cdef long world = -1
        if source >= 0:
            world = self.world_ranks[source]
        for i in range(len(self.unexpected)):
            msg = self.unexpected[i]
            if (msg.context == self.context and (source < 0 or msg.source == world)
                    and (tag < 0 or msg.tag == tag)):
                return i
        return -1

    cdef object _take_unexpected_eager(self, long source, long tag):
        """The payload (a bytearray) of the first unexpected message the
        receive matches, removed from the queue, if it is a plain eager one
        (no acknowledgement owed); else None, and the queue is untouched."""
        cdef Py_ssize_t i
        if not self.unexpected or tag < -1 or tag > _TAG_UB:
            return None
        if source >= self.size or (source < 0 and source != self.any_source):
            return None
        i = self._unexpected_match(source if source >= 0 else -1, tag)
        if i < 0:
            return None
        msg = self.unexpected[i]
        if msg.kind != 1 or msg.self_send is not None or type(msg.data) is not bytearray:
            return None
        rank = self.comm_rank_of.get(msg.source)
        if rank is None:
            return None
        del self.unexpected[i]
        self.last_source = rank
        self.last_tag = msg.tag
        return msg.data

    cdef object _ready_ring(self, long source, long tag, int spins):
        """The ring whose next frame is the eager message wanted, or None.

        Waits up to |spins| polls: spins > 0 pause between polls (a core of
        our own), spins < 0 give the core away between polls (more ranks than
        cores: the peer we wait for may need this one).  For ANY_SOURCE every
        ring is scanned, starting after the last one served, and rings whose
        next frame is something else are left for the general path.  Sets
        last_source to the communicator rank of the ring returned.
        """
        cdef int i, k, j, polls = spins if spins >= 0 else -spins
        cdef object ring
        if not self.enabled or tag < -1 or tag > _TAG_UB:
            return None
        if self.backlog:            # queued sends need the engine's progress
            return None
        if source >= 0:
            if source >= self.size or self.rx[source] is None:
                return None
        elif source != self.any_source:
            return None
        # An earlier unexpected message this receive matches comes first.
        if self.unexpected and self._unexpected_match(source if source >= 0 else -1, tag) >= 0:
            return None
        for i in range(polls):
            if source >= 0:
                ring = self.rx[source]
                if (<RxRing>ring).poll():
                    if not self._wanted(<RxRing>ring, tag) or self._posted_takes(<RxRing>ring):
                        return None
                    self.last_source = source
                    return ring
            else:
                for k in range(self.size):
                    j = (self.next_any + k) % self.size
                    ring = self.rx[j]
                    if ring is not None and (<RxRing>ring).poll() \
                            and self._wanted(<RxRing>ring, tag) \
                            and not self._posted_takes(<RxRing>ring):
                        self.last_source = j
                        self.next_any = j + 1
                        return ring
            if spins >= 0:
                rg_relax()
            else:
                sched_yield()
        return None

    cpdef long recv(self, object buf, long source, long tag, int spins) except -3:
        """Receive the next eager message from source into buf.

        tag -1 is any tag.  Returns the payload length (its tag is then
        last_tag), or a negative code: use the general path.
        """
        cdef Py_buffer view
        cdef uint64_t n
        cdef object ring
        cdef RxRing rx
        cdef Py_ssize_t extent, capacity, length
        cdef char *data
        buf = self._plain(buf, &extent, &capacity)
        if buf is None:
            return FAST_NOT_HANDLED
        cdef long got
        if self.unexpected and self.enabled:
            got = self._recv_unexpected(buf, source, tag, extent, capacity)
            if got != FAST_NOTHING_YET:
                return got
        ring = self._ready_ring(source, tag, spins)
        if ring is None:
            return FAST_NOT_HANDLED
        rx = <RxRing>ring
        n = rx.length
        if _direct(buf, True, &data, &length) and n < _NOGIL_MIN:
            # Small: the copy keeps the GIL, so nothing can free the memory meanwhile.
            if capacity < 0:
                capacity = length
            if capacity > length or n > <uint64_t>capacity or capacity % extent or n % extent:
                return FAST_NOT_HANDLED
            if n:
                rx.copy_out(data, n)
            self.last_tag = rx.tag
            rx.consume()
            return <long>n
        if not _pin(buf, True, &view):
            return FAST_NOT_HANDLED
        try:
            if capacity < 0:
                capacity = view.len
            if capacity > view.len or n > <uint64_t>capacity or capacity % extent or n % extent:
                return FAST_NOT_HANDLED
            if n:
                rx.copy_out(<char *>view.buf, n)
            self.last_tag = rx.tag
            rx.consume()
        finally:
            PyBuffer_Release(&view)
        return <long>n

    cdef long _recv_unexpected(self, object buf, long source, long tag, Py_ssize_t extent,
                               Py_ssize_t capacity) except -3:
        """recv when messages wait in the unexpected queue: the first one that
        matches is taken from there (its length is returned); with none
        matching, FAST_NOTHING_YET sends recv on to the ring."""
        cdef Py_buffer view
        cdef Py_ssize_t n, i
        if tag < -1 or tag > _TAG_UB or source >= self.size \
                or (source < 0 and source != self.any_source):
            return FAST_NOT_HANDLED
        i = self._unexpected_match(source if source >= 0 else -1, tag)
        if i < 0:
            return FAST_NOTHING_YET
        msg = self.unexpected[i]
        if msg.kind != 1 or msg.self_send is not None or type(msg.data) is not bytearray:
            return FAST_NOT_HANDLED
        data = msg.data
        n = len(data)
        if not _pin(buf, True, &view):
            return FAST_NOT_HANDLED
        try:
            if capacity < 0:
                capacity = view.len
            if capacity > view.len or n > capacity or capacity % extent or n % extent:
                return FAST_NOT_HANDLED
            if self._take_unexpected_eager(source, tag) is not data:
                return FAST_NOT_HANDLED
            if n:
                memcpy(view.buf, PyByteArray_AS_STRING(data), n)
        finally:
            PyBuffer_Release(&view)
        return n

    cpdef object recv_bytes(self, long source, long tag, int spins):
        """Like recv, for object messages: the payload as a bytearray, or None."""
        cdef bytearray out
        cdef object ring
        cdef RxRing rx
        if self.unexpected and self.enabled:
            out = self._take_unexpected_eager(source, tag)
            if out is not None:
                return out
        ring = self._ready_ring(source, tag, spins)
        if ring is None:
            return None
        rx = <RxRing>ring
        out = bytearray(rx.length)
        if rx.length:
            rx.copy_out(<char *>out, rx.length)
        self.last_tag = rx.tag
        rx.consume()
        return out


def buffer_span(obj):
    """(address, length) of a contiguous buffer: is it inside the region?"""
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
    try:
        return <uintptr_t>view.buf, view.len
    finally:
        PyBuffer_Release(&view)


def region_memoryview(Mapping mem, Py_ssize_t offset, Py_ssize_t length):
    """A writable memoryview of region bytes [offset, offset + length).

    It slices the object the mapping was made from (the mmap), so it keeps
    that object alive and exported while the caller holds it.
    """
    if mem.base == NULL:
        raise ValueError("the region mapping is closed")
    if offset < 0 or length < 0 or offset > mem.size or length > mem.size - offset:
        raise _BufferSpecError(f"bytes [{offset}, {offset}+{length}) are outside the region "
                               f"of {mem.size} bytes")
    return memoryview(<object>mem._view.obj).cast("B")[offset:offset + length]


# --- Small collectives ------------------------------------------------------
# Barrier and small reductions in one call: the loop over rounds, the sends
# and receives (FastPath, falling back to the communicator's own Send/Recv
# for any step the fast path cannot take) and, for the common predefined
# operations on plain numbers, the combining step in C.

from libc.stdint cimport int32_t, int64_t

cdef enum:
    OP_SUM = 1
    OP_PROD = 2
    OP_MAX = 3
    OP_MIN = 4

cdef enum:
    T_F64 = 1
    T_F32 = 2
    T_I64 = 3
    T_I32 = 4


ctypedef fused _number:
    double
    float
    int64_t
    int32_t


cdef inline void _combine_typed(int op, _number *acc, const _number *other, Py_ssize_t n,
                                bint acc_is_lower) noexcept nogil:
    # acc = lower (op) higher, element-wise, where lower is the value from the
    # lower rank: both partners of a round then compute bit-identical results,
    # even for -0.0/+0.0 and NaN under MAX/MIN.
    cdef Py_ssize_t i
    cdef _number x, y
    for i in range(n):
        if acc_is_lower:
            x = acc[i]
            y = other[i]
        else:
            x = other[i]
            y = acc[i]
        if op == OP_SUM:
            acc[i] = x + y
        elif op == OP_PROD:
            acc[i] = x * y
        elif op == OP_MAX:
            acc[i] = x if x >= y else y
        else:
            acc[i] = x if x <= y else y


cdef void _combine(int op, int typ, char *acc, const char *other, Py_ssize_t n,
                   bint acc_is_lower) noexcept nogil:
    if typ == T_F64:
        _combine_typed[double](op, <double *>acc, <const double *>other, n, acc_is_lower)
    elif typ == T_F32:
        _combine_typed[float](op, <float *>acc, <const float *>other, n, acc_is_lower)
    elif typ == T_I64:
        _combine_typed[int64_t](op, <int64_t *>acc, <const int64_t *>other, n, acc_is_lower)
    else:
        _combine_typed[int32_t](op, <int32_t *>acc, <const int32_t *>other, n, acc_is_lower)


cdef bytearray _EMPTY = bytearray(0)     # the barrier's message: nothing


cdef int small_barrier(FastPath fast, long rank, long size, long tag, int spins,
                       object send_slow, object recv_slow) except -1:
    """Dissemination barrier: round k sends to rank + 2^k, receives from rank - 2^k."""
    cdef long distance = 1
    cdef bytearray empty = _EMPTY
    while distance < size:
        if not fast.send(empty, (rank + distance) % size, tag):
            send_slow(empty, (rank + distance) % size, tag)
        if fast.recv(empty, (rank - distance + size) % size, tag, spins) < 0:
            recv_slow(empty, (rank - distance + size) % size, tag)
        distance <<= 1
    return 0


cdef int small_allreduce(FastPath fast, object acc, object scratch, int op, int typ,
                         long rank, long size, long tag, int spins, object send_slow,
                         object recv_slow) except -1:
    """Recursive-doubling allreduce of acc in place (size a power of two).

    acc and scratch are writable contiguous buffers of the same length; op
    and typ are one of the OP_* and T_* codes (checked by the caller).
    """
    cdef Py_buffer a, b
    cdef long mask = 1
    cdef long partner
    cdef Py_ssize_t count, item
    PyObject_GetBuffer(acc, &a, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(scratch, &b, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            item = 8 if typ == T_F64 or typ == T_I64 else 4
            if a.len != b.len or a.len % item:
                raise ValueError("allreduce buffers must match and hold whole elements")
            count = a.len // item
            while mask < size:
                partner = rank ^ mask
                if not fast.send(acc, partner, tag):
                    send_slow(acc, partner, tag)
                if fast.recv(scratch, partner, tag, spins) < 0:
                    recv_slow(scratch, partner, tag)
                _combine(op, typ, <char *>a.buf, <const char *>b.buf, count, rank < partner)
                mask <<= 1
        finally:
            PyBuffer_Release(&b)
    finally:
        PyBuffer_Release(&a)
    return 0


SMALL_OPS = {"SUM": OP_SUM, "PROD": OP_PROD, "MAX": OP_MAX, "MIN": OP_MIN}


def first_ready(list rings, Py_ssize_t start):
    """Index of the first ring, from start on, with a frame ready; -1 if none.

    The progress engine's scan of every peer in one C loop, so that waiting
    in a job of many ranks costs little more than in a job of two.
    """
    cdef Py_ssize_t i
    for i in range(start, len(rings)):
        if (<RxRing>rings[i]).poll():
            return i
    return -1


cdef class SmallCollectives:
    """A communicator's Barrier and Allreduce as one Cython call each.

    Built over the hidden twin's FastPath.  Allreduce takes numpy arrays of
    float64/float32/int64/int32 with SUM/PROD/MAX/MIN on power-of-two
    communicators, up to the eager limit; anything else goes to the general
    algorithm (which also reports every error, exactly as before).
    """
    cdef FastPath fast
    cdef long rank, size, barrier_tag, allreduce_tag, bcast_tag
    cdef uint64_t eager_limit
    cdef dict opcodes
    cdef object send_slow, recv_slow, general_allreduce, in_place, default_op
    cdef public object general_bcast, general_reduce, general_allgather, general_alltoall
    cdef public long reduce_tag, allgather_tag, alltoall_tag
    cdef object last_op, last_code
    cdef bytearray scratch

    def __cinit__(self, FastPath fast, long rank, long size, long barrier_tag,
                  long allreduce_tag, dict opcodes, send_slow, recv_slow, general_allreduce,
                  in_place, default_op, long bcast_tag=-1):
        self.fast = fast
        self.rank = rank
        self.size = size
        self.barrier_tag = barrier_tag
        self.allreduce_tag = allreduce_tag
        self.bcast_tag = bcast_tag
        self.eager_limit = fast.eager_limit
        self.opcodes = opcodes
        self.send_slow = send_slow
        self.recv_slow = recv_slow
        self.general_allreduce = general_allreduce
        self.in_place = in_place
        self.default_op = default_op
        self.scratch = bytearray(0)

    def Barrier(self):
        small_barrier(self.fast, self.rank, self.size, self.barrier_tag, self.fast.spins,
                      self.send_slow, self.recv_slow)

    def Bcast(self, buf, root=0):
        if not self._try_bcast(buf, root):
            self.general_bcast(buf, root)

    cdef bint _try_bcast(self, object buf, object root) except -1:
        """A broadcast of a plain buffer up to the eager limit: the general
        algorithm's binomial tree (same tag, same parents and children, so
        ranks may mix the two paths), each step one fast send or receive."""
        cdef Py_ssize_t extent, nbytes, length
        cdef long r, vrank, mask, peer, size = self.size
        cdef char *data
        if self.bcast_tag < 0 or self.general_bcast is None or type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        plain = self.fast._plain(buf, &extent, &nbytes)
        if plain is None or not _direct(plain, self.rank != r, &data, &length):
            return False
        if nbytes < 0:
            nbytes = length
        if nbytes > length or <uint64_t>nbytes > self.eager_limit:
            return False
        vrank = (self.rank - r + size) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                peer = (vrank - mask + r) % size
                if self.fast.recv(buf, peer, self.bcast_tag, self.fast.spins) < 0:
                    self.recv_slow(buf, peer, self.bcast_tag)
                break
            mask <<= 1
        mask >>= 1
        while mask > 0:
            if vrank + mask < size:
                peer = (vrank + mask + r) % size
                if not self.fast.send(buf, peer, self.bcast_tag):
                    self.send_slow(buf, peer, self.bcast_tag)
            mask >>= 1
        return True

    def Reduce(self, sendbuf, recvbuf, op=None, root=0):
        if op is None:
            op = self.default_op
        if not self._try_reduce(sendbuf, recvbuf, op, root):
            self.general_reduce(sendbuf, recvbuf, op, root)

    cdef object _op_code(self, object op):
        if op is self.last_op:
            return self.last_code
        code = self.opcodes.get(getattr(op, "handle", None))
        if code is not None:
            self.last_op, self.last_code = op, code
        return code

    cdef bint _try_reduce(self, object sendbuf, object recvbuf, object op, object root) except -1:
        """Reduce of small numpy arrays with SUM/PROD/MAX/MIN: the general
        algorithm's binomial tree around the root (same tag, same partners,
        same operand order, so ranks may mix the two paths), each step one
        fast send or receive and a combine in C."""
        cdef cnp.ndarray send, recv
        cdef int typ
        cdef long r, vrank, mask, size = self.size
        cdef Py_ssize_t nbytes
        cdef bytearray acc, tmp
        if self.general_reduce is None or type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        code = self._op_code(op)
        if code is None:
            return False
        if self.rank == r:
            if type(recvbuf) is not cnp.ndarray:
                return False
            recv = <cnp.ndarray>recvbuf
            if not cnp.PyArray_IS_C_CONTIGUOUS(recv) or not cnp.PyArray_ISWRITEABLE(recv) \
                    or not cnp.PyArray_ISNOTSWAPPED(recv):
                return False
            send = recv if sendbuf is self.in_place else sendbuf \
                if type(sendbuf) is cnp.ndarray else None
            if send is None or cnp.PyArray_TYPE(send) != cnp.PyArray_TYPE(recv) \
                    or cnp.PyArray_NBYTES(send) != cnp.PyArray_NBYTES(recv):
                return False
        else:
            if type(sendbuf) is not cnp.ndarray:
                return False
            send = <cnp.ndarray>sendbuf
        if not cnp.PyArray_IS_C_CONTIGUOUS(send) or not cnp.PyArray_ISNOTSWAPPED(send):
            return False
        typ = self._type_code(send)
        nbytes = cnp.PyArray_NBYTES(send)
        if typ == 0 or <uint64_t>nbytes > self.eager_limit:
            return False
        acc = PyByteArray_FromStringAndSize(<char *>cnp.PyArray_DATA(send), nbytes)
        tmp = bytearray(nbytes)
        vrank = (self.rank - r + size) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                peer = (vrank - mask + r) % size
                if not self.fast.send(acc, peer, self.reduce_tag):
                    self.send_slow(acc, peer, self.reduce_tag)
                break
            if vrank + mask < size:
                peer = (vrank + mask + r) % size
                if self.fast.recv(tmp, peer, self.reduce_tag, self.fast.spins) < 0:
                    self.recv_slow(tmp, peer, self.reduce_tag)
                _combine(<int>code, typ, PyByteArray_AS_STRING(acc), PyByteArray_AS_STRING(tmp),
                         nbytes // cnp.PyArray_ITEMSIZE(send), True)
            mask <<= 1
        if self.rank == r:
            memcpy(cnp.PyArray_DATA(recv), PyByteArray_AS_STRING(acc), nbytes)
        return True

    def Allgather(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, False):
            self.general_allgather(sendbuf, recvbuf)

    def Alltoall(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, True):
            self.general_alltoall(sendbuf, recvbuf)

    cdef int _exchange(self, cnp.ndarray out, Py_ssize_t out_at, cnp.ndarray into,
                       Py_ssize_t in_at, Py_ssize_t n, long dest, long source,
                       long tag) except -1:
        """Sendrecv of one block (eager: send, then receive), as the general
        algorithms do it; each half falls back to the twin's own call."""
        if not self.fast.send_ptr(<const char *>cnp.PyArray_DATA(out) + out_at, n, dest, tag):
            self.send_slow(memoryview(out).cast("B")[out_at:out_at + n], dest, tag)
        if self.fast.recv_ptr(<char *>cnp.PyArray_DATA(into) + in_at, n, source, tag,
                              self.fast.spins) < 0:
            self.recv_slow(memoryview(into).cast("B")[in_at:in_at + n], source, tag)
        return 0

    cdef bint _plain_array(self, object obj, bint writable):
        cdef cnp.ndarray arr
        cdef int num
        if type(obj) is not cnp.ndarray:
            return False
        arr = <cnp.ndarray>obj
        num = cnp.PyArray_TYPE(arr)
        return ((num <= cnp.NPY_CLONGDOUBLE or num == cnp.NPY_FLOAT16)
                and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr)
                and (not writable or cnp.PyArray_ISWRITEABLE(arr)))

    cdef bint _try_blocks(self, object sendbuf, object recvbuf, bint alltoall) except -1:
        """Allgather (ring) or Alltoall (pairwise exchange) of numpy arrays
        whose blocks fit the eager limit: the general algorithms' steps,
        partners and tags, so ranks may mix the two paths."""
        cdef cnp.ndarray recv, send
        cdef Py_ssize_t total, block
        cdef long size = self.size, rank = self.rank, step, dest, source
        general = self.general_alltoall if alltoall else self.general_allgather
        if general is None or size < 2 or not self._plain_array(recvbuf, True):
            return False
        recv = <cnp.ndarray>recvbuf
        total = cnp.PyArray_NBYTES(recv)
        if total % size:
            return False
        block = total // size
        if <uint64_t>block > self.eager_limit:
            return False
        if sendbuf is self.in_place:
            send = recv.copy() if alltoall else None
        elif self._plain_array(sendbuf, False):
            send = <cnp.ndarray>sendbuf
            if cnp.PyArray_TYPE(send) != cnp.PyArray_TYPE(recv) \
                    or cnp.PyArray_NBYTES(send) != (total if alltoall else block):
                return False
        else:
            return False
        if send is not None:
            memmove(<char *>cnp.PyArray_DATA(recv) + rank * block,
                    <const char *>cnp.PyArray_DATA(send) + (rank * block if alltoall else 0),
                    block)
        if alltoall:
            for step in range(1, size):
                dest = (rank + step) % size
                source = (rank - step + size) % size
                self._exchange(send, dest * block, recv, source * block, block, dest, source,
                               self.alltoall_tag)
        else:
            dest = (rank + 1) % size
            source = (rank - 1 + size) % size
            for step in range(size - 1):
                self._exchange(recv, ((rank - step + size) % size) * block, recv,
                               ((rank - step - 1 + 2 * size) % size) * block, block, dest,
                               source, self.allgather_tag)
        return True

    def Allreduce(self, sendbuf, recvbuf, op=None):
        if op is None:
            op = self.default_op
        if not self._try_allreduce(sendbuf, recvbuf, op):
            self.general_allreduce(sendbuf, recvbuf, op)

    cdef int _type_code(self, cnp.ndarray arr):
        cdef int num = cnp.PyArray_TYPE(arr)
        cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(arr)
        if num == cnp.NPY_DOUBLE:
            return T_F64
        if num == cnp.NPY_FLOAT:
            return T_F32
        if num == cnp.NPY_INT or num == cnp.NPY_LONG or num == cnp.NPY_LONGLONG:
            return T_I64 if item == 8 else (T_I32 if item == 4 else 0)
        return 0

    cdef bint _try_allreduce(self, object sendbuf, object recvbuf, object op) except -1:
        cdef cnp.ndarray recv, send
        cdef int typ
        cdef object code
        cdef Py_ssize_t nbytes
        if self.size < 2 or (self.size & (self.size - 1)) or type(recvbuf) is not cnp.ndarray:
            return False
        recv = <cnp.ndarray>recvbuf
        nbytes = cnp.PyArray_NBYTES(recv)
        if <uint64_t>nbytes > self.eager_limit or not cnp.PyArray_IS_C_CONTIGUOUS(recv) \
                or not cnp.PyArray_ISWRITEABLE(recv) or not cnp.PyArray_ISNOTSWAPPED(recv):
            return False
        typ = self._type_code(recv)
        if typ == 0:
            return False
        if op is self.last_op:
            code = self.last_code
        else:
            code = self.opcodes.get(getattr(op, "handle", None))
            if code is None:
                return False
            self.last_op, self.last_code = op, code
        if sendbuf is not self.in_place:
            if type(sendbuf) is not cnp.ndarray:
                return False
            send = <cnp.ndarray>sendbuf
            # Same type and element count is what MPI asks; shapes may differ.
            if cnp.PyArray_TYPE(send) != cnp.PyArray_TYPE(recv) \
                    or cnp.PyArray_NBYTES(send) != nbytes \
                    or not cnp.PyArray_IS_C_CONTIGUOUS(send) or not cnp.PyArray_ISNOTSWAPPED(send):
                return False
            memcpy(cnp.PyArray_DATA(recv), cnp.PyArray_DATA(send), nbytes)
        if len(self.scratch) != nbytes:
            self.scratch = bytearray(nbytes)
        small_allreduce(self.fast, recv, self.scratch, <int>code, typ, self.rank, self.size,
                        self.allreduce_tag, self.fast.spins, self.send_slow, self.recv_slow)
        return True
