# Windows (ivmpi/win.py): the memory fence of Win.Sync and of the ends of
# epochs (included by _fastcopy.pyx).

cdef extern from *:
    """
    static inline void ivmpi_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    void ivmpi_full_fence() nogil


def memory_fence():
    """A full memory barrier: this thread's earlier loads and stores (to the
    region too) are ordered before its later ones, for every other core and VM."""
    ivmpi_full_fence()


cdef class WinFast:
    """One window's one-call paths for Put, Get and Flush to region memory.

    They take the commonest form only: a contiguous buffer of plain numbers
    (numpy array, bytes, bytearray, memoryview), a target rank whose part of
    the window lies in the region, an integer displacement (or None), inside
    an open access epoch.  Anything else returns to ivmpi.win's general
    methods (`general_put`, `general_get`, `general_flush`), which also give
    the errors.  ivmpi.win keeps `allowed`/`passive` (one byte per target:
    an access epoch is open / the target is locked) up to date."""
    cdef Mapping mem
    cdef public list offsets, sizes, units
    cdef public bytearray allowed, passive
    cdef public object dirty, pending
    cdef public Py_ssize_t rank, n
    cdef public object general_put, general_get, general_flush
    cdef public bint enabled

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
