"""Derived datatypes with holes in the blocking point-to-point calls,
Sendrecv and Bcast: the same program over ivmpi and over mpi4py (the MPI
library underneath) must give the same arrays."""
import numpy as np
import pytest
from mpi4py import MPI as native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=2)


def _types():
    col = native.DOUBLE.Create_vector(4, 1, 4).Commit()
    every_other = native.DOUBLE.Create_indexed_block(1, [0, 2, 4, 6, 8]).Commit()
    sub = native.DOUBLE.Create_subarray([4, 4], [2, 2], [1, 1]).Commit()
    wide = native.INT32_T.Create_resized(0, 12).Commit()
    return {"column": col, "indexed": every_other, "subarray": sub, "resized": wide}


def _program(comm, MPI_, kind):
    types = _types()
    datatype = types[kind]
    rank, size = comm.rank, comm.size
    right, left = (rank + 1) % size, (rank - 1) % size
    base = np.arange(48, dtype="f8") + 1000 * rank
    if kind == "resized":
        base = np.arange(48, dtype="i4") + 1000 * rank
    results = []
    # Sendrecv around the ring, holes on both sides.
    out = np.full_like(base, -1)
    comm.Sendrecv([base, 2, datatype], right, 3, [out, 2, datatype], left, 3)
    results.append(out.copy())
    # Bcast from the last rank.
    buf = base.copy() if rank == size - 1 else np.full_like(base, -1)
    comm.Bcast([buf, 1, datatype], root=size - 1)
    results.append(buf)
    # Send with holes, receive packed; send packed, receive with holes.
    n = datatype.Get_size() // base.itemsize
    packed = np.full(n, -1, dtype=base.dtype)
    status = MPI_.Status()
    if rank == 0:
        comm.Send([base, 1, datatype], 1, 4)
        comm.Send(np.arange(n, dtype=base.dtype) * 7, 1, 5)
    elif rank == 1:
        comm.Recv([packed, n, MPI_._typedict[base.dtype.char]], 0, 4)
        target = np.full_like(base, -1)
        comm.Recv([target, 1, datatype], 0, 5, status)
        results += [packed, target, np.array([status.Get_count(datatype),
                                              status.Get_count(MPI_._typedict[base.dtype.char])])]
    for t in types.values():
        t.Free()
    return results


@pytest.mark.parametrize("kind", ["column", "indexed", "subarray", "resized"])
def test_holes_match_mpi4py(comm, kind):
    ours = _program(comm, MPI, kind)
    reference = native.COMM_WORLD.Dup()
    theirs = _program(reference, native, kind)
    reference.Free()
    assert len(ours) == len(theirs)
    for mine, expected in zip(ours, theirs):
        assert np.array_equal(mine, expected)


def test_nonblocking_receive_with_holes_is_refused_not_wrong(comm):
    col = native.DOUBLE.Create_vector(4, 1, 4).Commit()
    with pytest.raises(ValueError, match="not contiguous"):
        comm.Irecv([np.zeros(16), 1, col], comm.rank, 9)
    col.Free()
