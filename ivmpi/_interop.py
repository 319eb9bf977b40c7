"""Memory of objects that export DLPack or the CUDA array interface.

Besides the buffer protocol, mpi4py takes as a message buffer any object
with ``__dlpack__`` and ``__dlpack_device__``, or with
``__cuda_array_interface__``.  This module reads both with mpi4py's rules:
the same checks, exception types and messages, and the same format code
(from which a bare buffer's datatype comes).  ``dlpack_memory`` and
``cai_memory`` return ``(memoryview, format)`` or None when the object does
not export that interface; the memoryview is flat bytes over the producer's
memory and keeps the producer (and the DLPack capsule) alive while it is
referenced.  A format of None means bytes of no known type (MPI.BYTE).

The address is used as host memory, as an MPI library without GPU support
does: an array on a non-CPU device is accepted as mpi4py accepts it, which
is right for host-visible memory and for the fake device arrays of mpi4py's
tests, and would fault on real device memory.
"""
import ctypes
import operator
import sys
import warnings

from .errors import BufferSpecError


# --- formats ---------------------------------------------------------------------
# A type code per size in bytes; where two C types have the same size (long
# and long long) the first one listed wins, as in mpi4py.

def _by_size(pairs, times=1):
    table = {}
    for code, ctype in pairs:
        table.setdefault(times * ctypes.sizeof(ctype), code)
    return table


_SIGNED = _by_size([("b", ctypes.c_byte), ("h", ctypes.c_short), ("i", ctypes.c_int),
                    ("l", ctypes.c_long), ("q", ctypes.c_longlong)])
_UNSIGNED = _by_size([("B", ctypes.c_ubyte), ("H", ctypes.c_ushort), ("I", ctypes.c_uint),
                      ("L", ctypes.c_ulong), ("Q", ctypes.c_ulonglong)])
_FLOAT = {2: "e", **_by_size([("f", ctypes.c_float), ("d", ctypes.c_double),
                              ("g", ctypes.c_longdouble)])}
_COMPLEX = {4: "Ze", **_by_size([("Zf", ctypes.c_float), ("Zd", ctypes.c_double),
                                 ("Zg", ctypes.c_longdouble)], times=2)}
_BOOL = {1: "?"}


# --- host memory -------------------------------------------------------------------

def _host_memory(address, nbytes, readonly, keep):
    """A flat byte memoryview of nbytes at address; ``keep`` lives as long as it."""
    if not address and nbytes:
        raise BufferSpecError(f"buffer of {nbytes} bytes at a NULL address")
    array = (ctypes.c_ubyte * nbytes).from_address(address)
    array.keep = keep
    mem = memoryview(array).cast("B")
    return mem.toreadonly() if readonly else mem


# --- DLPack ------------------------------------------------------------------------
# The structures of dlpack.h (v1.0; v0.x capsules hold DLManagedTensor).

class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64),
                ("dl_tensor", _DLTensor)]


_kDLCPU = 1
_kDLInt, _kDLUInt, _kDLFloat, _kDLComplex, _kDLBool = 0, 1, 2, 5, 6
_DLPACK_FLAG_READ_ONLY = 1

# Own function objects, so that the shared ctypes.pythonapi ones stay untouched.
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def dlpack_memory(obj, writable):
    """(memoryview, format) of a DLPack producer, or None if obj is not one."""
    try:
        export, device = obj.__dlpack__, obj.__dlpack_device__
    except AttributeError:
        return None
    # mpi4py unpacks the device into two C integers: the same TypeError and
    # ValueError for a malformed answer.
    device_type, device_id = device()
    device_type, _ = operator.index(device_type), operator.index(device_id)
    # For a device, mpi4py asks for no stream synchronization (stream=-1).
    stream = {} if device_type == _kDLCPU else {"stream": -1}
    try:
        capsule, name = export(max_version=(1, 0), copy=False, **stream), b"dltensor_versioned"
    except TypeError:  # a producer of DLPack 0.x
        capsule, name = export(**stream), b"dltensor"
    if not _capsule_is_valid(capsule, name):
        raise BufferSpecError("dlpack: invalid capsule object")
    pointer = _capsule_pointer(capsule, name)
    if name == b"dltensor":
        tensor = _DLManagedTensor.from_address(pointer).dl_tensor
        readonly = False
    else:
        managed = _DLManagedTensorVersioned.from_address(pointer)
        if managed.version.major < 1:
            raise BufferSpecError("dlpack: unexpected version")
        tensor = managed.dl_tensor
        readonly = bool(managed.flags & _DLPACK_FLAG_READ_ONLY)
    shape, strides = _dlpack_shape(tensor)
    if strides is not None and not (_contiguous(shape, strides, 1, "C")
                                    or _contiguous(shape, strides, 1, "F")):
        raise BufferSpecError("dlpack: buffer is not contiguous")
    if readonly and writable:
        raise BufferSpecError("dlpack: buffer is not writable")
    code, bits, lanes = tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes
    nbytes = (bits * lanes + 7) // 8
    for n in shape:
        nbytes *= n
    address = (tensor.data or 0) + tensor.byte_offset
    # The capsule is kept, not renamed: its destructor releases the tensor,
    # as for mpi4py, once the memory is no longer referenced.
    mem = _host_memory(address, nbytes, readonly, (obj, capsule))
    return mem, _dlpack_format(code, bits, lanes)


