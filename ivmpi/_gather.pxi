# Gather and scatter of derived datatypes (included by _fastcopy.pyx): the
# bytes of `count` elements, each made of the same runs (offset, length)
# around its origin, copied to or from a packed buffer.  Both sides are
# process memory (the user's buffer and a staging buffer), never the region,
# so plain memcpy is right here on every architecture.
#
# A RunPlan is made once per datatype (ivmpi.datatypes keeps it with the
# type): it checks the run table then, and remembers the lowest and highest
# byte an element touches, so each copy checks its bounds in O(1).  Most
# halo types are regular (a column: equal runs at one stride; a face of a
# 3-D array: rows of such runs at a second stride), and the plan then copies
# with two strided loops instead of reading the table run by run.

from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint64_t
cdef extern from "Python.h":
    Py_ssize_t PY_SSIZE_T_MAX
cdef extern from "_copycore.h":
    void _stream_u64 "ivmpi_stream_u64"(void *p, uint64_t v) noexcept nogil
    void _stream_fence "ivmpi_stream_fence"() noexcept nogil


cdef inline void _copy_run(char *dst, const char *src, Py_ssize_t n) noexcept nogil:
    # Runs of one 4- or 8-byte element are the common case (a column, a face):
    # a fixed-size memcpy becomes a single load and store.
    if n == 8:
        memcpy(dst, src, 8)
    elif n == 4:
        memcpy(dst, src, 4)
    else:
        ivmpi_copy_plain(dst, src, n)


cdef void _gather_table(char *dst, const char *src, Py_ssize_t count, Py_ssize_t extent,
                        const int64_t *o, const int64_t *n, Py_ssize_t nruns) noexcept nogil:
    cdef Py_ssize_t i, k
    for i in range(count):
        for k in range(nruns):
            _copy_run(dst, src + o[k], n[k])
            dst += n[k]
        src += extent


cdef void _scatter_table(char *dst, const char *src, Py_ssize_t count, Py_ssize_t extent,
                         const int64_t *o, const int64_t *n, Py_ssize_t nruns) noexcept nogil:
    cdef Py_ssize_t i, k
    for i in range(count):
        for k in range(nruns):
            _copy_run(dst + o[k], src, n[k])
            src += n[k]
        dst += extent


cdef void _gather_regular(char *dst, const char *src, Py_ssize_t count, Py_ssize_t extent,
                          Py_ssize_t run, Py_ssize_t n1, Py_ssize_t s1, Py_ssize_t n2,
                          Py_ssize_t s2, bint stream) noexcept nogil:
    # src points at the first run of the first element.  stream: dst is in
    # the region and 8-byte aligned, runs of 8 bytes are stored without
    # taking the line from the reader first (the caller fences).
    cdef Py_ssize_t e, i, j
    cdef const char *row
    cdef const char *p
    cdef uint64_t word
    for e in range(count):
        row = src + e * extent
        for i in range(n2):
            p = row + i * s2
            if run == 8 and stream:
                for j in range(n1):
                    memcpy(&word, p, 8)
                    _stream_u64(dst, word)
                    dst += 8
                    p += s1
            elif run == 8:
                for j in range(n1):
                    memcpy(dst, p, 8)
                    dst += 8
                    p += s1
            else:
                for j in range(n1):
                    _copy_run(dst, p, run)
                    dst += run
                    p += s1


cdef void _scatter_regular(char *dst, const char *src, Py_ssize_t count, Py_ssize_t extent,
                           Py_ssize_t run, Py_ssize_t n1, Py_ssize_t s1, Py_ssize_t n2,
                           Py_ssize_t s2) noexcept nogil:
    # dst points at the first run of the first element.
    cdef Py_ssize_t e, i, j
    cdef char *row
    cdef char *p
    for e in range(count):
        row = dst + e * extent
        for i in range(n2):
            p = row + i * s2
            if run == 8:
                for j in range(n1):
                    memcpy(p, src, 8)
                    src += 8
                    p += s1
            else:
                for j in range(n1):
                    _copy_run(p, src, run)
                    src += run
                    p += s1


