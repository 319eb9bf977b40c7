# The one-call fast paths of a communicator (included by _fastcopy.pyx after
# _ring.pxi, whose rings they drive).

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
from cpython.exc cimport PyErr_WarnEx

from cpython.buffer cimport PyObject_CheckBuffer

FAST_NOT_HANDLED = -1
FAST_NOTHING_YET = -2
FAST_PENDING = -4           # begun, to be finished by the engine (pending_recv)
NOT_HANDLED = object()      # the general path's turn (an object-returning fast path)

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
        # Fortran order is contiguous too: the message is the memory as it
        # lies, as mpi4py sends it.
        if not (num <= cnp.NPY_CLONGDOUBLE or num == cnp.NPY_FLOAT16) \
                or not (cnp.PyArray_IS_C_CONTIGUOUS(arr) or cnp.PyArray_IS_F_CONTIGUOUS(arr)) \
                or not cnp.PyArray_ISNOTSWAPPED(arr) \
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


cdef object _byte_view(object obj, Py_ssize_t nbytes, Py_ssize_t extent,
                       Py_ssize_t offset=0):
    """A writable flat byte memoryview of obj's nbytes from offset (the rest
    when nbytes < 0; a multiple of extent), or None when obj is not a
    writable C-contiguous buffer of plain numbers or they do not fit."""
    cdef object view
    cdef Py_buffer *info
    obj = _c_order(obj)
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
    if not _span(len(view), extent, offset, &nbytes):
        return None
    if offset or nbytes != len(view):
        view = view[offset:offset + nbytes]
    return view


cdef dict _TYPECHARS = {}       # type character -> the library's datatype


cdef object _typechar_datatype(str code):
    """The datatype mpi4py names by a type character ([buf, 'd']), or None."""
    try:
        return _TYPECHARS[code]
    except KeyError:
        pass
    from ivmpi.buffers import _TYPEDICT
    found = _TYPEDICT.get(code)
    _TYPECHARS[code] = found
    return found


cdef inline object _c_order(object obj):
    """A numpy array in Fortran order as its transpose: the same memory in
    C order, which a simple buffer export (and a cast to bytes) takes."""
    if type(obj) is cnp.ndarray and not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj) \
            and cnp.PyArray_IS_F_CONTIGUOUS(<cnp.ndarray>obj):
        return (<cnp.ndarray>obj).T
    return obj


cdef int _pin(object obj, bint writable, Py_buffer *view) except -1:
    """A buffer export of obj, for copies that may run without the GIL.
    0 when obj is not a plain contiguous buffer of numbers."""
    cdef int flags = PyBUF_SIMPLE | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    obj = _c_order(obj)
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

cdef inline bint _span(Py_ssize_t length, Py_ssize_t extent, Py_ssize_t offset,
                       Py_ssize_t *nbytes) noexcept:
    """Does [offset, offset + nbytes) lie in a buffer of length bytes and
    hold whole elements of extent bytes?  nbytes -1 (the rest of the buffer)
    is set to that size.  False: the general path reports what is wrong."""
    if offset > length:
        return False
    if nbytes[0] < 0:
        nbytes[0] = length - offset
    elif nbytes[0] > length - offset:
        return False
    return nbytes[0] % extent == 0


cdef enum:
    _TAG_UB = 0x7fffffff
    # A buffer in the region (Alloc_mem, ordinary memory) goes in one copy
    # from our memory from here, eagerly below (FastPath._copy_instead).
    _REGION_COPY_MIN = 24576


# Derived datatypes with holes that the fast paths copy themselves, by a
# RunPlan (ivmpi.datatypes makes them): handle -> (datatype, plan, extent);
# (datatype, None, extent) for one whose data fill its extent (moved as
# plain bytes, as a predefined type), or (datatype, None, 0) for a type
# they leave to the general path.  The
# datatype object itself is kept and compared, so a handle the library
# reuses for a new type after a Free never finds the old plan.
cdef dict _TYPED = {}
cdef object _typed_layout = None      # datatype -> (plan, extent) or None
cdef enum:
    _TYPED_CACHE_MAX = 256
    _TYPED_WAIT_ROUNDS = 32
# Pickles up to this many eager limits go through the sender's heap (one
# copy in, one out, as an eager frame); larger ones stream through the
# ring in chunks, which overlaps the two copies.
cdef uint64_t _STAGED_OBJECT_EAGER_LIMITS = 2
# Nonblocking sends of such pickles each take a heap block of that size
# until their receiver copied them (SendBlocks): at most this many.
cdef int _SEND_BLOCKS_MOST = 16
# Object receives allocate the announced size: larger ones take the
# general path, which checks the size against the machine's memory.
cdef uint64_t _OBJECT_RENDEZVOUS_MAX = <uint64_t>1 << 30


def set_typed_layout(function):
    """Install the function that gives a derived datatype's (RunPlan,
    extent), or None when the fast paths should leave it alone."""
    global _typed_layout
    _typed_layout = function
    _TYPED.clear()


cdef tuple _typed_entry(object datatype):
    cdef object handle = getattr(datatype, "handle", None)
    cdef tuple entry = _TYPED.get(handle)
    if entry is not None and entry[0] is datatype:
        return entry
    if _typed_layout is None or handle is None:
        return None
    try:
        found = _typed_layout(datatype)
    except Exception:
        return None     # the general path reports what is wrong with it
    if len(_TYPED) >= _TYPED_CACHE_MAX:
        _TYPED.clear()
    entry = (datatype, None, 0) if found is None else (datatype, found[0], found[1])
    _TYPED[handle] = entry
    return entry


