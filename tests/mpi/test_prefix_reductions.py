"""Scan, Exscan, Reduce_scatter and Reduce_scatter_block in every form.

Run under mpirun -n 1..4 with --with-mpi.  Each case runs blocking,
nonblocking and persistent over ivmpi and as the MPI library's own call on
its COMM_WORLD, and compares: integers and the non-commutative user op bit
for bit, floating point with allclose (the algorithms may associate the
operands differently).  Sizes cover one segment, several segments (the
messages are streamed in segments of 16 or 64 KiB) and zero counts; the
mixed cases put ranks on the Cython and the general Python path at once
(a plain buffer on some ranks, a derived datatype of the same signature on
the others), which must send the same messages.
"""
import numpy as np
import pytest

from ivmpi import MPI
from ivmpi.lib import MPI as LIB

pytestmark = pytest.mark.mpi(min_size=1)

LIB_WORLD = LIB.COMM_WORLD
KINDS = ("blocking", "nonblocking", "persistent", "library")

# Element counts: none, a few, one segment of 16 KiB (f8), just over it,
# and past 128 KiB (64 KiB segments, the last one short).
COUNTS = (0, 1, 5, 2048, 2049, 16387)


def values(dtype, n, rank, salt=0):
    rng = np.random.default_rng(1000 * rank + salt + n)
    if np.dtype(dtype).kind == "f":
        return (rng.random(n) * 4 - 2).astype(dtype)
    return rng.integers(-3, 4, n).astype(dtype)


def _matmul2x2(invec, inoutvec, datatype):
    # Non-commutative: 2x2 integer matrices, inout = in @ inout.
    a = np.frombuffer(invec, dtype="i8").reshape(-1, 2, 2)
    b = np.frombuffer(inoutvec, dtype="i8").reshape(-1, 2, 2)
    b[...] = a @ b


MATMUL = MPI.Op.Create(_matmul2x2, commute=False)


def matrices(k, rank):
    m = np.zeros((k, 2, 2), "i8")
    m[:, 0, 0], m[:, 1, 1] = 1, 1
    m[:, 0, 1] = (np.arange(k) + rank) % 3
    m[:, 1, 0] = (np.arange(k) * (rank + 1)) % 2
    return m.reshape(-1)


def run(comm, kind, name, *args, refill=None):
    """refill(): puts the input back before a persistent collective's
    second start (IN_PLACE overwrites it)."""
    if kind == "blocking":
        getattr(comm, name)(*args)
    elif kind == "nonblocking":
        req = getattr(comm, "I" + name[0].lower() + name[1:])(*args)
        req.Wait()
    elif kind == "persistent":
        req = getattr(comm, name + "_init")(*args)
        for i in range(2):          # a second start reuses the schedule
            if i and refill is not None:
                refill()
            req.Start()
            req.Wait()
        req.Free()
    else:
        getattr(LIB.Intracomm, name)(LIB_WORLD, *args)


def same(got, want, dtype):
    if np.dtype(dtype).kind == "f":
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), (got[:8], want[:8])
    else:
        assert np.array_equal(got, want), (got[:8], want[:8])


def op_of(name, lib):
    return getattr(LIB if lib else MPI, name)


def compare(comm, make, dtype):
    """make(kind) -> result array on this rank; every ivmpi kind equals the library's."""
    want = make("library")
    for kind in KINDS[:3]:
        same(make(kind), want, dtype)


# --- Scan and Exscan -----------------------------------------------------------------

@pytest.fixture(params=["chain", "doubling"])
def algorithm(request):
    """Small prefix reductions run as a chain on up to 4 ranks: "doubling"
    makes them take recursive doubling on 3 and 4 ranks too (on 2, the
    chain either way), so that both are tested under mpirun -n 1..4."""
    from ivmpi._fastcopy import set_prefix_chain_max_ranks
    previous = set_prefix_chain_max_ranks(2 if request.param == "doubling" else 4)
    yield request.param
    set_prefix_chain_max_ranks(previous)


