"""The one-call fast paths must accept exactly what the general path accepts:
never raw object pointers, foreign byte order or records that mpi4py refuses."""
import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=2)

REFUSED = [
    np.array([1, "x", None], dtype=object),
    np.arange(3, dtype=">f8") if np.little_endian else np.arange(3, dtype="<f8"),
    np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),
]


@pytest.mark.parametrize("array", REFUSED, ids=["object", "swapped", "record"])
def test_buffers_mpi4py_refuses_are_refused_on_every_path(comm, array):
    # mpi4py itself refuses them ...
    with pytest.raises(Exception):
        _native.COMM_SELF.Isend(array, 0, 0).Free()
    peer = (comm.rank + 1) % comm.size
    # ... and so does ivmpi, whether the message is small (fast path) or not.
    large = np.zeros(len(array) * 10000, dtype=array.dtype)   # keeps the dtype as it is
    assert large.dtype == array.dtype
    for payload in (array, large):
        with pytest.raises((ValueError, KeyError, BufferError, MPI.Exception)):
            comm.Send(payload, peer, 3)
        with pytest.raises((ValueError, KeyError, BufferError, MPI.Exception)):
            comm.Recv(np.empty_like(payload), MPI.ANY_SOURCE, 3)
    # Nothing was sent: the communicator is still clean and working.
    assert not comm.Iprobe(MPI.ANY_SOURCE, 3)
    comm.Barrier()
    assert comm.allreduce(1) == comm.size


@pytest.mark.parametrize("make", [
    lambda n: np.arange(n, dtype="f8"),
    lambda n: bytearray(range(256)) * (n // 256 + 1),
    lambda n: bytes(range(256)) * (n // 256 + 1),
    lambda n: memoryview(np.arange(n, dtype="i4")),
    lambda n: np.arange(2 * n, dtype="f4")[::2].copy(),
    lambda n: np.ones(n, dtype="f2"),
], ids=["float64", "bytearray", "bytes", "memoryview", "float32", "float16"])
@pytest.mark.parametrize("n", [1, 100, 5000, 20000])
def test_plain_buffers_of_every_kind_and_size(comm, make, n):
    left, right = (comm.rank - 1) % comm.size, (comm.rank + 1) % comm.size
    payload = make(n)
    expected = bytes(memoryview(payload).cast("B"))
    got = bytearray(len(expected))
    status = MPI.Status()
    comm.Sendrecv(payload, right, 4, got, left, 4, status)
    assert bytes(got) == expected      # every rank sends the same pattern
    assert status.Get_source() == left and status.Get_count(MPI.BYTE) == len(expected)