cdef class RunPlan:
    """How to copy the elements of one datatype: its runs (int64 arrays of
    offsets from an element's origin, and lengths), checked once."""

    cdef readonly object offsets, lengths
    cdef readonly Py_ssize_t nruns, size, low, high
    # Regular: n2 rows of n1 runs of `run` bytes; runs in a row `s1` apart,
    # rows `s2` apart, the first at `first`.
    cdef readonly bint regular
    cdef readonly Py_ssize_t run, n1, s1, n2, s2, first
    cdef const int64_t *o
    cdef const int64_t *n

    def __init__(self, offsets, lengths):
        cdef const int64_t[::1] ov = offsets
        cdef const int64_t[::1] nv = lengths
        cdef Py_ssize_t k
        if ov.shape[0] != nv.shape[0]:
            raise BufferSpecError("run table: offsets and lengths must have one length")
        self.offsets, self.lengths = offsets, lengths
        self.nruns = ov.shape[0]
        self.o = &ov[0] if self.nruns else NULL
        self.n = &nv[0] if self.nruns else NULL
        self.size = self.low = self.high = 0
        cdef bint seen = False
        for k in range(self.nruns):
            if nv[k] < 0:
                raise BufferSpecError("run table: negative length")
            if nv[k] == 0:
                continue
            if not seen or ov[k] < self.low:
                self.low = ov[k]
            if not seen or ov[k] + nv[k] > self.high:
                self.high = ov[k] + nv[k]
            seen = True
            self.size += nv[k]
        self._find_regular()

    cdef void _find_regular(self):
        cdef Py_ssize_t k, i, j, n1, s1, s2
        cdef const int64_t *o = self.o
        self.regular = False
        if self.nruns == 0 or self.n[0] == 0:
            return
        for k in range(1, self.nruns):
            if self.n[k] != self.n[0]:
                return
        s1 = o[1] - o[0] if self.nruns > 1 else 0
        n1 = 1
        while n1 < self.nruns and o[n1] - o[n1 - 1] == s1:
            n1 += 1
        if self.nruns % n1:
            return
        s2 = o[n1] - o[0] if n1 < self.nruns else 0
        for i in range(self.nruns // n1):
            for j in range(n1):
                if o[i * n1 + j] != o[0] + i * s2 + j * s1:
                    return
        self.regular = True
        self.run, self.first = self.n[0], o[0]
        self.n1, self.s1, self.n2, self.s2 = n1, s1, self.nruns // n1, s2

    cdef bint fits(self, Py_ssize_t count, Py_ssize_t extent, Py_ssize_t origin,
                   Py_ssize_t user_len) noexcept:
        """Do count elements, the first at byte origin, lie inside user_len bytes?"""
        cdef Py_ssize_t lo, hi
        if count < 0:
            return False
        if count == 0 or self.size == 0:
            return True
        if extent != 0 and count - 1 > PY_SSIZE_T_MAX // (extent if extent > 0 else -extent) - 1:
            return False    # would overflow: no buffer is that large
        lo = origin + min(0, (count - 1) * extent) + self.low
        hi = origin + max(0, (count - 1) * extent) + self.high
        return lo >= 0 and hi <= user_len

    cdef int _check(self, Py_ssize_t count, Py_ssize_t extent, Py_ssize_t origin,
                    Py_ssize_t user_len, Py_ssize_t packed_len) except -1:
        cdef Py_ssize_t lo, hi
        if count < 0:
            raise BufferSpecError(f"negative count {count}")
        if self.size * count != packed_len:
            raise BufferSpecError(f"packed buffer holds {packed_len} bytes, {count} "
                                  f"elements need {self.size * count}")
        if count == 0 or self.size == 0:
            return 0
        lo = origin + min(0, (count - 1) * extent) + self.low
        hi = origin + max(0, (count - 1) * extent) + self.high
        if lo < 0 or hi > user_len:
            raise BufferSpecError(
                f"datatype reaches bytes {lo} to {hi} of a buffer of {user_len} bytes")
        return 0

    cdef void _gather(self, char *dst, const char *src, Py_ssize_t count,
                      Py_ssize_t extent) noexcept nogil:
        if self.regular:
            _gather_regular(dst, src + self.first, count, extent, self.run, self.n1, self.s1,
                            self.n2, self.s2, False)
        else:
            _gather_table(dst, src, count, extent, self.o, self.n, self.nruns)

    cdef void _gather_to_region(self, char *dst, const char *src, Py_ssize_t count,
                                Py_ssize_t extent) noexcept nogil:
        """_gather into a block of the region that a peer reads next (not
        strict mode: the region is ordinary memory here).  Regular runs of 8
        bytes go by streaming stores (ivmpi_stream_u64 says why), fenced
        before the caller publishes the block."""
        if self.regular and self.run == 8 and (<size_t>dst & 7) == 0:
            _gather_regular(dst, src + self.first, count, extent, 8, self.n1, self.s1,
                            self.n2, self.s2, True)
            _stream_fence()
        else:
            self._gather(dst, src, count, extent)

    cdef void _scatter(self, char *dst, const char *src, Py_ssize_t count,
                       Py_ssize_t extent) noexcept nogil:
        if self.regular:
            _scatter_regular(dst + self.first, src, count, extent, self.run, self.n1, self.s1,
                             self.n2, self.s2)
        else:
            _scatter_table(dst, src, count, extent, self.o, self.n, self.nruns)

    def gather(self, user, Py_ssize_t origin, Py_ssize_t count, Py_ssize_t extent, packed):
        """Copy count elements of `user` (the first element's origin at byte
        `origin`, the next ones `extent` apart) into the contiguous `packed`."""
        cdef Py_buffer src, dst
        PyObject_GetBuffer(user, &src, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(packed, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                self._check(count, extent, origin, src.len, dst.len)
                if dst.len >= NOGIL_MIN_BYTES:
                    with nogil:
                        self._gather(<char *>dst.buf, <const char *>src.buf + origin, count,
                                     extent)
                else:
                    self._gather(<char *>dst.buf, <const char *>src.buf + origin, count, extent)
            finally:
                PyBuffer_Release(&dst)
        finally:
            PyBuffer_Release(&src)

    def scatter(self, packed, user, Py_ssize_t origin, Py_ssize_t count, Py_ssize_t extent):
        """The reverse of gather: the contiguous `packed` into count
        elements of `user`."""
        cdef Py_buffer src, dst
        PyObject_GetBuffer(packed, &src, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(user, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                self._check(count, extent, origin, dst.len, src.len)
                if src.len >= NOGIL_MIN_BYTES:
                    with nogil:
                        self._scatter(<char *>dst.buf + origin, <const char *>src.buf, count,
                                      extent)
                else:
                    self._scatter(<char *>dst.buf + origin, <const char *>src.buf, count, extent)
            finally:
                PyBuffer_Release(&dst)
        finally:
            PyBuffer_Release(&src)