@pytest.mark.parametrize("name", ["Scan", "Exscan"])
@pytest.mark.parametrize("n", COUNTS)
@pytest.mark.parametrize("dtype,opname", [("f8", "SUM"), ("f4", "MAX"), ("i8", "PROD"),
                                          ("i4", "MIN"), ("i2", "SUM")])
@pytest.mark.parametrize("in_place", [False, True])
def test_prefix(comm, name, n, dtype, opname, in_place, algorithm):
    rank = comm.rank

    def make(kind):
        send = values(dtype, n, rank)
        recv = np.full(n, 7, dtype)
        op = op_of(opname, kind == "library")
        original = send
        if in_place:
            recv[:] = send
            send = MPI.IN_PLACE if kind != "library" else LIB.IN_PLACE
        run(comm, kind, name, send, recv, op,
            refill=lambda: recv.__setitem__(slice(None), original) if in_place else None)
        if name == "Exscan" and rank == 0:
            return np.zeros(0, dtype)     # undefined at rank 0
        return recv
    compare(comm, make, dtype)


def test_exscan_leaves_rank0(comm):
    recv = np.full(3000, 7.0)
    for kind in KINDS[:3]:
        run(comm, kind, "Exscan", values("f8", 3000, comm.rank), recv, MPI.SUM)
        if comm.rank == 0:
            assert (recv == 7.0).all()


@pytest.mark.parametrize("name", ["Scan", "Exscan"])
@pytest.mark.parametrize("k", [1, 3, 1500])
def test_prefix_noncommutative(comm, name, k, algorithm):
    rank = comm.rank

    def make(kind):
        recv = np.zeros(4 * k, "i8")
        op = MATMUL if kind != "library" else LIB.Op.Create(_matmul2x2, commute=False)
        try:
            run(comm, kind, name, matrices(k, rank), recv, op)
        finally:
            if kind == "library":
                op.Free()
        return recv if name == "Scan" or rank else np.zeros(0, "i8")
    compare(comm, make, "i8")


@pytest.mark.parametrize("name", ["Scan", "Exscan"])
@pytest.mark.parametrize("n", [5, 2049, 16387])
def test_prefix_mixed_paths(comm, name, n, algorithm):
    # Odd ranks call the general Python algorithm (the communicator's
    # Collectives), even ranks the Cython one: their messages must agree.
    rank = comm.rank
    send = values("i8", n, rank)
    got, want = np.full(n, 7, "i8"), np.full(n, 7, "i8")
    (comm._collectives if rank % 2 else comm).__getattribute__(name)(send, got, MPI.SUM)
    getattr(LIB_WORLD, name)(send, want, LIB.SUM)
    if name == "Scan" or rank:
        assert np.array_equal(got, want)


# --- Reduce_scatter_block and Reduce_scatter ----------------------------------------------

@pytest.mark.parametrize("block", COUNTS)
@pytest.mark.parametrize("dtype,opname", [("f8", "SUM"), ("i4", "MAX"), ("i8", "PROD"),
                                          ("f4", "MIN"), ("i2", "SUM")])
@pytest.mark.parametrize("in_place", [False, True])
def test_reduce_scatter_block(comm, block, dtype, opname, in_place):
    size, rank = comm.size, comm.rank

    def make(kind):
        send = values(dtype, block * size, rank)
        recv = np.full(block * size if in_place else block, 7, dtype)
        op = op_of(opname, kind == "library")
        original = send
        if in_place:
            recv[:] = send
            send = MPI.IN_PLACE if kind != "library" else LIB.IN_PLACE
        run(comm, kind, "Reduce_scatter_block", send, recv, op,
            refill=lambda: recv.__setitem__(slice(None), original) if in_place else None)
        return recv[:block]
    compare(comm, make, dtype)


