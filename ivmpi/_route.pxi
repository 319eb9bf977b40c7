# Point-to-point between ranks of different regions, straight through the
# MPI library (docs/routing.md, ivmpi/routing.py).
#
# A communicator spanning regions carries a library communicator over the
# same processes in the same order (its handle), so a communicator rank is
# the library's rank.  A send to a rank of another region is the library's
# MPI_Isend/MPI_Issend from the caller's buffer, in one call.  A receive
# from such a rank goes straight to the library when nothing can come
# before it in MPI order: no message of that source this receive matches
# already taken into the engine's unexpected queue, and no receive posted to
# the engine earlier that could match one of its messages (ANY_SOURCE
# included).  Otherwise the engine's general path takes the call, as before.
#
# Between regions a message of up to _DIRECT_MAX bytes (the region's eager
# limit), except one of exactly _MARKER_LEN, is one library message on the
# handle.  Any other is a marker there, exactly _MARKER_LEN bytes (its size
# and a tag), then its data on the job's bulk communicator (a duplicate of
# the library's world) under that tag, unique per pair of ranks.  Every
# message on a handle therefore fits in _DIRECT_MAX bytes, and a receive
# posted to the library before its message comes (MPI_Irecv, as plain
# mpi4py does) always has room for _DIRECT_MAX bytes: the caller's buffer
# when it is that large, else a buffer of that size of its own.  That is
# what makes posting ahead safe: Open MPI writes a truncated rendezvous
# message past the receive buffer, and a handle message may be a
# rendezvous (its shared memory sends 4 KiB eagerly), but never larger
# than the buffer it lands in.  The data's own receive is posted knowing
# its size, into the caller's buffer or, when it does not fit, a buffer of
# that size (the receive then reports truncation).  The library matches posted
# receives in post order, before the engine's matched probes see anything.
# docs/routing.md describes the protocol.
#
# The library's requests are tested here, with the GIL held (never two
# threads on one request), polling a while as the ring fast paths do, then
# in the engine's wait loop, which also serves the rings: a rank waiting on
# the library keeps its region peers going.  Every request the engine may
# need to complete is in its list of library operations (engine.library_ops),
# which each round of progress tests.

cdef extern from "mpi.h" nogil:
    ctypedef struct MPI_Status:
        int MPI_SOURCE
        int MPI_TAG
        int MPI_ERROR
    ctypedef void *MPI_Comm
    ctypedef void *MPI_Request
    ctypedef void *MPI_Message
    ctypedef void *MPI_Datatype
    MPI_Datatype MPI_BYTE
    MPI_Request MPI_REQUEST_NULL
    MPI_Status *MPI_STATUS_IGNORE
    enum:
        MPI_SUCCESS
        MPI_ANY_TAG
        MPI_ANY_SOURCE
    int MPI_Isend(const void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *)
    int MPI_Irecv(void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *)
    int MPI_Mrecv(void *, int, MPI_Datatype, MPI_Message *, MPI_Status *)
    int MPI_Cancel(MPI_Request *)
    int MPI_Test_cancelled(const MPI_Status *, int *)
    int MPI_Issend(const void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *)
    int MPI_Improbe(int, int, MPI_Comm, int *, MPI_Message *, MPI_Status *)
    int MPI_Test(MPI_Request *, int *, MPI_Status *)
    int MPI_Get_count(const MPI_Status *, MPI_Datatype, int *)

from libc.stdint cimport intptr_t
from libc.stdlib cimport calloc

cdef enum:
    # The library's counts are C ints: larger messages take the engine's path.
    _ROUTE_MAX_COUNT = 0x7fffffff
    # Send modes.
    _ROUTE_STANDARD = 0
    _ROUTE_SYNC = 1
    _ROUTE_BUFFERED = 2
    # The wire protocol between regions (above, docs/routing.md).
    _DIRECT_MAX = 65536         # larger messages: a marker, then the data on the bulk communicator
    _MARKER_LEN = 1040          # no direct message has this length (such a one goes as the larger)
    _MARKER_MAGIC = 0x424d5649  # "IVMB" little-endian: the marker's first four bytes


cdef class RoutedPath

# The bulk communicator of the job (none while every rank shares one region)
# and the next tag for each destination world rank.
cdef MPI_Comm _bulk = NULL
cdef uint32_t *_bulk_next = NULL
cdef Py_ssize_t _bulk_ranks = 0
cdef uint32_t _bulk_tag_ub = 32767


def set_bulk_communicator(handle, Py_ssize_t size, long tag_ub):
    """The library communicator (a duplicate of its world, made alike on
    every rank) that carries the data of messages between regions larger
    than _DIRECT_MAX bytes; tag_ub its largest tag."""
    global _bulk, _bulk_next, _bulk_ranks, _bulk_tag_ub
    cdef uint32_t *table = <uint32_t *>calloc(size if size > 0 else 1, sizeof(uint32_t))
    if table == NULL:
        raise MemoryError()
    free(_bulk_next)
    _bulk_next, _bulk_ranks = table, size
    _bulk_tag_ub = <uint32_t>min(max(tag_ub, 32767), 0x7fffffff)
    _bulk = <MPI_Comm><intptr_t>handle


