# cython: language_level=3
"""The copy core: a bounds-checked window on the shared region.

Every byte ivmpi moves into or out of the region goes through ``Mapping``,
whose copies call the C functions of ``_copycore.h``.  In strict mode the
region side is touched only with naturally aligned 1/2/4/8-byte accesses
(ARM64 guests see the ivshmem BAR as Device memory and fault on anything
else); otherwise memcpy is used.

Nothing read from or passed for the region is trusted: every offset and
length is checked against the mapping before any memory is touched.
"""
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_SIMPLE, PyBUF_WRITABLE)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t

import collections

from ivmpi.errors import BoundsError, BufferSpecError, IvmpiError, PeerError, RegionError


cdef extern from "_copycore.h" nogil:
    void ivmpi_copy_to_region(void *region_dst, const void *src, size_t n, int strict)
    void ivmpi_copy_from_region(void *dst, const void *region_src, size_t n, int strict)
    void ivmpi_copy_plain(void *dst, const void *src, size_t n)
    void ivmpi_move_plain(void *dst, const void *src, size_t n)
    void ivmpi_fill_region(void *region_dst, unsigned char value, size_t n, int strict)
    uint64_t ivmpi_load_acquire_u64(const void *p)
    void ivmpi_store_release_u64(void *p, uint64_t v)
    void ivmpi_fence()
    uint64_t ivmpi_load_u64(const void *p)
    void ivmpi_store_u64(void *p, uint64_t v)
    uint32_t ivmpi_load_u32(const void *p)
    void ivmpi_store_u32(void *p, uint32_t v)
    void ivmpi_cpu_relax()


# Copies of at least this many bytes run without the GIL.  Dropping and
# re-taking the GIL costs about 45 ns.  Measured through Mapping.write
# (strict, numpy source, call included): 4 KiB 240 ns, 16 KiB 850 ns,
# 64 KiB 2.5 us.  From 16 KiB the switch costs about 5% or less, and every
# copy long enough to hold up other threads noticeably lets them run.
cdef enum:
    NOGIL_MIN_BYTES = 16384
NOGIL_THRESHOLD = NOGIL_MIN_BYTES

cdef uint64_t U64_MAX = 0xFFFFFFFFFFFFFFFF


cdef inline Py_ssize_t _as_index(object value, str what) except? -1:
    """An offset or length given by the caller, as a Py_ssize_t.

    Values too large for Py_ssize_t become BoundsError (not OverflowError)
    so that callers see one error class for every bad range."""
    try:
        return value
    except OverflowError:
        raise BoundsError(f"{what} {value!r} is out of range") from None


