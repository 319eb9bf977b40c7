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
from libc.stdint cimport int64_t
from libc.string cimport memset
from libc.stdlib cimport calloc, free
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_AS_STRING
from posix.unistd cimport getpid

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t process_vm_readv(int pid, const iovec *local_iov, unsigned long liovcnt,
                             const iovec *remote_iov, unsigned long riovcnt,
                             unsigned long flags)

    ssize_t process_vm_writev(int pid, const iovec *local_iov, unsigned long liovcnt,
                              const iovec *remote_iov, unsigned long riovcnt,
                              unsigned long flags)

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

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

# Shared copies.  While a send of ours waits for its receiver to copy a
# large message out of our memory, our core may idle; the receiver's copy
# is a single thread's.  So the two split it: the receiver copies the
# first half (process_vm_readv) while the sender writes the second into
# the receiver's buffer (process_vm_writev), both cores copying at once
# (two copies run at 1.5-2x one copy's aggregate speed on this kind of
# machine).  What they say to each other goes through each process's own
# memory, never the region (which other VMs can write): every process has
# one 64-byte line per world rank (_ShareLine), which only that rank
# writes, with process_vm_writev, and which this process reads:
#   offer:   that rank, sending us send id s, will look for a request while
#            it waits (s + 1; written before its RTS);
#   request: that rank, receiving our send id s that we offered, asks us
#            to write `length` bytes from offset `offset` of our buffer to
#            its address `dst` (request_id = s + 1);
#   reply:   that rank, the sender of send id s we asked, says it wrote
#            its part ((s + 1) << 1) or will not (((s + 1) << 1) | 1);
#   claim:   that rank, the sender, is about to write its part (s + 1);
#   revoke:  that rank, the receiver, takes the part back (s + 1).
# The receiver copies its half, then takes the sender's part back unless
# the sender has claimed it: each writes its word, fences, then reads the
# other's (so at least one sees the other's), and a sender that sees the
# part taken back writes nothing and replies so.  A receiver therefore
# never waits for a sender that is not looking (an Isend's caller
# computing, a nonblocking collective not yet waited for); it waits only
# for a part being written.  It answers the RTS with the usual CTS (all
# bytes copied) once all is in place; the sender's buffer is in use until
# that CTS, as before.  Pairs share only when each has written the other's
# lines at start-up, and not where ranks outnumber cores (the sender's
# core is then someone else's).
ctypedef struct _ShareLine:
    uint64_t offer
    uint64_t request_id
    uint64_t request_dst
    uint64_t request_offset
    uint64_t request_length
    uint64_t reply
    uint64_t claim
    uint64_t revoke

cdef enum:
    _SHARE_MIN = 262144          # smaller messages: one copy by the receiver

# Our open offers, one per world rank at most: a waiting send's bytes.
ctypedef struct _Offer:
    uint64_t id                 # send id + 1; 0: no offer open
    const char *data
    uint64_t total
    bint served

cdef _ShareLine *_sc_lines = NULL           # ours: one line per world rank
cdef Py_ssize_t _sc_line_count = 0
cdef _Offer *_sc_offers = NULL              # per world rank: our open offer to it
cdef Py_ssize_t _sc_open_offers = 0
cdef uint64_t *_sc_peer_lines = NULL        # per world rank: its lines' address, 0: no sharing
cdef unsigned char *_sc_asking = NULL       # per world rank: a request of ours to it is open
cdef unsigned long long *_sc_shared = NULL  # per world rank: its messages whose copy it shared
cdef Py_ssize_t _sc_self = -1               # our world rank
cdef bint _sc_share_on = True               # not where ranks outnumber cores (set_sharing)
cdef double _sc_share_timeout = 10.0        # seconds to wait for a sender's part


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


def make_share_lines(Py_ssize_t ranks):
    """This process's share lines (zeroed when new) for `ranks` world ranks;
    their address.  Lines once published are never freed: a peer may
    still write them."""
    global _sc_lines, _sc_line_count
    cdef void *lines = NULL
    if _sc_lines != NULL and ranks <= _sc_line_count:
        return <uintptr_t>_sc_lines
    if posix_memalign(&lines, 64, (ranks if ranks > 0 else 1) * sizeof(_ShareLine)) != 0:
        raise MemoryError()
    memset(lines, 0, (ranks if ranks > 0 else 1) * sizeof(_ShareLine))
    _sc_lines, _sc_line_count = <_ShareLine *>lines, ranks
    return <uintptr_t>lines


def probe_share_write(int pid, uintptr_t lines, Py_ssize_t me):
    """Can we write the line for world rank `me` in the share lines at
    `lines` of process pid?  (Writes its offer word as zero: no offer.)"""
    cdef uint64_t zero = 0
    return _sc_write(pid, <uint64_t>(lines + me * sizeof(_ShareLine)), <const char *>&zero, 8)