cdef inline uint32_t _next_bulk_tag(Py_ssize_t world) noexcept:
    """A tag for the next large message to `world` (the GIL makes the
    increment atomic: two threads never get the same one)."""
    cdef uint32_t tag = _bulk_next[world]
    _bulk_next[world] = 0 if tag >= _bulk_tag_ub else tag + 1
    return tag


cdef inline bint _goes_bulk(uint64_t nbytes) noexcept:
    """Does a message of nbytes between regions go as a marker and its data?"""
    return nbytes > _DIRECT_MAX or nbytes == _MARKER_LEN


def goes_bulk(uint64_t nbytes):
    return _goes_bulk(nbytes)


cdef bytes _marker(uint32_t tag, uint64_t size):
    """The handle's message announcing `size` bytes on the bulk communicator
    under `tag`: magic, tag, size (little-endian), zeros to _MARKER_LEN."""
    cdef bytes marker = PyBytes_FromStringAndSize(NULL, _MARKER_LEN)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(marker)
    cdef int i
    memset(p, 0, _MARKER_LEN)
    for i in range(4):
        p[i] = (_MARKER_MAGIC >> (8 * i)) & 0xff
        p[4 + i] = (tag >> (8 * i)) & 0xff
    for i in range(8):
        p[8 + i] = (size >> (8 * i)) & 0xff
    return marker


cdef int _read_marker(const unsigned char *p, uint32_t *tag, uint64_t *size) except -1:
    """The tag and size a marker announces; an error naming the cause when
    it is not one (another program on the library's communicator, or a
    corrupt peer)."""
    cdef uint32_t magic = 0
    cdef int i
    tag[0] = 0
    size[0] = 0
    for i in range(4):
        magic |= (<uint32_t>p[i]) << (8 * i)
        tag[0] |= (<uint32_t>p[4 + i]) << (8 * i)
    for i in range(8):
        size[0] |= (<uint64_t>p[8 + i]) << (8 * i)
    if magic != _MARKER_MAGIC or not _goes_bulk(size[0]) or size[0] > _ROUTE_MAX_COUNT \
            or tag[0] > _bulk_tag_ub or _bulk == NULL:
        raise RegionError(f"ivmpi: a {_MARKER_LEN}-byte message between regions is not a "
                          f"valid marker (magic {magic:#x}, size {size[0]}, tag {tag[0]})")
    return 0


cdef object _oversized(long n):
    """The error of a message on a handle that is neither direct nor a marker."""
    return RegionError(f"ivmpi: a {n}-byte message between regions on the handle: messages "
                       f"there are at most {_DIRECT_MAX} bytes, those of {_MARKER_LEN} markers")


def marker(Py_ssize_t dest_world, Py_ssize_t size):
    """(marker bytes, bulk tag) for a message of `size` bytes to dest_world
    (ivmpi.routing's sends of the engine's general path)."""
    if _bulk == NULL or not 0 <= dest_world < _bulk_ranks:
        raise RegionError(f"ivmpi: no bulk communicator to reach world rank {dest_world}")
    tag = _next_bulk_tag(dest_world)
    return _marker(tag, size), tag


DIRECT_MAX = _DIRECT_MAX
MARKER_LEN = _MARKER_LEN


cdef object _message_of(MPI_Message message):
    """The library's matched message as mpi4py's Message (the engine's
    general path receives it, ivmpi.routing.receive)."""
    from ivmpi.lib import MPI as _lib
    return _lib.Message.fromhandle(<intptr_t>message)


cdef object _library_error(int code, str what):
    """The library's error code as mpi4py's exception (imported here only:
    this module must not start MPI on import)."""
    from ivmpi.lib import MPI as _lib
    return _lib.Exception(code)


cdef class LibraryCounts:
    """Messages and bytes through the MPI library, by peer world rank:
    [messages, bytes] = counts.get(peer)."""
    cdef long long *messages
    cdef long long *nbytes
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t size):
        self.size = size
        self.messages = <long long *>calloc(size if size > 0 else 1, sizeof(long long))
        self.nbytes = <long long *>calloc(size if size > 0 else 1, sizeof(long long))
        if self.messages == NULL or self.nbytes == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.messages)
        free(self.nbytes)

    cdef inline void add(self, Py_ssize_t peer, Py_ssize_t n) noexcept:
        if 0 <= peer < self.size:
            self.messages[peer] += 1
            self.nbytes[peer] += n

    def count(self, Py_ssize_t peer, Py_ssize_t n):
        self.add(peer, n)

    def get(self, Py_ssize_t peer, default=None):
        if not 0 <= peer < self.size:
            return default
        return [self.messages[peer], self.nbytes[peer]]


