# cython: language_level=3
"""The copy core compiled with IVMPI_TRACE_ACCESS: for tests only.

Same ``Mapping`` as ``ivmpi._fastcopy``, but every access the C core makes
to the region is recorded as (address, width); width 0 marks a memcpy or
memset of unknown access widths (the non-strict path).  The record is a
fixed buffer in C, shared by all threads, so trace one thing at a time.
"""
include "_fastcopy.pyx"

import numpy


cdef extern from "_copycore.h":
    size_t IVMPI_TRACE_CAP
    uintptr_t ivmpi_trace_addr[]
    uint8_t ivmpi_trace_width[]
    size_t ivmpi_trace_len
    size_t ivmpi_trace_total


def trace_reset():
    """Forget every recorded access."""
    global ivmpi_trace_len, ivmpi_trace_total
    ivmpi_trace_len = 0
    ivmpi_trace_total = 0


def trace_get():
    """The recorded accesses, oldest first: (addresses as a numpy uint64
    array, widths as a numpy uint8 array)."""
    cdef size_t n = ivmpi_trace_len
    addresses = numpy.empty(n, dtype=numpy.uint64)
    widths = numpy.empty(n, dtype=numpy.uint8)
    cdef uint64_t[::1] a = addresses
    cdef uint8_t[::1] w = widths
    cdef size_t i
    for i in range(n):
        a[i] = ivmpi_trace_addr[i]
        w[i] = ivmpi_trace_width[i]
    return addresses, widths


def trace_overflowed():
    """True if more accesses happened than the record holds (then the
    record is incomplete and a test must not trust it)."""
    return ivmpi_trace_total > ivmpi_trace_len


TRACE_CAPACITY = IVMPI_TRACE_CAP
