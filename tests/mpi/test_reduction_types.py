"""Reductions of every element type and predefined op the C combine knows
(ivmpi/_prefix.pxi, op_applies), on every reduction call, blocking,
nonblocking and persistent, small and streamed, against Open MPI given
the same data; and the combinations MPI does not define are errors, as
the library reports them."""
import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=1)

NATIVE = _native.COMM_WORLD
INTEGERS = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"]
ARITH = ["SUM", "PROD"]
ORDER = ["MAX", "MIN"]
LOGIC = ["LAND", "LOR", "LXOR"]
BITS = ["BAND", "BOR", "BXOR"]
CASES = ([(t, op) for t in INTEGERS for op in ARITH + ORDER + LOGIC + BITS]
         + [(t, op) for t in ["f4", "f8"] for op in ARITH + ORDER]
         + [(t, op) for t in ["c8", "c16"] for op in ARITH]
         + [("?", op) for op in LOGIC])
COUNTS = [1, 5, 3000, 70000]          # 70000 elements: past the eager limit for most types


def data(dtype, op, count, rank, salt=0):
    """Values whose reductions are exact in any order and stay in range."""
    dtype = np.dtype(dtype)
    index = np.arange(count)
    if dtype.kind == "b":
        return ((index + rank + salt) % 3 == 0)
    if op == "PROD":
        values = 1 + (index + rank + salt) % 2          # 1s and 2s: at most 2**4 on 4 ranks
    elif op in LOGIC:
        values = (index * (rank + 1) + salt) % 3         # zero and nonzero
    else:
        values = (index * 7 + rank * 13 + salt) % 50
    if dtype.kind == "c":
        return (values + 1j * (values % 5)).astype(dtype)
    return values.astype(dtype)


def ops(name):
    return getattr(MPI, name), getattr(_native, name)


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("dtype,op", CASES, ids=[f"{t}-{o}" for t, o in CASES])
def test_reductions_match_open_mpi(comm, dtype, op, count):
    size, rank = comm.size, comm.rank
    ours_op, native_op = ops(op)
    mine = data(dtype, op, count, rank)

    def check(call, *extra, target=None):
        ours, theirs = np.zeros_like(mine), np.zeros_like(mine)
        getattr(comm, call)(mine, ours, ours_op, *extra)
        getattr(NATIVE, call)(mine, theirs, native_op, *extra)
        if target is None or rank == target:
            assert np.array_equal(ours, theirs), call

    check("Allreduce")
    check("Reduce", 0, target=0)
    check("Scan")
    ours, theirs = np.zeros_like(mine), np.zeros_like(mine)
    comm.Exscan(mine, ours, ours_op)
    NATIVE.Exscan(mine, theirs, native_op)
    if rank > 0:
        assert np.array_equal(ours, theirs), "Exscan"
    # In place, nonblocking, persistent.
    ours = mine.copy()
    comm.Allreduce(MPI.IN_PLACE, ours, ours_op)
    theirs = np.zeros_like(mine)
    NATIVE.Allreduce(mine, theirs, native_op)
    assert np.array_equal(ours, theirs), "Allreduce IN_PLACE"
    ours = np.zeros_like(mine)
    comm.Iallreduce(mine, ours, ours_op).Wait()
    assert np.array_equal(ours, theirs), "Iallreduce"
    ours = np.zeros_like(mine)
    request = comm.Allreduce_init(mine, ours, ours_op)
    for _ in range(2):
        request.Start()
        request.Wait()
    request.Free()
    assert np.array_equal(ours, theirs), "Allreduce_init"
    ours, native = np.zeros_like(mine), np.zeros_like(mine)
    comm.Iscan(mine, ours, ours_op).Wait()
    NATIVE.Scan(mine, native, native_op)
    assert np.array_equal(ours, native), "Iscan"
    # One block per rank.
    whole = np.concatenate([data(dtype, op, count, rank, salt=k) for k in range(size)])
    ours, theirs = np.zeros_like(mine), np.zeros_like(mine)
    comm.Reduce_scatter_block(whole, ours, ours_op)
    NATIVE.Reduce_scatter_block(whole, theirs, native_op)
    assert np.array_equal(ours, theirs), "Reduce_scatter_block"
    ours = np.zeros_like(mine)
    comm.Ireduce_scatter_block(whole, ours, ours_op).Wait()
    assert np.array_equal(ours, theirs), "Ireduce_scatter_block"


@pytest.mark.parametrize("dtype,op", [("c16", "MAX"), ("c8", "MIN"), ("f8", "BAND"),
                                      ("f4", "LOR"), ("?", "SUM"), ("c16", "BXOR")])
def test_undefined_combinations_are_errors(comm, dtype, op):
    # The library's own error, from the same call on every rank.
    mine = np.zeros(4, dtype)
    with pytest.raises(_native.Exception):
        NATIVE.Allreduce(mine, np.zeros_like(mine), getattr(_native, op))
    with pytest.raises(_native.Exception):
        comm.Allreduce(mine, np.zeros_like(mine), getattr(MPI, op))