cdef class Mapping:
    """A bounds-checked view of a mapped region (an ``mmap.mmap`` or any
    object exporting a writable buffer).

    ``Mapping(obj, strict=False)`` keeps a buffer export on ``obj`` until
    ``release()`` (so an mmap cannot be closed under it).  ``strict`` selects
    the aligned-access copy path, needed on device-mapped memory.

    Ring code in this module uses ``base``, ``size`` and ``strict``
    directly; ``size`` is 0 and ``base`` NULL once released, so its own
    bounds checks fail closed."""
    cdef Py_buffer _view
    cdef bint _held
    cdef int _busy          # copies running without the GIL right now
    cdef char *base
    cdef readonly Py_ssize_t size
    cdef readonly bint strict
    # Ordinary memory (a host file, not a device's BAR): the kernel's own
    # copies (process_vm_readv, ivmpi/_single_copy.pxi) may read and write
    # it.  Set by the region's owner; off by default.
    cdef public bint ordinary

    def __cinit__(self, obj, strict=False):
        self._held = False
        self._busy = 0
        self.base = NULL
        self.size = 0
        self.strict = bool(strict)
        try:
            PyObject_GetBuffer(obj, &self._view, PyBUF_WRITABLE | PyBUF_SIMPLE)
        except (BufferError, TypeError, ValueError) as exc:
            raise RegionError(
                f"cannot map {type(obj).__name__}: it must export a writable "
                f"contiguous buffer ({exc})") from None
        self._held = True
        self.base = <char *>self._view.buf
        self.size = self._view.len

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._view)
            self._held = False

    def release(self):
        """Drop the buffer export.  Later calls raise RegionError; calling
        release() again does nothing."""
        if self._busy:
            raise RegionError("cannot release the mapping: a copy is running "
                              "in another thread")
        if self._held:
            self.base = NULL
            self.size = 0
            self._held = False
            PyBuffer_Release(&self._view)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc_info):
        self.release()
        return False

    @property
    def closed(self):
        return not self._held

    @property
    def address(self):
        """Address of the first byte (for alignment checks and diagnostics)."""
        self._check_open()
        return <uintptr_t>self.base

    def __len__(self):
        return self.size

    def __repr__(self):
        if not self._held:
            return "<ivmpi Mapping (released)>"
        return (f"<ivmpi Mapping size={self.size} strict={bool(self.strict)} "
                f"address={<uintptr_t>self.base:#x}>")

    # -- checks ---------------------------------------------------------

    cdef inline int _check_open(self) except -1:
        if not self._held:
            raise RegionError("the region mapping has been released")
        return 0

    cdef inline int _check_range(self, Py_ssize_t offset, Py_ssize_t n,
                                 str op) except -1:
        # Written so that offset + n is never computed: no overflow possible.
        self._check_open()
        if offset < 0 or n < 0 or offset > self.size or n > self.size - offset:
            raise BoundsError(
                f"{op}: range [{offset}, {offset} + {n}) is outside the "
                f"region of {self.size} bytes")
        return 0

    cdef inline bint overlaps(self, const char *p, Py_ssize_t n) noexcept:
        """Does [p, p + n), memory of this process, touch the mapped bytes?"""
        return self.base != NULL and p + n > self.base and p < self.base + self.size

    cdef inline bint refuses_kernel_copy(self, const char *p, Py_ssize_t n) noexcept:
        """Must the kernel's copies keep off [p, p + n)?  When it touches the
        mapped bytes and they may be device memory (the kernel's copy does
        not keep the alignment rules of ARM64 guests' BARs)."""
        return not self.ordinary and self.overlaps(p, n)

    cdef inline int _check_word(self, Py_ssize_t offset, Py_ssize_t width,
                                str op) except -1:
        self._check_range(offset, width, op)
        if offset % width:
            raise BoundsError(f"{op}: offset {offset} is not {width}-byte aligned")
        return 0

    # -- bulk copies ----------------------------------------------------

    def write(self, offset, buf):
        """Copy all bytes of ``buf`` (any C-contiguous buffer) into the
        region at ``offset``."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        cdef Py_buffer src
        self._check_open()
        _get_buffer(buf, &src, PyBUF_SIMPLE, "source")
        try:
            self._check_range(off, src.len, "write")
            self._copy_in(off, src.buf, src.len)
        finally:
            PyBuffer_Release(&src)

    def read(self, offset, out, nbytes=None):
        """Copy bytes from the region at ``offset`` into ``out`` (a writable
        C-contiguous buffer): all of ``out``, or only its first ``nbytes``."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        cdef Py_ssize_t n
        cdef Py_buffer dst
        self._check_open()
        _get_buffer(out, &dst, PyBUF_WRITABLE | PyBUF_SIMPLE, "output")
        try:
            n = dst.len
            if nbytes is not None:
                n = _as_index(nbytes, "nbytes")
                if n < 0 or n > dst.len:
                    raise BoundsError(
                        f"read: nbytes={n} does not fit the output buffer "
                        f"of {dst.len} bytes")
            self._check_range(off, n, "read")
            self._copy_out(off, dst.buf, n)
        finally:
            PyBuffer_Release(&dst)

    def read_bytes(self, offset, n):
        """``n`` bytes of the region at ``offset``, as a new bytes object."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        cdef Py_ssize_t count = _as_index(n, "length")
        self._check_range(off, count, "read_bytes")
        result = PyBytes_FromStringAndSize(NULL, count)
        self._copy_out(off, PyBytes_AS_STRING(result), count)
        return result

    def fill(self, offset, n, value=0):
        """Set ``n`` bytes at ``offset`` to ``value`` (0..255); strict mode
        does not use memset."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        cdef Py_ssize_t count = _as_index(n, "length")
        if not 0 <= value <= 255:
            raise BufferSpecError(f"fill: value {value!r} is not a byte (0..255)")
        cdef unsigned char byte = value
        self._check_range(off, count, "fill")
        cdef char *d = self.base + off
        cdef int strict = self.strict
        self._busy += 1
        try:
            if count >= NOGIL_MIN_BYTES:
                with nogil:
                    ivmpi_fill_region(d, byte, <size_t>count, strict)
            else:
                ivmpi_fill_region(d, byte, <size_t>count, strict)
        finally:
            self._busy -= 1

    cdef inline int _copy_in(self, Py_ssize_t off, const void *src,
                             Py_ssize_t n) except -1:
        # The caller has checked the range; `_busy` keeps release() from
        # unmapping the region while the GIL is dropped.
        cdef char *d = self.base + off
        cdef int strict = self.strict
        self._busy += 1
        if n >= NOGIL_MIN_BYTES:
            with nogil:
                ivmpi_copy_to_region(d, src, <size_t>n, strict)
        else:
            ivmpi_copy_to_region(d, src, <size_t>n, strict)
        self._busy -= 1
        return 0

    cdef inline int _copy_out(self, Py_ssize_t off, void *dst,
                              Py_ssize_t n) except -1:
        cdef const char *s = self.base + off
        cdef int strict = self.strict
        self._busy += 1
        if n >= NOGIL_MIN_BYTES:
            with nogil:
                ivmpi_copy_from_region(dst, s, <size_t>n, strict)
        else:
            ivmpi_copy_from_region(dst, s, <size_t>n, strict)
        self._busy -= 1
        return 0

    # -- words ----------------------------------------------------------

    def load(self, offset):
        """The unsigned 64-bit word at ``offset`` (8-aligned), plain load."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        self._check_word(off, 8, "load")
        return ivmpi_load_u64(self.base + off)

    def store(self, offset, value):
        """Store an unsigned 64-bit word at ``offset`` (8-aligned)."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        cdef uint64_t v = _as_u64(value)
        self._check_word(off, 8, "store")
        ivmpi_store_u64(self.base + off, v)

    def load_acquire(self, offset):
        """Load with acquire ordering: later reads see what the writer
        published before its matching store_release."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        self._check_word(off, 8, "load_acquire")
        return ivmpi_load_acquire_u64(self.base + off)

    def store_release(self, offset, value):
        """Store with release ordering: earlier writes are visible to a
        reader that load_acquires this word and sees ``value``."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        cdef uint64_t v = _as_u64(value)
        self._check_word(off, 8, "store_release")
        ivmpi_store_release_u64(self.base + off, v)

    def load_u32(self, offset):
        """A volatile 32-bit load at ``offset`` (4-aligned): device registers."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        self._check_word(off, 4, "load_u32")
        return ivmpi_load_u32(self.base + off)

    def store_u32(self, offset, value):
        """A volatile 32-bit store at ``offset`` (4-aligned): device registers."""
        cdef Py_ssize_t off = _as_index(offset, "offset")
        if not 0 <= value <= 0xFFFFFFFF:
            raise BoundsError(f"store_u32: value {value!r} does not fit in 32 bits")
        cdef uint32_t v = value
        self._check_word(off, 4, "store_u32")
        ivmpi_store_u32(self.base + off, v)


cdef inline uint64_t _as_u64(object value) except? 0xFFFFFFFFFFFFFFFF:
    if not 0 <= value <= U64_MAX:
        raise BoundsError(f"value {value!r} does not fit in an unsigned 64-bit word")
    return value


cdef int _get_buffer(object obj, Py_buffer *view, int flags, str what) except -1:
    """Acquire a contiguous byte view of a caller's buffer, or BufferSpecError."""
    try:
        PyObject_GetBuffer(obj, view, flags)
    except (BufferError, TypeError, ValueError) as exc:
        need = "a writable C-contiguous" if flags & PyBUF_WRITABLE else "a C-contiguous"
        raise BufferSpecError(
            f"the {what} must be {need} buffer, got {type(obj).__name__}: {exc}") from None
    return 0


