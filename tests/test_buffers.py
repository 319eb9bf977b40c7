"""Buffer-spec parsing (ivmpi.buffers), checked against what mpi4py itself sends."""
import ctypes
import gc
import sys
import weakref

import numpy as np
import pytest
from mpi4py import MPI


from ivmpi.buffers import (Buf, parse_send, parse_recv, parse_vbuf, typed_view,
                           is_in_place)
from ivmpi.errors import BufferSpecError
from ivmpi.sweepworker import DLPackTensor as NumpyDLPack   # numpy's export, nothing else

SELF = MPI.COMM_SELF

BASIC_DTYPES = ["?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8",
                "f2", "f4", "f8", "g", "c8", "c16", "G"]


def mpi4py_received(spec, nbytes):
    """(count, bytes) mpi4py delivers when sending ``spec`` to itself."""
    sink = bytearray(nbytes + 64)
    status = MPI.Status()
    SELF.Sendrecv(spec, 0, 7, sink, 0, 7, status)
    n = status.Get_count(MPI.BYTE)
    return n, bytes(sink[:n])


def check_against_mpi4py(spec, buf):
    """The bytes we would send are exactly the bytes mpi4py sends."""
    n, data = mpi4py_received(spec, buf.nbytes)
    assert buf.mem.format == "B" and buf.mem.ndim == 1 and buf.mem.c_contiguous
    assert n == buf.nbytes
    assert data == bytes(buf.mem)


@pytest.mark.parametrize("dtype", BASIC_DTYPES)
def test_bare_numpy_array_every_dtype(dtype):
    array = np.arange(6).astype(dtype)
    buf = parse_send(array)
    assert isinstance(buf, Buf)
    assert buf.count == 6
    assert buf.datatype.Get_size() == array.itemsize
    assert buf.obj is array
    check_against_mpi4py(array, buf)
    np.testing.assert_array_equal(typed_view(buf.mem, buf.datatype), array)


@pytest.mark.parametrize("obj", [b"hello", bytearray(b"abc"), memoryview(b"xyz"), b""])
def test_bytes_like(obj):
    buf = parse_send(obj)
    assert buf.datatype == MPI.UNSIGNED_CHAR and buf.count == len(obj) == buf.nbytes
    check_against_mpi4py(obj, buf)


def test_format_B_is_unsigned_char_as_in_mpi4py():
    assert parse_send(np.zeros(3, "u1")).datatype == MPI.UNSIGNED_CHAR
    assert parse_send(np.zeros(3, "i1")).datatype == MPI.SIGNED_CHAR
    # mpi4py itself: bytes reduce as MPI_UNSIGNED_CHAR, not as MPI_BYTE.
    with pytest.raises(ValueError, match="mismatch"):
        SELF.Allreduce([b"\1", MPI.BYTE], bytearray(1), op=MPI.SUM)


def test_multidimensional_and_fortran_order():
    c = np.arange(12.0).reshape(3, 4)
    assert parse_send(c).count == 12
    check_against_mpi4py(c, parse_send(c))
    f = np.asfortranarray(c)
    check_against_mpi4py(f, parse_send(f))


def spec_forms(array):
    return {
        "datatype": [array, MPI.INT],
        "count": [array, 3, MPI.INT],
        "count_displ": [array, (3, 2), MPI.INT],
        "count_displ_list": [array, [4, 1], MPI.INT],
        "tuple_count": (array, 5),
        "four_items": [array, 2, 4, MPI.INT],
        "type_string": [array, "i"],
        "count_type_string": [array, 2, "i"],
    }


@pytest.mark.parametrize("form", list(spec_forms(np.zeros(1))))
def test_spec_forms_match_mpi4py(form):
    array = np.arange(10, dtype="i4")
    spec = spec_forms(array)[form]
    buf = parse_send(spec)
    check_against_mpi4py(spec, buf)
    assert buf.obj is array
    # And receiving through the same spec writes the same slice.
    received = np.full(10, -1, "i4")
    expected = np.full(10, -1, "i4")
    rbuf = parse_recv(spec_forms(received)[form])
    rbuf.mem[:] = buf.mem
    SELF.Sendrecv(spec, 0, 0, spec_forms(expected)[form], 0, 0)
    np.testing.assert_array_equal(received, expected)


