# Filling an mpi4py Status in C.
#
# A receive or a probe that reports a status sets five fields of the
# caller's mpi4py Status: source, tag, error, count and cancelled.  Through
# mpi4py's Python setters that costs some 0.28 us, a third of a fast probe
# (Open MPI's whole probe is 0.27).  The fields live in the MPI library's
# own MPI_Status struct inside the Status object, laid out as that library
# chose (Open MPI and MPICH differ), so the layout is learned at start-up:
# statuses are filled through the setters and compared byte by byte (the
# struct's address comes from mpi4py's C API, PyMPIStatus_Get), then the
# learned layout is checked against the setters on many values, from
# statuses that held other values, cancelled and with errors.  Anything it
# does not explain leaves the setters in use.  Only the common report is
# taken here: error SUCCESS, not cancelled, a count below 2**31.

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_GetName
from libc.stdint cimport int32_t

ctypedef void *(*_StatusGet)(object) except? NULL

cdef enum:
    _ST_WINDOW = 64                 # bytes of a Status object past its struct's start

cdef type _st_type = None           # mpi4py's Status (exactly: not a subclass)
cdef Py_ssize_t _st_offset = -1     # where the struct starts in the object; -1: unknown
cdef Py_ssize_t _st_first, _st_end  # the bytes the setters write: [first, end)
cdef Py_ssize_t _st_source_at, _st_tag_at, _st_count_at
cdef unsigned char _st_template[_ST_WINDOW]     # the bytes for (0, 0, 0)


cdef inline bint _fill_status_c(object status, long source, long tag, long long count):
    """The status of a report, in C: False (nothing written) when the
    layout is not known, status is not exactly mpi4py's Status, or the
    values are beyond what was learned."""
    cdef char *p
    if _st_offset < 0 or type(status) is not _st_type or not 0 <= count < 0x80000000 \
            or not -0x80000000 <= source < 0x80000000 or not -0x80000000 <= tag < 0x80000000:
        return False
    p = <char *><PyObject *>status + _st_offset
    memcpy(p + _st_first, _st_template + _st_first, _st_end - _st_first)
    (<int32_t *>(p + _st_source_at))[0] = <int32_t>source
    (<int32_t *>(p + _st_tag_at))[0] = <int32_t>tag
    (<int32_t *>(p + _st_count_at))[0] = <int32_t>count
    return True


def fill_status_fast(status, long source, long tag, long long count):
    """_fill_status_c for Python: True when done."""
    return _fill_status_c(status, source, tag, count)


cdef bytes _st_bytes(object status, Py_ssize_t window):
    return PyBytes_FromStringAndSize(<char *><PyObject *>status + _st_offset, window)


cdef Py_ssize_t _st_field(bytes base, bytes changed, long value) except -2:
    """Where a 4-byte little-endian `value` alone changed base into changed,
    or -1.  (Bytes of value equal to base's do not show as changes, so the
    values learned with have no zero byte and base has zeros there.)"""
    cdef Py_ssize_t i, first = -1, last = -1
    for i in range(len(base)):
        if base[i] != changed[i]:
            if first < 0:
                first = i
            last = i
    if first < 0 or last - first != 3 or first % 4:
        return -1
    if changed[first:first + 4] != int(value).to_bytes(4, "little", signed=True):
        return -1
    return first


def learn_status_layout(status_type, fill, capi):
    """Learn where mpi4py's Status keeps source, tag and count (see above):
    fill(status, source, tag, count, error, cancelled) is the setters' way,
    capi mpi4py's MPI.__pyx_capi__.  True when the C fill is in use, False otherwise."""
    global _st_type, _st_offset, _st_first, _st_end
    global _st_source_at, _st_tag_at, _st_count_at
    cdef _StatusGet get
    cdef Py_ssize_t window, i
    _st_offset = -1
    try:
        capsule = capi["PyMPIStatus_Get"]
        get = <_StatusGet>PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))
        probe = status_type()
        offset = <char *>get(probe) - <char *><PyObject *>probe
        window = min(<Py_ssize_t>status_type.__basicsize__ - offset, _ST_WINDOW)
    except Exception:
        return False
    if offset < sizeof(PyObject) or window < 12:
        return False
    _st_type, _st_offset = status_type, offset

    def snapshot(source, tag, count, error=0, cancelled=False):
        status = status_type()
        fill(status, source, tag, count, error, cancelled)
        return _st_bytes(status, window)

    try:
        base = snapshot(0, 0, 0)
        fields = [_st_field(base, snapshot(0x11223344, 0, 0), 0x11223344),
                  _st_field(base, snapshot(0, 0x15667788, 0), 0x15667788),
                  _st_field(base, snapshot(0, 0, 0x1A0B0C0D), 0x1A0B0C0D)]
        if min(fields) < 0 or len(set(fields)) != 3:
            raise ValueError(fields)
        _st_source_at, _st_tag_at, _st_count_at = fields
        # Every byte the setters may write: from errors, cancellation and
        # large counts too (the template rewrites them all).
        written = [i for i in range(window)
                   if any(base[i] != other[i] for other in (
                       snapshot(-2, -1, 0x7FFFFFFF), snapshot(7, 9, 1 << 40),
                       snapshot(0, 0, 0, cancelled=True), snapshot(0, 0, 0, error=5)))]
        written += [f + k for f in fields for k in range(4)]
        _st_first, _st_end = min(written), max(written) + 1
        for i in range(window):
            _st_template[i] = base[i]
        # The check: from statuses holding other values, both ways alike.
        import random
        rng = random.Random(1)
        for i in range(200):
            source = rng.choice((-2, -1, 0, 1, rng.randrange(1 << 31)))
            tag = rng.choice((-1, 0, 1, rng.randrange(1 << 31)))
            count = rng.choice((0, 1, 8, rng.randrange(1 << 31)))
            a, b = status_type(), status_type()
            for s in (a, b):
                fill(s, rng.randrange(1 << 20), rng.randrange(1 << 20), rng.randrange(1 << 33),
                     rng.choice((0, 1, 5)), rng.random() < 0.5)
            fill(a, source, tag, count)
            if not _fill_status_c(b, source, tag, count):
                raise ValueError("refused")
            if _st_bytes(a, window) != _st_bytes(b, window) or (
                    b.source, b.tag, b.Get_count(), b.error, b.Is_cancelled()) != (
                    source, tag, count, 0, False):
                raise ValueError("differs")
    except Exception:
        _st_offset = -1
        return False
    return True