def set_sharing(bint on):
    """Shared copies on or off for this process (off where ranks
    outnumber cores)."""
    global _sc_share_on
    _sc_share_on = on


def shared_copy_counts():
    """{world rank: messages whose copy it shared with us} so far."""
    return {i: _sc_shared[i] for i in range(_sc_ranks) if _sc_shared != NULL and _sc_shared[i]}


def set_single_copy(list readable_pids, list tells, list share_lines=None, Py_ssize_t me=-1,
                    double share_timeout=10.0):
    """Start-up: readable_pids[w] the pid of world rank w if we may copy its
    messages from its memory (0: no); tells[w] true if w may copy ours;
    share_lines[w] the address of w's share lines when we share copies with
    it (0 or None: not), `me` our world rank."""
    global _sc_pid, _sc_told, _sc_ranks, _sc_messages, _sc_bytes, _sc_peer_lines, _sc_asking
    global _sc_shared, _sc_self, _sc_share_timeout, _sc_offers, _sc_open_offers
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
    cdef uint64_t *peer_lines = <uint64_t *>calloc(n if n > 0 else 1, sizeof(uint64_t))
    cdef unsigned char *asking = <unsigned char *>calloc(n if n > 0 else 1, 1)
    if peer_lines == NULL or asking == NULL:
        free(pids)
        free(told)
        free(peer_lines)
        free(asking)
        raise MemoryError()
    if _sc_shared == NULL or n != _sc_ranks:
        free(_sc_shared)
        _sc_shared = <unsigned long long *>calloc(n if n > 0 else 1, sizeof(unsigned long long))
        if _sc_shared == NULL:
            raise MemoryError()
    for i in range(n):
        pids[i] = readable_pids[i]
        told[i] = 1 if tells[i] else 0
        if share_lines is not None and share_lines[i] and pids[i] > 0 and told[i] \
                and _sc_lines != NULL and 0 <= me < n and n <= _sc_line_count:
            peer_lines[i] = <uint64_t>share_lines[i]
    free(_sc_pid)
    free(_sc_told)
    free(_sc_peer_lines)
    free(_sc_asking)
    if _sc_offers == NULL or n != _sc_ranks:
        free(_sc_offers)
        _sc_offers = <_Offer *>calloc(n if n > 0 else 1, sizeof(_Offer))
        _sc_open_offers = 0
        if _sc_offers == NULL:
            raise MemoryError()
    _sc_pid, _sc_told, _sc_ranks = pids, told, n
    _sc_peer_lines, _sc_asking, _sc_self = peer_lines, asking, me
    _sc_share_timeout = share_timeout


def shares_copies_with(Py_ssize_t world):
    """Do we share the copies of large messages with world rank `world`?"""
    return _sc_shares(world)


cdef inline bint _sc_shares(Py_ssize_t world) noexcept nogil:
    return _sc_share_on and 0 <= world < _sc_ranks and _sc_peer_lines != NULL \
        and _sc_peer_lines[world] != 0


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
    """(readable_pids, tells, share_lines, me, share_timeout) as
    set_single_copy takes them: to turn single copies off for a while and
    back on (tests of the streamed path)."""
    return ([_sc_pid[i] for i in range(_sc_ranks)],
            [bool(_sc_told[i]) for i in range(_sc_ranks)],
            [_sc_peer_lines[i] for i in range(_sc_ranks)], _sc_self, _sc_share_timeout)


# --- shared copies (above) -----------------------------------------------------

cdef bint _sc_write(int pid, uint64_t address, const char *src, uint64_t total) noexcept nogil:
    """Write total bytes at src into process pid at `address`; False when
    the kernel refuses any part."""
    cdef iovec local, remote
    cdef uint64_t done = 0
    cdef ssize_t n
    while done < total:
        local.iov_base = <void *>(src + done)
        local.iov_len = total - done
        remote.iov_base = <void *><uintptr_t>(address + done)
        remote.iov_len = total - done
        n = process_vm_writev(pid, &local, 1, &remote, 1, 0)
        if n < 0 and errno == EINTR:
            continue
        if n <= 0:
            return False
        done += <uint64_t>n
    return True


cdef inline uint64_t _sc_peer_line(Py_ssize_t world) noexcept nogil:
    """The address of our line in world rank `world`'s share lines."""
    return _sc_peer_lines[world] + <uint64_t>_sc_self * sizeof(_ShareLine)