def test_count_is_elements_not_bytes():
    buf = parse_send([np.arange(10.0), (3, 2), MPI.DOUBLE])
    assert (buf.count, buf.nbytes) == (3, 24)
    np.testing.assert_array_equal(typed_view(buf.mem, MPI.DOUBLE), [2.0, 3.0, 4.0])


def test_recv_views_are_writable_and_alias_the_buffer():
    array = np.zeros(4, "i8")
    buf = parse_recv([array, (2, 1), MPI.LONG])
    typed_view(buf.mem, buf.datatype)[:] = [7, 8]
    np.testing.assert_array_equal(array, [0, 7, 8, 0])


def test_blocks():
    buf = parse_send(np.arange(12, dtype="i4"), blocks=3)
    assert (buf.count, buf.nbytes) == (4, 48)
    buf = parse_recv([np.zeros(12, "i4"), 2, MPI.INT], blocks=3)
    assert (buf.count, buf.nbytes) == (2, 24)
    with pytest.raises(BufferSpecError, match="blocks"):
        parse_send(np.arange(10, dtype="i4"), blocks=3)


def test_derived_contiguous_datatypes():
    quad = MPI.DOUBLE.Create_contiguous(4).Commit()
    dense_vector = MPI.INT.Create_vector(3, 2, 2).Commit()  # stride == blocklength
    try:
        array = np.arange(16.0)
        spec = [array, 2, quad]
        buf = parse_send(spec)
        assert (buf.count, buf.nbytes) == (2, 64)
        check_against_mpi4py(spec, buf)
        assert parse_send([array, quad]).count == 4
        assert typed_view(buf.mem, quad).shape == (2, 4)
        ints = np.arange(12, dtype="i4")
        spec = [ints, 2, dense_vector]
        check_against_mpi4py(spec, parse_send(spec))
    finally:
        quad.Free()
        dense_vector.Free()


def test_pair_types_move_whole_extents():
    pair = np.zeros(3, np.dtype([("v", "f8"), ("i", "i4")], align=True))
    buf = parse_send([pair, MPI.DOUBLE_INT])
    assert (buf.count, buf.nbytes) == (3, 48)
    assert typed_view(buf.mem, MPI.DOUBLE_INT).shape == (3,)


def test_bottom_and_none_for_empty_messages():
    for spec in ([None, MPI.INT], [MPI.BOTTOM, 0, MPI.INT], [None, 0, MPI.DOUBLE]):
        buf = parse_recv(spec)
        assert (buf.count, buf.nbytes) == (0, 0)
        check_against_mpi4py(spec, buf)


def test_in_place():
    assert is_in_place(MPI.IN_PLACE)
    assert is_in_place(None)  # mpi4py reads None as IN_PLACE too
    assert not is_in_place(np.zeros(1))
    assert not is_in_place(MPI.BOTTOM)


# --- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("spec,match", [
    (np.zeros((4, 4))[:, 1], "not contiguous"),
    ([np.arange(4, dtype="i4"), 5, MPI.INT], r"count 5 of MPI_INT needs 20 bytes but the buffer has 16"),
    ([np.arange(4, dtype="i4"), (3, 2), MPI.INT], "needs 12 bytes but the buffer has 8"),
    ([np.arange(4, dtype="i4"), -1, MPI.INT], "negative count -1"),
    ([np.arange(4, dtype="i4"), (1, -1), MPI.INT], "negative displacement"),
    ([np.arange(4, dtype="i4"), (0, 5), MPI.INT], "displacement 5 out of bounds"),
    ([np.arange(4, dtype="i4"), MPI.DATATYPE_NULL], "DATATYPE_NULL"),
    ([np.arange(4, dtype="i4"), "not-a-type"], "cannot map"),
    ([np.arange(4, dtype="i4"), 1.5, MPI.INT], "count must be an integer"),
    ([np.arange(5, dtype="i1"), MPI.INT], "not a multiple"),
    ([np.arange(4), 1, 2, MPI.INT, 0], "2 to 4 items"),
    (42, "buffer protocol"),
    (np.zeros(2, ">f8"), "non-native byte order"),
    (np.zeros(2, [("a", "i4"), ("b", "f8")]), "give the datatype explicitly"),
    ([MPI.BOTTOM, 3, MPI.INT], "BOTTOM"),
    (MPI.IN_PLACE, "expected a buffer"),
])
def test_bad_specs(spec, match):
    with pytest.raises(BufferSpecError, match=match):
        parse_send(spec)