def _dlpack_shape(tensor):
    """Shape and strides (None when absent) as lists, checked as mpi4py does."""
    ndim = tensor.ndim
    if ndim < 0:
        raise BufferSpecError("dlpack: number of dimensions is negative")
    if ndim > 0 and not tensor.shape:
        raise BufferSpecError("dlpack: shape is NULL")
    shape = tensor.shape[:ndim] if ndim else []
    if any(n < 0 for n in shape):
        raise BufferSpecError("dlpack: shape item is negative")
    strides = tensor.strides[:ndim] if ndim and tensor.strides else None
    if strides is not None and any(s < 0 for s in strides):
        raise BufferSpecError("dlpack: strides item is negative")
    return shape, strides


def _contiguous(shape, strides, itemsize, order):
    """Whether the strides lay the shape out without gaps in C or Fortran
    order (itemsize in the strides' unit: bytes, or 1 for strides counted in
    elements); axes of length 0 or 1 may have any stride."""
    size = itemsize
    axes = range(len(shape) - 1, -1, -1) if order == "C" else range(len(shape))
    for i in axes:
        if shape[i] > 1 and strides[i] != size:
            return False
        size *= shape[i]
    return True


def _dlpack_format(code, bits, lanes):
    if lanes != 1:
        # Two lanes of a float are a complex number; other vectors are bytes.
        if code == _kDLFloat and lanes == 2 and bits % 8 == 0:
            return {"f": "Zf", "d": "Zd", "g": "Zg"}.get(_FLOAT.get(bits // 8))
        return None
    table = {_kDLBool: _BOOL, _kDLInt: _SIGNED, _kDLUInt: _UNSIGNED,
             _kDLFloat: _FLOAT, _kDLComplex: _COMPLEX}.get(code, {})
    return table.get(bits // 8) if bits % 8 == 0 else None


# --- CUDA array interface --------------------------------------------------------------

def _expect(value, kind, what):
    # mpi4py declares these entries with a Python type: the same TypeError.
    if not isinstance(value, kind):
        raise TypeError(f"__cuda_array_interface__: {what} must be {kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def cai_memory(obj, writable, typed):
    """(memoryview, format) of an object with ``__cuda_array_interface__``, or
    None if obj has none.  ``typed``: the format will name the datatype, so
    its byte order matters."""
    try:
        interface = obj.__cuda_array_interface__
    except AttributeError:
        return None
    interface = _expect(interface, dict, "the interface")
    data = _expect(interface["data"], tuple, "'data'")
    typestr = _expect(interface["typestr"], str, "'typestr'")
    shape = _expect(interface["shape"], tuple, "'shape'")
    strides = interface.get("strides")
    if strides is not None:
        _expect(strides, tuple, "'strides'")
    descr = interface.get("descr")
    if descr is not None:
        _expect(descr, list, "'descr'")
    mask = interface.get("mask")

    address, readonly = data
    size = 1
    for n in shape:
        size *= operator.index(n)
    if address is None and size == 0:
        address = 0
    address = operator.index(address)
    byteorder, kind, itemsize = typestr[:1], typestr[1:2], int(typestr[2:])
    table = {"b": _BOOL, "i": _SIGNED, "u": _UNSIGNED, "f": _FLOAT, "c": _COMPLEX}.get(kind, {})
    fmt = table.get(itemsize)

    if typed and byteorder != "|":
        if byteorder not in ("<", ">"):
            raise BufferSpecError(f"__cuda_array_interface__: typestr {typestr!r} "
                                  f"with unrecognized byte order")
        if byteorder != ("<" if sys.byteorder == "little" else ">"):
            raise BufferSpecError(f"__cuda_array_interface__: typestr {typestr!r} "
                                  f"with non-native byte order")
    if mask is not None:
        raise BufferSpecError("__cuda_array_interface__: cannot handle masked arrays")
    if size < 0:
        raise BufferSpecError(f"__cuda_array_interface__: buffer with negative size "
                              f"(shape:{shape}, size:{size})")
    if strides is not None and not (_contiguous(shape, strides, itemsize, "C")
                                    or _contiguous(shape, strides, itemsize, "F")):
        raise BufferSpecError(f"__cuda_array_interface__: buffer is not contiguous "
                              f"(shape:{shape}, strides:{strides}, itemsize:{itemsize})")
    if readonly and writable:
        raise BufferSpecError("__cuda_array_interface__: buffer is not writable")
    if descr is not None and (len(descr) != 1 or descr[0] != ("", typestr)):
        warnings.warn("__cuda_array_interface__: ignoring 'descr' key", RuntimeWarning,
                      stacklevel=2)
    return _host_memory(address, size * itemsize, readonly, obj), fmt

