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

from ._fastcopy import ForeignBuffer, dlpack_buffer
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
    return memoryview(ForeignBuffer(address, nbytes, None, readonly, keep))


# --- DLPack ------------------------------------------------------------------------
# Read in C by ivmpi._fastcopy.dlpack_buffer (its checks and messages are
# mpi4py's); the format codes come from _dlpack_format below.

_kDLInt, _kDLUInt, _kDLFloat, _kDLComplex, _kDLBool = 0, 1, 2, 5, 6


def dlpack_memory(obj, writable):
    """(memoryview, format) of a DLPack producer, or None if obj is not one."""
    found = dlpack_buffer(obj, writable)
    if found is None:
        return None
    return memoryview(found).cast("B"), found.code


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


def cai_buffer(obj, writable, typed):
    """A ForeignBuffer over the memory of an object with
    ``__cuda_array_interface__``, or None if obj has none.  ``typed``: the
    format will name the datatype, so its byte order matters."""
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
    return ForeignBuffer(address, size * itemsize, fmt, bool(readonly), obj, itemsize)


def cai_memory(obj, writable, typed):
    """(memoryview, format) of an object with ``__cuda_array_interface__``, or
    None if obj has none.  ``typed``: the format will name the datatype, so
    its byte order matters."""
    found = cai_buffer(obj, writable, typed)
    if found is None:
        return None
    return memoryview(found).cast("B"), found.code