@pytest.mark.parametrize("obj", [b"abc", memoryview(bytearray(3)).toreadonly(),
                                 np.zeros(3)[::1].view()])
def test_read_only_receive_buffer(obj):
    if isinstance(obj, np.ndarray):
        obj.flags.writeable = False
    parse_send(obj)  # fine for sending
    with pytest.raises(BufferSpecError, match="read-only"):
        parse_recv(obj)
    with pytest.raises(BufferSpecError, match="read-only"):
        parse_recv([obj, MPI.BYTE])


def test_uncommitted_and_holey_datatypes():
    uncommitted = MPI.DOUBLE.Create_contiguous(2)
    strided = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
    try:
        with pytest.raises(BufferSpecError, match="not committed"):
            parse_send([np.zeros(4), uncommitted])
        with pytest.raises(BufferSpecError, match="not contiguous"):
            parse_send([np.zeros(6), 1, strided])
    finally:
        uncommitted.Free()
        strided.Free()


# --- vector specs ---------------------------------------------------------------------

def test_vbuf_explicit():
    array = np.arange(10.0)
    v = parse_vbuf([array, [1, 2, 3], [0, 2, 6], MPI.DOUBLE], 3, recv=False)
    assert (v.counts, v.displs, v.extent) == ([1, 2, 3], [0, 2, 6], 8)
    blocks = [typed_view(v.block(i), MPI.DOUBLE).tolist() for i in range(3)]
    assert blocks == [[0.0], [2.0, 3.0], [6.0, 7.0, 8.0]]


@pytest.mark.parametrize("spec,counts,displs", [
    (lambda a: a, [4, 3, 3], [0, 4, 7]),                       # split as evenly as possible
    (lambda a: [a, MPI.DOUBLE], [4, 3, 3], [0, 4, 7]),
    (lambda a: [a, [1, 2, 3], MPI.DOUBLE], [1, 2, 3], [0, 1, 3]),   # displs derived
    (lambda a: [a, ([1, 2, 3], [7, 4, 0]), MPI.DOUBLE], [1, 2, 3], [7, 4, 0]),
    (lambda a: [a, 2, MPI.DOUBLE], [2, 2, 2], [0, 2, 4]),      # one count for all
    (lambda a: [a, (2, 3), MPI.DOUBLE], [2, 2, 2], [0, 3, 6]),  # strided
    (lambda a: [a, [3, 3, 4]], [3, 3, 4], [0, 3, 6]),          # a list is counts
])
def test_vbuf_forms_match_mpi4py_scatterv(spec, counts, displs):
    send = np.arange(10.0)
    v = parse_vbuf(spec(send), 3, recv=False)
    assert (v.counts, v.displs) == (counts, displs)
    # mpi4py would send block 0 of the same spec to a 1-rank Scatterv only when
    # size is 1, so compare each block with a Scatterv of that block alone.
    for i in range(3):
        got = np.empty(counts[i])
        SELF.Scatterv([send, [counts[i]], [displs[i]], MPI.DOUBLE], got, 0)
        assert typed_view(v.block(i), MPI.DOUBLE).tolist() == got.tolist()


@pytest.mark.parametrize("spec,match", [
    ([np.zeros(4), [1, 2], MPI.DOUBLE], "expected 3 counts"),
    ([np.zeros(4), [1, 1, 1], [0, 1], MPI.DOUBLE], "expected 3 displacements"),
    ([np.zeros(4), [1, -1, 1], MPI.DOUBLE], "negative count"),
    ([np.zeros(4), [1, 1, 1], [0, 1, 4], MPI.DOUBLE], "runs past the end"),
    ([np.zeros(4), [2, 2, 2], MPI.DOUBLE], "runs past the end"),
    ([np.zeros(5, "i1"), MPI.INT], "not a multiple"),
    (None, "expected a buffer"),
])
def test_vbuf_errors(spec, match):
    with pytest.raises(BufferSpecError, match=match):
        parse_vbuf(spec, 3, recv=False)


def test_vbuf_recv_needs_writable():
    with pytest.raises(BufferSpecError, match="read-only"):
        parse_vbuf(b"abcdef", 3, recv=True)


