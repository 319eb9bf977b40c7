"""Buffer-spec parsing (ivmpi.buffers), checked against what mpi4py itself sends."""
import numpy as np
import pytest
from mpi4py import MPI

from ivmpi.buffers import (Buf, parse_send, parse_recv, parse_vbuf, typed_view,
                           is_in_place)
from ivmpi.errors import BufferSpecError

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