def uneven_counts(size, scale):
    return [((i * 7 + 3) % 5) * scale for i in range(size)]    # zeros among them


@pytest.mark.parametrize("scale", [1, 700, 5000])
@pytest.mark.parametrize("dtype,opname", [("f8", "SUM"), ("i8", "MAX"), ("i2", "SUM")])
@pytest.mark.parametrize("in_place", [False, True])
def test_reduce_scatter(comm, scale, dtype, opname, in_place):
    size, rank = comm.size, comm.rank
    counts = uneven_counts(size, scale)

    def make(kind):
        send = values(dtype, sum(counts), rank)
        recv = np.full(sum(counts) if in_place else counts[rank], 7, dtype)
        op = op_of(opname, kind == "library")
        original = send
        if in_place:
            recv[:] = send
            send = MPI.IN_PLACE if kind != "library" else LIB.IN_PLACE
        run(comm, kind, "Reduce_scatter", send, recv, counts, op,
            refill=lambda: recv.__setitem__(slice(None), original) if in_place else None)
        return recv[:counts[rank]]
    compare(comm, make, dtype)


@pytest.mark.parametrize("k", [1, 1500])
def test_reduce_scatter_noncommutative(comm, k):
    size, rank = comm.size, comm.rank

    def make(kind):
        recv = np.zeros(4 * k, "i8")
        op = MATMUL if kind != "library" else LIB.Op.Create(_matmul2x2, commute=False)
        try:
            run(comm, kind, "Reduce_scatter_block",
                np.concatenate([matrices(k, rank * size + j) for j in range(size)]), recv, op)
        finally:
            if kind == "library":
                op.Free()
        return recv
    compare(comm, make, "i8")


@pytest.mark.parametrize("block", [3, 2049, 16387])
def test_reduce_scatter_mixed_paths(comm, block):
    size, rank = comm.size, comm.rank
    send = values("i8", block * size, rank)
    got, want = np.full(block, 7, "i8"), np.full(block, 7, "i8")
    (comm._collectives if rank % 2 else comm).Reduce_scatter_block(send, got, MPI.SUM)
    LIB_WORLD.Reduce_scatter_block(send, want, LIB.SUM)
    assert np.array_equal(got, want)
    counts = uneven_counts(size, block)
    send = values("i8", sum(counts), rank)
    got, want = np.full(counts[rank], 7, "i8"), np.full(counts[rank], 7, "i8")
    (comm._collectives if rank % 2 else comm).Reduce_scatter(send, got, counts, MPI.SUM)
    LIB_WORLD.Reduce_scatter(send, want, counts, LIB.SUM)
    assert np.array_equal(got, want)


def test_requests_in_any_order(comm):
    # Several prefix and reduce-scatter collectives outstanding at once,
    # completed in reverse order, each equal to its blocking twin.
    size, rank = comm.size, comm.rank
    n = 5000
    sends = [values("f8", n, rank, salt) for salt in range(3)]
    rs_send = values("f8", n * size, rank, 9)
    outs = [np.zeros(n) for _ in range(3)]
    rs_out = np.zeros(n)
    reqs = [comm.Iscan(sends[0], outs[0]), comm.Iexscan(sends[1], outs[1]),
            comm.Ireduce_scatter_block(rs_send, rs_out), comm.Iscan(sends[2], outs[2], MPI.MAX)]
    MPI.Request.Waitall(reqs[::-1])
    wants = [np.zeros(n) for _ in range(3)]
    rs_want = np.zeros(n)
    comm.Scan(sends[0], wants[0])
    comm.Exscan(sends[1], wants[1])
    comm.Reduce_scatter_block(rs_send, rs_want)
    comm.Scan(sends[2], wants[2], MPI.MAX)
    for got, want in zip(outs, wants):
        if rank or got is not outs[1]:
            assert np.allclose(got, want)
    assert np.allclose(rs_out, rs_want)