# --- errors of mpi4py's types ------------------------------------------------------------

def mpi4py_error(spec, recv=False):
    """The exception type mpi4py raises for spec (as a send or a receive buffer)."""
    empty = [None, 0, MPI.BYTE]
    try:
        if recv:
            SELF.Sendrecv(empty, 0, 0, spec, 0, 0)
        else:
            SELF.Sendrecv(spec, 0, 0, bytearray(1 << 12), 0, 0)
    except Exception as exc:
        return type(exc)
    raise AssertionError(f"mpi4py accepts {spec!r}")


def check_same_error(spec, recv=False, match=None):
    expected = mpi4py_error(spec, recv)
    with pytest.raises(expected, match=match):
        (parse_recv if recv else parse_send)(spec)


@pytest.mark.parametrize("spec,kind", [
    (object(), TypeError),                               # not a buffer at all
    ([[1, 2, 3, 4], 4, 0, "i"], TypeError),              # a list is not a buffer
    ([{1: 2}, 4, 0, "i"], TypeError),
    ([bytearray(8), 1.5, MPI.INT], TypeError),           # count not an integer
    ([bytearray(8), 0, "\0"], KeyError),                 # no such datatype
    ([bytearray(8), 0, 0, "i", None], ValueError),       # 5 items
    ([bytearray(5), None, 0, "i"], ValueError),          # count cannot be inferred
    ([None, 1, 0, "i"], ValueError),                     # nothing to send from
    ([bytearray(8), 0, 1, MPI.DATATYPE_NULL], ValueError),
])
def test_error_types_are_mpi4py_s(spec, kind):
    assert issubclass(mpi4py_error(spec), kind)
    with pytest.raises(kind):
        parse_send(spec)
    with pytest.raises(BufferSpecError):   # and still ivmpi's own error
        parse_send(spec)


def test_proc_null_ignores_the_spec():
    for parse in (parse_send, parse_recv):
        buf = parse(None, rank=MPI.PROC_NULL)
        assert (buf.count, buf.nbytes) == (0, 0)
        assert parse(object(), rank=MPI.PROC_NULL).nbytes == 0
    assert parse_recv(b"read-only", rank=MPI.PROC_NULL).nbytes == 0
    with pytest.raises(TypeError):
        parse_send(None, rank=0)


def test_zero_dim_arrays_count_as_numbers():
    v = parse_vbuf([bytearray(6), np.array(2)], 3, recv=False)
    assert v.counts == [2, 2, 2]
    v = parse_vbuf([bytearray(6), (np.array(1), [np.array(0), 2, 4]), MPI.BYTE], 3, recv=False)
    assert (v.counts, v.displs) == ([1, 1, 1], [0, 2, 4])
    with pytest.raises(TypeError):
        parse_vbuf([bytearray(6), np.array(2.0)], 3, recv=False)


# --- DLPack ---------------------------------------------------------------------------
# A small producer over a numpy array whose tensor fields the tests may
# change; mpi4py reads the same objects, so it is the reference.

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


_PyCapsule_New = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p,
                                   ctypes.c_void_p)(("PyCapsule_New", ctypes.pythonapi))
_DL_CODES = {"b": 6, "i": 0, "u": 1, "f": 2, "c": 5}