cdef class LibrarySend(SendOp):
    """A send in the library's hands: done when the library says so (its
    marker's send too, for a large message)."""
    cdef MPI_Request request
    cdef MPI_Request marker_request
    cdef Py_buffer view
    cdef bint pinned
    cdef object keep            # the marker being sent

    def __dealloc__(self):
        if self.pinned:
            PyBuffer_Release(&self.view)

    cdef int _finish(self) except -1:
        if self.pinned:
            PyBuffer_Release(&self.view)
            self.pinned = False
        self.keep = None
        self.mem = None
        self.state = "done"
        self.done = True
        return 0

    cpdef bint test(self) except -1:
        """MPI_Test of the marker (while not done) and the data; True once
        both are complete."""
        cdef int flag = 0, err = MPI_SUCCESS
        if self.done:
            return True
        if self.keep is not None:
            err = MPI_Test(&self.marker_request, &flag, MPI_STATUS_IGNORE)
            if err == MPI_SUCCESS and flag:
                self.keep = None
                flag = 0
        if err == MPI_SUCCESS:
            err = MPI_Test(&self.request, &flag, MPI_STATUS_IGNORE)
        if err != MPI_SUCCESS:
            self._finish()
            self.error = _library_error(err, "send")
            return True
        if flag and self.keep is None:
            self._finish()
            return True
        return False

    def spin(self, int spins):
        return _spin(self, spins)


cdef class LibraryRecv(RecvOp):
    """A receive from a rank of another region, posted to the library on the
    communicator's handle (MPI_Irecv) while first in MPI order among this
    communicator's receives: into the caller's buffer when it can hold any
    handle message (_DIRECT_MAX bytes), else into a buffer of that size of
    its own.  A marker's data is
    then received from the bulk communicator, into the caller's buffer when
    it fits, else into a buffer of its size (the receive then reports
    truncation).  Its status fields are filled as the engine fills them
    (the source a world rank)."""
    cdef MPI_Request request
    cdef Py_buffer view
    cdef bint pinned
    cdef bint bulk                   # its request is the data's, on the bulk communicator
    cdef bint truncated
    cdef RoutedPath route
    cdef char *base                  # the caller's buffer (pinned), NULL: an object
    cdef Py_ssize_t capacity
    cdef object bounce               # the handle's message, when the caller's buffer is small
    cdef bint cancelling             # MPI_Cancel called: its completion may be a cancellation
    cdef object scratch              # a too-large message's bytes
    cdef public str state

    def __dealloc__(self):
        if self.pinned:
            PyBuffer_Release(&self.view)

    cdef int _release(self) except -1:
        if self.pinned:
            PyBuffer_Release(&self.view)
            self.pinned = False
        self.base = NULL
        self.mem = None
        return 0

    cdef int _start(self, int source, int tag) except -1:
        """Post the receive on the handle (engine lock held).  Not tested
        here: a test that finds nothing runs the library's progress, which
        on more ranks than cores gives the core away (yield when idle), and
        a receive is mostly posted before its message comes; the caller's
        wait tests it."""
        cdef char *target
        cdef int n, err
        if self.base != NULL and self.capacity >= _DIRECT_MAX:
            target = self.base
            n = <int>min(self.capacity, _ROUTE_MAX_COUNT)
        else:
            # (Uninitialized: only the bytes a message brings are touched.)
            self.bounce = self.route.take_bounce()
            target = PyByteArray_AS_STRING(self.bounce)
            n = _DIRECT_MAX
        err = MPI_Irecv(target, n, MPI_BYTE, source, tag, self.route.handle, &self.request)
        if err != MPI_SUCCESS:
            raise _library_error(err, "receive")
        return 0

    cdef inline void _drop_bounce(self) noexcept:
        """The bounce buffer back to the route for the next receive (its
        request is complete: the library writes it no more)."""
        if self.bounce is not None:
            self.route.spare_bounce = self.bounce
            self.bounce = None

    cdef int _arrived(self, MPI_Status *status) except -1:
        """The handle's message came: the data itself (copied from the
        bounce buffer if there), or a marker, whose data is received next
        from the bulk communicator."""
        cdef int n = 0, err
        cdef uint32_t tag
        cdef uint64_t size
        cdef char *held
        cdef char *target
        MPI_Get_count(status, MPI_BYTE, &n)
        self.status_tag = status.MPI_TAG
        self.status_source = self.source    # (posted for that one source)
        held = self.base if self.bounce is None else PyByteArray_AS_STRING(self.bounce)
        if n != _MARKER_LEN:
            if not 0 <= n <= _DIRECT_MAX:
                return self._fail(_oversized(n))
            self.total = n
            if self.bounce is not None:
                if self.base == NULL:
                    self.data = PyByteArray_FromStringAndSize(held, n)
                elif n > self.capacity:
                    self.truncated = True
                else:
                    memcpy(self.base, held, n)
            self._finish(MPI_SUCCESS)
            return 0
        try:
            _read_marker(<const unsigned char *>held, &tag, &size)
        except RegionError as exc:
            return self._fail(exc)
        self._drop_bounce()
        self.total = <Py_ssize_t>size
        if self.base == NULL:
            self.data = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>size)
            target = PyByteArray_AS_STRING(self.data)
        elif <Py_ssize_t>size > self.capacity:
            self.truncated = True
            self.scratch = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>size)
            target = PyByteArray_AS_STRING(self.scratch)
        else:
            target = self.base
        self.bulk = True
        self.state = "receiving through the MPI library"
        err = MPI_Irecv(target, <int>size, MPI_BYTE, self.status_source, <int>tag, _bulk,
                        &self.request)
        if err != MPI_SUCCESS:
            self._finish(err)
        return 0

    cdef int _fail(self, object error) except -1:
        """Complete with `error` (the handle's message was not ivmpi's)."""
        self._finish(MPI_SUCCESS)
        self.count = 0
        self.error = error
        return 0

    cdef int _finish(self, int err) except -1:
        cdef Py_ssize_t n = self.total
        self._release()
        self.scratch = None
        self._drop_bounce()
        self.state = "done"
        if err != MPI_SUCCESS:
            self.error = _library_error(err, "receive")
        elif self.truncated:
            self.error = "truncate"       # the engine's ERR_TRUNCATE
            self.count = 0
        else:
            self.count = n
        self.route.received.add(self.status_source, n)
        self.route.received_direct.add(self.status_source, n)
        self.done = True
        return 0

    cpdef bint test(self) except -1:
        """One MPI_Test of the handle's receive or, after a marker, of the
        data's; True once complete."""
        cdef int flag = 0, err
        cdef MPI_Status status
        if self.done:
            return True
        err = MPI_Test(&self.request, &flag, &status)
        if err != MPI_SUCCESS:
            self._finish(err)
            return True
        if not flag:
            return False
        if self.bulk:
            self._finish(MPI_SUCCESS)
            return True
        if self.cancelling:
            MPI_Test_cancelled(&status, &flag)
            if flag:
                self._release()
                self._drop_bounce()
                self.cancelled = True
                self.state = "done"
                self.done = True
                return True
        self._arrived(&status)
        if not self.done:
            # The data's receive, posted just now: usually there already.
            err = MPI_Test(&self.request, &flag, MPI_STATUS_IGNORE)
            if err != MPI_SUCCESS or flag:
                self._finish(err)
        return self.done

    def spin(self, int spins):
        return _spin(self, spins)

    def cancel(self):
        """Cancel while the handle's message has not come (engine lock held);
        one that came completes the receive as usual.  Not waited for here:
        a handle message may be a rendezvous the library is still moving
        in, which needs its sender's progress; the receive's tests (the
        caller's wait) see the request complete, cancelled or not."""
        if self.done or self.bulk:
            return self.cancelled
        if not self.cancelling:
            MPI_Cancel(&self.request)
            self.cancelling = True
        self.test()
        return self.cancelled