cdef class _Scatter:
    """A nonblocking receive with holes: the message lands in `staging`,
    and calling this with the bytes received scatters them into the
    user's elements (a message shorter than the receive fills only its own
    bytes, as MPI has it)."""
    cdef RunPlan plan
    cdef object obj
    cdef Py_ssize_t origin, count, extent
    cdef readonly object staging

    def __cinit__(self, RunPlan plan, object obj, Py_ssize_t origin, Py_ssize_t count,
                  Py_ssize_t extent):
        self.plan, self.obj = plan, obj
        self.origin, self.count, self.extent = origin, count, extent
        self.staging = memoryview(bytearray(plan.size * count))

    def __call__(self, nbytes=None):
        cdef Py_buffer view, packed
        cdef Py_ssize_t n, whole, rest
        cdef char *element
        cdef char *at
        PyObject_GetBuffer(self.staging, &packed, PyBUF_SIMPLE)
        try:
            n = packed.len if nbytes is None else min(<Py_ssize_t>nbytes, packed.len)
            PyObject_GetBuffer(self.obj, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                # Checked when posted; the buffer may have been resized since.
                if not self.plan.fits(self.count, self.extent, self.origin, view.len):
                    raise BufferSpecError("the receive buffer changed size while the message "
                                          "was on its way")
                whole = n // self.plan.size
                rest = n - whole * self.plan.size
                at = <char *>view.buf + self.origin
                self.plan._scatter(at, <const char *>packed.buf, whole, self.extent)
                if rest:
                    # Part of one more element: its other bytes keep their values.
                    element = <char *>malloc(self.plan.size)
                    if element == NULL:
                        raise MemoryError()
                    try:
                        at += whole * self.extent
                        self.plan._gather(element, at, 1, self.extent)
                        ivmpi_copy_plain(element, <const char *>packed.buf + whole * self.plan.size, rest)
                        self.plan._scatter(at, element, 1, self.extent)
                    finally:
                        free(element)
            finally:
                PyBuffer_Release(&view)
        finally:
            PyBuffer_Release(&packed)


# Polls that found nothing and gave the core away (with more ranks than
# cores: FastPath.Iprobe/Improbe, Engine.test_progress), for tests.
cdef unsigned long long _idle_yields = 0


cdef inline void _yield_idle() noexcept nogil:
    global _idle_yields
    _idle_yields += 1
    sched_yield()


def yield_idle():
    """Give the core away (sched_yield), counted: a poll that found nothing,
    with more ranks than cores."""
    with nogil:
        _yield_idle()


def idle_yields():
    """How many polls of this process found nothing and gave the core away."""
    return _idle_yields


@cython.final
cdef class SendBlocks:
    """Blocks of this rank's heap that nonblocking sends of pickles a
    little over the eager limit are copied into, one per send: the
    receiver copies the message out (a region rendezvous) whenever it
    receives, and the send's request is complete once the pickle is in its
    block.  A block is reused once its send's operation is done (the
    receiver's ACK); at most `most` blocks are ever taken from the heap,
    so a program that sends many such messages before receiving any
    (or a full heap) sends the rest by the general rendezvous."""
    cdef object heap
    cdef list free                  # region offsets of blocks not in use
    cdef object held                # deque of (SendOp, region offset), oldest first
    cdef list views                 # the heap's buffers, kept for the life of the engine
    cdef list rx                    # the engine's rings into this rank, by world rank
    cdef dict awaiting_ack          # the engine's sends awaiting an ACK
    cdef readonly uint64_t block_bytes
    cdef readonly int most
    cdef readonly long long sent        # messages sent through the blocks so far

    def __init__(self, heap, uint64_t eager_limit, list rx, dict awaiting_ack):
        self.heap = heap
        self.rx = rx
        self.awaiting_ack = awaiting_ack
        self.free = []
        self.held = collections.deque()
        self.views = []
        # Pickles up to the size the blocking sends stage too; a quarter of
        # the heap at most, the rest stays for Alloc_mem and the collectives.
        self.block_bytes = _STAGED_OBJECT_EAGER_LIMITS * eager_limit
        self.most = 0 if heap.mem.strict or self.block_bytes == 0 else \
            <int>min(_SEND_BLOCKS_MOST, heap.size // 4 // self.block_bytes)

    cdef int64_t take(self) except -2:
        """A free block's region offset, or -1: none free, and no more may
        be made.  The caller holds the engine's lock."""
        if not self.free:
            self._reap()
            if not self.free and len(self.views) >= self.most:
                # A rank that only sends to a peer never reads the ring
                # from it, where the ACKs wait: taken here.
                self._take_acks()
                self._reap()
        if self.free:
            return <int64_t>self.free.pop()
        if len(self.views) >= self.most:
            return -1
        try:
            view = self.heap.alloc(self.block_bytes)
        except IvmpiError:
            self.most = len(self.views)     # the heap is full: take no more
            return -1
        self.views.append(view)
        return <int64_t>self.heap.contains(*buffer_span(view))

    cdef void _reap(self):
        """The blocks of sends now done are free."""
        cdef Py_ssize_t i
        held = self.held
        for i in range(len(held)):
            item = held.popleft()
            if (<SendOp>item[0]).done:
                self.free.append(item[1])
            else:
                held.append(item)

    cdef int _take_acks(self) except -1:
        """The ACKs at the heads of the rings from the peers of held sends."""
        cdef RxRing rx
        for item in self.held:
            if (<SendOp>item[0]).done:
                continue
            ring = self.rx[(<SendOp>item[0]).peer]
            if ring is None:
                continue
            rx = <RxRing>ring
            while rx.poll() and rx.kind == 6 and _take_ack(rx, self.awaiting_ack):
                pass
        return 0

    cdef void hold(self, SendOp op, int64_t at):
        """Block `at` carries op's message until op is done."""
        self.held.append((op, at))
        self.sent += 1

    cdef void give(self, int64_t at):
        """Block `at` was taken but never announced: free again."""
        self.free.append(at)

    @property
    def made(self):
        """How many blocks were taken from the heap."""
        return len(self.views)


cdef class FastPath:
    """One communicator's fast paths: its rings by communicator rank.

    It shares the engine's queues (the same list and set objects), because a
    fast path is only correct while the engine has nothing queued that could
    come first: no posted or unexpected receive, no frame waiting to be sent.

    Every fast path holds the engine's lock while it looks at the queues and
    the rings, and gives up (the general path then waits for the lock) when
    another thread holds it: that thread may be half-way through engine
    code, or copying without the GIL.  The lock is left before the general
    path runs, so a blocking call never idles holding it.
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
    cdef public bint routed               # some peers are reached through the MPI library
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
    cdef InboxView any_view               # ANY_SOURCE scans: the engine's inbox, our members
    cdef public EngineLock lock           # the engine's
    # Synchronous sends and acknowledgements: the engine's send ids (by
    # world rank) and table of sends awaiting an ACK, its _post (queues a
    # frame behind others to the same peer) and the engine itself (probes
    # leave the work to it while nonblocking collectives are running).
    cdef public list send_ids
    cdef public dict awaiting_ack
    cdef public object engine_post, engine, wait_op
    cdef public EngineCore core           # the engine's, for the rounds in C
    cdef public object general_Ssend, general_Issend, general_ssend, general_issend
    cdef public object general_isend, general_sendrecv
    cdef public object general_Isendrecv, general_Isendrecv_replace
    cdef public object general_Iprobe, general_Probe, general_Improbe, general_Mprobe
    cdef public object new_message
    # Large sends with holes: the engine's staging block (take_stage,
    # give_stage) and each communicator rank's heap (region offset, bytes),
    # where its region rendezvous may point; region_frames: a receive
    # with holes is looking, and takes a region rendezvous as well.
    cdef public object take_stage, give_stage, general_Sendrecv
    cdef public SendBlocks send_blocks    # the engine's, for nonblocking object sends
    cdef public object new_unpacking      # request type of a receive unpacked on completion
    cdef public list heap_bounds
    cdef bint region_frames
    # Rendezvous in one call (messages over the eager limit between plain
    # buffers): the engine's rendezvous state (its tables of receives being
    # streamed into and of sends awaiting clear-to-send, its _post_stream,
    # chunk size and stream polls); rts_frames: a blocking receive is
    # looking, and takes an RTS as well.
    cdef public Rendezvous rendezvous
    cdef bint rts_frames
    # Buffers of copy_min bytes or more go by rendezvous even under the
    # eager limit to a peer that copies them from our memory, in the buffer
    # calls that may wait for their receiver (_eager_max); 0: never (the
    # communicators of ivmpi's own collectives, whose steps rely on eager
    # sends completing alone).
    cdef public uint64_t copy_min
    # The same for the collectives' exchange steps (announce_step), which
    # receive before they wait for their own send.
    cdef public uint64_t step_copy_min
    cdef RecvOp pending_recv
    cdef long found_source, found_size    # what the last fast probe found
    cdef int left_rings                   # rings the last probe's scan left to collectives
    cdef int32_t found_tag
    cdef object found_message

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
        self.lock = EngineLock()
        # Open MPI's values; the communicator sets its MPI library's own.
        self.any_source = -1
        self.any_tag = -1
        self.spins = 1
        # Datatype handle -> extent, for the predefined types a spec
        # [buf, datatype] may name and still be taken as plain bytes.
        self.extents = extents if extents is not None else {}

    cdef int _report(self, object status, long source, long tag, long long count) except -1:
        """The status of a fast receive or probe: in C when it can be
        (_status.pxi), else through mpi4py's setters."""
        if status is not None and not _fill_status_c(status, source, tag, count):
            self.fill_status(status, source, tag, count)
        return 0

    cdef object _extent_of(self, object datatype):
        # The same Datatype object comes back call after call: remember it.
        if datatype is self.last_datatype:
            return self.last_extent
        if type(datatype) is str:
            datatype = _typechar_datatype(datatype)
        entry = self.extents.get(getattr(datatype, "handle", None))
        if entry is not None:
            self.last_datatype = datatype
            self.last_extent = entry
            return entry
        # A derived datatype whose data fill its extent: plain bytes too.
        # (Not remembered as the last one: a type freed after this call
        # must reach the general path, which reports it.)
        typed = _typed_entry(datatype)
        if typed is not None and typed[1] is None and typed[2] > 0:
            return typed[2]
        return None

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

    cdef object _plain_at(self, object spec, Py_ssize_t *extent, Py_ssize_t *nbytes,
                          Py_ssize_t *offset):
        """The buffer of spec if it names a contiguous run of a predefined
        datatype in it, in any of mpi4py's forms: buf, [buf, datatype],
        [buf, count, datatype], [buf, (count, displ), datatype],
        [buf, count, displ, datatype]; else None.

        nbytes is set to the message size (count * extent), or -1 for "from
        offset to the end of the buffer"; offset to displ * extent (bytes).
        Whether they fit the buffer is for _span to check.
        """
        cdef object entry, count = None, displ = None
        cdef Py_ssize_t n
        extent[0] = 1
        nbytes[0] = -1
        offset[0] = 0
        if PyObject_CheckBuffer(spec):
            return spec
        if type(spec) is not list and type(spec) is not tuple:
            return _foreign(spec)
        n = len(spec)
        if n == 2:
            entry = self._extent_of(spec[1])
        elif n == 3:
            entry = self._extent_of(spec[2])
            count = spec[1]
            if type(count) is tuple or type(count) is list:
                if len(count) != 2:
                    return None
                count, displ = count[0], count[1]
        elif n == 4:
            entry = self._extent_of(spec[3])
            count, displ = spec[1], spec[2]
        else:
            return None
        if entry is None:
            return None
        if count is not None:
            if type(count) is not int or count < 0:
                return None
            nbytes[0] = <Py_ssize_t>count * <Py_ssize_t>entry
        if displ is not None:
            if type(displ) is not int or displ < 0:
                return None
            offset[0] = <Py_ssize_t>displ * <Py_ssize_t>entry
        extent[0] = <Py_ssize_t>entry
        return _as_buffer(spec[0])

    cdef object _typed_at(self, object spec, Py_ssize_t *count, Py_ssize_t *origin):
        """The buffer of spec if it is [buf, count, datatype], [buf, (count,
        displ), datatype] or [buf, count, displ, datatype] with a derived
        datatype with holes copied by a RunPlan, which is returned as well:
        (buf, plan, extent); else None.  count and origin (displ * extent,
        bytes) are set; whether the elements fit buf is for _typed_fits."""
        cdef object entry, cnt, displ = 0
        cdef Py_ssize_t n
        if type(spec) is not list and type(spec) is not tuple:
            return None
        n = len(spec)
        if n == 3:
            cnt = spec[1]
            if type(cnt) is tuple or type(cnt) is list:
                if len(cnt) != 2:
                    return None
                cnt, displ = cnt[0], cnt[1]
        elif n == 4:
            cnt, displ = spec[1], spec[2]
        else:
            return None
        if type(cnt) is not int or type(displ) is not int or cnt < 0 or displ < 0 \
                or cnt > (1 << 40) or displ > (1 << 40):
            return None
        entry = _typed_entry(spec[n - 1])
        if entry is None or entry[1] is None:
            return None
        buf = _as_buffer(spec[0])
        if buf is None:
            return None
        count[0] = <Py_ssize_t>cnt
        origin[0] = <Py_ssize_t>displ * <Py_ssize_t>entry[2]
        return (buf, entry[1], entry[2])

    cdef bint _publish_typed(self, object spec, long dest, long tag, uint32_t kind,
                             uint64_t b) except -1:
        """_publish for a spec with a derived datatype with holes: its
        elements are gathered straight into the ring."""
        cdef Py_ssize_t count, origin, extent
        cdef Py_buffer view
        cdef RunPlan plan
        cdef int done
        found = self._typed_at(spec, &count, &origin)
        if found is None:
            return False
        plan, extent = <RunPlan>found[1], <Py_ssize_t>found[2]
        if count and <uint64_t>plan.size > self.eager_limit // <uint64_t>count:
            return False
        ring = self.tx[dest]
        if ring is None or not _pin(found[0], False, &view):
            return False
        try:
            if not plan.fits(count, extent, origin, view.len):
                return False
            done = (<TxRing>ring).write_gathered(kind, <int32_t>tag, self.context, b, plan,
                                                 <const char *>view.buf + origin, count, extent)
        finally:
            PyBuffer_Release(&view)
        return done == 1

    cpdef bint send(self, object buf, long dest, long tag) except -1:
        """Publish buf to dest as one EAGER frame; False: use the general path."""
        if not self.lock.enter():
            return False
        try:
            return self._send(buf, dest, tag)
        finally:
            self.lock.leave()

    cdef bint _send(self, object buf, long dest, long tag) except -1:
        return self._publish(buf, dest, tag, 1, 0, False)

    cdef bint _send_buffer(self, object buf, long dest, long tag) except -1:
        """send, for the buffer calls that may wait for their receiver: a
        message of copy_min bytes or more to a peer that copies it from our
        memory is not sent eagerly (False: _send_rendezvous announces it)."""
        if not self.lock.enter():
            return False
        try:
            return self._publish(buf, dest, tag, 1, 0, True)
        finally:
            self.lock.leave()

    cdef uint64_t _eager_max(self, long dest) except? 0:
        """The largest buffer a call that may wait for its receiver sends
        eagerly to communicator rank dest.  One copy from our memory
        (_single_copy.pxi) beats the ring's two from copy_min bytes on
        (docs/performance.md), but needs the receiver: the buffered sends,
        the object calls and the collectives' steps (which send before they
        receive) stay eager up to the eager limit."""
        if self.copy_min == 0 or self.copy_min > self.eager_limit or not self._copies_ours(dest):
            return self.eager_limit
        return self.copy_min - 1

    cdef inline bint _copies_ours(self, long dest) except -1:
        """Does communicator rank dest copy our large messages from our
        memory (_single_copy.pxi)?"""
        return 0 <= dest < self.size and _sc_tell(self.world_ranks[dest])

    cdef bint _copy_instead(self, long dest, const char *data, Py_ssize_t nbytes) except -1:
        """Does a buffer call send the nbytes at data to communicator rank
        dest by rendezvous, for dest to copy from our memory, rather than
        eagerly (_eager_max)?  Not from a buffer in a region of device
        memory (Alloc_mem in a guest), which the kernel's copy must not read
        (ARM64 guests' alignment rules)."""
        cdef Mapping mem
        if self.copy_min == 0 or <uint64_t>nbytes < self.copy_min:
            return False        # (the common case first: small messages)
        if <uint64_t>nbytes <= self._eager_max(dest):
            return False
        mem = (<TxRing>self.tx[dest]).mem
        if mem.overlaps(data, nbytes):
            # Eager from the region into the region is quicker up to ~20 KiB
            # (Send/Recv of Alloc_mem buffers, 2 ranks: 20 KiB 5.2 us eager,
            # 8.8 in one copy; 24 KiB 15.1 against 9.5).
            return mem.ordinary and nbytes >= _REGION_COPY_MIN
        return True

    cdef bint _publish(self, object buf, long dest, long tag, uint32_t kind,
                       uint64_t b, bint buffer) except -1:
        """Publish buf to dest as one frame of kind (EAGER or EAGER_SYNC
        with send id b); False: use the general path.  buffer: a buffer
        call, which leaves a buffer to the rendezvous when _copy_instead."""
        cdef Py_buffer view
        cdef int done
        cdef object ring
        cdef Py_ssize_t extent, nbytes, offset, length
        cdef char *data
        if not self.enabled or dest < 0 or dest >= self.size or tag < 0 or tag > _TAG_UB:
            return False
        if self.backlog:
            return False
        plain = self._plain_at(buf, &extent, &nbytes, &offset)
        if plain is None:
            return self._publish_typed(buf, dest, tag, kind, b)
        buf = plain
        ring = self.tx[dest]
        if ring is None:
            return False
        if _direct(buf, False, &data, &length) and length < _NOGIL_MIN:
            # Small: the copy keeps the GIL, so nothing can free the memory meanwhile.
            if not _span(length, extent, offset, &nbytes) or <uint64_t>nbytes > self.eager_limit \
                    or (buffer and self._copy_instead(dest, data + offset, nbytes)):
                return False
            return (<TxRing>ring).write_frame(kind, <int32_t>tag, self.context, 0, b,
                                              data + offset, <uint64_t>nbytes) == 1
        if not _pin(buf, False, &view):
            return False
        try:
            if not _span(view.len, extent, offset, &nbytes) or <uint64_t>nbytes > self.eager_limit \
                    or (buffer and self._copy_instead(dest, <const char *>view.buf + offset,
                                                      nbytes)):
                return False
            done = (<TxRing>ring).write_frame(kind, <int32_t>tag, self.context, 0, b,
                                              <const char *>view.buf + offset, <uint64_t>nbytes)
        finally:
            PyBuffer_Release(&view)
        return done == 1

    # mpi4py's signatures; a communicator binds these as its own methods.

    def Send(self, buf, long dest, long tag=0):
        if self._send_buffer(buf, dest, tag):
            return
        self._send_large(buf, dest, tag)

    def Bsend(self, buf, long dest, long tag=0):
        """Send, eager up to the eager limit whoever the receiver: a
        buffered send must not wait for it (docs/api.md)."""
        if self.send(buf, dest, tag):
            return
        self._send_large(buf, dest, tag)

    cdef int _send_large(self, object buf, long dest, long tag) except -1:
        op = self._send_staged(buf, dest, tag)
        if op is not None:
            self.finish_staged(op, "Send")
            return 0
        # (Waited for here: its receiver may ask us to share the copy.)
        op = self._send_rendezvous(buf, dest, tag, False, True)
        if op is None:
            self.general_Send(buf, dest, tag)
        elif op is not True:
            self.finish(op, "Send")
        return 0

    cdef int finish(self, object op, str what) except -1:
        """Wait for a send of ours left to the engine: its peer's ring polled
        in C first (the clear-to-send, or the acknowledgement, is most
        likely next there), then the engine's wait."""
        if (<Op>op).done:
            return 0
        sharing = getattr(self.engine, "sharing", None)
        if sharing and type(op) is SendOp and ((<SendOp>op).peer, (<SendOp>op).send_id) in sharing:
            self.wait_op(op, what)      # (the engine's rounds answer a request to share)
            if sharing.pop(((<SendOp>op).peer, (<SendOp>op).send_id), None) is not None:
                _sc_withdraw((<SendOp>op).peer, (<SendOp>op).send_id)
        elif self._poll_op(op, self.spins) < 0 or not (<Op>op).done:
            self.wait_op(op, what)
        return 0

    def Recv(self, buf, source=None, tag=None, status=None):
        # None: MPI's ANY_SOURCE / ANY_TAG, whose values depend on the MPI library.
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        cdef long n
        self.rts_frames = True
        try:
            n = self.recv(buf, source, tag, self.spins)
        finally:
            self.rts_frames = False
        if n == FAST_PENDING:
            op, self.pending_recv = self.pending_recv, None
            self.new_request(self.comm, op, None, ("Recv", "from", source)).Wait(status)
            return
        if n < 0 and (type(buf) is list or type(buf) is tuple):
            n = self._recv_typed_waiting(buf, source, tag)
        if n < 0:
            self.general_Recv(buf, source, tag, status)
        elif status is not None:
            self._report(status, self.last_source, self.last_tag, n)

    cdef long _recv_typed_waiting(self, object spec, object source, object tag) except -3:
        """A receive with holes whose message has not come yet: wait for it
        (a probe, through the engine) and take it then, straight from the
        ring, the unexpected queue or the sender's heap, rather than through
        the general path's packed staging copy."""
        cdef Py_ssize_t count, origin
        cdef long n
        cdef int rounds
        if self.general_Probe is None or self._typed_at(spec, &count, &origin) is None:
            return FAST_NOT_HANDLED
        # The sender is most likely still gathering a large message: a few
        # more rounds of polling here cost less than the engine's wait.
        for rounds in range(_TYPED_WAIT_ROUNDS):
            n = self.recv(spec, source, tag, self.spins)
            if n >= 0 or self.backlog or self.unexpected:
                return n
        self.general_Probe(source, tag, None)
        return self.recv(spec, source, tag, 1)

    def Sendrecv(self, sendbuf, long dest, long sendtag=0, recvbuf=None, source=None,
                 recvtag=None, status=None):
        # An eager send completes without the receiver, so sending first and
        # then receiving cannot deadlock (a rendezvous send could).
        if self._send_buffer(sendbuf, dest, sendtag):
            self.Recv(recvbuf, source, recvtag, status)
            return
        op = self._send_staged(sendbuf, dest, sendtag)
        if op is not None:
            # A large one with holes, gathered into our heap: the peer
            # scatters it from there while we receive.
            self.Recv(recvbuf, source, recvtag, status)
            self.finish_staged(op, "Sendrecv")
            return
        op = self._send_rendezvous(sendbuf, dest, sendtag, True)
        if op is not None:
            # A large one to a peer that copies it from our memory
            # (_single_copy.pxi): announced, then our receive, then the
            # peer's clear-to-send after its copy.
            try:
                self.Recv(recvbuf, source, recvtag, status)
            finally:
                self.finish(op, "Sendrecv")
            return
        if source is None:
            source = self.any_source
        if recvtag is None:
            recvtag = self.any_tag
        self.general_Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def Isend(self, buf, long dest, long tag=0):
        """A small message that fits the ring now is sent at once: the
        request is born complete, with no engine operation behind it."""
        if self._send_buffer(buf, dest, tag):
            return self.new_request(self.comm, self.sent_op, None, "Isend")
        return self._isend_large(buf, dest, tag)

    def Ibsend(self, buf, long dest, long tag=0):
        """Isend, eager up to the eager limit whoever the receiver (Bsend)."""
        if self.send(buf, dest, tag):
            return self.new_request(self.comm, self.sent_op, None, "Ibsend")
        return self._isend_large(buf, dest, tag)

    cdef object _isend_large(self, object buf, long dest, long tag):
        # A large one to a peer that copies it from our memory (_single_copy.pxi):
        # announced now, done on the peer's clear-to-send.
        op = self._send_rendezvous(buf, dest, tag, True)
        if op is not None:
            return self.new_request(self.comm, op, None, ("Isend", "to", dest))
        return self.general_Isend(buf, dest, tag)

    def Irecv(self, buf, source=None, tag=None):
        """Post a receive in one call: the engine's posted list gets the
        operation directly.  Anything unusual (PROC_NULL, a bad rank or tag,
        a buffer spec that is not plain) takes the general path, which
        handles and reports it."""
        cdef Py_ssize_t extent, nbytes, offset
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        if self._postable(source, tag):
            plain = self._plain_at(buf, &extent, &nbytes, &offset)
            mem = None if plain is None else _byte_view(plain, nbytes, extent, offset)
            if mem is not None:
                return self.new_request(self.comm, self._post_receive(source, tag, mem), None,
                                        ("Irecv", "from", source))
            if plain is None and self.new_unpacking is not None:
                scatter = self._typed_receiver(buf)
                if scatter is not None:
                    return self.new_unpacking(
                        self.comm, self._post_receive(source, tag, (<_Scatter>scatter).staging),
                        scatter, ("Irecv", "from", source))
        return self.general_Irecv(buf, source, tag)

    def Isendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=None, recvtag=None):
        """Isendrecv in one call when its receive buffer is plain and its
        message goes eagerly now (the request is the receive's) or is
        announced to a peer that copies it from our memory (the request is
        the pair's): the receive's buffer is checked, the message sent,
        then the receive posted.  (Eager, the bytes are in the ring: an
        Isendrecv_replace may receive into the buffer it sent from.)
        Anything else: the general path's."""
        if source is None:
            source = self.any_source
        if recvtag is None:
            recvtag = self.any_tag
        req = self._isendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, "Isendrecv",
                              _SendrecvOp is not None)
        if req is None:
            return self.general_Isendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag)
        return req

    def Isendrecv_replace(self, buf, dest, sendtag=0, source=None, recvtag=None):
        if source is None:
            source = self.any_source
        if recvtag is None:
            recvtag = self.any_tag
        req = self._isendrecv(buf, dest, sendtag, buf, source, recvtag, "Isendrecv_replace",
                              False)
        if req is None:
            return self.general_Isendrecv_replace(buf, dest, sendtag, source, recvtag)
        return req

    cdef object _isendrecv(self, object sendbuf, object dest, object sendtag, object recvbuf,
                           object source, object recvtag, str what, bint announce):
        """The request of the one-call Isendrecv, or None with nothing done.
        announce: a message the peer copies from our memory may be
        announced instead of sent (not when the receive lands in the same
        buffer, which the peer may not have copied yet)."""
        cdef Py_ssize_t extent, nbytes, offset
        if type(dest) is not int or type(sendtag) is not int or type(source) is not int \
                or type(recvtag) is not int or not self._postable(source, recvtag):
            return None
        plain = self._plain_at(recvbuf, &extent, &nbytes, &offset)
        mem = None if plain is None else _byte_view(plain, nbytes, extent, offset)
        if mem is None or not (-1 < dest < self.size and 0 <= sendtag <= _TAG_UB):
            return None
        if self._send_buffer(sendbuf, dest, sendtag):
            op = self._post_receive(source, recvtag, mem)
        elif announce:
            sent = self._send_rendezvous(sendbuf, dest, sendtag, True)
            if sent is None:
                return None
            op = _SendrecvOp(sent, self._post_receive(source, recvtag, mem))
        else:
            return None
        return self.new_request(self.comm, op, None, (what, "from", source))

    cdef object _typed_receiver(self, object spec):
        """A _Scatter for a receive spec with holes whose elements fit the
        buffer, or None."""
        cdef Py_ssize_t count, origin, extent
        cdef Py_buffer view
        cdef RunPlan plan
        found = self._typed_at(spec, &count, &origin)
        if found is None:
            return None
        plan, extent = <RunPlan>found[1], <Py_ssize_t>found[2]
        if plan.size == 0 or count > (<Py_ssize_t>1 << 40) // plan.size \
                or not _pin(found[0], True, &view):
            return None
        try:
            if not plan.fits(count, extent, origin, view.len):
                return None
        finally:
            PyBuffer_Release(&view)
        return _Scatter(plan, found[0], origin, count, extent)

    def irecv(self, buf=None, source=None, tag=None):
        """Post an object receive in one call.  A large message goes into
        buf if it fits, as mpi4py's does; one that does not gets a buffer of
        its own (where mpi4py's would be truncated)."""
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        if not self._postable(source, tag):
            return self.general_irecv(buf, source, tag)
        return self.new_request(self.comm, self._post_receive(source, tag, None, buf),
                                self.unpickle_op, ("irecv", "from", source))

    cdef bint _postable(self, long source, long tag):
        return self.enabled and (0 <= source < self.size or source == self.any_source) \
            and (0 <= tag <= _TAG_UB or tag == self.any_tag)

    cdef object _post_receive(self, long source, long tag, object mem, object hint=None):
        """The engine's receive for a checked (source, tag): matched against
        what already arrived by the engine's own call, else posted.  hint:
        an object receive's offered buffer (RecvOp.hint)."""
        cdef long world = -1 if source == self.any_source else self.world_ranks[source]
        cdef long want = -1 if tag == self.any_tag else tag
        cdef Py_ssize_t i = -1
        op = None
        if self.lock.enter():
            try:
                # Messages set aside for other receives (another tag, a rank
                # ahead's next round) do not send this one to the engine, nor
                # does a plain eager one it takes (a collective's frame from
                # a rank that got there first).
                msg = None
                if self.unexpected:
                    msg = self._unexpected_eager(-1 if world < 0 else source, want, &i)
                if i < 0:
                    op = _new_recv_op(world, want, self.context, mem)
                    (<RecvOp>op).hint = hint
                    self.posted.append(op)
                elif msg is not None and msg.kind == 1:
                    op = self._received_now(i, world, want, mem, hint)
            finally:
                self.lock.leave()
        if op is None:      # queued messages to match first, or another thread inside
            op = self.engine_irecv(world, want, self.context, mem, hint)
        if self.scope is not None:
            op.scope = self.scope
        return op

    cdef object _received_now(self, Py_ssize_t i, long world, long want, object mem,
                              object hint):
        """A receive completed at once by unexpected[i], a plain eager
        message (no acknowledgement owed), as the engine's delivery would;
        None, touching nothing, when it does not fit mem (the engine
        reports the truncation)."""
        cdef Py_buffer view
        msg = self.unexpected[i]
        data = msg.data
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(data)
        op = _new_recv_op(world, want, self.context, mem)
        (<RecvOp>op).hint = hint
        if mem is None:
            (<RecvOp>op).data = data
        else:
            try:
                PyObject_GetBuffer(mem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            except (BufferError, TypeError, ValueError):
                return None         # not one block of bytes: the engine's way
            try:
                if view.len < n:
                    return None
                if n:
                    ivmpi_copy_plain(<char *>view.buf, PyByteArray_AS_STRING(data), n)
            finally:
                PyBuffer_Release(&view)
        del self.unexpected[i]
        (<RecvOp>op).status_source = msg.source
        (<RecvOp>op).status_tag = msg.tag
        (<RecvOp>op).total = msg.size
        (<RecvOp>op).count = n
        (<RecvOp>op).done = True
        return op

    cdef bint send_ptr(self, const char *data, Py_ssize_t n, long dest, long tag) except -1:
        """One EAGER frame of n bytes at data to dest; False: use the general path."""
        if not self.enabled or dest < 0 or dest >= self.size or <uint64_t>n > self.eager_limit:
            return False
        ring = self.tx[dest]
        if ring is None or not self.lock.enter():
            return False
        try:
            if self.backlog:
                return False
            return (<TxRing>ring).write_frame(1, <int32_t>tag, self.context, 0, 0, data,
                                              <uint64_t>n) == 1
        finally:
            self.lock.leave()

    cdef bint send_ptr_patient(self, const char *data, Py_ssize_t n, long dest,
                               long tag) except -1:
        """send_ptr, waiting a little for room in a full ring (its receiver
        is taking the earlier frames out): a stream of segments stays in
        the rings instead of queueing in the engine.  False: use the
        general path."""
        cdef int i, spins = self.spins
        cdef int polls = spins if spins >= 0 else -spins
        if self.send_ptr(data, n, dest, tag):
            return True
        if not self.enabled or self.backlog or dest < 0 or dest >= self.size \
                or self.tx[dest] is None or <uint64_t>n > self.eager_limit:
            return False
        for i in range(polls):
            if spins >= 0:
                rg_relax()
            else:
                sched_yield()
            if self.send_ptr(data, n, dest, tag):
                return True
        return False

    cdef Py_ssize_t recv_ptr(self, char *dst, Py_ssize_t capacity, long source, long tag,
                             int spins) except -3:
        """The next eager message from source with tag, into dst: its length,
        or FAST_NOT_HANDLED (then the general path receives it)."""
        if not self.lock.enter():
            return FAST_NOT_HANDLED
        try:
            return self._recv_ptr(dst, capacity, source, tag, spins)
        finally:
            self.lock.leave()

    cdef Py_ssize_t _recv_ptr(self, char *dst, Py_ssize_t capacity, long source, long tag,
                              int spins) except -3:
        cdef RxRing rx
        cdef Py_ssize_t n
        if self.unexpected:
            return FAST_NOT_HANDLED
        # A block staged in the sender's heap (a schedule's large send) too,
        # and one announced for us to copy from its sender's memory.
        self.region_frames = self.heap_bounds is not None
        self.rts_frames = self.rendezvous is not None
        try:
            ring = self._ready_ring(source, tag, spins)
        finally:
            self.region_frames = False
            self.rts_frames = False
        if ring is None:
            return FAST_NOT_HANDLED
        rx = <RxRing>ring
        if rx.kind == 8:
            return self._recv_region_ptr(rx, dst, capacity)
        if rx.kind == 3:
            return self._recv_copied_ptr(rx, source, dst, capacity)
        n = <Py_ssize_t>rx.length
        if n > capacity:
            return FAST_NOT_HANDLED
        if n:
            rx.copy_out(dst, n)
        self.last_tag = rx.tag
        self._consume(rx)
        return n

    cdef Py_ssize_t _recv_copied_ptr(self, RxRing rx, long source, char *dst,
                                     Py_ssize_t capacity) except -3:
        """The RTS at the head of rx (from communicator rank source), copied
        from its sender's memory into dst and cleared as copied
        (_single_copy.pxi): its length.  FAST_NOT_HANDLED, nothing taken,
        for anything else (no address, a copy refused, too large: the
        engine streams it or reports it)."""
        cdef uint64_t address, total = rx.a
        if self.backlog or not _rts_address(rx, &address) or address == 0 \
                or not _rts_total_ok(rx, self.eager_limit) or total > <uint64_t>capacity:
            return FAST_NOT_HANDLED
        world = self.world_ranks[source]
        if (world, rx.b) in self.rendezvous.receiving \
                or not _sc_read_shared(world, rx.b, address, dst, total, rx.mem):
            return FAST_NOT_HANDLED
        if (<TxRing>self.tx[source]).write_frame(4, 0, 0, total, rx.b, NULL, 0) != 1:
            return FAST_NOT_HANDLED         # (the engine copies it again)
        self.last_tag = rx.tag
        rx.consume()
        return <Py_ssize_t>total

    cdef int poll_send(self, object op) except -2:
        """One look at the ring of a send's peer for its clear-to-send or
        acknowledgement (taking what else is there that poll_eager takes):
        -1 when the engine's round is needed."""
        return self._poll_op(op, 0)

    def send_object(self, obj, long dest, long tag=0):
        data = self.dumps(obj)
        if self.send(data, dest, tag):
            return
        op = self._send_bytes_staged(data, dest, tag)
        if op is not None:
            self.finish_staged(op, "send")
            return
        op = self._send_rendezvous(data, dest, tag, False, True)
        if op is None:
            self.general_send(data, dest, tag)
        elif op is not True:
            self.finish(op, "send")

    def sendrecv_object(self, sendobj, long dest, long sendtag=0, recvbuf=None, source=None,
                        recvtag=None, status=None):
        """mpi4py's sendrecv: an eager or heap-staged send completes without
        the receiver, so sending first and then receiving cannot deadlock."""
        data = self.dumps(sendobj)
        if self.send(data, dest, sendtag):
            return self.recv_object(recvbuf, source, recvtag, status)
        op = self._send_bytes_staged(data, dest, sendtag)
        if op is not None:
            # The peer copies it out of our heap whenever it receives.
            obj = self.recv_object(recvbuf, source, recvtag, status)
            self.finish_staged(op, "sendrecv")
            return obj
        if source is None:
            source = self.any_source
        if recvtag is None:
            recvtag = self.any_tag
        return self.general_sendrecv(data, dest, sendtag, recvbuf, source, recvtag, status)

    def recv_object(self, buf=None, source=None, tag=None, status=None):
        if buf is not None:
            # As mpi4py warns; the buffer is not needed, the message's own size is used.
            PyErr_WarnEx(UserWarning, b"the 'buf' argument is deprecated", 1)
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        self.rts_frames = True
        try:
            data = self.recv_bytes(source, tag, self.spins)
        finally:
            self.rts_frames = False
        if data is None:
            return self.general_recv(buf, source, tag, status)
        if self.pending_recv is not None:
            op, self.pending_recv = self.pending_recv, None
            self.wait_op(op, "recv")
        if status is not None:
            self._report(status, self.last_source, self.last_tag, len(data))
        # An empty message (a buffer send of nothing) is None, as mpi4py has it.
        return self.loads(data) if len(data) else None

    cdef int _consume(self, RxRing rx) except -1:
        """Release the delivered frame at the head of rx (from communicator
        rank last_source); a synchronous send is acknowledged: it matched."""
        cdef uint32_t kind = rx.kind
        cdef uint64_t send_id = rx.b
        rx.consume()
        if kind == 2:
            self._ack(self.last_source, send_id)
        return 0

    cdef int _ack(self, long rank, object send_id) except -1:
        """The ACK of send_id to communicator rank `rank`, behind any frame
        already queued for it (the engine's queue when the ring is full)."""
        ring = self.tx[rank]
        if not self.backlog and ring is not None \
                and (<TxRing>ring).write_frame(6, 0, 0, 0, send_id, NULL, 0) == 1:
            return 0
        self.engine_post(self.world_ranks[rank], (6, 0, 0, 0, send_id, None, 0, 0, None))
        return 0

    # --- synchronous sends ------------------------------------------------

    cdef object _ssend(self, object buf, long dest, long tag, bint wait, bint buffer=False):
        """Publish buf to dest as one EAGER_SYNC frame.  True: acknowledged
        already (wait: the ACK is polled for a while); a SendOp: published,
        its ACK awaited through the engine (registered in awaiting_ack);
        None: use the general path.  buffer: a buffer call, which sends
        eagerly only below copy_min to a peer that copies (_eager_max)."""
        cdef long world
        cdef SendOp op
        if not self.lock.enter():
            return None
        try:
            if not self.enabled or dest < 0 or dest >= self.size or tag < 0 or tag > _TAG_UB \
                    or self.backlog or self.tx[dest] is None:
                return None
            world = self.world_ranks[dest]
            send_id = self.send_ids[world]
            if not self._publish(buf, dest, tag, 2, send_id, buffer):
                return None
            self.send_ids[world] = send_id + 1
            if wait and self._acked(dest, send_id):
                return True
            op = SendOp.__new__(SendOp)
            op.peer = world
            op.tag = tag
            op.context = self.context
            op.sync = True
            op.send_id = send_id
            op.offset = 0
            op.state = "awaiting ack"
            op.scope = self.scope
            self.awaiting_ack[(world, send_id)] = op
            return op
        finally:
            self.lock.leave()

    cdef bint _acked(self, long dest, object send_id) except -1:
        """Poll dest's ring for the ACK of send_id; True once taken.  Stops
        at any other frame (the engine's progress then handles it first)."""
        cdef int i, polls = self.spins if self.spins >= 0 else -self.spins
        cdef RxRing rx = <RxRing>self.rx[dest]
        cdef uint64_t want = send_id
        for i in range(polls):
            if rx.poll():
                if rx.kind == 6 and rx.b == want:
                    rx.consume()
                    return True
                return False
            if self.spins >= 0:
                rg_relax()
            else:
                sched_yield()
        return False

    def Ssend(self, buf, long dest, long tag=0):
        done = self._ssend(buf, dest, tag, True, True)
        if done is None:
            # A rendezvous completes only once matched: synchronous as it is.
            done = self._send_rendezvous(buf, dest, tag, False, True)
            if done is None:
                self.general_Ssend(buf, dest, tag)
                return
        if done is not True:
            self.finish(done, "Ssend")

    def Issend(self, buf, long dest, long tag=0):
        op = self._ssend(buf, dest, tag, False, True)
        if op is None:
            # A rendezvous completes only once matched: synchronous as it is.
            op = self._send_rendezvous(buf, dest, tag, True)
            if op is None:
                return self.general_Issend(buf, dest, tag)
        return self.new_request(self.comm, op, None, "Issend")

    def ssend_object(self, obj, long dest, long tag=0):
        data = self.dumps(obj)
        done = self._ssend(data, dest, tag, True)
        if done is None:
            # Over the eager limit: a region rendezvous is acknowledged
            # only after the receive matched it, as a synchronous send must.
            op = self._send_bytes_staged(data, dest, tag)
            if op is not None:
                self.finish_staged(op, "ssend")
            else:
                self.general_ssend(data, dest, tag)
        elif done is not True:
            self.wait_op(done, "ssend")

    def isend_object(self, obj, long dest, long tag=0):
        """A small object is sent at once, one a little over the eager limit
        is copied into a heap block of its own (_isend_kept): either way the
        request is born complete."""
        data = self.dumps(obj)
        if self.send(data, dest, tag) or self._isend_kept(data, dest, tag, False) is not None:
            return self.new_request(self.comm, self.sent_op, None, "isend")
        return self._isend_large_object(data, dest, tag, "isend")

    def isend_pickle(self, data, long dest, long tag):
        """An object collective's pickle over the eager limit, in one call:
        True, in a heap block of its own (_isend_kept: nothing to wait
        for); a SendOp to wait for, announced to a peer that copies it
        from our memory; None: use the general path."""
        if self._isend_kept(data, dest, tag, False) is not None:
            return True
        return self._send_rendezvous(data, dest, tag, True)

    cdef object _isend_large_object(self, object data, long dest, long tag, str what):
        """A larger pickle to a peer that copies it from our memory
        (_single_copy.pxi): announced in one call, the request done on the
        receiver's clear-to-send, after its copy (so after the match: an
        issend's too).  Else the general path."""
        op = self._send_rendezvous(data, dest, tag, True)
        if op is not None:
            return self.new_request(self.comm, op, None, (what, "to", dest))
        if what == "issend":
            return self.general_issend(data, dest, tag)
        return self.general_isend(data, dest, tag)

    def issend_object(self, obj, long dest, long tag=0):
        data = self.dumps(obj)
        op = self._ssend(data, dest, tag, False)
        if op is None:
            op = self._isend_kept(data, dest, tag, True)
            if op is None:
                return self._isend_large_object(data, dest, tag, "issend")
            return self.new_request(self.comm, op, None, ("issend", "to", dest))
        return self.new_request(self.comm, op, None, "issend")

    # --- probes -----------------------------------------------------------

    cdef int _poll_op(self, object op, int spins) except -2:
        """poll_eager for an engine operation with one of our peers (a
        receive from a known source, a send awaiting an acknowledgement or
        a clear-to-send), with the steps of large messages: -1 when it is
        not one, or the engine's own round is needed."""
        cdef object world
        if type(op) is RecvOp:
            world = (<RecvOp>op).source
        elif type(op) is SendOp:
            world = (<SendOp>op).peer
            if not (<SendOp>op).sync and (world, (<SendOp>op).send_id) \
                    not in self.rendezvous.awaiting_cts:
                return -1
        else:
            return -1
        if self.comm_rank_of is None:
            return -1
        rank = self.comm_rank_of.get(world)
        if rank is None or self.rx[rank] is None:
            return -1
        return poll_eager(self.lock, <RxRing>self.rx[rank], self.posted, self.eager_limit,
                          self.backlog, <Op>op, <TxRing?>self.tx[rank], self.awaiting_ack,
                          spins, self.rendezvous)

    cdef long _peek(self, long source, long tag, Py_ssize_t *index) except -3:
        """What a probe of (source, tag) finds now, taking nothing it looks
        for (the lock is held; frames before it in a ring are set aside,
        _set_aside): 1, the unexpected message at *index; 2, the eager frame
        at the head of ring last_source; 0, nothing, and every ring is empty
        but for frames left to collectives in progress (so no progress is
        owed: frames from anyone else, other communicators too, need the
        engine's progress, which a probe loop must make); FAST_NOT_HANDLED:
        the engine must look."""
        if not self.enabled or not self._valid_receive(source, tag):
            return FAST_NOT_HANDLED
        if self.engine.schedules:
            _advance_schedules(self.engine)     # a probe loop must move them
        if self.backlog or not self._inbox_ready():
            return FAST_NOT_HANDLED
        cdef long found = self._peek_once(source, tag, index)
        if found == 0 and self.routed:
            return FAST_NOT_HANDLED      # the library may hold a message: the engine looks
        if found == 0 and self._others_ready():
            # A frame arrived meanwhile: where the probe looked, or elsewhere.
            found = self._peek_once(source, tag, index)
            if found == 0 and self._others_ready():
                return FAST_NOT_HANDLED
        return found

    cdef bint _others_ready(self) except -1:
        """Are frames in the inbox besides those the last scan left in
        their rings for collectives in progress (left_rings of them)?"""
        cdef Inbox box = self.any_view.box
        cdef int w = box.first_ready(0), seen = 0
        while w >= 0:
            seen += 1
            if seen > self.left_rings:
                return True
            w = box.first_ready(w + 1)
        return False

    cdef long _peek_once(self, long source, long tag, Py_ssize_t *index) except -3:
        cdef int j, step
        cdef object ring
        cdef RxRing rx
        self.left_rings = 0
        if self.unexpected:
            index[0] = self._unexpected_match(source if source >= 0 else -1, tag)
            if index[0] >= 0:
                return 1
        if source >= 0:
            ring = self.rx[source]
            if ring is None:
                return FAST_NOT_HANDLED
            rx = <RxRing>ring
            while rx.poll():
                # An ACK (a send of ours completes) or a frame the probe
                # does not look for: out of the way, to see what follows.
                if rx.kind == 6 and _take_ack(rx, self.awaiting_ack):
                    continue
                if self._wanted(rx, tag) and not self._posted_takes(rx):
                    self.last_source = source
                    return 2
                step = self._set_aside(rx, source)
                if step < 0:
                    return FAST_NOT_HANDLED
                if step == 0:
                    self.left_rings = 1
                    break
        else:
            j = self._any_ready(tag, False)
            if j == -2:
                return FAST_NOT_HANDLED
            if j >= 0:
                self.last_source = j
                return 2
        return 0

    cdef int _set_aside(self, RxRing rx, int rank) except -2:
        """_set_aside for the frame at the head of rx, the ring from
        communicator rank `rank`: 1 moved, 0 left for a collective, -1 the
        engine's."""
        engine = self.engine
        return _set_aside(rx, self.posted, self.unexpected, self.eager_limit,
                          <TxRing?>self.tx[rank], engine.schedules,
                          getattr(engine, "service_contexts", None),
                          None if self.rendezvous is None else self.rendezvous.awaiting_cts)

    cdef long _probe(self, long source, long tag, int spins, bint take) except -3:
        """_peek, polling up to |spins| times while nothing has arrived.
        What was found is recorded (found_source, found_tag, found_size) and,
        with take, removed from matching into found_message, all under the
        lock, so another thread cannot take it in between."""
        cdef long found = FAST_NOT_HANDLED
        cdef Py_ssize_t i = -1
        cdef int k, polls = spins if spins >= 0 else -spins
        cdef RxRing rx
        cdef uint64_t at = 0
        if not self.lock.enter():
            return FAST_NOT_HANDLED
        try:
            # A region rendezvous (a large object's pickle) is found too,
            # and an RTS (a large buffer; to a rank that copies from its
            # sender's memory, one from copy_min bytes).
            self.region_frames = self.heap_bounds is not None
            self.rts_frames = self.rendezvous is not None
            try:
                for k in range(polls if polls > 0 else 1):
                    found = self._peek(source, tag, &i)
                    if found != 0:
                        break
                    if spins >= 0:
                        rg_relax()
                    else:
                        sched_yield()
            finally:
                self.region_frames = False
                self.rts_frames = False
            if found == 2 and ((<RxRing>self.rx[self.last_source]).kind == 8
                               or (<RxRing>self.rx[self.last_source]).kind == 3):
                rx = <RxRing>self.rx[self.last_source]
                if rx.kind == 8 and not self._region_frame(rx, self.last_source, &at):
                    return FAST_NOT_HANDLED     # the engine reports what is wrong
                if rx.kind == 3 and (not _rts_address(rx, &at)
                                     or not _rts_total_ok(rx, self.eager_limit)):
                    return FAST_NOT_HANDLED
                self.found_source = self.last_source
                self.found_tag = rx.tag
                self.found_size = <long>rx.a
                if take:
                    self.found_message = _new_incoming(
                        rx.peer, rx.tag, rx.context, rx.a, None, rx.b, rx.kind, at)
                    rx.consume()
                return found
            if found == 1:
                msg = self.unexpected[i]
                self.found_source = self.comm_rank_of[msg.source]
                self.found_tag = msg.tag
                self.found_size = msg.size
                if take:
                    del self.unexpected[i]
                    self.found_message = msg
            elif found == 2:
                rx = <RxRing>self.rx[self.last_source]
                self.found_source = self.last_source
                self.found_tag = rx.tag
                self.found_size = rx.length
                if take:
                    self.found_message = _new_incoming(
                        rx.peer, rx.tag, rx.context, rx.length, rx.payload(), rx.b, rx.kind)
                    rx.consume()
            return found
        finally:
            self.lock.leave()

    # A probe that finds nothing returns to a program that may well probe
    # again at once: with more ranks than cores (negative spins) it gives
    # the core away first, as Open MPI's progress does when oversubscribed
    # (Engine.test_progress), unless it took a frame on the way (an
    # acknowledgement, a frame set aside), which the program's next call
    # may well complete on.  The general Probe and Mprobe poll with the
    # *_once forms, inside the engine's wait, which yields on its own.
    def Iprobe(self, source=None, tag=None, status=None):
        cdef unsigned long long taken = _frames_taken
        found = self.iprobe_once(source, tag, status)
        if not found and self.spins < 0 and _frames_taken == taken:
            with nogil:
                _yield_idle()
        return found

    def Improbe(self, source=None, tag=None, status=None):
        cdef unsigned long long taken = _frames_taken
        msg = self.improbe_once(source, tag, status)
        if msg is None and self.spins < 0 and _frames_taken == taken:
            with nogil:
                _yield_idle()
        return msg

    def iprobe_once(self, source=None, tag=None, status=None):
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        cdef long found = self._probe(source, -1 if tag == self.any_tag else tag, 0, False)
        if found < 0:
            return self.general_Iprobe(source, tag, status)
        if found == 0:
            return False
        if status is not None:
            self._report(status, self.found_source, self.found_tag, self.found_size)
        return True

    def Probe(self, source=None, tag=None, status=None):
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        cdef long found = self._probe(source, -1 if tag == self.any_tag else tag,
                                      self.spins, False)
        if found <= 0:
            return self.general_Probe(source, tag, status)
        if status is not None:
            self._report(status, self.found_source, self.found_tag, self.found_size)
        return True

    cdef object _mprobe(self, long source, long tag, int spins, object status):
        """A matched probe's message (a Message), None when nothing was
        found, NOT_HANDLED for the general path."""
        cdef long found = self._probe(source, tag, spins, True)
        if found <= 0:
            return None if found == 0 else NOT_HANDLED
        msg = self.found_message
        self.found_message = None
        if status is not None:
            self._report(status, self.found_source, self.found_tag, self.found_size)
        return self.new_message(self.comm, msg)

    def improbe_once(self, source=None, tag=None, status=None):
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        msg = self._mprobe(source, -1 if tag == self.any_tag else tag, 0, status)
        if msg is NOT_HANDLED:
            return self.general_Improbe(source, tag, status)
        return msg

    def Mprobe(self, source=None, tag=None, status=None):
        if source is None:
            source = self.any_source
        if tag is None:
            tag = self.any_tag
        msg = self._mprobe(source, -1 if tag == self.any_tag else tag, self.spins, status)
        if msg is None or msg is NOT_HANDLED:
            return self.general_Mprobe(source, tag, status)
        return msg

    def recv_message(self, buf, incoming, status):
        """Message.Recv of an eager message a matched probe took: straight
        into buf; of a rendezvous one: cleared and copied in as it comes
        (_rendezvous_into).  False: use the general path (it also reports a
        buffer too small)."""
        cdef Py_buffer view
        cdef Py_ssize_t extent, capacity, n, offset
        cdef long got
        if incoming.kind == 3 and incoming.self_send is None:
            rank = None if self.comm_rank_of is None else self.comm_rank_of.get(incoming.source)
            plain = None if rank is None or self.rx[rank] is None else \
                self._plain_at(buf, &extent, &capacity, &offset)
            if plain is None or not self.lock.enter():
                return False
            try:
                got = self._rendezvous_into(rank, incoming.tag, incoming.size, incoming.send_id,
                                            incoming.offset, plain, extent, capacity, offset,
                                            None, None, -1)
            finally:
                self.lock.leave()
            if got == FAST_NOT_HANDLED:
                return False
            if got == FAST_PENDING:
                op, self.pending_recv = self.pending_recv, None
                self.new_request(self.comm, op, None, "Message.Recv").Wait(status)
            elif status is not None:
                self._report(status, rank, incoming.tag, got)
            return True
        if (incoming.kind != 1 and incoming.kind != 2) or incoming.self_send is not None \
                or type(incoming.data) is not bytearray:
            return False
        data = incoming.data
        n = len(data)
        buf = self._plain_at(buf, &extent, &capacity, &offset)
        if buf is None or not _pin(buf, True, &view):
            return False
        try:
            if not _span(view.len, extent, offset, &capacity) or n > capacity or n % extent:
                return False
            if not self._settle(incoming):
                return False
            if n:
                ivmpi_copy_plain(<char *>view.buf + offset, PyByteArray_AS_STRING(data), n)
        finally:
            PyBuffer_Release(&view)
        if status is not None:
            self._report(status, self.comm_rank_of[incoming.source], incoming.tag, n)
        return True

    def take_message(self, incoming, status):
        """Message.recv of an eager message a matched probe took: True when
        its payload (incoming.data) is the object's pickle, acknowledged
        and its status filled; False: use the general path.  A region
        rendezvous is copied out of the sender's heap into incoming.data."""
        if incoming.kind == 8 and incoming.self_send is None:
            return self._take_heap_message(incoming, status)
        if (incoming.kind != 1 and incoming.kind != 2) or incoming.self_send is not None \
                or type(incoming.data) is not bytearray:
            return False
        if not self._settle(incoming):
            return False
        if status is not None:
            self._report(status, self.comm_rank_of[incoming.source], incoming.tag,
                         len(incoming.data))
        return True

    cdef bint _take_heap_message(self, object incoming, object status) except -1:
        cdef long rank
        rank = self.comm_rank_of.get(incoming.source, -1)
        if rank < 0 or self.heap_bounds is None or self.rx[rank] is None \
                or not _heap_span(<RxRing>self.rx[rank], incoming.offset, incoming.size,
                                  self.eager_limit, self.heap_bounds[rank]):
            return False
        if not self.lock.enter():
            return False
        try:
            incoming.data = self._heap_bytes(<RxRing>self.rx[rank], incoming.offset,
                                             incoming.size)
            self._ack(rank, incoming.send_id)   # the sender may reuse its block now
        finally:
            self.lock.leave()
        if status is not None:
            self._report(status, rank, incoming.tag, incoming.size)
        return True

    cdef bint _settle(self, object incoming) except -1:
        """A matched message is being received: acknowledge a synchronous one."""
        if incoming.kind != 2:
            return True
        if not self.lock.enter():
            return False
        try:
            self._ack(self.comm_rank_of[incoming.source], incoming.send_id)
        finally:
            self.lock.leave()
        return True

    cdef bint _wanted(self, RxRing rx, long tag):
        # An over-limit eager frame is left to the engine, which reports it.
        return ((rx.kind == 1 or rx.kind == 2 or (rx.kind == 8 and self.region_frames)
                 or (rx.kind == 3 and self.rts_frames))
                and rx.context == self.context and rx.tag >= 0
                and (tag < 0 or rx.tag == tag) and rx.length <= self.eager_limit)

    cdef bint _posted_takes(self, RxRing rx):
        """Does a receive posted earlier match the frame at the head of rx?
        Then that frame is its, in MPI order, and the engine delivers it."""
        for op in self.posted:
            if _accepts_head(<RecvOp?>op, rx):
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

    cdef bint _valid_receive(self, long source, long tag):
        """A receive's source (communicator rank or ANY_SOURCE) and tag (or -1)
        are ones the fast paths may take (the general path reports others)."""
        return -1 <= tag <= _TAG_UB and (0 <= source < self.size or source == self.any_source)

    cdef object _unexpected_eager(self, long source, long tag, Py_ssize_t *index):
        """The first unexpected message a valid receive matches, if it is a
        plain eager one (no acknowledgement owed) that a fast path may hand
        over; else None.  *index is its place in the queue, -1 for no match."""
        cdef Py_ssize_t i = self._unexpected_match(source if source >= 0 else -1, tag)
        index[0] = i
        if i < 0:
            return None
        msg = self.unexpected[i]
        if (msg.kind != 1 and msg.kind != 2) or msg.self_send is not None \
                or type(msg.data) is not bytearray \
                or msg.source not in self.comm_rank_of:
            return None
        return msg

    cdef bint _take_unexpected(self, Py_ssize_t i, object msg) except -1:
        """Remove msg, found at index i, from the queue and record its
        envelope; False if the queue changed meanwhile (then nothing is taken)."""
        if i >= len(self.unexpected) or self.unexpected[i] is not msg:
            return False
        del self.unexpected[i]
        self.last_source = self.comm_rank_of[msg.source]
        self.last_tag = msg.tag
        if msg.kind == 2:
            self._ack(self.last_source, msg.send_id)
        return True

    cdef object _ready_ring(self, long source, long tag, int spins):
        """The ring whose next frame is the eager message wanted, or None.

        Waits up to |spins| polls: spins > 0 pause between polls (a core of
        our own), spins < 0 give the core away between polls (more ranks than
        cores: the peer we wait for may need this one).  For ANY_SOURCE the
        rings holding frames are scanned (the inbox says which), starting
        after the last one served, and rings whose next frame is something
        else are left for the general path.  Sets
        last_source to the communicator rank of the ring returned.
        """
        cdef int i, j, polls = spins if spins >= 0 else -spins
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
        if source < 0 and self.any_view is None and not self._inbox_ready():
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
                j = self._any_ready(tag, True)
                if j >= 0:
                    self.last_source = j
                    self.any_view.next_world = self.any_view.found_world + 1
                    return self.rx[j]
            if spins >= 0:
                rg_relax()
            else:
                sched_yield()
        return None

    cdef bint _inbox_ready(self) except -1:
        """The communicator's view of the engine's inbox, made at the first
        ANY_SOURCE scan; False without an engine (the general path scans)."""
        if self.any_view is None:
            box = getattr(self.engine, "inbox", None)
            if box is None or self.world_ranks is None:
                return False
            # The inbox is by slot in the region (the world rank when one
            # region holds every rank; -1: a member reached through the library).
            slot_of = getattr(self.engine, "slot_of", None)
            slots = list(self.world_ranks) if slot_of is None else \
                [slot_of.get(w, -1) for w in self.world_ranks]
            self.any_view = InboxView(box, slots, self.rx)
        return True

    cdef int _any_ready(self, long tag, bint skip) except -3:
        """ANY_SOURCE: the communicator rank of the first ring, in turn from
        the one after the last served (no sender starves), whose next frame
        is the eager message wanted (its world rank is any_view.found_world).
        Only rings that hold frames are visited: the inbox says which.
        A ring whose next frame is something else is passed over (skip
        True: a receive, whose engine round follows) or, for a probe (skip
        False), that frame is set aside and the ring looked at again, or
        passed over when it is left to a collective in progress
        (left_rings counts them).  -1: none; -2: a frame the engine must
        handle."""
        cdef InboxView view = self.any_view
        cdef int start = view.next_world, n = view.nranks, lo, hi, w, k, step
        cdef RxRing rx
        for k in range(2):
            lo = start if k == 0 else 0
            hi = n if k == 0 else start
            w = view.ready(lo, hi)
            while w >= 0:
                rx = <RxRing>view.rings[w]
                if rx.kind == 6 and _take_ack(rx, self.awaiting_ack):
                    w = view.ready(w, hi)       # that ring again: what came after the ACK
                    continue
                if self._wanted(rx, tag) and (not self.posted or not self._posted_takes(rx)):
                    view.found_world = w
                    return view.comm_rank[w]
                if not skip:
                    step = self._set_aside(rx, view.comm_rank[w])
                    if step < 0:
                        return -2
                    if step > 0:
                        w = view.ready(w, hi)
                        continue
                    self.left_rings += 1
                w = view.ready(w + 1, hi)
        return -1

    cpdef long recv(self, object buf, long source, long tag, int spins) except -3:
        """Receive the next eager message from source into buf.

        tag -1 is any tag.  Returns the payload length (its tag is then
        last_tag), or a negative code: use the general path.
        """
        if not self.lock.enter():
            return FAST_NOT_HANDLED
        try:
            return self._recv(buf, source, tag, spins)
        finally:
            self.lock.leave()

    cdef long _recv(self, object buf, long source, long tag, int spins) except -3:
        cdef Py_buffer view
        cdef uint64_t n
        cdef object ring
        cdef RxRing rx
        cdef Py_ssize_t extent, capacity, length, offset
        cdef char *data
        cdef bint rts = self.rts_frames
        self.rts_frames = False
        plain = self._plain_at(buf, &extent, &capacity, &offset)
        if plain is None:
            return self._recv_typed(buf, source, tag, spins)
        buf = plain
        cdef long got
        self.rts_frames = rts
        # A blocking receive takes a region rendezvous as well (a block a
        # collective staged in its sender's heap, a send from Alloc_mem).
        self.region_frames = rts and self.heap_bounds is not None
        try:
            if self.unexpected and self.enabled:
                got = self._recv_unexpected(buf, source, tag, extent, capacity, offset)
                if got != FAST_NOTHING_YET:
                    return got
            ring = self._ready_ring(source, tag, spins)
        finally:
            self.rts_frames = False
            self.region_frames = False
        if ring is None:
            return FAST_NOT_HANDLED
        rx = <RxRing>ring
        if rx.kind == 3:
            return self._recv_rendezvous(rx, buf, extent, capacity, offset)
        if rx.kind == 8:
            return self._recv_region(rx, buf, extent, capacity, offset)
        n = rx.length
        if _direct(buf, True, &data, &length) and n < _NOGIL_MIN:
            # Small: the copy keeps the GIL, so nothing can free the memory meanwhile.
            if not _span(length, extent, offset, &capacity) or n > <uint64_t>capacity \
                    or n % extent:
                return FAST_NOT_HANDLED
            if n:
                rx.copy_out(data + offset, n)
            self.last_tag = rx.tag
            self._consume(rx)
            return <long>n
        if not _pin(buf, True, &view):
            return FAST_NOT_HANDLED
        try:
            if not _span(view.len, extent, offset, &capacity) or n > <uint64_t>capacity \
                    or n % extent:
                return FAST_NOT_HANDLED
            if n:
                rx.copy_out(<char *>view.buf + offset, n)
            self.last_tag = rx.tag
            self._consume(rx)
        finally:
            PyBuffer_Release(&view)
        return <long>n

    cdef long _recv_rendezvous(self, RxRing rx, object buf, Py_ssize_t extent,
                               Py_ssize_t capacity, Py_ssize_t offset) except -3:
        """A blocking receive whose message is announced by the RTS at the
        head of rx (from communicator rank last_source): _rendezvous_into."""
        cdef uint64_t address
        if not _rts_address(rx, &address):
            return FAST_NOT_HANDLED
        return self._rendezvous_into(self.last_source, rx.tag, rx.a, rx.b, address, buf, extent,
                                     capacity, offset, rx, None, -1)

    cdef long _recv_region(self, RxRing rx, object buf, Py_ssize_t extent, Py_ssize_t capacity,
                           Py_ssize_t offset) except -3:
        """A blocking receive whose message waits in its sender's heap (the
        RTS_REGION at the head of rx, from communicator rank last_source):
        copied straight out, then acknowledged (the sender may reuse the
        block)."""
        cdef uint64_t at
        cdef uint64_t send_id = rx.b
        cdef long got, source = self.last_source
        if not self._region_frame(rx, source, &at):
            return FAST_NOT_HANDLED
        got = self._heap_into(rx, at, rx.a, buf, extent, capacity, offset, None, -1)
        if got >= 0:
            self._region_taken(rx, source, send_id)
        return got

    cdef Py_ssize_t _recv_region_ptr(self, RxRing rx, char *dst, Py_ssize_t capacity) except -3:
        """_recv_ptr of the region rendezvous at the head of rx (from
        communicator rank last_source): copied straight out of the sender's
        heap into dst, then acknowledged.  The copy keeps the GIL: dst may
        be memory no buffer export holds.  A frame the engine would call
        corrupt, or a message longer than capacity, is the engine's."""
        cdef uint64_t at
        cdef uint64_t total = rx.a
        cdef uint64_t send_id = rx.b
        cdef long source = self.last_source
        if not self._region_frame(rx, source, &at) or total > <uint64_t>capacity:
            return FAST_NOT_HANDLED
        rg_copy_from(dst, rx.mem.base + at, total, rx.strict)
        self._region_taken(rx, source, send_id)
        return <Py_ssize_t>total

    cdef long _heap_into(self, RxRing rx, uint64_t at, uint64_t total, object buf,
                         Py_ssize_t extent, Py_ssize_t capacity, Py_ssize_t offset,
                         object msg, Py_ssize_t index) except -3:
        """Copy the total bytes at region offset `at` of rx's region (the
        caller has checked that they lie in the sender's heap: _region_frame,
        _unexpected_region) into buf: a region rendezvous from the ring (msg
        None) or the unexpected queue (msg, taken from index first).  The
        caller acknowledges it.  A message that does not fit buf or holds no
        whole elements is the engine's, which reports it."""
        cdef Py_buffer view
        cdef char *dst
        cdef const char *src
        cdef int strict = rx.strict
        if not _pin(buf, True, &view):
            return FAST_NOT_HANDLED
        try:
            if not _span(view.len, extent, offset, &capacity) \
                    or total > <uint64_t>capacity or total % <uint64_t>extent:
                return FAST_NOT_HANDLED
            if msg is not None and not self._take_unexpected(index, msg):
                return FAST_NOT_HANDLED
            dst = <char *>view.buf + offset
            src = rx.mem.base + at
            with nogil:
                rg_copy_from(dst, src, total, strict)
        finally:
            PyBuffer_Release(&view)
        return <long>total

    cdef long _rendezvous_into(self, long source, int32_t tag, uint64_t total, uint64_t send_id,
                               uint64_t address, object buf, Py_ssize_t extent,
                               Py_ssize_t capacity, Py_ssize_t offset, RxRing announced,
                               object msg, Py_ssize_t index) except -3:
        """A blocking receive of the message of total bytes that communicator
        rank `source` announced (send_id): cleared and its DATA chunks copied
        straight into buf as they come, in one call; or, when the RTS gave
        the sender's `address` (non-zero) and we may, copied from the
        sender's memory and cleared as copied (_single_copy.pxi).  The announcement is
        the RTS at the head of `announced`, or the unexpected message `msg`
        at `index` (a probe saw it first); it is taken once the CTS is out.
        Neither: a matched probe has taken it already (Message.Recv).
        Returns the message's length; FAST_NOT_HANDLED with nothing taken
        (anything unusual: the engine's general path receives it and
        reports what is wrong); or FAST_PENDING once cleared, when the
        chunks stop coming for a while or something else arrives between
        them: the receive, registered as the engine's own (pending_recv),
        is finished by the engine's wait."""
        cdef Py_buffer view
        cdef uint64_t received = 0, before
        cdef int waited = 0, polls = self.spins if self.spins >= 0 else -self.spins
        cdef char *dst
        cdef bint copied = False, must_copy
        cdef RecvOp op
        cdef RxRing rx = <RxRing?>self.rx[source]
        cdef Rendezvous rdv = self.rendezvous
        if rdv is None or total <= _rts_floor(address != 0, self.eager_limit) \
                or total > _MAX_MESSAGE or rx is None or self.tx[source] is None:
            return FAST_NOT_HANDLED
        if self.backlog:
            return FAST_NOT_HANDLED         # frames of ours queued: the CTS must not pass them
        # Sends of ours waiting for a clear-to-send: their receivers may be
        # waiting for our data as we would wait here for theirs, and only
        # the engine serves both; unless we copy from the sender's memory
        # (_single_copy.pxi), which waits for nothing.
        must_copy = bool(rdv.awaiting_cts)
        if must_copy and address == 0:
            return FAST_NOT_HANDLED
        world = self.world_ranks[source]
        if (world, send_id) in rdv.receiving or not _pin(buf, True, &view):
            return FAST_NOT_HANDLED
        try:
            if not _span(view.len, extent, offset, &capacity) or total > <uint64_t>capacity \
                    or total % <uint64_t>extent:
                return FAST_NOT_HANDLED     # truncation: the engine drains and reports it
            dst = <char *>view.buf + offset
            if address != 0:
                copied = _sc_read_shared(world, send_id, address, dst, total, rx.mem)
            if must_copy and not copied:
                return FAST_NOT_HANDLED     # (what was copied is copied again by the engine)
            if (<TxRing>self.tx[source]).write_frame(4, 0, 0, total if copied else 0, send_id,
                                                     NULL, 0) != 1:
                return FAST_NOT_HANDLED     # (a copy made is made again by the engine)
            if announced is not None:
                announced.consume()
                self.last_tag = tag
            elif msg is None:               # a matched probe took the announcement
                self.last_source = source
                self.last_tag = tag
            elif not self._take_unexpected(index, msg):
                raise RuntimeError("an unexpected message left its queue while it was cleared")
            if copied:
                return <long>total
            while True:
                if rx.poll():
                    if rx.kind != 5 or rx.b != send_id:
                        break
                    before = received
                    received = rx.drain_into(dst, send_id, received, total, rdv.chunk_bytes,
                                             rdv.stream_spins, False)
                    if received == total:
                        return <long>total
                    if received == before:
                        break               # a chunk out of place: the engine reports it
                    waited = 0
                    continue
                if waited >= polls:
                    break
                waited += 1
                if self.spins >= 0:
                    rg_relax()
                else:
                    sched_yield()
        finally:
            PyBuffer_Release(&view)
        mem = _byte_view(buf, capacity, extent, offset)
        if mem is None:
            raise _BufferSpecError("the receive buffer changed while a message was arriving")
        op = _new_recv_op(world, tag, self.context, mem)
        op.status_source = world
        op.status_tag = tag
        op.total = total
        op.received = received
        op.scope = self.scope
        rdv.receiving[(world, send_id)] = op
        self.pending_recv = op
        return FAST_PENDING

    cdef object _send_rendezvous(self, object buf, long dest, long tag,
                                 bint announce_only=False, bint waited=False):
        return self._rendezvous(buf, dest, tag, announce_only, self._eager_max(dest), waited)

    cdef object announce_step(self, const char *data, Py_ssize_t n, long dest, long tag,
                              bint offer=False):
        """The send of a collective's exchange step (its receive follows,
        then finish): n bytes at data announced to a peer that copies them
        from our memory, if there are step_copy_min of them or more (the
        SendOp to finish); None: send it eagerly.  offer: nothing but
        waiting follows, so the receiver may ask to share the copy
        (_single_copy.pxi; the engine's rounds answer)."""
        if self.step_copy_min == 0 or <uint64_t>n < self.step_copy_min \
                or not self._copies_ours(dest):
            return None
        return self._rendezvous(PyMemoryView_FromMemory(<char *>data, n, PyBUF_READ), dest, tag,
                                True, self.step_copy_min - 1, offer)

    cdef object _rendezvous(self, object buf, long dest, long tag, bint announce_only,
                            uint64_t most_eager, bint waited=False):
        """A plain buffer over the eager limit sent in one call: announced
        (RTS), its clear-to-send polled for, its DATA chunks streamed, no
        engine operation in between.  True: sent; None: nothing was
        published, use the general path; or a SendOp left to the engine
        (registered as its own) when the CTS is slow to come, something
        else arrives first, or the ring stays full mid-stream: the caller
        waits for it.  A buffer inside the region (Alloc_mem) over the
        eager limit is left to the engine's region rendezvous, which copies
        nothing here.
        announce_only: only to a receiver that copies from our memory
        (_single_copy.pxi; else None), announced and left to the engine at
        once, for a caller that receives before it waits (Sendrecv).
        most_eager: larger buffers only (the eager limit, or less to a peer
        that copies from our memory).
        waited: the caller only waits after this (a blocking send, a
        schedule's send of its own bytes), so its receiver may ask it to
        share the copy (_single_copy.pxi)."""
        cdef Py_buffer view
        cdef Py_ssize_t extent, nbytes, offset
        cdef uint64_t total, sent = 0
        cdef const char *data
        cdef TxRing tx
        cdef RxRing rx
        cdef SendOp op
        cdef int cleared
        cdef uint64_t address
        cdef bint offered = False
        cdef Rendezvous rdv = self.rendezvous
        if rdv is None or not self.enabled or dest < 0 or dest >= self.size \
                or tag < 0 or tag > _TAG_UB or self.tx[dest] is None:
            return None
        plain = self._plain_at(buf, &extent, &nbytes, &offset)
        if plain is None or not _pin(plain, False, &view):
            return None
        try:
            if not _span(view.len, extent, offset, &nbytes) \
                    or <uint64_t>nbytes <= most_eager or <uint64_t>nbytes > _MAX_MESSAGE:
                return None
            total = <uint64_t>nbytes
            data = <const char *>view.buf + offset
            tx = <TxRing>self.tx[dest]
            rx = <RxRing>self.rx[dest]
            # A large one in our heap goes as a region rendezvous (the
            # engine's RTS_REGION: copied out of the region, between VMs too);
            # below the eager limit one from our memory, unless device memory.
            if (total > self.eager_limit and tx.mem.overlaps(data, <Py_ssize_t>total)) \
                    or tx.mem.refuses_kernel_copy(data, <Py_ssize_t>total):
                return None
            # What the engine streams from if it has to take over.
            try:
                mem = memoryview(plain).cast("B")[offset:offset + nbytes]
            except (TypeError, ValueError):
                return None
            if not self.lock.enter():
                return None
            try:
                if self.backlog:
                    return None
                world = self.world_ranks[dest]
                if announce_only and not _sc_tell(world):
                    return None
                send_id = self.send_ids[world]
                # A receiver on our kernel may copy it from our memory
                # (_single_copy.pxi), and share the copy with us while we wait.
                address = <uintptr_t>data
                offered = waited and _sc_offer(world, send_id, data, total)
                if tx.write_frame(3, <int32_t>tag, self.context, total, send_id,
                                  <const char *>&address, 8 if _sc_tell(world) else 0) != 1:
                    return None
                self.send_ids[world] = send_id + 1
                if announce_only:
                    cleared = 0
                else:
                    cleared = self._cleared(rx, send_id, total, offered)
                    if cleared and offered:
                        _sc_withdraw(world, send_id)
                if cleared == 2:
                    return True
                if cleared:
                    sent = tx.stream_from(data, total, 0, rdv.chunk_bytes, send_id,
                                          rdv.stream_spins, rx, True)
                    if sent == total:
                        return True
                op = SendOp.__new__(SendOp)
                op.peer = world
                op.mem = mem
                op.tag = tag
                op.context = self.context
                op.sync = False
                op.send_id = send_id
                op.offset = sent
                op.scope = self.scope
                if cleared:
                    op.state = "streaming"
                    rdv.post_stream(world, op)
                else:
                    op.state = "awaiting clear-to-send"
                    rdv.awaiting_cts[(world, send_id)] = op
                    if offered:
                        # The engine's rounds answer its request (serve_shares).
                        getattr(self.engine, "sharing")[(world, send_id)] = op
                return op
            finally:
                self.lock.leave()
        finally:
            PyBuffer_Release(&view)

    cdef int _cleared(self, RxRing rx, uint64_t send_id, uint64_t total,
                      bint offered=False) except -1:
        """Poll rx for the CTS of send_id: 1 once taken, 2 when it says the
        receiver copied all total bytes from our memory (_single_copy.pxi),
        0 at any other frame (the engine then handles it first) or when
        none comes for a while.  offered: we offered to share its copy, so
        its receiver's request is answered meanwhile (the polls start over
        after it)."""
        cdef int i = 0, polls = self.spins if self.spins >= 0 else -self.spins
        while i < polls:
            if offered and _sc_requested():
                with nogil:
                    _sc_serve_offers()
                i = 0
                continue
            i += 1
            if rx.poll():
                if rx.kind == 4 and rx.b == send_id and rx.length == 0 \
                        and (rx.a == 0 or rx.a == total):
                    rx.consume()
                    return 2 if rx.a else 1
                return False
            if self.spins >= 0:
                rg_relax()
            else:
                sched_yield()
        return False

    cdef long _recv_typed(self, object spec, long source, long tag, int spins) except -3:
        """_recv for a spec with a derived datatype with holes: the message
        is scattered from the ring straight into the elements.  A message
        that is not a whole number of elements, or one already queued as
        unexpected, is left to the general path."""
        cdef Py_ssize_t count, origin, extent
        cdef Py_buffer view
        cdef RunPlan plan
        cdef RxRing rx
        cdef uint64_t n
        cdef Py_ssize_t i
        found = self._typed_at(spec, &count, &origin)
        if found is None:
            return FAST_NOT_HANDLED
        plan, extent = <RunPlan>found[1], <Py_ssize_t>found[2]
        if plan.size == 0 or not _pin(found[0], True, &view):
            return FAST_NOT_HANDLED
        try:
            if not plan.fits(count, extent, origin, view.len):
                return FAST_NOT_HANDLED
            if self.unexpected and self.enabled:
                if not self._valid_receive(source, tag):
                    return FAST_NOT_HANDLED
                msg = self._unexpected_eager(source, tag, &i)
                if msg is None and i >= 0:
                    return self._recv_unexpected_heap(i, plan, <char *>view.buf + origin, count,
                                                      extent)
                if msg is not None:
                    n = len(msg.data)
                    if n % <uint64_t>plan.size or n // <uint64_t>plan.size > <uint64_t>count \
                            or not self._take_unexpected(i, msg):
                        return FAST_NOT_HANDLED
                    plan._scatter(<char *>view.buf + origin, PyByteArray_AS_STRING(msg.data),
                                  <Py_ssize_t>(n // plan.size), extent)
                    return <long>n
                if i >= 0:
                    return FAST_NOT_HANDLED
            self.region_frames = self.heap_bounds is not None
            try:
                ring = self._ready_ring(source, tag, spins)
            finally:
                self.region_frames = False
            if ring is None:
                return FAST_NOT_HANDLED
            rx = <RxRing>ring
            if rx.kind == 8:
                return self._recv_from_heap(rx, plan, <char *>view.buf + origin, count, extent)
            n = rx.length
            if n % <uint64_t>plan.size or n // <uint64_t>plan.size > <uint64_t>count:
                return FAST_NOT_HANDLED
            if n:
                rx.scatter_out(plan, <char *>view.buf + origin, <Py_ssize_t>(n // plan.size),
                               extent)
            self.last_tag = rx.tag
            self._consume(rx)
        finally:
            PyBuffer_Release(&view)
        return <long>n

    cdef long _recv_unexpected_heap(self, Py_ssize_t i, RunPlan plan, char *dst,
                                    Py_ssize_t count, Py_ssize_t extent) except -3:
        """The unexpected message at index i, if it is a region rendezvous
        (checked by the engine when it arrived) that fills whole elements:
        scattered straight from the sender's heap, then acknowledged."""
        msg = self.unexpected[i]
        ring = self._unexpected_region(msg)
        if ring is None or msg.size % plan.size or msg.size // plan.size > count \
                or not self._take_unexpected(i, msg):
            return FAST_NOT_HANDLED
        _scatter_region(plan, dst, (<RxRing>ring).mem.base + <uint64_t>msg.offset,
                        <Py_ssize_t>(msg.size // plan.size), extent, (<RxRing>ring).strict)
        self._ack(self.last_source, msg.send_id)
        return <long>msg.size

    cdef object _unexpected_region(self, object msg):
        """The ring of msg's sender, when msg (an unexpected message) is a
        region rendezvous a fast path may take: inside its sender's heap
        (checked by the engine when it arrived, and again here); else None."""
        if msg.kind != 8 or msg.self_send is not None or msg.source not in self.comm_rank_of \
                or self.heap_bounds is None:
            return None
        rank = self.comm_rank_of[msg.source]
        ring = self.rx[rank]
        if ring is None or not _heap_span(<RxRing>ring, msg.offset, msg.size, self.eager_limit,
                                          self.heap_bounds[rank]):
            return None
        return ring

    cdef int _region_taken(self, RxRing rx, long source, uint64_t send_id) except -1:
        """The region rendezvous at the head of rx (from communicator rank
        source) has been copied out: released and acknowledged, so that the
        sender may reuse its block."""
        self.last_tag = rx.tag
        rx.consume()
        self._ack(source, send_id)
        return 0

    cdef bint _heap_message_fits(self, RxRing rx, uint64_t at, uint64_t total, object bounds,
                                 RunPlan plan, Py_ssize_t count) except -1:
        """_heap_span, for a message that must fill whole elements, no more than count."""
        if not _heap_span(rx, at, total, self.eager_limit, bounds):
            return False
        return total % <uint64_t>plan.size == 0 and total // <uint64_t>plan.size <= <uint64_t>count

    cdef bint _region_frame(self, RxRing rx, long rank, uint64_t *at) except -1:
        """Is the RTS_REGION frame at the head of rx (from communicator rank
        `rank`) one a fast path may take: its 8-byte payload (*at, the
        region offset) names a message inside the sender's heap?"""
        if rx.length != 8 or self.heap_bounds is None:
            return False
        rx.copy_out(<char *>at, 8)
        return _heap_span(rx, at[0], rx.a, self.eager_limit, self.heap_bounds[rank])

    cdef bytearray _heap_bytes(self, RxRing rx, uint64_t at, uint64_t total):
        """A private copy of total bytes at region offset `at` (checked)."""
        cdef bytearray out = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>total)
        cdef char *dst = PyByteArray_AS_STRING(out)
        cdef const char *src = rx.mem.base + at
        cdef int strict = rx.strict
        if total >= _NOGIL_MIN:
            with nogil:
                rg_copy_from(dst, src, total, strict)
        else:
            rg_copy_from(dst, src, total, strict)
        return out

    cdef long _recv_from_heap(self, RxRing rx, RunPlan plan, char *dst, Py_ssize_t count,
                              Py_ssize_t extent) except -3:
        """The region rendezvous at the head of rx, for a receive with holes:
        the sender's staged elements are scattered straight from its heap,
        then acknowledged.  Anything unusual (a frame the engine would call
        corrupt, a message that does not fill whole elements or is too long)
        is left to the engine, which reports or handles it."""
        cdef uint64_t total = rx.a
        cdef uint64_t at
        cdef uint64_t send_id = rx.b
        if rx.length != 8:
            return FAST_NOT_HANDLED
        rx.copy_out(<char *>&at, 8)
        if not self._heap_message_fits(rx, at, total, self.heap_bounds[self.last_source], plan,
                                       count):
            return FAST_NOT_HANDLED
        _scatter_region(plan, dst, rx.mem.base + at, <Py_ssize_t>(total // plan.size), extent,
                        rx.strict)
        self._region_taken(rx, self.last_source, send_id)
        return <long>total

    cdef object _send_staged(self, object spec, long dest, long tag):
        """A message with holes over the eager limit, as a region rendezvous:
        its elements gathered into the engine's staging block in this rank's
        heap, the receiver told where (RTS_REGION) to scatter them straight
        out.  Returns the SendOp that completes on the receiver's ACK (the
        caller waits for it, then gives the block back), or None: use the
        general path."""
        cdef Py_ssize_t count, origin, extent
        cdef Py_buffer view, sview
        cdef RunPlan plan
        cdef uint64_t total, at
        cdef long world
        cdef SendOp op
        cdef bint published = False
        if self.take_stage is None or not self.enabled or dest < 0 or dest >= self.size \
                or tag < 0 or tag > _TAG_UB or self.tx[dest] is None:
            return None
        found = self._typed_at(spec, &count, &origin)
        if found is None:
            return None
        plan, extent = <RunPlan>found[1], <Py_ssize_t>found[2]
        if count == 0 or plan.size == 0 or <uint64_t>plan.size <= self.eager_limit // <uint64_t>count \
                or <uint64_t>count > _MAX_MESSAGE // <uint64_t>plan.size:
            return None
        total = <uint64_t>plan.size * <uint64_t>count
        if not _pin(found[0], False, &view):
            return None
        try:
            if not plan.fits(count, extent, origin, view.len):
                return None
            staged = self.take_stage(total)
            if staged is None:
                return None
            try:
                PyObject_GetBuffer(staged[0], &sview, PyBUF_SIMPLE | PyBUF_WRITABLE)
                try:
                    with nogil:
                        plan._gather_to_region(<char *>sview.buf,
                                               <const char *>view.buf + origin, count, extent)
                finally:
                    PyBuffer_Release(&sview)
                op = self._announce_staged(dest, tag, total, staged[1])
                published = True
                return op
            finally:
                if not published:
                    self.give_stage()
        finally:
            PyBuffer_Release(&view)

    def announce_staged(self, long dest, long tag, uint64_t total, uint64_t at):
        """_announce_staged for a message the caller staged in our heap at
        region offset `at` (the collectives' pickles): the SendOp, whose
        ACK the caller waits for before reusing the block; None for the
        general path (the region not shared with dest, a bad tag)."""
        if not self.enabled or dest < 0 or dest >= self.size or tag < 0 or tag > _TAG_UB \
                or self.tx[dest] is None or self.heap_bounds is None:
            return None
        return self._announce_staged(dest, tag, total, at)

    cdef SendOp _announce_staged(self, long dest, long tag, uint64_t total, uint64_t at):
        """Tell dest where in our heap a staged message of total bytes
        sits (an RTS_REGION frame, behind any frame queued for it): the
        SendOp returned completes on the receiver's ACK, after its copy."""
        cdef long world = self.world_ranks[dest]
        cdef SendOp op
        with self.lock:
            send_id = self.send_ids[world]
            self.send_ids[world] = send_id + 1
            op = SendOp.__new__(SendOp)
            op.peer = world
            op.tag = tag
            op.context = self.context
            op.sync = False
            op.send_id = send_id
            op.offset = 0
            op.state = "awaiting the receiver's copy"
            op.scope = self.scope
            self.awaiting_ack[(world, send_id)] = op
            if self.backlog or (<TxRing>self.tx[dest]).write_frame(
                    8, <int32_t>tag, self.context, total, send_id, <const char *>&at, 8) != 1:
                self.engine_post(world, (8, tag, self.context, total, send_id,
                                         (<char *>&at)[:8], 0, 8, None))
        return op

    cdef object _send_bytes_staged(self, object data, long dest, long tag):
        """A pickle a little over the eager limit (an object of about that
        size plus its pickle header) as a region rendezvous: copied into
        the engine's staging block in our heap, the receiver told where to
        copy it out.  One announcement and one ACK, both polled in C,
        instead of the general path's clear-to-send and streamed chunks.
        Returns the SendOp (the caller waits with finish_staged), or None:
        use the general path.  The receiver's ACK comes after its copy, so
        the message has matched a receive: this is a synchronous send too."""
        cdef Py_buffer view, sview
        cdef bint published = False
        if self.take_stage is None or not self.enabled or dest < 0 or dest >= self.size \
                or tag < 0 or tag > _TAG_UB or self.tx[dest] is None:
            return None
        if not _pin(data, False, &view):
            return None
        try:
            if <uint64_t>view.len <= self.eager_limit \
                    or <uint64_t>view.len > _STAGED_OBJECT_EAGER_LIMITS * self.eager_limit:
                return None
            staged = self.take_stage(view.len)
            if staged is None:
                return None
            try:
                PyObject_GetBuffer(staged[0], &sview, PyBUF_SIMPLE | PyBUF_WRITABLE)
                try:
                    # Plain stores: the receiver most likely copies it out at
                    # once, from our cache (streaming stores sent it to
                    # memory first: a 64 KiB object's round trip 37.5 us
                    # against 33 now).
                    with nogil:
                        rg_copy_to(sview.buf, view.buf, <size_t>view.len, 0)
                finally:
                    PyBuffer_Release(&sview)
                op = self._announce_staged(dest, tag, <uint64_t>view.len, staged[1])
                published = True
                return op
            finally:
                if not published:
                    self.give_stage()
        finally:
            PyBuffer_Release(&view)

    cdef object _isend_kept(self, object data, long dest, long tag, bint sync):
        """A pickle a little over the eager limit, for a nonblocking send:
        copied into a heap block of its own (SendBlocks) and announced as a
        region rendezvous, so the request need not wait for the receiver
        (an isend is complete at once; an issend on the receiver's ACK, sent
        after its copy, so after the match).  Returns the SendOp, whose ACK
        frees the block, or None: use the general path."""
        cdef Py_buffer view
        cdef int64_t at = -1
        cdef SendBlocks blocks = self.send_blocks
        cdef TxRing tx
        cdef bint published = False
        if blocks is None or not self.enabled or dest < 0 or dest >= self.size \
                or tag < 0 or tag > _TAG_UB or self.tx[dest] is None:
            return None
        if not _pin(data, False, &view):
            return None
        try:
            if <uint64_t>view.len <= self.eager_limit or <uint64_t>view.len > blocks.block_bytes:
                return None
            with self.lock:
                at = blocks.take()
            if at < 0:
                return None
            tx = <TxRing>self.tx[dest]
            try:
                # Plain stores, as _send_bytes_staged's: read soon, from our cache.
                with nogil:
                    rg_copy_to(tx.mem.base + at, view.buf, <size_t>view.len, 0)
                op = self._announce_staged(dest, tag, <uint64_t>view.len, <uint64_t>at)
                op.sync = sync          # its wait polls for the ACK in C (_poll_op)
                with self.lock:
                    blocks.hold(op, at)
                published = True
                return op
            finally:
                if not published:
                    with self.lock:
                        blocks.give(at)
        finally:
            PyBuffer_Release(&view)

    def send_bytes_staged(self, data, long dest, long tag):
        """_send_bytes_staged for the communicator's sendrecv: the SendOp, or None."""
        return self._send_bytes_staged(data, dest, tag)

    def isend_staged(self, spec, long dest, long tag):
        """_send_staged for the communicator's Sendrecv: the SendOp, or None."""
        return self._send_staged(spec, dest, tag)

    def finish_staged(self, op, what):
        """Wait for a staged send's ACK; the block is reused only after it
        (a send that failed keeps it: the receiver may still read it)."""
        cdef long dest
        cdef bint acked = False
        dest = -1 if self.comm_rank_of is None else self.comm_rank_of.get(op.peer, -1)
        if dest >= 0 and self.lock.enter():
            # The receiver is most likely scattering now: its ACK is polled
            # for here first, the engine's wait only if it is slow to come.
            try:
                if not self.backlog and not op.done and self._acked(dest, op.send_id):
                    del self.awaiting_ack[(op.peer, op.send_id)]
                    op.done = True
                    op.state = "done"
                    acked = True
            finally:
                self.lock.leave()
        if not acked:
            self.wait_op(op, what)
        self.give_stage()

    cdef long _recv_unexpected(self, object buf, long source, long tag, Py_ssize_t extent,
                               Py_ssize_t capacity, Py_ssize_t offset) except -3:
        """recv when messages wait in the unexpected queue: the first one that
        matches is taken from there (its length is returned); with none
        matching, FAST_NOTHING_YET sends recv on to the ring."""
        cdef Py_buffer view
        cdef Py_ssize_t n, i
        if not self._valid_receive(source, tag):
            return FAST_NOT_HANDLED
        msg = self._unexpected_eager(source, tag, &i)
        if i < 0:
            return FAST_NOTHING_YET
        if msg is None:
            msg = self.unexpected[i]
            if self.rts_frames and msg.kind == 3 and msg.source in self.comm_rank_of:
                # A rendezvous a probe found first: cleared from here.
                return self._rendezvous_into(self.comm_rank_of[msg.source], msg.tag, msg.size,
                                             msg.send_id, msg.offset, buf, extent, capacity,
                                             offset, None, msg, i)
            ring = self._unexpected_region(msg) if self.region_frames else None
            if ring is None:
                return FAST_NOT_HANDLED
            # A region rendezvous that arrived before its receive: copied
            # straight out of the sender's heap.
            n = self._heap_into(<RxRing>ring, msg.offset, msg.size, buf, extent, capacity,
                                offset, msg, i)
            if n >= 0:
                self._ack(self.last_source, msg.send_id)
            return n
        data = msg.data
        n = len(data)
        if not _pin(buf, True, &view):
            return FAST_NOT_HANDLED
        try:
            if not _span(view.len, extent, offset, &capacity) or n > capacity or n % extent:
                return FAST_NOT_HANDLED
            if not self._take_unexpected(i, msg):
                return FAST_NOT_HANDLED
            if n:
                ivmpi_copy_plain(<char *>view.buf + offset, PyByteArray_AS_STRING(data), n)
        finally:
            PyBuffer_Release(&view)
        return n

    cpdef object recv_bytes(self, long source, long tag, int spins):
        """Like recv, for object messages: the payload as a bytearray, or None."""
        if not self.lock.enter():
            return None
        try:
            return self._recv_bytes(source, tag, spins)
        finally:
            self.lock.leave()

    cdef object _recv_bytes(self, long source, long tag, int spins):
        cdef bytearray out
        cdef object ring
        cdef RxRing rx
        cdef Py_ssize_t i
        cdef uint64_t at, send_id
        cdef bint rts = self.rts_frames
        self.rts_frames = False
        if self.unexpected and self.enabled and self._valid_receive(source, tag):
            msg = self._unexpected_eager(source, tag, &i)
            if msg is not None and self._take_unexpected(i, msg):
                return msg.data
            if msg is None and i >= 0:
                msg = self.unexpected[i]
                if rts and msg.kind == 3 and msg.source in self.comm_rank_of:
                    return self._rendezvous_bytes(self.comm_rank_of[msg.source], msg.tag,
                                                  msg.size, msg.send_id, None, msg, i)
                return self._unexpected_heap_bytes(i)
        # A pickle a little over the eager limit comes as a region
        # rendezvous (_send_bytes_staged): taken here as well.
        self.region_frames = self.heap_bounds is not None
        self.rts_frames = rts
        try:
            ring = self._ready_ring(source, tag, spins)
        finally:
            self.region_frames = False
            self.rts_frames = False
        if ring is None:
            return None
        rx = <RxRing>ring
        if rx.kind == 3:
            if not _rts_address(rx, &at):
                return None
            return self._rendezvous_bytes(self.last_source, rx.tag, rx.a, rx.b, rx, None, -1, at)
        if rx.kind == 8:
            if not self._region_frame(rx, self.last_source, &at):
                return None
            out = self._heap_bytes(rx, at, rx.a)
            self._region_taken(rx, self.last_source, rx.b)
            return out
        out = _unfilled_bytearray(rx.length)
        if rx.length:
            rx.copy_out(<char *>out, rx.length)
        self.last_tag = rx.tag
        self._consume(rx)
        return out

    cdef object _rendezvous_bytes(self, long source, int32_t tag, uint64_t total,
                                  uint64_t send_id, RxRing announced, object msg,
                                  Py_ssize_t index, uint64_t address=0):
        """_rendezvous_into a new bytearray of the message's size (an object
        receive): the bytearray, with pending_recv set when the engine is
        to finish it; None: use the general path (which also refuses a
        size no machine here could hold).  address: the sender's, from its
        RTS (0: none)."""
        cdef long got
        if total > _OBJECT_RENDEZVOUS_MAX:
            return None
        out = _unfilled_bytearray(<Py_ssize_t>total)
        # Streamed, not copied from the sender's memory: a new buffer's pages
        # fault in as it fills (engine._accept_rendezvous); unless the
        # sender waits and shares the copy (_single_copy.pxi), both
        # processes then faulting in their half: from 512 KiB (1 MiB
        # objects' round trip 373-442 -> 259-273 us, mpi4py 320-330; 256
        # KiB 90 -> 99-299).
        if total < 2 * _SHARE_MIN or not _sc_offered_to_us(self.world_ranks[source], send_id):
            address = 0
        got = self._rendezvous_into(source, tag, total, send_id, address, out, 1,
                                    <Py_ssize_t>total, 0, announced, msg, index)
        return None if got == FAST_NOT_HANDLED else out

    cdef object _unexpected_heap_bytes(self, Py_ssize_t i):
        """The unexpected message at index i, if it is a region rendezvous
        (checked by the engine when it arrived): a private copy of its
        bytes, acknowledged.  None: use the general path."""
        msg = self.unexpected[i]
        ring = self._unexpected_region(msg)
        if ring is None:
            return None
        out = self._heap_bytes(<RxRing>ring, msg.offset, msg.size)
        if not self._take_unexpected(i, msg):
            return None
        self._ack(self.last_source, msg.send_id)
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


@cython.final
cdef class PersistentStart:
    """Start of one round of a persistent point-to-point request, set up
    once at init: `mem` is the parsed buffer (a contiguous byte view), so a
    round is one call here, returning the engine operation and decoder as
    Prequest wants them.  A round the fast path cannot take (ring full,
    queued frames, PROC_NULL, a bad rank or tag) runs `general` instead.

    mode: 0 send, 1 synchronous send, 2 receive, 3 buffered send (eager up
    to the eager limit whoever the receiver, as Bsend)."""
    cdef FastPath fast
    cdef object mem
    cdef long peer, tag
    cdef int mode
    cdef object general

    def __cinit__(self, FastPath fast, object mem, long peer, long tag, int mode, general):
        self.fast = fast
        self.mem = mem
        self.peer = peer
        self.tag = tag
        self.mode = mode
        self.general = general

    def __call__(self):
        return self._begin()

    cdef object _begin(self):
        cdef FastPath fast = self.fast
        if self.mode == 0:
            if fast._send_buffer(self.mem, self.peer, self.tag):
                return fast.sent_op, None
        elif self.mode == 3:
            if fast.send(self.mem, self.peer, self.tag):
                return fast.sent_op, None
        elif self.mode == 1:
            op = fast._ssend(self.mem, self.peer, self.tag, False, True)
            if op is not None:
                return op, None
        elif fast._postable(self.peer, self.tag):
            return fast._post_receive(self.peer, self.tag, self.mem), None
        if self.mode != 2:
            # Large, to a peer that copies it from our memory (_single_copy.pxi).
            op = fast._send_rendezvous(self.mem, self.peer, self.tag, True)
            if op is not None:
                return op, None
        return self.general()


# --- Requests: the common completions in one call ----------------------------
# ivmpi.request binds these as methods of its Request and Prequest: a
# request of exactly those classes, with no status to fill and no error,
# completes here without a Python frame; anything else (a subclass, a
# status, an error, a request that is not ivmpi's) runs the Python
# method they replace, which has every rule of the general case.

cdef object _Request = None       # ivmpi.request.Request
cdef object _Prequest = None      # ivmpi.request.Prequest
cdef object _py_Wait = None       # the Python methods, for everything else
cdef object _py_wait = None
cdef object _py_Waitall = None
cdef object _py_Start = None
cdef object _Message = None       # ivmpi.request.Message, and its Python methods
cdef object _py_message_Recv = None
cdef object _py_message_recv = None


cdef object _SendrecvOp = None     # ivmpi.request.SendrecvOp: Isendrecv's two operations


def set_request_types(request, prequest, wait_upper, wait_lower, waitall, start,
                      sendrecv_op=None):
    """The request classes and their Python methods (see above)."""
    global _Request, _Prequest, _py_Wait, _py_wait, _py_Waitall, _py_Start, _SendrecvOp
    _Request, _Prequest, _SendrecvOp = request, prequest, sendrecv_op
    _py_Wait, _py_wait, _py_Waitall, _py_Start = wait_upper, wait_lower, waitall, start


def set_message_type(message, recv_upper, recv_lower):
    """The Message class and its Python Recv and recv (see above)."""
    global _Message, _py_message_Recv, _py_message_recv
    _Message, _py_message_Recv, _py_message_recv = message, recv_upper, recv_lower


def new_message(comm, incoming):
    """Message(comm, incoming) of a matched probe, without the Python
    constructor's frame."""
    msg = _Message.__new__(_Message)
    msg._comm = comm
    msg._incoming = incoming
    msg._no_proc = False
    return msg


cdef FastPath _taken_by_fast(object message):
    """A message's FastPath, once its handle is nulled and its message
    marked received (Message._take); None (nothing changed) when the
    Python method must run: another class, NO_PROC, a null message."""
    if type(message) is not _Message or message._no_proc:
        return None
    incoming = message._incoming
    if incoming is None or incoming.taken:
        return None
    fast = getattr(message._comm, "_fast", None)
    if type(fast) is not FastPath:
        return None
    message._incoming = None
    incoming.taken = True
    return <FastPath>fast


def message_Recv(self, buf, status=None):
    incoming = self._incoming
    cdef FastPath fast = _taken_by_fast(self)
    if fast is None:
        return _py_message_Recv(self, buf, status)
    # An eager message goes straight into buf in one call.
    if not fast.recv_message(buf, incoming, status):
        self._irecv(incoming, buf).Wait(status)


def message_recv(self, status=None):
    incoming = self._incoming
    cdef FastPath fast = _taken_by_fast(self)
    if fast is None:
        return _py_message_recv(self, status)
    if fast.take_message(incoming, status):
        # An empty message is None, as mpi4py unpickles it.  (fast.loads is
        # the communicator's _unpickle_op without its frame.)
        return fast.loads(incoming.data) if incoming.data else None
    return self._irecv_object(incoming).wait(status)


def new_request(comm, op, decode, what):
    """Request(comm, op, decode, what) of an operation the fast paths
    started, without the Python constructor's frame."""
    if op is None:
        return _Request(comm, op, decode, what)     # PROC_NULL's completed receive
    req = _Request.__new__(_Request)
    req._comm = comm
    req._op = op
    req._decode = decode
    req._what = what
    return req


cdef bint _advance_schedules(object engine) except -1:
    """Poll every nonblocking collective in progress (reading `done`
    advances it; its next step may wait on nothing but this rank); the
    finished ones leave the engine's list.  True when one finished.  What
    the others still wait for arrives as frames, seen in the inbox.  The
    engine's lock is held."""
    cdef list schedules = engine.schedules
    cdef Py_ssize_t i, n = len(schedules)
    for i in range(n):
        if _op_done(schedules[i]):
            break
    else:
        return False            # (no new list: this runs at every failing test)
    # Those before the first finished one were polled just now.
    engine.schedules = schedules[:i] + [s for s in schedules[i + 1:] if not _op_done(s)]
    return True


def advance_schedules(engine):
    """_advance_schedules, for the engine's round of progress."""
    return _advance_schedules(engine)


cdef inline bint _op_done(object op) except -1:
    if isinstance(op, Op):
        return (<Op>op).done
    if type(op) is Schedule:        # its `done`, without the property's Python call
        return (<Schedule>op)._poll_done()
    return bool(op.done)


@cython.final
cdef class EngineCore:
    """The engine's queues and tables, for the rounds of progress in C: the
    same objects as its attributes of these names, which are never bound
    anew (`schedules` and `library_pending`, which are, are read from the
    engine).  A C field each instead of a Python attribute lookup: some
    twenty of those were most of a failing Test."""
    cdef readonly object engine
    cdef readonly list posted, unexpected, tx, rx_by_slot, services, library_ops
    cdef readonly set backlog
    cdef readonly dict sharing, routes, awaiting_ack, service_contexts, awaiting_cts
    cdef readonly object inbox
    cdef readonly EngineLock lock
    cdef readonly uint64_t eager_limit
    cdef public bint oversubscribed

    def __init__(self, engine):
        self.engine = engine
        self.posted, self.unexpected = engine.posted, engine.unexpected
        self.tx, self.rx_by_slot = engine.tx, engine.rx_by_slot
        self.services, self.library_ops = engine.services, engine.library_ops
        self.backlog, self.sharing, self.routes = engine.backlog, engine.sharing, engine.routes
        self.awaiting_ack, self.awaiting_cts = engine.awaiting_ack, engine.awaiting_cts
        self.service_contexts = engine.service_contexts
        self.inbox, self.lock = engine.inbox, engine.lock
        self.eager_limit = engine.eager_limit
        self.oversubscribed = engine.oversubscribed


cdef int _await(object req, object op, object what=None) except -1:
    """Wait for a request's operation: a receive from a known peer or a
    synchronous send is polled in C first (as the engine's wait starts),
    then the engine's wait does the rest.  what: the call named in errors
    (default: the request's own description)."""
    comm = req._comm
    if type(op) is _SendrecvOp:
        # Isendrecv's pair (messages past the eager limit): each half polled
        # in C, the receive first (whose peer's ring also brings the send's
        # clear-to-send when it is the same peer).
        for half in (op.recv, op.send):
            if not _op_done(half):
                _await(req, half, req if what is None else what)
        return 0
    fast = getattr(comm, "_fast", None)
    if type(fast) is FastPath:
        if type(op) is LibraryRecv or type(op) is LibrarySend:
            # A library operation of a rank in another region: polled in C
            # (as the engine's wait starts) without a Python frame.
            if _spin(op, (<FastPath>fast).spins):
                return 0
        elif (<FastPath>fast)._poll_op(op, (<FastPath>fast).spins) >= 0 and (<Op>op).done:
            return 0
    comm._engine.wait(op, req if what is None else what)
    return 0


def request_Wait(self, status=None):
    op = self._op
    if status is not None or op is None or (type(self) is not _Request
                                            and type(self) is not _Prequest):
        return _py_Wait(self, status)
    if not _op_done(op):
        _await(self, op)
    if op.error is not None:
        return _py_Wait(self, status)       # reports the error
    self._op = None
    return True


def request_wait(self, status=None):
    op = self._op
    if status is not None or op is None or type(self) is not _Request:
        return _py_wait(self, status)
    if not _op_done(op):
        _await(self, op)
    if op.error is not None:
        return _py_wait(self, status)       # reports the error
    self._op = None
    decode = self._decode
    # An empty message is None, as mpi4py unpickles it.
    if decode is None or op.cancelled or not op.data:
        return None
    return decode(op)


def request_Waitall(cls, requests, statuses=None):
    cdef object req, op, t
    if statuses is not None or (type(requests) is not list and type(requests) is not tuple):
        return _py_Waitall(cls, requests, statuses)
    for req in requests:
        t = type(req)
        if t is not _Request and t is not _Prequest:
            return _py_Waitall(cls, requests, statuses)
    for req in requests:
        op = req._op
        if op is not None and not _op_done(op):
            _await(req, op)
    for req in requests:
        op = req._op
        if op is not None and op.error is not None:
            return _py_Waitall(cls, requests, statuses)     # completes all, then raises
    for req in requests:
        if req._op is not None:
            req._op = None
    return True


cdef int _start(object req) except -1:
    """Start a Prequest, or one of a subclass that does not override
    Start (its Start is this one)."""
    start = req._start
    if type(req) is not _Prequest or type(start) is not PersistentStart \
            or req._op is not None:
        _py_Start(req)
        return 0
    begun = (<PersistentStart>start)._begin()
    req._op = begun[0]
    req._decode = begun[1]
    return 0


def prequest_Start(self):
    _start(self)


def prequest_Startall(cls, requests):
    for req in requests:
        if type(req) is _Prequest:
            _start(req)
        else:
            req.Start()     # a subclass may have a Start of its own
