# Gather and scatter of derived datatypes (included by _fastcopy.pyx): the
# bytes of `count` elements, each made of the same runs (offset, length)
# around its origin, copied to or from a packed buffer.  Both sides are
# process memory (the user's buffer and a staging buffer), never the region,
# so plain memcpy is right here on every architecture.
# ivmpi.datatypes checks that every run stays inside the user's buffer; the
# checks below guard the packed side and the run table itself.

from libc.string cimport memcpy
from libc.stdint cimport int64_t


cdef inline void _copy_run(char *dst, const char *src, Py_ssize_t n) noexcept nogil:
    # Runs of one 4- or 8-byte element are the common case (a column, a face):
    # a fixed-size memcpy becomes a single load and store.
    if n == 8:
        memcpy(dst, src, 8)
    elif n == 4:
        memcpy(dst, src, 4)
    else:
        memcpy(dst, src, n)


cdef int _check_runs(Py_buffer *offs, Py_buffer *lens, Py_ssize_t count, Py_ssize_t user_len,
                     Py_ssize_t origin, Py_ssize_t extent, Py_ssize_t packed_len) except -1:
    cdef Py_ssize_t nruns = offs.len // 8, k, total = 0, lo, hi, first, last
    cdef const int64_t *o = <const int64_t *>offs.buf
    cdef const int64_t *n = <const int64_t *>lens.buf
    if lens.len != offs.len or offs.itemsize != 8 or lens.itemsize != 8:
        raise BufferSpecError("run table: offsets and lengths must be int64 arrays of one size")
    if count < 0:
        raise BufferSpecError(f"negative count {count}")
    for k in range(nruns):
        if n[k] < 0:
            raise BufferSpecError("run table: negative length")
        total += n[k]
    if total * count != packed_len:
        raise BufferSpecError(
            f"packed buffer holds {packed_len} bytes, {count} elements need {total * count}")
    if count == 0 or total == 0:
        return 0
    first = origin + min(0, (count - 1) * extent)
    last = origin + max(0, (count - 1) * extent)
    for k in range(nruns):
        lo = first + o[k]
        hi = last + o[k] + n[k]
        if lo < 0 or hi > user_len:
            raise BufferSpecError(
                f"datatype reaches bytes {lo} to {hi} of a buffer of {user_len} bytes")
    return 0


cdef void _gather(char *dst, const char *src, Py_ssize_t count, Py_ssize_t extent,
                  const int64_t *o, const int64_t *n, Py_ssize_t nruns) noexcept nogil:
    cdef Py_ssize_t i, k
    for i in range(count):
        for k in range(nruns):
            _copy_run(dst, src + o[k], n[k])
            dst += n[k]
        src += extent


cdef void _scatter(char *dst, const char *src, Py_ssize_t count, Py_ssize_t extent,
                   const int64_t *o, const int64_t *n, Py_ssize_t nruns) noexcept nogil:
    cdef Py_ssize_t i, k
    for i in range(count):
        for k in range(nruns):
            _copy_run(dst + o[k], src, n[k])
            src += n[k]
        dst += extent


def gather_runs(user, Py_ssize_t origin, Py_ssize_t count, Py_ssize_t extent, offsets, lengths,
                packed):
    """Copy count elements of `user` (the first element's origin at byte
    `origin`) into the contiguous `packed`, run by run."""
    cdef Py_buffer src, dst, offs, lens
    PyObject_GetBuffer(user, &src, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(packed, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            PyObject_GetBuffer(offsets, &offs, PyBUF_SIMPLE)
            try:
                PyObject_GetBuffer(lengths, &lens, PyBUF_SIMPLE)
                try:
                    offs.itemsize = lens.itemsize = 8
                    _check_runs(&offs, &lens, count, src.len, origin, extent, dst.len)
                    if dst.len >= NOGIL_MIN_BYTES:
                        with nogil:
                            _gather(<char *>dst.buf, <const char *>src.buf + origin, count, extent,
                                    <const int64_t *>offs.buf, <const int64_t *>lens.buf,
                                    offs.len // 8)
                    else:
                        _gather(<char *>dst.buf, <const char *>src.buf + origin, count, extent,
                                <const int64_t *>offs.buf, <const int64_t *>lens.buf, offs.len // 8)
                finally:
                    PyBuffer_Release(&lens)
            finally:
                PyBuffer_Release(&offs)
        finally:
            PyBuffer_Release(&dst)
    finally:
        PyBuffer_Release(&src)


def scatter_runs(packed, user, Py_ssize_t origin, Py_ssize_t count, Py_ssize_t extent, offsets,
                 lengths):
    """The reverse of gather_runs: the contiguous `packed` into count
    elements of `user`."""
    cdef Py_buffer src, dst, offs, lens
    PyObject_GetBuffer(packed, &src, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(user, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            PyObject_GetBuffer(offsets, &offs, PyBUF_SIMPLE)
            try:
                PyObject_GetBuffer(lengths, &lens, PyBUF_SIMPLE)
                try:
                    offs.itemsize = lens.itemsize = 8
                    _check_runs(&offs, &lens, count, dst.len, origin, extent, src.len)
                    if src.len >= NOGIL_MIN_BYTES:
                        with nogil:
                            _scatter(<char *>dst.buf + origin, <const char *>src.buf, count, extent,
                                     <const int64_t *>offs.buf, <const int64_t *>lens.buf,
                                     offs.len // 8)
                    else:
                        _scatter(<char *>dst.buf + origin, <const char *>src.buf, count, extent,
                                 <const int64_t *>offs.buf, <const int64_t *>lens.buf, offs.len // 8)
                finally:
                    PyBuffer_Release(&lens)
            finally:
                PyBuffer_Release(&offs)
        finally:
            PyBuffer_Release(&dst)
    finally:
        PyBuffer_Release(&src)
