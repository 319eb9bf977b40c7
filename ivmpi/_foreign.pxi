# Buffers of objects that export DLPack or the CUDA array interface.
#
# mpi4py takes as a message buffer, besides the buffer protocol, any object
# with __dlpack__/__dlpack_device__ (a CPU tensor of torch or JAX, a numpy
# array handed over as a tensor) or with __cuda_array_interface__.  Such an
# object is read into a ForeignBuffer: a buffer-protocol view of its memory
# with the format mpi4py reads from it, so that every path that takes a
# numpy array takes it too, in one call.  The DLPack export is read here in
# C (the ctypes reading it replaces cost 4.6 us a call, the export itself
# 0.16); the checks and messages are mpi4py's, as ivmpi._interop documents
# them.  The interface dictionary is read by ivmpi._interop, which builds a
# ForeignBuffer too.

cimport cython
from cpython.number cimport PyNumber_Index
from cpython.pycapsule cimport PyCapsule_IsValid, PyCapsule_GetPointer
from cpython.buffer cimport (PyObject_CheckBuffer, PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES,
                             PyBUF_WRITABLE)
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef struct _DLDevice:
    int device_type
    int32_t device_id

cdef struct _DLDataType:
    uint8_t code
    uint8_t bits
    uint16_t lanes

cdef struct _DLTensor:
    void *data
    _DLDevice device
    int32_t ndim
    _DLDataType dtype
    int64_t *shape
    int64_t *strides
    uint64_t byte_offset

cdef struct _DLManagedTensor:           # DLPack 0.x
    _DLTensor dl_tensor
    void *manager_ctx
    void *deleter

cdef struct _DLPackVersion:
    uint32_t major
    uint32_t minor

cdef struct _DLManagedTensorVersioned:  # DLPack 1.x
    _DLPackVersion version
    void *manager_ctx
    void *deleter
    uint64_t flags
    _DLTensor dl_tensor

cdef enum:
    _kDLCPU = 1
    _DLPACK_FLAG_READ_ONLY = 1


@cython.final
cdef class ForeignBuffer:
    """Flat, C-contiguous memory of an object exported by DLPack or the CUDA
    array interface, as a buffer: `nbytes` bytes at `address`, items of
    format `code` (mpi4py's format code; None: bytes of no known type,
    exported as 'B').  It keeps `keep` (the producer and its capsule)
    alive as long as it or a view of it lives."""
    cdef char *data
    cdef readonly Py_ssize_t nbytes
    cdef readonly bint readonly
    cdef readonly object code
    cdef readonly object keep
    cdef bytes fmt
    cdef Py_ssize_t itemsize
    cdef Py_ssize_t shape[2]            # items, bytes
    cdef Py_ssize_t strides[2]          # itemsize, 1

    def __init__(self, Py_ssize_t address, Py_ssize_t nbytes, code, bint readonly, keep,
                 Py_ssize_t itemsize=1):
        _fill_foreign(self, address, nbytes, code,
                      None if code is None else code.encode("ascii"), readonly, keep, itemsize)

    @property
    def address(self):
        return <Py_ssize_t>self.data

    def __getbuffer__(self, Py_buffer *view, int flags):
        cdef int k
        if (flags & PyBUF_WRITABLE) and self.readonly:
            raise BufferError("buffer is not writable")
        # Without PyBUF_FORMAT the consumer reads unsigned bytes.
        k = 0 if flags & PyBUF_FORMAT else 1
        view.buf = self.data
        view.obj = self
        view.len = self.nbytes
        view.readonly = self.readonly
        view.itemsize = self.itemsize if k == 0 else 1
        view.format = PyBytes_AS_STRING(self.fmt) if k == 0 else NULL
        view.ndim = 1
        view.shape = &self.shape[k] if flags & PyBUF_ND else NULL
        view.strides = &self.strides[k] if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __len__(self):
        return self.nbytes


cdef int _fill_foreign(ForeignBuffer fb, Py_ssize_t address, Py_ssize_t nbytes, object code,
                       bytes fmt, bint readonly, object keep, Py_ssize_t itemsize) except -1:
    if address == 0 and nbytes:
        raise BufferSpecError(f"buffer of {nbytes} bytes at a NULL address")
    if nbytes < 0:
        raise BufferSpecError(f"buffer of negative size {nbytes}")
    fb.data = <char *>address
    fb.nbytes = nbytes
    fb.readonly = readonly
    fb.code = code
    fb.keep = keep
    if fmt is None or itemsize <= 0 or nbytes % itemsize:
        fb.fmt, fb.itemsize = b"B", 1
    else:
        fb.fmt, fb.itemsize = fmt, itemsize
    fb.shape[0] = nbytes // fb.itemsize
    fb.shape[1] = nbytes
    fb.strides[0] = fb.itemsize
    fb.strides[1] = 1
    return 0


# (code, bits, lanes) -> (mpi4py's format code, the same as bytes)
cdef dict _DLPACK_FORMATS = {}
cdef object _dlpack_format_of = None    # ivmpi._interop._dlpack_format
cdef object _cai_buffer = None          # ivmpi._interop.cai_buffer


