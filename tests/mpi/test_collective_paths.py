"""The one-call blocking collectives against Open MPI, with ranks mixing paths.

Every blocking collective takes a Cython path for plain buffers of any kind
(and vector specs with lists of counts and displacements) whose steps fit
the eager limit, and the general algorithm otherwise.  In these tests some
ranks pass specs the one-call path refuses (a datatype given by its type
character, counts as a numpy array), so ranks on both paths meet in one
call; the results must be Open MPI's.
"""
import array
import ctypes

import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI
from ivmpi.staging import STAGE_MIN_RANKS

pytestmark = pytest.mark.mpi(min_size=1)

NATIVE = _native.COMM_WORLD
SIZES = [1, 100, 8193]          # doubles per block: 8193 is past the eager limit


def general_rank(rank):
    return rank % 2 == 1


def on(comm):
    """Where odd ranks call: the general algorithm (the communicator's
    Collectives object); even ranks call the communicator (the one-call
    path)."""
    return comm._collectives if general_rank(comm.rank) else comm


def plain(arr, rank):
    """A spec of arr (odd ranks: a type character)."""
    return [arr, arr.dtype.char] if general_rank(rank) else arr


def vspec(arr, counts, displs, rank):
    if general_rank(rank):
        return [arr, np.array(counts), np.array(displs), MPI.DOUBLE]
    return [arr, counts, displs, MPI.DOUBLE]


def layout(size, per_rank):
    """Uneven counts (one may be 0) and displacements in reverse order."""
    counts = [(per_rank + i) % (per_rank + 2) for i in range(size)]
    displs, at = [0] * size, 0
    for i in reversed(range(size)):
        displs[i] = at
        at += counts[i] + 1           # a gap of one element between blocks
    return counts, displs, at


@pytest.mark.parametrize("per_rank", SIZES)
def test_gatherv_and_scatterv_every_root(comm, per_rank):
    size, rank = comm.size, comm.rank
    counts, displs, total = layout(size, per_rank)
    for root in range(size):
        mine = np.arange(counts[rank], dtype="f8") + 1000 * rank + root
        if rank == root:
            ours, theirs = np.full(total, -1.0), np.full(total, -1.0)
            on(comm).Gatherv(plain(mine, rank), vspec(ours, counts, displs, rank), root=root)
            NATIVE.Gatherv(mine, [theirs, counts, displs, _native.DOUBLE], root=root)
            np.testing.assert_array_equal(ours, theirs)
        else:
            on(comm).Gatherv(plain(mine, rank), None, root=root)
            NATIVE.Gatherv(mine, None, root=root)

        outgoing = np.arange(total, dtype="f8") * (root + 1)
        ours, theirs = np.full(counts[rank], -1.0), np.full(counts[rank], -1.0)
        on(comm).Scatterv(vspec(outgoing, counts, displs, rank) if rank == root else None,
                      plain(ours, rank), root=root)
        NATIVE.Scatterv([outgoing, counts, displs, _native.DOUBLE] if rank == root else None,
                        theirs, root=root)
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("per_rank", SIZES)
@pytest.mark.parametrize("in_place", [False, True])
def test_allgatherv_and_alltoallv(comm, per_rank, in_place):
    size, rank = comm.size, comm.rank
    counts, displs, total = layout(size, per_rank)
    mine = np.arange(counts[rank], dtype="f8") + 1000 * rank
    ours, theirs = np.full(total, -1.0), np.full(total, -1.0)
    if in_place:
        ours[displs[rank]:displs[rank] + counts[rank]] = mine
        on(comm).Allgatherv(MPI.IN_PLACE, vspec(ours, counts, displs, rank))
    else:
        on(comm).Allgatherv(plain(mine, rank), vspec(ours, counts, displs, rank))
    NATIVE.Allgatherv(mine, [theirs, counts, displs, _native.DOUBLE])
    np.testing.assert_array_equal(ours, theirs)

    # Alltoallv: rank r sends counts[(r + d) % size] elements to rank d.
    scounts = [counts[(rank + d) % size] for d in range(size)]
    rcounts = [counts[(s + rank) % size] for s in range(size)]
    sdispls = [sum(scounts[:d]) for d in range(size)]
    rdispls = [sum(rcounts[:s]) for s in range(size)]
    outgoing = np.arange(sum(scounts), dtype="f8") + 1000 * rank
    theirs = np.full(sum(rcounts), -1.0)
    NATIVE.Alltoallv([outgoing, scounts, sdispls, _native.DOUBLE],
                     [theirs, rcounts, rdispls, _native.DOUBLE])
    if in_place:
        if scounts != rcounts:      # IN_PLACE needs the same layout both ways
            return
        ours = outgoing.copy()
        on(comm).Alltoallv(MPI.IN_PLACE, vspec(ours, rcounts, rdispls, rank))
    else:
        ours = np.full(sum(rcounts), -1.0)
        on(comm).Alltoallv(vspec(outgoing, scounts, sdispls, rank),
                       vspec(ours, rcounts, rdispls, rank))
    np.testing.assert_array_equal(ours, theirs)