cdef bint _test_op(object op) except -1:
    if type(op) is LibraryRecv:
        return (<LibraryRecv>op).test()
    return (<LibrarySend>op).test()


cdef bint _spin(object op, int spins) except -1:
    """Poll a library operation up to |spins| times; True once done.  No
    yield between polls even when oversubscribed (spins < 0): the library's
    own progress gives the core away when it finds nothing (Open MPI's
    mpi_yield_when_idle, on by default when oversubscribed), and a second
    yield per poll would double the time slices handed to other ranks."""
    cdef int i, polls = spins if spins >= 0 else -spins
    for i in range(polls if polls > 0 else 1):
        if _test_op(op):
            return True
        rg_relax()
    return False


def poll_library(list ops):
    """Test each library operation in ops once, dropping the complete ones
    (engine lock held: one round of the engine's progress).  True when any
    completed."""
    cdef Py_ssize_t i, kept = 0, n = len(ops)
    cdef bint moved = False
    for i in range(n):
        op = ops[i]
        if _test_op(op):
            moved = True
        else:
            ops[kept] = op
            kept += 1
    if kept < n:
        del ops[kept:]
    return moved


def take_messages(intptr_t handle, list ranks, long context, arrive, incoming, long kind,
                  LibraryCounts received):
    """Every message that arrived on the library communicator `handle` and no
    posted receive took, in arrival order, to arrive() as incoming(world
    source, tag, context, size, data, 0, kind): data the library's Message,
    or for a marker (received here) the bulk tag of its data, as a
    BulkData.  ranks: world rank by rank of `handle`.  True when any came."""
    cdef MPI_Comm comm = <MPI_Comm>handle
    cdef int found, n, err
    cdef MPI_Message message
    cdef MPI_Status status
    cdef bint moved = False
    cdef long world
    cdef uint32_t tag
    cdef uint64_t size
    cdef unsigned char header[_MARKER_LEN]
    while True:
        found = 0
        err = MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &found, &message, &status)
        if err != MPI_SUCCESS:
            raise _library_error(err, "probe")
        if not found:
            return moved
        moved = True
        n = 0
        MPI_Get_count(&status, MPI_BYTE, &n)
        if not 0 <= status.MPI_SOURCE < len(ranks):
            raise RegionError(f"ivmpi: a message between regions from rank "
                              f"{status.MPI_SOURCE}, outside the communicator")
        world = ranks[status.MPI_SOURCE]
        if n == _MARKER_LEN:
            err = MPI_Mrecv(header, _MARKER_LEN, MPI_BYTE, &message, MPI_STATUS_IGNORE)
            if err != MPI_SUCCESS:
                raise _library_error(err, "receive")
            _read_marker(header, &tag, &size)
            data = BulkData(world, tag)
            n = <int>size
        elif n > _DIRECT_MAX:
            # Not ivmpi's: taken off the library's queue all the same (into
            # a buffer of its size, so nothing is overrun), then reported.
            foreign = PyByteArray_FromStringAndSize(NULL, n)
            MPI_Mrecv(PyByteArray_AS_STRING(foreign), n, MPI_BYTE, &message,
                      MPI_STATUS_IGNORE)
            raise _oversized(n)
        else:
            data = _message_of(message)
        received.add(world, n)
        arrive(incoming(world, status.MPI_TAG, context, n, data, 0, kind))