cdef bint _sc_offer(Py_ssize_t world, uint64_t send_id, const char *data,
                    uint64_t total) noexcept:
    """Before the RTS of a blocking send of total bytes at data to world
    rank `world`, whose waiting will serve its receiver's request: tell it
    so (GIL held: one open offer per peer).  True when offered; the caller
    withdraws it once the send is complete (_sc_withdraw)."""
    global _sc_open_offers
    cdef uint64_t offer = send_id + 1
    cdef _Offer *o
    if total < _SHARE_MIN or not _sc_shares(world) or not _sc_told[world] \
            or _sc_offers[world].id != 0:
        return False
    if not _sc_write(_sc_pid[world], _sc_peer_line(world), <const char *>&offer, 8):
        return False
    o = &_sc_offers[world]
    o.data, o.total, o.served = data, total, False
    ivmpi_store_release_u64(&o.id, offer)
    _sc_open_offers += 1
    return True


cdef void _sc_withdraw(Py_ssize_t world, uint64_t send_id) noexcept:
    """The offer of send send_id to world rank `world` is over (its send
    complete): the slot is free for the next."""
    global _sc_open_offers
    if 0 <= world < _sc_ranks and _sc_offers != NULL and _sc_offers[world].id == send_id + 1:
        ivmpi_store_release_u64(&_sc_offers[world].id, 0)
        _sc_open_offers -= 1


cdef inline bint _sc_asked(Py_ssize_t world) noexcept nogil:
    """Has world rank `world` asked for a part of our open offer to it (not
    answered yet)?"""
    cdef uint64_t id = ivmpi_load_acquire_u64(&_sc_offers[world].id)
    return id != 0 and not _sc_offers[world].served \
        and ivmpi_load_acquire_u64(&_sc_lines[world].request_id) == id


cdef int _sc_serve_offers() noexcept nogil:
    """Answer every request that came for our open offers (each once):
    write the part asked for into the receiver's buffer, then the reply.
    Called wherever this process waits while offers are open: a sender
    polling for its CTS, the engine's rounds, and a receiver waiting for
    a part itself (two ranks may each wait for the other's).  The number
    answered."""
    cdef Py_ssize_t world
    cdef _Offer *o
    cdef _ShareLine *line
    cdef uint64_t id, offset, length, dst, reply
    cdef int answered = 0
    cdef bint ok
    if _sc_open_offers <= 0:
        return 0
    for world in range(_sc_ranks):
        if not _sc_asked(world):
            continue
        o = &_sc_offers[world]
        id = o.id
        line = &_sc_lines[world]
        dst = line.request_dst
        offset = line.request_offset
        length = line.request_length
        o.served = True
        # The receiver's own words, read from our memory: a part of this
        # send, written to the receiver's own buffer.  Anything else is
        # declined.  Claimed first; written only if not taken back meanwhile.
        ok = offset <= o.total and length <= o.total - offset and length > 0 \
            and _sc_write(_sc_pid[world], _sc_peer_line(world) + 48, <const char *>&id, 8)
        ivmpi_fence()
        ok = ok and ivmpi_load_acquire_u64(&line.revoke) != id \
            and _sc_write(_sc_pid[world], dst, o.data + offset, length)
        ivmpi_fence()       # (our part is in place before the reply says so)
        reply = (id << 1) | (0 if ok else 1)
        _sc_write(_sc_pid[world], _sc_peer_line(world) + 40, <const char *>&reply, 8)
        answered += 1
    return answered


cdef bint _sc_requested() noexcept nogil:
    """Has a request come for an open offer of ours (not answered yet)?"""
    cdef Py_ssize_t world
    if _sc_open_offers <= 0:
        return False
    for world in range(_sc_ranks):
        if _sc_asked(world):
            return True
    return False


def serve_shares(dict sharing):
    """The engine's round for its offered sends waiting for their CTS
    (sharing {(world, send id): SendOp}): the requests that came answered,
    the offers of complete sends withdrawn.  True when any was answered."""
    cdef int answered
    with nogil:
        answered = _sc_serve_offers()
    for key in list(sharing):
        if sharing[key].done:
            del sharing[key]
            _sc_withdraw(key[0], key[1])
    return answered > 0


cdef bint _sc_offered_to_us(Py_ssize_t world, uint64_t send_id) noexcept:
    """Did world rank `world` offer to share the copy of its send send_id?"""
    return _sc_shares(world) and \
        ivmpi_load_acquire_u64(&_sc_lines[world].offer) == send_id + 1


