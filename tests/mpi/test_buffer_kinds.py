"""Buffers that the fast paths took only later: objects that export DLPack
or the CUDA array interface (no buffer protocol: a CPU tensor of torch or
JAX) and numpy arrays in Fortran order, on every kind of call, small and
past the eager limit, against Open MPI given the same data as 1-D numpy
arrays; the datatype of a bare one comes from its dtype, as in mpi4py."""
import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI
from ivmpi.sweepworker import DLPackTensor as DLPackOnly   # numpy's export, nothing else

pytestmark = pytest.mark.mpi(min_size=1)

NATIVE = _native.COMM_WORLD
COUNTS = [1, 100, 8193, 131072]        # doubles: 8193 is past the eager limit, 131072 1 MiB


class InterfaceOnly:
    """The CUDA array interface over host memory (as mpi4py's tests use it)."""

    def __init__(self, array):
        self.array = array
        self.__cuda_array_interface__ = {
            "data": (array.ctypes.data, not array.flags.writeable), "shape": array.shape,
            "typestr": array.dtype.str, "strides": None, "version": 3}


def fortran(array):
    """A view of a 1-D array in Fortran order, its memory the array's."""
    rows = next((k for k in (2, 3, 5, 7) if array.size % k == 0), 1)
    return array.reshape((rows, array.size // rows), order="F")


KINDS = {"dlpack": DLPackOnly, "cai": InterfaceOnly, "fortran": fortran}


def values(count, rank, salt=0):
    return np.arange(count, dtype="f8") * (rank + 1) + salt


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_point_to_point(comm, kind, count):
    wrap, size, rank = KINDS[kind], comm.size, comm.rank
    if size < 2:
        pytest.skip("needs a peer")
    if rank > 1:
        return
    peer = 1 - rank
    out = values(count, rank)
    for how in ("Send/Recv", "Isend/Irecv", "Sendrecv", "Ssend/Recv", "persistent"):
        got = np.full(count, -1.0)
        if how in ("Send/Recv", "Ssend/Recv"):
            send = comm.Send if how == "Send/Recv" else comm.Ssend
            if rank == 0:
                send(wrap(out), peer, 5)
                comm.Recv(wrap(got), peer, 5)
            else:
                comm.Recv(wrap(got), peer, 5)
                send(wrap(out), peer, 5)
        elif how == "Isend/Irecv":
            requests = [comm.Irecv(wrap(got), peer, 6), comm.Isend(wrap(out), peer, 6)]
            MPI.Request.Waitall(requests)
        elif how == "Sendrecv":
            comm.Sendrecv(wrap(out), peer, 7, wrap(got), peer, 7)
        else:
            requests = [comm.Recv_init(wrap(got), peer, 9), comm.Send_init(wrap(out), peer, 9)]
            MPI.Prequest.Startall(requests)
            MPI.Request.Waitall(requests)
        assert np.array_equal(got, values(count, peer)), how
    # [buf, count, displ, datatype] with a foreign buffer, and a status in doubles.
    got = np.full(count + 2, -1.0)
    status = MPI.Status()
    comm.Sendrecv([wrap(out), count, 0, MPI.DOUBLE], peer, 10,
                  [wrap(got), count, 2, MPI.DOUBLE], peer, 10, status)
    assert np.array_equal(got[2:], values(count, peer)) and list(got[:2]) == [-1.0, -1.0]
    assert status.Get_count(MPI.DOUBLE) == count


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_collectives_match_open_mpi(comm, kind, count):
    wrap, size, rank = KINDS[kind], comm.size, comm.rank
    mine = values(count, rank, 0.5)

    for root in range(size):
        ours = mine.copy() if rank == root else np.zeros(count)
        theirs = ours.copy()
        comm.Bcast(wrap(ours), root)
        NATIVE.Bcast(theirs, root)
        assert np.array_equal(ours, theirs)
    for op in (MPI.SUM, MPI.MAX):
        ours, theirs = np.zeros(count), np.zeros(count)
        comm.Allreduce(wrap(mine), wrap(ours), op)      # DOUBLE from the dtype
        NATIVE.Allreduce(mine, theirs, _native.SUM if op == MPI.SUM else _native.MAX)
        assert np.array_equal(ours, theirs)
    ours, theirs = np.zeros(count * size), np.zeros(count * size)
    comm.Allgather(wrap(mine), wrap(ours))
    NATIVE.Allgather(mine, theirs)
    assert np.array_equal(ours, theirs)
    ours, theirs = np.zeros(count), np.zeros(count)
    comm.Reduce(wrap(mine), wrap(ours) if rank == 0 else None, MPI.SUM, 0)
    NATIVE.Reduce(mine, theirs if rank == 0 else None, _native.SUM, 0)
    assert np.array_equal(ours, theirs)
    ours, theirs = np.zeros(count), np.zeros(count)
    comm.Scan(wrap(mine), wrap(ours))
    NATIVE.Scan(mine, theirs)
    assert np.array_equal(ours, theirs)
    # Nonblocking and persistent.
    ours, theirs = np.zeros(count), np.zeros(count)
    comm.Iallreduce(wrap(mine), wrap(ours)).Wait()
    NATIVE.Allreduce(mine, theirs)
    assert np.array_equal(ours, theirs)
    ours = mine.copy() if rank == 0 else np.zeros(count)
    request = comm.Bcast_init(wrap(ours), 0)
    for _ in range(2):
        request.Start()
        request.Wait()
    request.Free()
    assert np.array_equal(ours, values(count, 0, 0.5))
    ours = mine.copy() if rank == 0 else np.zeros(count)
    comm.Ibcast(wrap(ours), 0).Wait()
    assert np.array_equal(ours, values(count, 0, 0.5))


@pytest.mark.parametrize("kind", list(KINDS))
def test_read_only_receive_buffers_are_refused(comm, kind):
    frozen = np.zeros(4)
    frozen.flags.writeable = False      # (in Fortran order: 2 x 2)
    wrap = KINDS[kind]
    # mpi4py's BufferError (ivmpi's BufferSpecError is one; between hosts the
    # library underneath raises its own).
    # (A numpy array's message is ivmpi's or the library's, worded apart.)
    text = None if kind == "fortran" else "not writable"
    with pytest.raises(BufferError, match=text):
        comm.Allreduce(np.ones(4), wrap(frozen))
    with pytest.raises(BufferError, match=text):
        comm.Scan(np.ones(4), wrap(frozen))
    # As a send buffer it is fine.
    out = np.zeros(4)
    comm.Allreduce(wrap(frozen), out)
    assert not out.any()