cdef tuple _dlpack_format(uint8_t code, uint8_t bits, uint16_t lanes):
    global _dlpack_format_of
    key = (code << 24) | (bits << 16) | lanes
    found = _DLPACK_FORMATS.get(key)
    if found is not None:
        return <tuple>found
    if _dlpack_format_of is None:
        from ivmpi._interop import _dlpack_format as reader
        _dlpack_format_of = reader
    fmt = _dlpack_format_of(code, bits, lanes)
    found = (fmt, None if fmt is None else fmt.encode("ascii"))
    _DLPACK_FORMATS[key] = found
    return <tuple>found


cdef bint _dl_contiguous(int32_t ndim, int64_t *shape, int64_t *strides, bint c_order) noexcept:
    """Strides (in elements) that lay shape out without gaps in C or
    Fortran order; axes of length 0 or 1 may have any stride."""
    cdef int64_t size = 1
    cdef int32_t i, axis
    for i in range(ndim):
        axis = ndim - 1 - i if c_order else i
        if shape[axis] > 1 and strides[axis] != size:
            return False
        size *= shape[axis]
    return True


def dlpack_buffer(obj, bint writable):
    """A ForeignBuffer over the memory obj exports by DLPack, or None when obj
    is no DLPack producer.  writable: refuse a read-only export (as a
    receive buffer), with mpi4py's error."""
    cdef const char *name
    cdef bint versioned_export = True
    cdef void *pointer
    cdef _DLTensor *tensor
    cdef _DLManagedTensorVersioned *versioned
    cdef bint readonly = False
    cdef int32_t ndim, i
    cdef int64_t n
    cdef Py_ssize_t nbytes, item
    try:
        export, device = obj.__dlpack__, obj.__dlpack_device__
    except AttributeError:
        return None
    # mpi4py unpacks the device into two C integers: the same TypeError and
    # ValueError for a malformed answer.
    device_type, device_id = device()
    device_type = PyNumber_Index(device_type)
    PyNumber_Index(device_id)
    # For a device, mpi4py asks for no stream synchronization (stream=-1).
    try:
        if device_type == _kDLCPU:
            capsule = export(max_version=(1, 0), copy=False)
        else:
            capsule = export(max_version=(1, 0), copy=False, stream=-1)
        name = b"dltensor_versioned"
    except TypeError:  # a producer of DLPack 0.x
        capsule = export() if device_type == _kDLCPU else export(stream=-1)
        name = b"dltensor"
        versioned_export = False
    if not PyCapsule_IsValid(capsule, name):
        raise BufferSpecError("dlpack: invalid capsule object")
    pointer = PyCapsule_GetPointer(capsule, name)
    if not versioned_export:
        tensor = &(<_DLManagedTensor *>pointer).dl_tensor
    else:
        versioned = <_DLManagedTensorVersioned *>pointer
        if versioned.version.major < 1:
            raise BufferSpecError("dlpack: unexpected version")
        tensor = &versioned.dl_tensor
        readonly = (versioned.flags & _DLPACK_FLAG_READ_ONLY) != 0
    ndim = tensor.ndim
    if ndim < 0:
        raise BufferSpecError("dlpack: number of dimensions is negative")
    if ndim > 0 and tensor.shape == NULL:
        raise BufferSpecError("dlpack: shape is NULL")
    for i in range(ndim):
        if tensor.shape[i] < 0:
            raise BufferSpecError("dlpack: shape item is negative")
    if ndim > 0 and tensor.strides != NULL:
        for i in range(ndim):
            if tensor.strides[i] < 0:
                raise BufferSpecError("dlpack: strides item is negative")
        if not (_dl_contiguous(ndim, tensor.shape, tensor.strides, True)
                or _dl_contiguous(ndim, tensor.shape, tensor.strides, False)):
            raise BufferSpecError("dlpack: buffer is not contiguous")
    if readonly and writable:
        raise BufferSpecError("dlpack: buffer is not writable")
    item = (<Py_ssize_t>tensor.dtype.bits * tensor.dtype.lanes + 7) // 8
    nbytes = item
    for i in range(ndim):
        n = tensor.shape[i]
        if n and nbytes > (<Py_ssize_t>1 << 62) // n:
            raise BufferSpecError("dlpack: buffer too large")
        nbytes *= n
    fmt = _dlpack_format(tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes)
    # The capsule is kept, not renamed: its destructor releases the tensor,
    # as for mpi4py, once the memory is no longer referenced.
    fb = ForeignBuffer.__new__(ForeignBuffer)
    _fill_foreign(fb, <Py_ssize_t>tensor.data + <Py_ssize_t>tensor.byte_offset, nbytes,
                  fmt[0], fmt[1], readonly, (obj, capsule), item)
    return fb


cdef object _foreign(object obj):
    """A ForeignBuffer over obj's memory when obj (not a buffer-protocol
    object) exports DLPack or the CUDA array interface, else None.  A
    read-only one is refused where a receive pins it writable."""
    global _cai_buffer
    cdef type t = type(obj)
    if t is list or t is tuple or obj is None or t is int:
        return None
    found = dlpack_buffer(obj, False)
    if found is not None:
        return found
    if not hasattr(obj, "__cuda_array_interface__"):
        return None
    if _cai_buffer is None:
        from ivmpi._interop import cai_buffer
        _cai_buffer = cai_buffer
    return _cai_buffer(obj, False, True)


cdef inline object _as_buffer(object obj):
    """obj when it has the buffer protocol, a ForeignBuffer over its memory
    when it exports DLPack or the CUDA array interface, else None."""
    if PyObject_CheckBuffer(obj):
        return obj
    return _foreign(obj)