def cpu_relax():
    """One spin-wait hint to the CPU (pause / yield)."""
    ivmpi_cpu_relax()


cdef extern from "_watchdog.h" nogil:
    int ivmpi_start_exit_watchdog(double seconds, int code, const char *message)


def start_exit_watchdog(double seconds, int code, str message):
    """End the process with `code` after `seconds`, printing `message` to
    stderr, unless it has exited by then.  A C thread: it keeps running
    through interpreter shutdown, where the MPI library finalizes."""
    data = message.encode("utf-8", "replace")
    if ivmpi_start_exit_watchdog(seconds, code, data) != 0:
        raise OSError("could not start the exit watchdog thread")


include "_ops.pxi"
include "_gather.pxi"
include "_single_copy.pxi"
include "_ring.pxi"
include "_inbox.pxi"
include "_foreign.pxi"
include "_status.pxi"
include "_fastpath.pxi"
include "_small_collectives.pxi"
include "_prefix.pxi"
include "_win.pxi"
include "_schedule.pxi"
include "_route.pxi"
include "_requests.pxi"



@cython.final
cdef class Constant:
    """A call that returns the same value every time, bound to an instance
    in place of a method (a communicator's Get_rank and Get_size: they are
    called in programs' inner loops, and mpi4py's are C calls)."""
    cdef object value

    def __cinit__(self, value):
        self.value = value

    def __call__(self):
        return self.value