def kind_buffer(kind, values):
    """(spec, reader) of a float64 buffer of `kind` holding values."""
    if kind == "numpy":
        arr = np.array(values, dtype="f8")
        return arr, lambda: arr
    if kind == "array":
        arr = array.array("d", values)
        return arr, lambda: np.frombuffer(arr, dtype="f8")
    if kind == "ctypes":
        arr = (ctypes.c_double * len(values))(*values)
        return arr, lambda: np.frombuffer(arr, dtype="f8")
    raw = bytearray(np.array(values, dtype="f8").tobytes())
    spec = [raw, "d"] if kind == "bytearray general" else [raw, MPI.DOUBLE]
    return spec, lambda: np.frombuffer(raw, dtype="f8")


KINDS = ["numpy", "array", "ctypes", "bytearray", "bytearray general"]


@pytest.mark.parametrize("name", ["Allreduce", "Scan", "Exscan"])
@pytest.mark.parametrize("opname", ["SUM", "MAX", "PROD"])
@pytest.mark.parametrize("n", [1, 5, 9000])
def test_reductions_on_every_buffer_kind(comm, name, opname, n):
    """Each rank passes another buffer kind; the result is Open MPI's, and
    Exscan leaves rank 0's buffer alone."""
    rank = comm.rank
    rng = np.random.default_rng(77 + rank)
    data = list(rng.integers(-3, 4, n).astype("f8"))
    kind = KINDS[rank % len(KINDS)]
    send, _ = kind_buffer(kind, data)
    recv, read = kind_buffer(kind, [-5.0] * n)
    getattr(comm, name)(send, recv, op=getattr(MPI, opname))
    theirs = np.full(n, -5.0)
    getattr(NATIVE, name)(np.array(data), theirs, op=getattr(_native, opname))
    np.testing.assert_array_equal(read(), theirs)
    # In place: the receive buffer holds the input.
    inout, read = kind_buffer(kind, data)
    getattr(comm, name)(MPI.IN_PLACE, inout, op=getattr(MPI, opname))
    np.testing.assert_array_equal(read(), theirs if not (name == "Exscan" and rank == 0)
                                  else np.array(data))


@pytest.mark.parametrize("n", [1, 7, 3000])
def test_reduce_scatter_forms(comm, n):
    size, rank = comm.size, comm.rank
    data = np.arange(size * n, dtype="f8") * (rank + 1) - 3
    ours, theirs = np.full(n, -1.0), np.full(n, -1.0)
    on(comm).Reduce_scatter_block(plain(data, rank), plain(ours, rank), op=MPI.SUM)
    NATIVE.Reduce_scatter_block(data, theirs, op=_native.SUM)
    np.testing.assert_array_equal(ours, theirs)

    counts = [n + i for i in range(size)]
    data = np.arange(sum(counts), dtype="i8") * (rank + 1) - 3
    ours, theirs = np.full(counts[rank], -1, "i8"), np.full(counts[rank], -1, "i8")
    on(comm).Reduce_scatter(plain(data, rank), plain(ours, rank), counts, op=MPI.MAX)
    NATIVE.Reduce_scatter(data, theirs, counts, op=_native.MAX)
    np.testing.assert_array_equal(ours, theirs)


def test_reduction_datatype_mismatch_is_mpi4pys_error(comm):
    with pytest.raises(ValueError, match="mismatch in send and receive MPI datatypes"):
        comm.Scan(np.zeros(4, "i8"), [np.zeros(4, "i8"), MPI.INT64_T], op=MPI.SUM)
    comm.Barrier()