class BulkData:
    """Where the data of a large message between regions waits: from world
    rank `source` on the bulk communicator under `tag` (ivmpi.routing
    receives it)."""
    __slots__ = ("source", "tag")

    def __init__(self, source, tag):
        self.source = source
        self.tag = tag


cdef class RoutedPath:
    """The point-to-point calls of a communicator spanning regions: to and
    from ranks of other regions straight through the library, the others
    through the communicator's FastPath (and so its general paths).  The
    communicator binds these as its methods (ivmpi.comm)."""
    cdef FastPath fast
    cdef MPI_Comm handle
    cdef bytes routed_flags
    cdef const unsigned char *routed     # 1: that communicator rank is in another region
    cdef list ranks                      # world rank of each communicator rank
    cdef list ops                        # the engine's library operations in flight
    cdef object spare_bounce             # a bounce buffer a completed receive gave back
    cdef LibraryCounts sent, received, sent_direct, received_direct
    # FastPath's own calls, for the ranks of this region.
    cdef object f_Send, f_Recv, f_Isend, f_Irecv, f_Ssend, f_Issend, f_send, f_recv
    cdef object f_isend, f_ssend, f_issend, f_Sendrecv

    def __cinit__(self, FastPath fast, handle, list routed, list ops, LibraryCounts sent,
                  LibraryCounts received, LibraryCounts sent_direct,
                  LibraryCounts received_direct):
        self.fast = fast
        self.handle = <MPI_Comm><intptr_t>handle
        self.routed_flags = bytes([1 if r else 0 for r in routed])
        self.routed = self.routed_flags
        self.ranks = fast.world_ranks
        self.ops = ops
        self.sent, self.received = sent, received
        self.sent_direct, self.received_direct = sent_direct, received_direct
        self.f_Send, self.f_Recv, self.f_Isend, self.f_Irecv = fast.Send, fast.Recv, fast.Isend, \
            fast.Irecv
        self.f_Ssend, self.f_Issend = fast.Ssend, fast.Issend
        self.f_send, self.f_recv = fast.send_object, fast.recv_object
        self.f_isend, self.f_ssend, self.f_issend = fast.isend_object, fast.ssend_object, \
            fast.issend_object
        self.f_Sendrecv = fast.Sendrecv

    cdef object take_bounce(self):
        """A bytearray of _DIRECT_MAX bytes for a receive into a smaller
        buffer: the one the last such receive gave back, else a new one."""
        bounce = self.spare_bounce
        if bounce is None:
            return PyByteArray_FromStringAndSize(NULL, _DIRECT_MAX)
        self.spare_bounce = None
        return bounce

    cdef inline bint _to(self, long rank) noexcept:
        """Is communicator rank `rank` reached through the library?"""
        return 0 <= rank < self.fast.size and self.routed[rank]

    # --- sends ------------------------------------------------------------

    cdef object _isend(self, object buf, long dest, long tag, int mode):
        """The library's send of buf to dest: True when complete already, a
        LibrarySend in flight, None for the general path (a spec that is not
        a plain buffer, a bad tag, a freed communicator)."""
        cdef Py_buffer view
        cdef Py_ssize_t extent, nbytes, offset
        cdef MPI_Request request = MPI_REQUEST_NULL, marker_request = MPI_REQUEST_NULL
        cdef MPI_Comm data_comm
        cdef int err, flag = 0, data_dest, data_tag
        cdef LibrarySend op
        cdef object keep = None, announce = None
        cdef long world
        if not self.fast.enabled or tag < 0 or tag > _TAG_UB:
            return None
        plain = self.fast._plain_at(buf, &extent, &nbytes, &offset)
        if plain is None:
            return None
        if mode == _ROUTE_BUFFERED:
            # A buffered send never waits for the receiver: a private copy
            # goes, up to the eager limit (above it, as on the region path,
            # a standard send).
            if not _pin(plain, False, &view):
                return None
            try:
                if not _span(view.len, extent, offset, &nbytes):
                    return None
                if <uint64_t>nbytes <= self.fast.eager_limit:
                    keep = PyBytes_FromStringAndSize(<char *>view.buf + offset, nbytes)
            finally:
                PyBuffer_Release(&view)
            if keep is not None:
                plain, extent, offset = keep, 1, 0
            mode = _ROUTE_STANDARD
        if not _pin(plain, False, &view):
            return None
        if not _span(view.len, extent, offset, &nbytes) or nbytes > _ROUTE_MAX_COUNT:
            PyBuffer_Release(&view)
            return None
        world = self.ranks[dest]
        data_comm, data_dest, data_tag = self.handle, <int>dest, <int>tag
        if _goes_bulk(nbytes):
            # The data on the bulk communicator, then its marker on the
            # handle: by the time the receiver reads the marker, the data's
            # envelope is there for its receive to match at once.
            if _bulk == NULL or not 0 <= world < _bulk_ranks:
                PyBuffer_Release(&view)
                return None
            data_tag = <int>_next_bulk_tag(world)
            data_comm, data_dest = _bulk, <int>world
        if mode == _ROUTE_SYNC:
            err = MPI_Issend(<char *>view.buf + offset, <int>nbytes, MPI_BYTE, data_dest,
                             data_tag, data_comm, &request)
        else:
            err = MPI_Isend(<char *>view.buf + offset, <int>nbytes, MPI_BYTE, data_dest,
                            data_tag, data_comm, &request)
        if err != MPI_SUCCESS:
            PyBuffer_Release(&view)
            raise _library_error(err, "send")
        if _goes_bulk(nbytes):
            announce = _marker(<uint32_t>data_tag, <uint64_t>nbytes)
            err = MPI_Isend(PyBytes_AS_STRING(announce), _MARKER_LEN, MPI_BYTE, dest, tag,
                            self.handle, &marker_request)
            if err != MPI_SUCCESS:
                # (the data's send stays with the library: nothing will receive it)
                PyBuffer_Release(&view)
                raise _library_error(err, "send")
            if MPI_Test(&marker_request, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS and flag:
                announce = None
        self.sent.add(world, nbytes)
        self.sent_direct.add(world, nbytes)
        flag = 0
        if announce is None and MPI_Test(&request, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS \
                and flag:
            PyBuffer_Release(&view)
            return True
        # In flight: the operation keeps the buffer exported until done (a
        # buffered send's private copy: that send is complete all the same).
        op = LibrarySend.__new__(LibrarySend)
        op.request = request
        op.marker_request = marker_request
        op.keep = announce
        op.view = view
        op.pinned = True
        op.peer = world
        op.tag = tag
        op.context = self.fast.context
        op.sync = mode == _ROUTE_SYNC
        op.send_id = 0
        op.offset = 0
        op.state = "sending through the MPI library"
        self._register(op)
        return True if keep is not None else op

    cdef int _register(self, object op) except -1:
        """Hand a library operation to the engine, whose progress tests it."""
        cdef list ops = self.ops
        cdef Py_ssize_t i, kept = 0, n
        if not self.fast.lock.enter():
            self.fast.lock._wait()
        try:
            # Operations completed by their caller's own polling leave here.
            n = len(ops)
            for i in range(n):
                if not (<Op>ops[i]).done:
                    ops[kept] = ops[i]
                    kept += 1
            if kept < n:
                del ops[kept:]
            ops.append(op)
        finally:
            self.fast.lock.leave()
        return 0

    cdef int _complete_send(self, object done, str what) except -1:
        """Wait for a blocking send's operation: poll it, then the engine's wait."""
        if done is True:
            return 0
        if not _spin(done, self.fast.spins):
            self.fast.wait_op(done, what)
        if (<LibrarySend>done).error is not None:
            raise (<LibrarySend>done).error
        return 0

    def Send(self, buf, long dest, long tag=0):
        if self._to(dest):
            done = self._isend(buf, dest, tag, _ROUTE_STANDARD)
            if done is not None:
                self._complete_send(done, "Send")
                return
        self.f_Send(buf, dest, tag)

    def Bsend(self, buf, long dest, long tag=0):
        if self._to(dest):
            done = self._isend(buf, dest, tag, _ROUTE_BUFFERED)
            if done is not None:
                self._complete_send(done, "Bsend")
                return
        self.f_Send(buf, dest, tag)

    def Ssend(self, buf, long dest, long tag=0):
        if self._to(dest):
            done = self._isend(buf, dest, tag, _ROUTE_SYNC)
            if done is not None:
                self._complete_send(done, "Ssend")
                return
        self.f_Ssend(buf, dest, tag)

    cdef object _request(self, object done, str what):
        return self.fast.new_request(self.fast.comm,
                                     self.fast.sent_op if done is True else done, None, what)

    def Isend(self, buf, long dest, long tag=0):
        if self._to(dest):
            done = self._isend(buf, dest, tag, _ROUTE_STANDARD)
            if done is not None:
                return self._request(done, "Isend")
        return self.f_Isend(buf, dest, tag)

    def Ibsend(self, buf, long dest, long tag=0):
        if self._to(dest):
            done = self._isend(buf, dest, tag, _ROUTE_BUFFERED)
            if done is not None:
                return self._request(done, "Ibsend")
        return self.f_Isend(buf, dest, tag)

    def Issend(self, buf, long dest, long tag=0):
        if self._to(dest):
            done = self._isend(buf, dest, tag, _ROUTE_SYNC)
            if done is not None:
                return self._request(done, "Issend")
        return self.f_Issend(buf, dest, tag)

    # Objects: pickled as mpi4py pickles them (the communicator's dumps),
    # the bytes sent as a buffer.

    def send(self, obj, long dest, long tag=0):
        if self._to(dest):
            data = self.fast.dumps(obj)
            done = self._isend(data, dest, tag, _ROUTE_STANDARD)
            if done is not None:
                self._complete_send(done, "send")
                return
            return self.fast.general_send(data, dest, tag)
        self.f_send(obj, dest, tag)

    def bsend(self, obj, long dest, long tag=0):
        if self._to(dest):
            # The pickled bytes are a private copy already: no wait.
            data = self.fast.dumps(obj)
            done = self._isend(data, dest, tag, _ROUTE_STANDARD)
            if done is not None:
                return
            return self.fast.general_send(data, dest, tag)
        self.f_send(obj, dest, tag)

    def ssend(self, obj, long dest, long tag=0):
        if self._to(dest):
            data = self.fast.dumps(obj)
            done = self._isend(data, dest, tag, _ROUTE_SYNC)
            if done is not None:
                self._complete_send(done, "ssend")
                return
            return self.fast.general_ssend(data, dest, tag)
        self.f_ssend(obj, dest, tag)

    def isend(self, obj, long dest, long tag=0):
        if self._to(dest):
            data = self.fast.dumps(obj)
            done = self._isend(data, dest, tag, _ROUTE_STANDARD)
            if done is not None:
                return self._request(done, "isend")
            return self.fast.general_isend(data, dest, tag)
        return self.f_isend(obj, dest, tag)

    def issend(self, obj, long dest, long tag=0):
        if self._to(dest):
            data = self.fast.dumps(obj)
            done = self._isend(data, dest, tag, _ROUTE_SYNC)
            if done is not None:
                return self._request(done, "issend")
            return self.fast.general_issend(data, dest, tag)
        return self.f_issend(obj, dest, tag)

    # --- receives ---------------------------------------------------------

    cdef bint _first_in_order(self, long source, long tag) except -1:
        """Engine lock held: can a receive of (source, tag) go straight to
        the library?  Not when a message it matches waits in the engine's
        unexpected queue, or a receive posted to the engine earlier could
        take one of its messages: those come first in MPI order."""
        cdef FastPath fast = self.fast
        cdef RecvOp op
        cdef long world
        if fast.unexpected and fast._unexpected_match(source, tag) >= 0:
            return False
        if fast.posted:
            world = self.ranks[source]
            for item in fast.posted:
                op = <RecvOp?>item
                if op.context == fast.context and (op.source == -1 or op.source == world) \
                        and (op.tag == -1 or tag == -1 or op.tag == tag):
                    return False
        return True

    cdef object _post(self, object buf, long source, long tag, bint obj):
        """A direct receive of (source, tag): a LibraryRecv, posted, or
        None for the general path (not first
        in MPI order, a spec that is not a plain buffer, another thread in
        the engine).  obj: an object receive (into a buffer of the message's
        size)."""
        cdef Py_buffer view
        cdef Py_ssize_t extent, nbytes, offset
        cdef LibraryRecv op
        cdef FastPath fast = self.fast
        if not fast.enabled or tag < -1 or tag > _TAG_UB:
            return None
        op = LibraryRecv.__new__(LibraryRecv)
        if not obj:
            plain = fast._plain_at(buf, &extent, &nbytes, &offset)
            if plain is None or not _pin(plain, True, &op.view):
                return None
            op.pinned = True
            if not _span(op.view.len, extent, offset, &nbytes):
                return None     # (the op releases the view)
            op.base = <char *>op.view.buf + offset
            op.capacity = nbytes
        if not fast.lock.enter():
            return None
        try:
            if not self._first_in_order(source, tag):
                return None
            op.route = self
            op.peer = op.source = self.ranks[source]
            op.tag = tag
            op.context = fast.context
            op.status_source = -1
            op.status_tag = -1
            op.count = op.received = op.total = 0
            op.state = "waiting for a matching message (through the MPI library)"
            if fast.scope is not None:
                op.scope = fast.scope
            op._start(source, MPI_ANY_TAG if tag == -1 else tag)
        finally:
            fast.lock.leave()
        return op

    cdef int _wait_recv(self, LibraryRecv op, str what) except -1:
        """Complete a blocking receive: poll it, then the engine's wait
        (which the engine's progress completes: it is registered then)."""
        if not _spin(op, self.fast.spins):
            self._register(op)
            self.fast.wait_op(op, what)
        if op.error is not None:
            if op.error == "truncate":
                return -2
            raise op.error
        return 0

    cdef long _source(self, object source):
        return self.fast.any_source if source is None else source

    def Recv(self, buf, source=None, tag=None, status=None):
        cdef long src = self._source(source)
        cdef long want
        cdef LibraryRecv op
        if self._to(src):
            want = -1 if tag is None or tag == self.fast.any_tag else tag
            found = self._post(buf, src, want, False)
            if found is not None:
                op = <LibraryRecv>found
                if self._wait_recv(op, "Recv") == -2:
                    # The engine's request reports truncation as the region path does.
                    self.fast.new_request(self.fast.comm, op, None, ("Recv", "from", src)).Wait(
                        status)
                if status is not None:
                    self.fast.fill_status(status, src, op.status_tag, op.count)
                return
        self.f_Recv(buf, source, tag, status)

    def Irecv(self, buf, source=None, tag=None):
        cdef long src = self._source(source)
        cdef long want
        if self._to(src):
            want = -1 if tag is None or tag == self.fast.any_tag else tag
            op = self._post(buf, src, want, False)
            if op is not None:
                if not (<LibraryRecv>op).done:
                    self._register(op)
                return self.fast.new_request(self.fast.comm, op, None, ("Irecv", "from", src))
        return self.f_Irecv(buf, source, tag)

    def recv(self, buf=None, source=None, tag=None, status=None):
        cdef long src = self._source(source)
        cdef long want
        cdef LibraryRecv op
        if self._to(src) and buf is None:
            want = -1 if tag is None or tag == self.fast.any_tag else tag
            found = self._post(None, src, want, True)
            if found is not None:
                op = <LibraryRecv>found
                self._wait_recv(op, "recv")
                if status is not None:
                    self.fast.fill_status(status, src, op.status_tag, op.count)
                data = op.data
                # An empty message (a buffer send of nothing) is None, as mpi4py has it.
                return self.fast.loads(data) if len(data) else None
        return self.f_recv(buf, source, tag, status)

    # --- both ---------------------------------------------------------------

    def Sendrecv(self, sendbuf, long dest, long sendtag=0, recvbuf=None, source=None,
                 recvtag=None, status=None):
        cdef long src = self._source(source)
        cdef bint to_lib = self._to(dest), from_lib = self._to(src)
        if not to_lib and not from_lib:
            return self.f_Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)
        if to_lib:
            # The library's send does not wait to be posted: send, then
            # receive (posting the receive first measured slower: its first
            # test makes the library's progress, which may yield the core,
            # before the send has left), then wait for the send.
            done = self._isend(sendbuf, dest, sendtag, _ROUTE_STANDARD)
            if done is not None:
                self.Recv(recvbuf, source, recvtag, status)
                self._complete_send(done, "Sendrecv")
                return
        elif self.fast.send(sendbuf, dest, sendtag):
            # Sent through the ring at once: the receive is the library's.
            self.Recv(recvbuf, source, recvtag, status)
            return
        return self.f_Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)


