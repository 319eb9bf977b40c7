# Large messages between ranks of one operating system in one copy.
#
# Ranks in different VMs can only meet in the region, so a large message
# crosses it twice (sender into the ring, receiver out of it).  Ranks that
# run on one kernel (processes of one guest, or of the host) can do what
# Open MPI's CMA does: the receiver copies the message straight out of the
# sender's memory with process_vm_readv(2).  The rendezvous stays the
# region's: the RTS frame carries the sender's buffer address (an 8-byte
# payload), the receiver that matched it copies and answers with a CTS
# whose `a` is the number of bytes it copied (the whole message), and the
# sender completes on that CTS without streaming.  A receiver that cannot
# or will not copy (a copy failing, a buffer too small, its buffer inside
# the region) answers the usual CTS (a = 0) and the message streams through
# the ring as before; nothing depends on the copy succeeding.
#
# Which pairs may do this is settled at start-up over the launcher's MPI
# (world.py): each rank reports its kernel (boot id and pid namespace), its
# pid and the address of a random token of its own; a rank may read a peer
# once it has read that token back from the peer's memory.  The address in
# an RTS comes from the region and is not trusted: the copy reads only that
# verified peer's memory, never more than the receive buffer holds, and a
# bad address fails the copy (EFAULT), which streams the message instead.

from libc.errno cimport errno, EINTR
from libc.stdlib cimport calloc, free
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_AS_STRING

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t process_vm_readv(int pid, const iovec *local_iov, unsigned long liovcnt,
                             const iovec *remote_iov, unsigned long riovcnt,
                             unsigned long flags)

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)

cdef enum:
    _PR_SET_PTRACER = 0x59616d61    # Yama: who may ptrace (and so read) this process

cdef int *_sc_pid = NULL            # per world rank: its pid when we may read it, else 0
cdef unsigned char *_sc_told = NULL  # per world rank: 1 when it may read us (RTS carries addresses)
cdef Py_ssize_t _sc_ranks = 0
cdef unsigned long long *_sc_messages = NULL    # per world rank: messages copied from it
cdef unsigned long long *_sc_bytes = NULL       # and their bytes


def allow_single_copy_readers():
    """Let processes of our user read our memory (Yama's ptrace_scope 1
    allows only descendants otherwise), as Open MPI's CMA does.  0 or the
    errno; EINVAL means no Yama, nothing to allow."""
    if prctl(_PR_SET_PTRACER, <unsigned long>-1, 0, 0, 0) != 0:
        return errno
    return 0


def read_peer_token(int pid, uintptr_t address, Py_ssize_t length):
    """`length` bytes at `address` in process `pid` (the start-up check), or
    None when the kernel refuses."""
    cdef bytearray out = PyByteArray_FromStringAndSize(NULL, length)
    if not _sc_copy(pid, address, PyByteArray_AS_STRING(out), <uint64_t>length):
        return None
    return out


def set_single_copy(list readable_pids, list tells):
    """Start-up: readable_pids[w] the pid of world rank w if we may copy its
    messages from its memory (0: no); tells[w] true if w may copy ours."""
    global _sc_pid, _sc_told, _sc_ranks, _sc_messages, _sc_bytes
    cdef Py_ssize_t n = len(readable_pids), i
    cdef int *pids = <int *>calloc(n if n > 0 else 1, sizeof(int))
    cdef unsigned char *told = <unsigned char *>calloc(n if n > 0 else 1, 1)
    if pids == NULL or told == NULL:
        free(pids)
        free(told)
        raise MemoryError()
    if n != _sc_ranks or _sc_messages == NULL:
        # (Kept when only the pairs change: the counts cover the whole run.)
        free(_sc_messages)
        free(_sc_bytes)
        _sc_messages = <unsigned long long *>calloc(n if n > 0 else 1, sizeof(unsigned long long))
        _sc_bytes = <unsigned long long *>calloc(n if n > 0 else 1, sizeof(unsigned long long))
        if _sc_messages == NULL or _sc_bytes == NULL:
            raise MemoryError()
    for i in range(n):
        pids[i] = readable_pids[i]
        told[i] = 1 if tells[i] else 0
    free(_sc_pid)
    free(_sc_told)
    _sc_pid, _sc_told, _sc_ranks = pids, told, n


def single_copy_peers():
    """World ranks whose messages we copy from their memory (tests, `ivmpi info`)."""
    return [i for i in range(_sc_ranks) if _sc_pid[i] > 0]


def single_copy_to(Py_ssize_t world):
    """Does world rank `world` copy our large messages from our memory?"""
    return _sc_tell(world)


def single_copy_from(Py_ssize_t world):
    """Do we copy world rank `world`'s large messages from its memory?  The
    same answer as single_copy_to(our rank) gives on that rank (start-up
    tells each sender what its readers found), so both ends of a pair can
    agree on how a collective splits its messages."""
    return _sc_from(world)