@pytest.mark.parametrize("nbytes", [10, 100000])
def test_object_bcast_and_barrier_every_root(comm, nbytes):
    for root in range(comm.size):
        obj = {"root": root, "data": bytes(range(256)) * (nbytes // 256)}
        got = comm.bcast(obj if comm.rank == root else None, root=root)
        assert got == obj and (comm.rank != root or got is not obj)
        comm.barrier()
    with pytest.raises(MPI.Exception):
        comm.bcast(1, root=comm.size)


# --- large messages through the region's heaps ----------------------------------
# From 256 KiB, Bcast (more than two ranks), Allgather and Allreduce stage
# each rank's data once in its heap and the other ranks copy it straight
# out.  Buffers from Alloc_mem are in the heap already (sent as they are).

LARGE = [40000, 2 ** 18 + 5]      # doubles: 312 KiB, and 2 MiB not divisible by 3 or 4


def large_buffer(comm, n, kind, fill):
    """(spec, array view) of n doubles: numpy, [bytearray, DOUBLE], or Alloc_mem."""
    if kind == "numpy":
        arr = np.full(n, fill)
        return arr, arr
    if kind == "bytearray":
        raw = bytearray(8 * n)
        arr = np.frombuffer(raw, dtype="f8")
        arr[:] = fill
        return [raw, MPI.DOUBLE], arr
    mem = comm.Alloc_mem(8 * n)
    _allocated.append((comm, mem))
    arr = np.frombuffer(mem, dtype="f8")
    arr[:] = fill
    return [mem, MPI.DOUBLE], arr


LARGE_KINDS = ["numpy", "bytearray", "alloc_mem"]
_allocated = []


@pytest.fixture(autouse=True)
def _free_region_buffers():
    """The heap is shared by the whole session: give large_buffer's back."""
    yield
    while _allocated:
        comm, mem = _allocated.pop()
        comm.Free_mem(mem)


@pytest.mark.parametrize("n", LARGE)
def test_large_bcast_every_root(comm, n):
    for root in range(comm.size):
        kind = LARGE_KINDS[(comm.rank + root) % 3]
        spec, arr = large_buffer(comm, n, kind, -1.0)
        if comm.rank == root:
            arr[:] = np.arange(n) + root
        comm.Bcast(spec, root=root)
        np.testing.assert_array_equal(arr, np.arange(n) + root)


@pytest.mark.parametrize("n", LARGE)
@pytest.mark.parametrize("in_place", [False, True])
def test_large_allgather(comm, n, in_place):
    size, rank = comm.size, comm.rank
    kind = LARGE_KINDS[rank % 3]
    mine, mine_arr = large_buffer(comm, n, kind, 0.0)
    mine_arr[:] = np.arange(n) * (rank + 1)
    got = np.full(size * n, -1.0)
    if in_place:
        got[rank * n:(rank + 1) * n] = mine_arr
        comm.Allgather(MPI.IN_PLACE, got)
    else:
        comm.Allgather(mine, got)
    theirs = np.empty(size * n)
    NATIVE.Allgather(mine_arr.copy(), theirs)
    np.testing.assert_array_equal(got, theirs)
    comm.Allgather(mine, got)        # again: the staging buffer is reused
    np.testing.assert_array_equal(got, theirs)
    if kind != "alloc_mem":
        # On more than two ranks the block went through this rank's heap,
        # unless every other rank copies it from our memory; on two the
        # exchange streams it through the rings.
        readers = all(comm._collectives._reads_ours(j) for j in range(size) if j != rank)
        assert (comm._collectives._staged is not None) == (
            size >= STAGE_MIN_RANKS and not readers)


@pytest.mark.parametrize("n", LARGE)
@pytest.mark.parametrize("opname", ["SUM", "MAX"])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_large_allreduce(comm, n, opname, in_place, mixed, monkeypatch):
    """Reduce-scatter then allgather in segments (on two ranks that copy
    each other's messages: whole inputs exchanged); with mixed, odd ranks
    name the datatype by its character (the general algorithm's spec), so
    both paths meet in one call.  The others take the one-call path."""
    rank = comm.rank
    general_calls = []
    for name in ("_region_allreduce", "_pair_reduce"):
        general = getattr(comm._collectives, name)
        monkeypatch.setattr(comm._collectives, name,
                            lambda *args, general=general: (general_calls.append(1),
                                                            general(*args))[1])
    kind = LARGE_KINDS[rank % 3]
    send, send_arr = large_buffer(comm, n, kind, 0.0)
    allreduce = on(comm).Allreduce if mixed else comm.Allreduce
    if mixed and general_rank(rank):
        send = [send_arr, "d"]
    send_arr[:] = np.random.default_rng(5 + rank).integers(-50, 50, n)
    before = send_arr.copy()
    theirs = np.empty(n)
    NATIVE.Allreduce(send_arr.copy(), theirs, op=getattr(_native, opname))
    recv, recv_arr = large_buffer(comm, n, LARGE_KINDS[(rank + 1) % 3], -1.0)
    if mixed and general_rank(rank):
        recv = [recv_arr, "d"]
    for _ in range(2):      # again: the rings and scratch buffers are reused
        if in_place:
            send_arr[:] = before
            allreduce(MPI.IN_PLACE, send, op=getattr(MPI, opname))
            np.testing.assert_array_equal(send_arr, theirs)
        else:
            recv_arr[:] = -1.0
            allreduce(send, recv, op=getattr(MPI, opname))
            np.testing.assert_array_equal(recv_arr, theirs)
            np.testing.assert_array_equal(send_arr, before)
    assert len(general_calls) == (2 if mixed and general_rank(rank) else 0)


def test_large_allreduce_keeps_rank_order(comm):
    """A non-commutative op: (a, b) -> a keeps the lowest rank's data,
    (a, b) -> b the highest's, so the blocks are combined in rank order."""
    n = 50001
    data = np.arange(n, dtype="f8") + 1000 * comm.rank
    for keep, expected_rank in ((0, 0), (1, comm.size - 1)):
        def pick(a, b, datatype, keep=keep):
            if keep == 0:
                np.frombuffer(b, dtype="f8")[:] = np.frombuffer(a, dtype="f8")
        op = MPI.Op.Create(pick, commute=False)
        try:
            got = np.full(n, -1.0)
            comm.Allreduce(data, got, op=op)
        finally:
            op.Free()
        np.testing.assert_array_equal(got, np.arange(n) + 1000 * expected_rank)


@pytest.mark.parametrize("in_place", [False, True])
def test_large_reduce_every_root_and_reduce_scatter(comm, in_place):
    """From 256 KiB Reduce and Reduce_scatter(_block) reduce-scatter through
    the heaps (Reduce then sends every block to the root)."""
    size, rank = comm.size, comm.rank
    n = 2 ** 15 + 3
    data = np.random.default_rng(9 + rank).integers(-50, 50, n).astype("f8")
    theirs = np.empty(n)
    NATIVE.Allreduce(data, theirs, op=_native.SUM)
    for root in range(size):
        got = data.copy() if rank == root and in_place else np.full(n, -1.0)
        send = MPI.IN_PLACE if rank == root and in_place else data
        comm.Reduce(send, got if rank == root else None, op=MPI.SUM, root=root)
        if rank == root:
            np.testing.assert_array_equal(got, theirs)

    counts = [2 ** 15 + 7 * i for i in range(size)]
    whole = np.random.default_rng(3 + rank).integers(-50, 50, sum(counts)).astype("f8")
    total = np.empty(sum(counts))
    NATIVE.Allreduce(whole, total, op=_native.MAX)
    start = sum(counts[:rank])
    if in_place:
        buf = whole.copy()
        on(comm).Reduce_scatter(MPI.IN_PLACE, buf, counts, op=MPI.MAX)
        got = buf[:counts[rank]]
    else:
        got = np.full(counts[rank], -1.0)
        on(comm).Reduce_scatter(whole, got, counts, op=MPI.MAX)
    np.testing.assert_array_equal(got, total[start:start + counts[rank]])

    block = 2 ** 15
    whole = np.random.default_rng(4 + rank).integers(-50, 50, size * block).astype("f8")
    total = np.empty(size * block)
    NATIVE.Allreduce(whole, total, op=_native.SUM)
    got = np.full(block, -1.0)
    on(comm).Reduce_scatter_block(whole, got, op=MPI.SUM)
    np.testing.assert_array_equal(got, total[rank * block:(rank + 1) * block])


def test_large_reduce_keeps_rank_order(comm):
    n = 50001
    data = np.arange(n, dtype="f8") + 1000 * comm.rank

    def first(a, b, datatype):
        np.frombuffer(b, dtype="f8")[:] = np.frombuffer(a, dtype="f8")
    op = MPI.Op.Create(first, commute=False)
    try:
        for root in range(comm.size):
            got = np.full(n, -1.0)
            comm.Reduce(data, got, op=op, root=root)
            if comm.rank == root:
                np.testing.assert_array_equal(got, np.arange(n))
    finally:
        op.Free()
