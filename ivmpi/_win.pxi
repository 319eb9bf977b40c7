# Windows (ivmpi/win.py): the memory fence of Win.Sync and of the ends of
# epochs, and the one-call paths of Put, Get, Flush and Fetch_and_op
# (included by _fastcopy.pyx).

from libc.stdint cimport int32_t

cdef extern from *:
    """
    static inline void ivmpi_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    void ivmpi_full_fence() nogil


def memory_fence():
    """A full memory barrier: this thread's earlier loads and stores (to the
    region too) are ordered before its later ones, for every other core and VM."""
    ivmpi_full_fence()


# A lock of the epoch held in the region (_WinState.locked's values).
_HELD_SHARED, _HELD_EXCLUSIVE = (1, True), (2, True)


cdef class WinFast:
    """One window's one-call paths to region memory: Put, Get, Flush,
    Accumulate and Fetch_and_op, the passive-target locks and Fence.

    They take the commonest form only: a contiguous buffer of plain numbers
    (numpy array, bytes, bytearray, memoryview), a target rank whose part of
    the window lies in the region, an integer displacement (or None), inside
    an open access epoch.  Anything else returns to ivmpi.win's general
    methods (`general_put`, `general_get`, `general_flush`, ...), which also
    give the errors.  ivmpi.win keeps `allowed`/`passive` (one byte per target:
    an access epoch is open / the target is locked) up to date."""
    cdef Mapping mem
    cdef public list offsets, sizes, units
    cdef public bytearray allowed, passive
    cdef public object dirty, pending
    cdef public Py_ssize_t rank, n
    cdef public object general_put, general_get, general_flush
    cdef public bint enabled
    # Fetch_and_op (see fetch_and_op below): every rank's bakery words, the
    # predefined ops by handle, and the general path.
    cdef public list lock_blocks
    cdef public dict op_codes
    cdef public object sum_op, general_fetch_and_op
    # Set while a thread of this process is inside the bakery through the
    # general path: this rank's bakery words are one per process, so the
    # one-call path (which runs whole under the GIL) then stays out.
    cdef public bint bakery_busy
    # Passive-target locks of targets whose part lies in the region (see
    # _lock_attempt): per target 1 when its locks are taken in the region; the
    # window's epoch state (ivmpi.win._WinState) for the one-call Lock and
    # Unlock, which take the common case and leave the rest (and every
    # error) to `general_lock`/`general_unlock`.
    cdef public bytearray region_locks
    cdef public object state, general_lock, general_unlock, general_lock_all, general_unlock_all
    cdef public long lock_exclusive, lock_shared
    cdef public dict locked         # the window's {target: (kind, held)} (_WinState.locked)
    # Accumulate (see _accumulate): numpy type number -> (the library's
    # datatype handle, class); op handle -> (1 combined by the library or 2
    # REPLACE, the classes it applies to) (ivmpi.win._accumulate_tables).
    cdef public dict acc_types, acc_ops
    cdef public object general_accumulate
    # Fence: the window's barrier (one Cython call), MPI's MODE_NOSUCCEED.
    cdef public object barrier, general_fence
    cdef public long mode_nosucceed
    cdef bytearray acc_scratch
    # Kept by _WinState.sync_fast: an epoch other than single locks is open
    # (fence, Lock_all, PSCW access), so the one-call Lock/Unlock stay out;
    # all_held: a Lock_all holding every target's lock is the only epoch;
    # all_region_locks: every target's part lies in the region, so its
    # locks, accumulates and accesses are the origins' own (Fence needs only
    # a memory fence and a barrier).
    cdef public bint other_epochs, all_held, all_region_locks

    def __init__(self, Mapping mem, list offsets, list sizes, list units, Py_ssize_t rank):
        self.mem = mem
        self.offsets, self.sizes, self.units = offsets, sizes, units
        self.n = len(offsets)
        self.rank = rank
        self.allowed = bytearray(self.n)
        self.passive = bytearray(self.n)
        self.enabled = True

    cdef Py_ssize_t _where(self, object target_rank, object target, Py_ssize_t nbytes) except -2:
        """Region offset of the target bytes, or -1 to take the general path."""
        cdef Py_ssize_t t, disp, unit, size, off
        if not self.enabled or type(target_rank) is not int:
            return -1
        t = target_rank
        if t < 0 or t >= self.n or not self.allowed[t]:
            return -1
        off = self.offsets[t]
        if off < 0:
            return -1
        if target is None:
            disp = 0
        elif type(target) is int:
            if target < 0 or target > (1 << 48):
                return -1
            disp = target
        else:
            return -1
        unit = self.units[t]
        size = self.sizes[t]
        if disp > size // unit or disp * unit + nbytes > size:
            return -1       # the general path reports the range error
        return off + disp * unit

    cdef int _move(self, object buf, object target_rank, object target, bint get) except -1:
        """1 when done here, 0 for the general path."""
        cdef char *data
        cdef Py_ssize_t length, at
        cdef Py_buffer view
        if _direct(buf, get, &data, &length) and length < NOGIL_MIN_BYTES:
            at = self._where(target_rank, target, length)
            if at < 0:
                return 0
            self.mem._check_range(at, length, "Get" if get else "Put")
            if get:
                self.mem._copy_out(at, data, length)
            else:
                self.mem._copy_in(at, data, length)
            return 1
        if type(buf) is not cnp.ndarray and type(buf) is not bytearray \
                and type(buf) is not bytes and type(buf) is not memoryview:
            return 0
        if not _pin(buf, get, &view):
            return 0
        try:
            at = self._where(target_rank, target, view.len)
            if at < 0:
                return 0
            self.mem._check_range(at, view.len, "Get" if get else "Put")
            if get:
                self.mem._copy_out(at, view.buf, view.len)
            else:
                self.mem._copy_in(at, view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return 1

    def Put(self, origin, target_rank, target=None):
        if not self._move(origin, target_rank, target, False):
            self.general_put(origin, target_rank, target)

    def Get(self, origin, target_rank, target=None):
        if not self._move(origin, target_rank, target, True):
            self.general_get(origin, target_rank, target)

    def Flush(self, rank):
        # Direct copies are complete when Put/Get return: with no request
        # outstanding to that target, a flush is a memory fence.
        if (self.enabled and type(rank) is int and 0 <= rank < self.n and rank != self.rank
                and self.passive[rank] and not (self.dirty and rank in self.dirty)
                and not (self.pending and self.pending.get(rank))):
            ivmpi_full_fence()
            return
        self.general_flush(rank)

    # --- the bakery: mutual exclusion for Fetch_and_op and for taking locks --------

    cdef int _bakery_enter(self, Py_ssize_t t) except -1:
        """Take rank t's bakery lock (ivmpi.win._Bakery, the same protocol);
        0 after a short spin without it (the ticket is then withdrawn and the
        general path waits, with liveness checks and IVMPI_TIMEOUT)."""
        cdef Py_ssize_t n = len(self.lock_blocks), j, spin
        cdef Py_ssize_t mine = <Py_ssize_t>self.lock_blocks[self.rank] + 16 * t
        cdef Py_ssize_t theirs
        cdef uint64_t ticket = 0, seen, choosing
        cdef char *base = self.mem.base
        for j in range(n):
            self.mem._check_word(<Py_ssize_t>self.lock_blocks[j] + 16 * t, 16, "bakery")
        ivmpi_store_u64(base + mine, 1)
        ivmpi_full_fence()
        for j in range(n):
            seen = ivmpi_load_u64(base + <Py_ssize_t>self.lock_blocks[j] + 16 * t + 8)
            if seen > ticket:
                ticket = seen
        if ticket == U64_MAX:
            ivmpi_store_u64(base + mine, 0)
            return 0            # a corrupt ticket: the general path reports it
        ticket += 1
        ivmpi_store_u64(base + mine + 8, ticket)
        ivmpi_full_fence()
        ivmpi_store_u64(base + mine, 0)
        ivmpi_full_fence()
        for j in range(n):
            if j == self.rank:
                continue
            theirs = <Py_ssize_t>self.lock_blocks[j] + 16 * t
            for spin in range(4096):
                choosing = ivmpi_load_u64(base + theirs)
                seen = ivmpi_load_u64(base + theirs + 8)
                if not choosing and (seen == 0 or seen > ticket
                                     or (seen == ticket and j > self.rank)):
                    break
                ivmpi_cpu_relax()
            else:
                ivmpi_full_fence()
                ivmpi_store_u64(base + mine + 8, 0)
                return 0
        ivmpi_full_fence()
        return 1

    cdef void _bakery_leave(self, Py_ssize_t t) noexcept:
        ivmpi_full_fence()
        ivmpi_store_u64(self.mem.base + <Py_ssize_t>self.lock_blocks[self.rank] + 16 * t + 8, 0)

    # --- passive-target locks in the region --------------------------------------

    cdef inline Py_ssize_t _lock_word(self, Py_ssize_t j, Py_ssize_t t) except -1:
        """Region offset of rank j's lock word for target t (after j's
        bakery words; docs/layout.md, "Lock words"), checked."""
        cdef Py_ssize_t at = <Py_ssize_t>self.lock_blocks[j] + 16 * self.n + 8 * t
        self.mem._check_word(at, 8, "window lock")
        return at

    cdef int _lock_attempt(self, Py_ssize_t t, uint64_t kind) except -1:
        """One step of taking target t's window lock in `kind` (1 shared, 2
        exclusive): 1 when it is ours, 0 to try again later.

        Every rank announces first (stores `kind` in its own word, full
        fence) and only then reads the others' words, so of two ranks that
        conflict at least one sees the other (each word has one writer; no
        read-modify-write touches the region).  A shared locker that sees an
        exclusive word withdraws (stores 0) and waits; an exclusive one keeps
        its word, so new shared lockers stand back, and waits for the others
        to clear, except that it withdraws for an exclusive word of a lower
        rank (the tie-break between writers).  Any value other than 0, 1, 2
        (a corrupt word) counts as an exclusive word.  The caller that gives
        up must withdraw (lock_withdraw)."""
        cdef Py_ssize_t j
        cdef Py_ssize_t mine = self._lock_word(self.rank, t)
        cdef uint64_t word
        cdef bint busy = False
        cdef char *base = self.mem.base
        if ivmpi_load_u64(base + mine) != kind:
            ivmpi_store_u64(base + mine, kind)
            ivmpi_full_fence()
        for j in range(self.n):
            if j == self.rank:
                continue
            word = ivmpi_load_u64(base + self._lock_word(j, t))
            if word == 0 or (word == 1 and kind == 1):
                continue
            if word != 1 and (kind == 1 or j < self.rank):
                ivmpi_store_u64(base + mine, 0)     # withdraw: they go first
                return 0
            busy = True
        if busy:
            return 0
        ivmpi_full_fence()      # our accesses of the epoch come after
        return 1

    def lock_attempt(self, Py_ssize_t t, uint64_t kind):
        return self._lock_attempt(t, kind) == 1

    def lock_withdraw(self, Py_ssize_t t):
        ivmpi_store_u64(self.mem.base + self._lock_word(self.rank, t), 0)

    def lock_holders(self, Py_ssize_t t):
        """{rank: word} of the other ranks whose lock word for t is set."""
        cdef Py_ssize_t j
        cdef uint64_t word
        held = {}
        for j in range(self.n):
            if j != self.rank:
                word = ivmpi_load_u64(self.mem.base + self._lock_word(j, t))
                if word:
                    held[j] = word
        return held

    def lock_release(self, Py_ssize_t t):
        """Drop our lock of target t: our accesses first (full fence), then
        the word."""
        cdef Py_ssize_t at = self._lock_word(self.rank, t)
        ivmpi_full_fence()
        ivmpi_store_u64(self.mem.base + at, 0)

    def Lock(self, rank, lock_type=None, assertion=0):
        cdef Py_ssize_t t
        cdef uint64_t kind = 0
        if lock_type is None:
            lock_type = self.lock_exclusive
        if (self.enabled and self.region_locks is not None and not self.other_epochs
                and type(rank) is int and type(lock_type) is int and assertion == 0):
            t = rank
            if 0 <= t < self.n and self.region_locks[t] and rank not in self.locked:
                if lock_type == self.lock_exclusive:
                    kind = 2
                elif lock_type == self.lock_shared:
                    kind = 1
                if kind:
                    if self._lock_attempt(t, kind):
                        self.locked[rank] = _HELD_EXCLUSIVE if kind == 2 else _HELD_SHARED
                        self.passive[t] = 1
                        self.allowed[t] = 1
                        return
                    self.lock_withdraw(t)       # the general path waits
        self.general_lock(rank, lock_type, assertion)

    def Unlock(self, rank):
        cdef Py_ssize_t t
        if (self.enabled and self.region_locks is not None and not self.other_epochs
                and type(rank) is int and not self.dirty):
            t = rank
            if 0 <= t < self.n and self.region_locks[t] \
                    and not (self.pending and self.pending.get(rank)):
                entry = self.locked.get(rank)
                if entry is _HELD_EXCLUSIVE or entry is _HELD_SHARED:
                    del self.locked[rank]
                    self.passive[t] = 0
                    self.allowed[t] = 0
                    self.lock_release(t)
                    return
        self.general_unlock(rank)

    def Lock_all(self, assertion=0):
        cdef Py_ssize_t t, got = 0
        if (self.enabled and self.region_locks is not None and not self.other_epochs
                and assertion == 0 and not self.locked and self.all_region_locks):
            while got < self.n and self._lock_attempt(got, 1):
                got += 1
            if got == self.n:
                self.state.lock_all = "held"
                self.other_epochs = self.all_held = True
                for t in range(self.n):
                    self.passive[t] = 1
                    self.allowed[t] = 1
                return
            for t in range(got + 1):
                self.lock_release(t)
        self.general_lock_all(assertion)

    def Unlock_all(self):
        cdef Py_ssize_t t
        if (self.enabled and self.all_held and self.all_region_locks and not self.dirty
                and not (self.pending and any(self.pending.values()))):
            self.state.lock_all = False
            self.other_epochs = self.all_held = False
            for t in range(self.n):
                self.passive[t] = 0
                self.allowed[t] = 0
            for t in range(self.n):
                self.lock_release(t)
            return
        self.general_unlock_all()


    # --- Fence ---------------------------------------------------------------------

    def Fence(self, assertion=0):
        """A fence of a window whose every part lies in the region, with no
        other epoch open and nothing outstanding: every access of the epoch
        was the origin's own copy, complete when it returned, so a full
        memory fence and the window's barrier close it."""
        cdef Py_ssize_t t
        cdef bint open_next
        cdef object state = self.state
        if (self.enabled and self.all_region_locks and type(assertion) is int
                and not self.locked and not self.dirty and not state.lock_all
                and state.access is None and state.exposure is None
                and not (self.pending and any(self.pending.values()))):
            ivmpi_full_fence()
            self.barrier()
            ivmpi_full_fence()
            open_next = not (assertion & self.mode_nosucceed)
            state.fence_open = open_next
            self.other_epochs, self.all_held = open_next, False
            for t in range(self.n):
                self.passive[t] = 0
                self.allowed[t] = open_next
            return
        self.general_fence(assertion)

    # --- Accumulate on region memory --------------------------------------------

    cdef int _accumulate(self, object origin, object target_rank, object target,
                         object op) except -1:
        """Accumulate a contiguous numpy array of one predefined type into
        region memory, inside the target's bakery lock: the library's
        MPI_Reduce_local (as the general path's _combine) combines into the
        target bytes, in place, or in a private copy written back where the
        mapping keeps strict alignment.  1 done, 0 general path."""
        cdef char *data
        cdef char *scratch
        cdef Py_ssize_t length, at, t, elem
        cdef int code
        cdef bint in_place
        if self.acc_types is None or not self.enabled or self.bakery_busy \
                or type(origin) is not cnp.ndarray:
            return 0
        typed = self.acc_types.get(cnp.PyArray_TYPE(<cnp.ndarray>origin))
        how = self.acc_ops.get(getattr(op, "handle", None))
        if typed is None or how is None or not (<int>how[1] & <int>typed[1]) \
                or not _direct(origin, False, &data, &length):
            return 0
        datatype, code = typed[0], how[0]
        elem = cnp.PyArray_ITEMSIZE(<cnp.ndarray>origin)
        at = self._where(target_rank, target, length)
        if at < 0 or length == 0 or length % elem:
            return 0
        t = target_rank
        self.mem._check_range(at, length, "Accumulate")
        # In ordinary memory (a host file) the library combines in place, one
        # pass over the target; device memory only through the copy core.
        in_place = self.mem.ordinary and at % elem == 0
        if code == 1 and not in_place:
            if self.acc_scratch is None or len(self.acc_scratch) < length:
                self.acc_scratch = bytearray(length)
            scratch = PyByteArray_AS_STRING(self.acc_scratch)
        if not self._bakery_enter(t):
            return 0
        try:
            if code == 2:
                self.mem._copy_in(at, data, length)
            elif in_place:
                _user_combine(data, self.mem.base + at, length // elem, <size_t>datatype,
                              <size_t>op.handle)
            else:
                self.mem._copy_out(at, scratch, length)
                _user_combine(data, scratch, length // elem, <size_t>datatype, <size_t>op.handle)
                self.mem._copy_in(at, scratch, length)
        finally:
            self._bakery_leave(t)
        return 1

    def Accumulate(self, origin, target_rank, target=None, op=None):
        if op is None:
            op = self.sum_op
        if not self._accumulate(origin, target_rank, target, op):
            self.general_accumulate(origin, target_rank, target, op)

    # --- Fetch_and_op on region memory, the counter's case ---------------------

    cdef int _fetch_and_op(self, object origin, object result, object target_rank,
                           object target_disp, object op) except -1:
        cdef cnp.ndarray o, r
        cdef int num, code
        cdef char *odata
        cdef char *rdata
        cdef Py_ssize_t olen, rlen, at, t
        cdef unsigned char old[8]
        cdef unsigned char new[8]
        if self.lock_blocks is None or not self.enabled or self.bakery_busy:
            return 0
        if type(origin) is not cnp.ndarray or type(result) is not cnp.ndarray:
            return 0
        o, r = <cnp.ndarray>origin, <cnp.ndarray>result
        num = cnp.PyArray_TYPE(o)
        if num != cnp.PyArray_TYPE(r) or cnp.PyArray_SIZE(o) != 1 or cnp.PyArray_SIZE(r) != 1:
            return 0
        if not (num == cnp.NPY_LONG or num == cnp.NPY_LONGLONG or num == cnp.NPY_ULONG
                or num == cnp.NPY_ULONGLONG or num == cnp.NPY_INT or num == cnp.NPY_UINT
                or num == cnp.NPY_DOUBLE):
            return 0
        code = self.op_codes.get(getattr(op, "handle", None), -1)
        if code < 0:
            return 0
        if not _direct(origin, False, &odata, &olen) or not _direct(result, True, &rdata, &rlen):
            return 0
        if olen != rlen or (olen != 4 and olen != 8):
            return 0
        at = self._where(target_rank, target_disp, olen)
        if at < 0:
            return 0
        t = target_rank
        self.mem._check_range(at, olen, "Fetch_and_op")
        if not self._bakery_enter(t):
            return 0
        try:
            self.mem._copy_out(at, old, olen)
            _combine_one(num, code, odata, old, new, olen)
            if code != 1:           # NO_OP only reads
                self.mem._copy_in(at, new, olen)
        finally:
            self._bakery_leave(t)
        memcpy(rdata, old, olen)
        return 1

    def Fetch_and_op(self, origin, result, target_rank, target_disp=0, op=None):
        if op is None:
            op = self.sum_op
        if not self._fetch_and_op(origin, result, target_rank, target_disp, op):
            self.general_fetch_and_op(origin, result, target_rank, target_disp, op)


cdef void _combine_one(int num, int code, const char *origin, const unsigned char *old,
                       unsigned char *new, Py_ssize_t size) noexcept:
    """new = old (op) origin for one element; codes: 0 SUM, 1 NO_OP, 2 REPLACE, 3 MAX, 4 MIN."""
    cdef int64_t a8, b8
    cdef uint64_t u8, v8
    cdef int32_t a4, b4
    cdef uint32_t u4, v4
    cdef double x, y
    if code == 1:
        memcpy(new, old, size)
        return
    if code == 2:
        memcpy(new, origin, size)
        return
    if num == cnp.NPY_DOUBLE:
        memcpy(&x, old, 8)
        memcpy(&y, origin, 8)
        x = x + y if code == 0 else (x if (x >= y) == (code == 3) else y)
        memcpy(new, &x, 8)
    elif (num == cnp.NPY_LONG or num == cnp.NPY_LONGLONG) and size == 8:
        memcpy(&a8, old, 8)
        memcpy(&b8, origin, 8)
        if code == 0:
            a8 = <int64_t>(<uint64_t>a8 + <uint64_t>b8)
        elif (code == 3) == (b8 > a8):
            a8 = b8
        memcpy(new, &a8, 8)
    elif size == 8:
        memcpy(&u8, old, 8)
        memcpy(&v8, origin, 8)
        if code == 0:
            u8 = u8 + v8
        elif (code == 3) == (v8 > u8):
            u8 = v8
        memcpy(new, &u8, 8)
    elif num == cnp.NPY_INT or num == cnp.NPY_LONG:
        memcpy(&a4, old, 4)
        memcpy(&b4, origin, 4)
        if code == 0:
            a4 = <int32_t>(<uint32_t>a4 + <uint32_t>b4)
        elif (code == 3) == (b4 > a4):
            a4 = b4
        memcpy(new, &a4, 4)
    else:
        memcpy(&u4, old, 4)
        memcpy(&v4, origin, 4)
        if code == 0:
            u4 = u4 + v4
        elif (code == 3) == (v4 > u4):
            u4 = v4
        memcpy(new, &u4, 4)


def region_put_runs(Mapping mem, Py_ssize_t base, runs, src):
    """Copy the packed bytes of src into the region, run by run: run k
    (row k of the int64 array `runs`: offset from base, length) takes the
    next length bytes.  Every run is bounds-checked; the copy core keeps
    strict alignment."""
    _region_runs(mem, base, runs, src, False)


def region_get_runs(Mapping mem, Py_ssize_t base, runs, dst):
    """The reverse of region_put_runs: the runs' bytes packed into dst."""
    _region_runs(mem, base, runs, dst, True)


cdef int _region_runs(Mapping mem, Py_ssize_t base, object runs, object buf,
                      bint get) except -1:
    cdef const int64_t[:, ::1] table = runs
    cdef Py_buffer view
    cdef Py_ssize_t k, at = 0, total = 0, n = table.shape[0]
    if table.shape[1] != 2:
        raise BufferSpecError("runs must be an array of (offset, length) rows")
    for k in range(n):
        if table[k, 1] < 0:
            raise BufferSpecError("a run of negative length")
        mem._check_range(base + table[k, 0], table[k, 1], "Get" if get else "Put")
        total += table[k, 1]
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE | (PyBUF_WRITABLE if get else 0))
    try:
        if view.len != total:
            raise BufferSpecError(f"the runs hold {total} bytes, the buffer {view.len}")
        for k in range(n):
            if get:
                mem._copy_out(base + table[k, 0], <char *>view.buf + at, table[k, 1])
            else:
                mem._copy_in(base + table[k, 0], <char *>view.buf + at, table[k, 1])
            at += table[k, 1]
    finally:
        PyBuffer_Release(&view)
    return 0