def single_copy_counts():
    """{world rank: (messages, bytes)} copied from that rank's memory so far."""
    return {i: (_sc_messages[i], _sc_bytes[i]) for i in range(_sc_ranks)
            if _sc_messages != NULL and _sc_messages[i]}


cdef inline int _sc_source(Py_ssize_t world, uint64_t address) noexcept nogil:
    """The pid to copy world rank `world`'s message at `address` from; 0
    when there is none to copy (no address, no copy allowed with it)."""
    if address == 0 or not 0 <= world < _sc_ranks:
        return 0
    return _sc_pid[world] if _sc_pid[world] > 0 else 0


cdef inline bint _sc_from(Py_ssize_t world) noexcept nogil:
    """Do we copy world rank `world`'s large messages from its memory?"""
    return 0 <= world < _sc_ranks and _sc_pid[world] > 0


cdef inline bint _sc_tell(Py_ssize_t world) noexcept nogil:
    """Does an RTS to world rank `world` carry our buffer's address?"""
    return 0 <= world < _sc_ranks and _sc_told[world] != 0


cdef bint _sc_copy(int pid, uint64_t address, char *dst, uint64_t total) noexcept nogil:
    """Copy total bytes at `address` of process pid into dst; False when the
    kernel refuses any part (dst then holds an unspecified prefix)."""
    cdef iovec local, remote
    cdef uint64_t done = 0
    cdef ssize_t n
    while done < total:
        local.iov_base = dst + done
        local.iov_len = total - done
        remote.iov_base = <void *><uintptr_t>(address + done)
        remote.iov_len = total - done
        n = process_vm_readv(pid, &local, 1, &remote, 1, 0)
        if n < 0 and errno == EINTR:
            continue
        if n <= 0:
            return False
        done += <uint64_t>n
    return True


cdef bint _sc_read(Py_ssize_t world, uint64_t address, char *dst, uint64_t total,
                   Mapping mem) except -1:
    """A message of total bytes at `address` in world rank `world`, copied
    into dst, a pinned buffer of at least total bytes: True when done, False
    when it must stream instead (no copy allowed with that rank, no address,
    dst inside the region, the kernel refusing).  Large copies drop the GIL."""
    cdef int pid = _sc_source(world, address)
    cdef bint ok
    if pid == 0 or total == 0:
        return False
    # The kernel's copy does not keep the region's alignment rules
    # (device memory in ARM64 guests): such region buffers stream.
    if mem is not None and mem.refuses_kernel_copy(dst, <Py_ssize_t>total):
        return False
    if total >= NOGIL_MIN_BYTES:
        with nogil:
            ok = _sc_copy(pid, address, dst, total)
    else:
        ok = _sc_copy(pid, address, dst, total)
    if ok:
        _sc_messages[world] += 1
        _sc_bytes[world] += total
    return ok


def single_copy_into(Mapping mem, Py_ssize_t world, uint64_t address, object out,
                     uint64_t total):
    """_sc_read into the writable buffer `out` (the engine's receives)."""
    cdef Py_buffer view
    if _sc_source(world, address) == 0:
        return False        # (before pinning: the common case when nobody copies)
    PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        if <uint64_t>view.len < total:
            return False
        return _sc_read(world, address, <char *>view.buf, total, mem)
    finally:
        PyBuffer_Release(&view)


def single_copy_payload(Mapping mem, Py_ssize_t world, object data):
    """The RTS payload announcing `data` (a contiguous buffer) to world
    rank `world`: its address as 8 little-endian bytes, or None (that rank
    does not copy from us, or the buffer lies in a region of device memory)."""
    cdef Py_buffer view
    cdef uint64_t address
    if not _sc_tell(world):
        return None
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if mem is not None and mem.refuses_kernel_copy(<char *>view.buf, view.len):
            return None
        address = <uintptr_t>view.buf
    finally:
        PyBuffer_Release(&view)
    return PyBytes_FromStringAndSize(<char *>&address, 8)


cdef inline uint64_t _rts_floor(bint addressed, uint64_t eager_limit) noexcept nogil:
    """The most bytes an RTS may not announce: the eager limit, or 0 when it
    carries the sender's address (to a receiver that copies, buffers of
    copy_min bytes and more go by rendezvous, FastPath._eager_max)."""
    return 0 if addressed else eager_limit


cdef bint _rts_address(RxRing rx, uint64_t *address) except -1:
    """The sender's address an RTS at the head of rx carries (0: none);
    False for a payload no RTS has (the engine reports it)."""
    address[0] = 0
    if rx.length == 8:
        rx.copy_out(<char *>address, 8)
    return rx.length == 0 or rx.length == 8


def single_copy_tables():
    """(readable_pids, tells) as set_single_copy takes them: to turn single
    copies off for a while and back on (tests of the streamed path)."""
    return ([_sc_pid[i] for i in range(_sc_ranks)],
            [bool(_sc_told[i]) for i in range(_sc_ranks)])