@cython.final
cdef class FlatCollective:
    """A collective of a communicator spanning regions, bound to the
    instance (ivmpi.routing.bind_collectives): the library's call on the
    handle, counted per name in `flat`, in one C call; `collective` (the
    general dispatch) takes it while the communicator is freed or its two
    levels (ivmpi.hierarchy) are enabled for this collective.  With more
    ranks than cores every microsecond of a collective's own work is paid
    by all ranks in turn, so this one does as little as it can."""
    cdef object comm, coll, method, name, collective, wrap
    cdef dict flat
    cdef bint two_levels

    def __cinit__(self, comm, coll, method, str name, bint two_levels, collective, wrap):
        self.comm, self.coll, self.method, self.name = comm, coll, method, name
        self.flat = coll.flat
        self.two_levels = two_levels
        self.collective, self.wrap = collective, wrap

    def __call__(self, *args, **kwargs):
        comm = self.comm
        if comm._freed or (self.two_levels and self.coll.enabled):
            return self.collective(comm, self.name, args, kwargs)
        flat = self.flat
        flat[self.name] = flat.get(self.name, 0) + 1
        if kwargs:
            result = self.method(comm, *args, **kwargs)
        else:
            result = self.method(comm, *args)
        if result is None:
            return None
        return self.wrap(comm, result, self.name, args, kwargs)

    @property
    def __name__(self):
        return self.name

    @property
    def __doc__(self):
        return self.method.__doc__