cdef bint _sc_read_shared(Py_ssize_t world, uint64_t send_id, uint64_t address, char *dst,
                          uint64_t total, Mapping mem) except -1:
    """_sc_read of world rank `world`'s send send_id, with the copy shared
    when its sender offered (above): we copy the first half, it writes the
    second into dst.  True when all total bytes are in dst; False, as
    _sc_read, when the message must stream instead."""
    cdef int pid = _sc_source(world, address)
    cdef _ShareLine *line
    cdef uint64_t half, request[4], expected, reply
    cdef bint ok, claimed
    cdef int64_t deadline
    cdef int spins = 0
    if pid == 0 or total < _SHARE_MIN or _sc_asking[world] \
            or not _sc_offered_to_us(world, send_id):
        return _sc_read(world, address, dst, total, mem)
    if mem is not None and mem.refuses_kernel_copy(dst, <Py_ssize_t>total):
        return False
    line = &_sc_lines[world]
    half = (total // 2) & ~(<uint64_t>4095)
    request[0] = send_id + 1
    request[1] = <uint64_t><uintptr_t>(dst + half)
    request[2] = half
    request[3] = total - half
    # (request_dst, offset, length first, then the id the sender looks for.)
    if not _sc_write(pid, _sc_peer_line(world) + 16, <const char *>&request[1], 24):
        return _sc_read(world, address, dst, total, mem)
    ivmpi_fence()
    if not _sc_write(pid, _sc_peer_line(world) + 8, <const char *>&request[0], 8):
        return _sc_read(world, address, dst, total, mem)
    _sc_asking[world] = 1
    expected = (send_id + 1) << 1
    try:
        with nogil:
            ok = _sc_copy(pid, address, dst, half)
            reply = ivmpi_load_acquire_u64(&line.reply)
            if reply != expected and reply != (expected | 1):
                # Not done yet: take the part back unless it is being written
                # (claimed: usually so by now, seen without a system call).
                claimed = ivmpi_load_acquire_u64(&line.claim) == request[0]
                if not claimed:
                    claimed = not _sc_write(pid, _sc_peer_line(world) + 56,
                                            <const char *>&request[0], 8)
                    ivmpi_fence()
                    claimed = claimed or ivmpi_load_acquire_u64(&line.claim) == request[0]
                if claimed:
                    deadline = _now_ns() + <int64_t>(_sc_share_timeout * 1e9)
                    while True:
                        reply = ivmpi_load_acquire_u64(&line.reply)
                        if reply == expected or reply == (expected | 1):
                            break
                        # (It may be waiting for a part of ours at the same time.)
                        _sc_serve_offers()
                        spins += 1
                        if spins & 1023 == 0 and _now_ns() > deadline:
                            break
                        rg_relax()
                else:
                    reply = expected | 1        # ours to copy: it will write nothing
        if reply == (expected | 1):
            # It did not write its part: ours to copy.
            with nogil:
                ok = ok and _sc_copy(pid, address + half, dst + half, total - half)
        elif reply != expected:
            raise PeerError(f"ivmpi: world rank {world} did not finish its part of the copy of "
                            f"its {total}-byte message within {_sc_share_timeout:g} s "
                            f"(IVMPI_PEER_TIMEOUT)")
    finally:
        _sc_asking[world] = 0
    if ok and reply == expected:
        _sc_shared[world] += 1
    if ok:
        _sc_messages[world] += 1
        _sc_bytes[world] += total
    return ok


def single_copy_timing(Py_ssize_t nbytes, int reps=16):
    """(kernel, memcpy): the fastest of `reps` copies of nbytes, in seconds,
    by the kernel from this process's own memory (process_vm_readv, a
    receiver's one copy from its sender) and by the copy the rings use.
    Start-up weighs one against two of the other: what the kernel's copy
    costs differs by an order of magnitude between machines (4-5 us for
    4 KiB under some hypervisors, under 1 us on others).  (None, memcpy)
    when the kernel refuses."""
    cdef void *src = NULL
    cdef void *dst = NULL
    cdef iovec local, remote
    cdef int pid = getpid()
    cdef int64_t start, best_kernel = -1, best_copy = -1, took
    cdef int i
    cdef bint refused = False
    if nbytes <= 0 or reps <= 0:
        raise ValueError("nbytes and reps must be positive")
    if posix_memalign(&src, 4096, nbytes) != 0:
        raise MemoryError()
    if posix_memalign(&dst, 4096, nbytes) != 0:
        free(src)
        raise MemoryError()
    try:
        with nogil:
            memset(src, 1, nbytes)
            memset(dst, 0, nbytes)
            local.iov_base, local.iov_len = dst, nbytes
            remote.iov_base, remote.iov_len = src, nbytes
            # The first of each is not counted: pages and caches warm up.
            for i in range(reps + 1):
                start = _now_ns()
                if process_vm_readv(pid, &local, 1, &remote, 1, 0) != nbytes:
                    refused = True
                    break
                took = _now_ns() - start
                if i > 0 and (best_kernel < 0 or took < best_kernel):
                    best_kernel = took
            for i in range(reps + 1):
                start = _now_ns()
                ivmpi_copy_plain(dst, src, nbytes)
                took = _now_ns() - start
                if i > 0 and (best_copy < 0 or took < best_copy):
                    best_copy = took
    finally:
        free(src)
        free(dst)
    return (None if refused else best_kernel * 1e-9), best_copy * 1e-9