class Tensor:
    """DLPack 1.x producer (the capsules have no destructor: the memory
    belongs to this object)."""
    versioned = True

    def __init__(self, array, device=1):
        self.array = array
        itemsize = array.itemsize
        managed = _DLManagedTensorVersioned() if self.versioned else _DLManagedTensor()
        if self.versioned:
            managed.version.major = 1
        ndim = array.ndim
        self.shape = (ctypes.c_int64 * max(ndim, 1))(*array.shape)
        self.strides = (ctypes.c_int64 * max(ndim, 1))(*(s // itemsize for s in array.strides))
        t = managed.dl_tensor
        t.data = array.ctypes.data
        t.device.device_type = device
        t.ndim = ndim
        t.shape = ctypes.cast(self.shape, ctypes.POINTER(ctypes.c_int64))
        t.strides = ctypes.cast(self.strides, ctypes.POINTER(ctypes.c_int64))
        t.dtype.code = _DL_CODES[array.dtype.kind]
        t.dtype.bits = 8 * itemsize
        t.dtype.lanes = 1
        if t.dtype.bits == 0:       # 256 bits do not fit: two lanes of float128
            t.dtype.code, t.dtype.bits, t.dtype.lanes = 2, 128, 2
        self.managed = managed
        self.tensor = t

    def __dlpack_device__(self):
        return (self.tensor.device.device_type, 0)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        name = b"dltensor_versioned" if self.versioned else b"dltensor"
        return _PyCapsule_New(ctypes.addressof(self.managed), name, None)


class TensorV0(Tensor):
    """DLPack 0.x producer: no max_version argument."""
    versioned = False

    def __dlpack__(self, stream=None):
        return super().__dlpack__(stream)


DLPACK_DTYPES = ["?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8",
                 "f2", "f4", "f8", "g", "c8", "c16", "G"]


@pytest.mark.parametrize("producer", [Tensor, TensorV0, NumpyDLPack])
@pytest.mark.parametrize("dtype", DLPACK_DTYPES)
def test_dlpack_every_dtype(producer, dtype):
    if producer is NumpyDLPack and dtype in ("g", "G"):
        pytest.skip("numpy does not export long double through DLPack")
    array = np.arange(6).astype(dtype)
    obj = producer(array)
    buf = parse_send(obj)
    assert buf.datatype == parse_send(array).datatype       # the dtype's datatype
    assert buf.count == 6
    check_against_mpi4py(obj, buf)
    received = np.zeros_like(array)
    rbuf = parse_recv(producer(received))
    rbuf.mem[:] = buf.mem
    np.testing.assert_array_equal(received, array)


@pytest.mark.parametrize("array", [np.arange(12.0).reshape(3, 4),
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                                   np.array(7.0), np.zeros(0)])
def test_dlpack_shapes(array):
    for obj in (Tensor(array), NumpyDLPack(array)):
        buf = parse_send(obj)
        assert buf.count == array.size and buf.datatype == MPI.DOUBLE
        check_against_mpi4py(obj, buf)


def test_dlpack_in_specs_and_vectors():
    array = np.arange(10, dtype="i4")
    for form, spec in spec_forms(Tensor(array)).items():
        check_against_mpi4py(spec, parse_send(spec))
    v = parse_vbuf([Tensor(array), [1, 2, 3], [0, 2, 6], MPI.INT], 3, recv=False)
    assert typed_view(v.block(2), MPI.INT).tolist() == [6, 7, 8]
    v = parse_vbuf(CAI(array), 2, recv=True)
    assert v.counts == [5, 5] and v.datatype == MPI.INT


def test_dlpack_byte_offset_and_dtype_fallbacks():
    obj = Tensor(np.arange(8, dtype="u1"))
    obj.tensor.byte_offset = 3
    obj.tensor.shape[0] = 5
    assert bytes(parse_send(obj).mem) == bytes(range(3, 8))
    obj = Tensor(np.arange(4, dtype="u2"))
    obj.tensor.dtype.code = 3                        # an opaque handle: bytes
    buf = parse_send(obj)
    assert (buf.datatype, buf.count) == (MPI.BYTE, 8)
    check_against_mpi4py(obj, buf)
    obj = Tensor(np.arange(4, dtype="u4"))
    obj.tensor.dtype.bits, obj.tensor.dtype.lanes = 16, 2     # a vector type: bytes
    assert parse_send(obj).datatype == MPI.BYTE and parse_send(obj).nbytes == 16
    obj = Tensor(np.arange(4, dtype="f8"))
    obj.tensor.dtype.lanes, obj.tensor.shape[0] = 2, 2        # two float lanes: complex
    buf = parse_send(obj)
    assert (buf.datatype, buf.count) == (MPI.C_DOUBLE_COMPLEX, 2)
    check_against_mpi4py(obj, buf)


def test_dlpack_keeps_the_producer_alive():
    mem = parse_send(NumpyDLPack(np.arange(1000.0))).mem
    gc.collect()
    np.testing.assert_array_equal(np.frombuffer(mem, "f8"), np.arange(1000.0))
    obj = Tensor(np.arange(4.0))
    mem = parse_send(obj).mem
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is not None and mem.obj.keep[0] is ref()
    del mem
    gc.collect()
    assert ref() is None


def test_dlpack_readonly():
    obj = Tensor(np.arange(4.0))
    obj.managed.flags = 1                            # DLPACK_FLAG_BITMASK_READ_ONLY
    assert parse_send(obj).mem.readonly
    check_same_error(obj, recv=True, match="dlpack: buffer is not writable")
    frozen = np.arange(4.0)
    frozen.flags.writeable = False
    parse_send(NumpyDLPack(frozen))
    check_same_error(NumpyDLPack(frozen), recv=True)


def _bad_tensor(change):
    obj = Tensor(np.arange(8, dtype="i4").reshape(2, 2, 2))
    change(obj)
    return obj


@pytest.mark.parametrize("change,match", [
    (lambda o: setattr(o.tensor, "ndim", -1), "number of dimensions is negative"),
    (lambda o: setattr(o.tensor, "shape", None), "shape is NULL"),
    (lambda o: o.shape.__setitem__(0, -1), "shape item is negative"),
    (lambda o: o.strides.__setitem__(0, -1), "strides item is negative"),
    (lambda o: o.strides.__setitem__(1, 1), "buffer is not contiguous"),
    (lambda o: o.strides.__setitem__(slice(0, 3), [1, 4, 2]), "buffer is not contiguous"),
    (lambda o: setattr(o.managed.version, "major", 0), "unexpected version"),
    (lambda o: setattr(o, "__dlpack__", lambda **kw: None), "invalid capsule"),
])
def test_dlpack_bad_tensors(change, match):
    check_same_error(_bad_tensor(change), match=f"dlpack: {match}")


def test_dlpack_contiguity_as_mpi4py():
    # Fortran order, and axes of length 1 with any stride, are contiguous.
    obj = _bad_tensor(lambda o: o.strides.__setitem__(slice(0, 3), [1, 2, 4]))
    check_against_mpi4py(obj, parse_send(obj))
    obj = Tensor(np.arange(3, dtype="i4").reshape(1, 3, 1))
    obj.strides[0], obj.strides[2] = 3, 0
    check_against_mpi4py(obj, parse_send(obj))
    obj.tensor.strides = None                        # no strides: C order
    check_against_mpi4py(obj, parse_send(obj))


@pytest.mark.parametrize("device", [None, lambda: None, lambda: (None, 0), lambda: (1, None),
                                    lambda: (1,), lambda: (1, 0, 1)])
def test_dlpack_bad_device(device):
    obj = Tensor(np.arange(4, dtype="i4"))
    obj.__dlpack_device__ = device
    check_same_error(obj)


def test_dlpack_other_devices_are_taken_as_mpi4py_takes_them():
    # Host memory announced as a CUDA device (as in mpi4py's own tests): the
    # producer is asked for it with stream=-1 and the address is used.
    obj = Tensor(np.arange(4, dtype="i4"), device=2)
    streams = []
    export = obj.__dlpack__
    obj.__dlpack__ = lambda stream=None, **kw: streams.append(stream) or export(**kw)
    check_against_mpi4py(obj, parse_send(obj))
    assert streams[-1] == -1


# --- CUDA array interface ---------------------------------------------------------------

class CAI:
    """An object with only __cuda_array_interface__, over a numpy array in host memory."""

    def __init__(self, array, readonly=False):
        self.array = array
        self.__cuda_array_interface__ = {
            "version": 3, "data": (array.ctypes.data, readonly), "typestr": array.dtype.str,
            "shape": array.shape, "strides": None,
        }


@pytest.mark.parametrize("dtype", DLPACK_DTYPES)
def test_cai_every_dtype(dtype):
    array = np.arange(6).astype(dtype)
    buf = parse_send(CAI(array))
    assert buf.datatype == parse_send(array).datatype and buf.count == 6
    check_against_mpi4py(CAI(array), buf)
    received = np.zeros_like(array)
    parse_recv(CAI(received)).mem[:] = buf.mem
    np.testing.assert_array_equal(received, array)


def test_cai_strides_descr_and_keep_alive():
    array = np.arange(12.0).reshape(3, 4)
    obj = CAI(array)
    obj.__cuda_array_interface__["strides"] = array.strides
    check_against_mpi4py(obj, parse_send(obj))
    obj = CAI(np.asfortranarray(array))
    obj.__cuda_array_interface__["strides"] = obj.array.strides
    check_against_mpi4py(obj, parse_send(obj))
    obj = CAI(array)
    obj.__cuda_array_interface__["descr"] = [("", array.dtype.str)]
    parse_send(obj)
    obj.__cuda_array_interface__["descr"] = [("a", "<f8"), ("b", "<f8")]
    with pytest.warns(RuntimeWarning, match="ignoring 'descr'"):
        parse_send(obj)
    mem = parse_send(CAI(np.arange(100.0))).mem
    gc.collect()
    np.testing.assert_array_equal(np.frombuffer(mem, "f8"), np.arange(100.0))


def test_cai_unknown_type_is_bytes():
    obj = CAI(np.arange(3.0))
    obj.__cuda_array_interface__["typestr"] = "|V8"
    buf = parse_send(obj)
    assert (buf.datatype, buf.count) == (MPI.BYTE, 24)
    check_against_mpi4py(obj, buf)


def test_cai_byte_order_matters_only_without_a_datatype():
    obj = CAI(np.arange(3, dtype="i4"))
    foreign = ">" if sys.byteorder == "little" else "<"
    for order in (foreign, "#"):
        obj.__cuda_array_interface__["typestr"] = order + "i4"
        check_same_error(obj)
        assert parse_send([obj, MPI.INT]).count == 3
    obj.__cuda_array_interface__["typestr"] = "|i4"
    assert parse_send(obj).count == 3


def _cai(**changes):
    obj = CAI(np.arange(3, dtype="u1"))
    for key, value in changes.items():
        if value is KeyError:
            del obj.__cuda_array_interface__[key]
        else:
            obj.__cuda_array_interface__[key] = value
    return obj


@pytest.mark.parametrize("obj,recv,kind", [
    (lambda: _cai(data=(CAI(np.zeros(3, "u1")).array.ctypes.data, True)), True, BufferError),
    (lambda: _cai(mask=True), False, BufferError),
    (lambda: _cai(shape=(3, -1)), False, BufferError),
    (lambda: _cai(strides=(7,)), False, BufferError),
    (lambda: _cai(data=KeyError), False, KeyError),
    (lambda: _cai(typestr=KeyError), False, KeyError),
    (lambda: _cai(shape=KeyError), False, KeyError),
    (lambda: _cai(data=None), False, TypeError),
    (lambda: _cai(data=0), False, TypeError),
    (lambda: _cai(data=(1,)), False, ValueError),
    (lambda: _cai(data=(1, False, None)), False, ValueError),
    (lambda: _cai(typestr=None), False, TypeError),
    (lambda: _cai(typestr=42), False, TypeError),
    (lambda: _cai(typestr="|uX"), False, ValueError),
    (lambda: _cai(shape=None), False, TypeError),
    (lambda: _cai(shape=3), False, TypeError),
    (lambda: _cai(strides=42), False, TypeError),
    (lambda: _cai(descr=42), False, TypeError),
])
def test_cai_errors_as_mpi4py(obj, recv, kind):
    assert issubclass(mpi4py_error(obj(), recv), kind)
    check_same_error(obj(), recv)


@pytest.mark.parametrize("interface,kind", [(None, TypeError), ({}, KeyError),
                                            ([("data", (0, False))], TypeError)])
def test_cai_bad_interface(interface, kind):
    obj = CAI(np.zeros(3))
    obj.__cuda_array_interface__ = interface
    assert issubclass(mpi4py_error(obj), kind)
    check_same_error(obj)


# --- MPI.buffer / MPI.memory ---------------------------------------------------------------

def test_mpi_buffer():
    data = bytearray(b"abcdef")
    for buffer in (MPI.buffer(data), MPI.memory(data), MPI.buffer.frombuffer(data)):
        buf = parse_send(buffer)
        assert bytes(buf.mem) == data and buf.datatype == MPI.UNSIGNED_CHAR
        check_against_mpi4py(buffer, buf)
        parse_recv(buffer).mem[:1] = b"A"
        assert data == b"Abcdef"
        data[0:1] = b"a"
    frozen = MPI.buffer.frombuffer(data, readonly=True)
    parse_send(frozen)
    check_same_error(frozen, recv=True)
    # A buffer over a DLPack or CUDA-array-interface object.
    array = np.arange(4, dtype="i4")
    for obj in (Tensor(array), CAI(array)):
        buffer = MPI.buffer(obj)
        assert bytes(parse_send([buffer, MPI.INT]).mem) == array.tobytes()
