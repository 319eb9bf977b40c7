"""Differential tests of ivmpi.collectives against mpi4py's native collectives.

Run with  mpirun --oversubscribe -n N python -m pytest --with-mpi tests/mpi/test_collectives.py
for any N >= 1.  Each test runs the implementation in ivmpi/collectives.py over
a point-to-point communicator ``p2p`` and the same call on Open MPI through
mpi4py (``MPI.COMM_WORLD``), then compares the results.

Integer and logical ops must match exactly.  Floating-point sums are compared
with allclose: the algorithms associate the operands in a different order
than Open MPI's, which may change the last bits.
"""
import operator

import numpy as np
import pytest
from mpi4py import MPI

from ivmpi.collectives import PIPELINE_MIN_BYTES, Collectives
from ivmpi.errors import BufferSpecError

pytestmark = pytest.mark.mpi

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()


def p2p_factories():
    """The point-to-point communicators the collectives are tested over.

    Hook: the ivmpi communicator belongs here too, as another
    ("name", factory) pair whose factory returns a communicator with
    mpi4py's point-to-point API spanning MPI.COMM_WORLD's ranks.
    """
    return [("mpi4py", lambda: WORLD.Dup()), ("ivmpi", _ivmpi_world_dup)]


def _ivmpi_world_dup():
    from ivmpi import MPI as IVMPI
    return IVMPI.COMM_WORLD.Dup()


@pytest.fixture(scope="module", params=[f for _, f in p2p_factories()],
                ids=[n for n, _ in p2p_factories()])
def coll(request):
    p2p = request.param()
    yield Collectives(p2p)
    if hasattr(p2p, "Free"):
        p2p.Free()


def rng(salt=0):
    return np.random.default_rng(1000 * RANK + salt)


def values(dtype, n, salt=0):
    """Small values of any basic dtype that keep PROD and SUM in range."""
    r = rng(salt)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return r.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        return r.integers(0, 4, n).astype(dtype)
    if dtype.kind == "c":
        return (r.random(n) + 1j * r.random(n)).astype(dtype)
    return r.random(n).astype(dtype) + 0.5


def same(a, b, exact=True):
    if exact:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5)


ROOTS = sorted({0, SIZE - 1, SIZE // 2})


# --- barrier and broadcast ----------------------------------------------------

def test_barrier(coll):
    coll.Barrier()
    coll.barrier()
    assert coll.barrier() is None


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 300_000,
                               PIPELINE_MIN_BYTES // 8 + 12_345])  # the last: pipeline path
def test_Bcast(coll, root, n):
    mine = values("f8", n, salt=n) if RANK == root else np.zeros(n)
    expected = mine.copy()
    WORLD.Bcast(expected, root)
    assert coll.Bcast(mine, root) is None
    same(mine, expected)


def test_Bcast_spec_forms(coll):
    buf = np.arange(10, dtype="i4") * (RANK == 0)
    coll.Bcast([buf, 3, MPI.INT], 0)
    same(buf[:3], [0, 1, 2])
    same(buf[3:], np.arange(3, 10) * (RANK == 0))


@pytest.mark.parametrize("root", ROOTS)
def test_bcast_object(coll, root):
    obj = {"root": root, "data": list(range(5))} if RANK == root else None
    assert coll.bcast(obj, root) == WORLD.bcast(obj, root)


def test_bad_root(coll):
    with pytest.raises(MPI.Exception):
        coll.Bcast(np.zeros(1), SIZE)


# --- scatter / gather ---------------------------------------------------------

@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("dtype", ["i4", "f8", "u1", "c16", "?"])
def test_Scatter_Gather(coll, root, dtype):
    send = values(dtype, 3 * SIZE)
    got, want = np.zeros(3, dtype), np.zeros(3, dtype)
    coll.Scatter(send, got, root)
    WORLD.Scatter(send, want, root)
    same(got, want)
    got, want = np.zeros(3 * SIZE, dtype), np.zeros(3 * SIZE, dtype)
    coll.Gather(send[:3], got, root)
    WORLD.Gather(send[:3], want, root)
    same(got, want)


@pytest.mark.parametrize("root", ROOTS)
def test_Scatter_Gather_in_place_and_none(coll, root):
    data = np.arange(2 * SIZE, dtype="i8") + 100 * RANK
    a, b = data.copy(), data.copy()
    # IN_PLACE at the root; the ignored buffer may be None elsewhere.
    if RANK == root:
        coll.Scatter(a, MPI.IN_PLACE, root)
        WORLD.Scatter(b, MPI.IN_PLACE, root)
    else:
        coll.Scatter(None, a[:2], root)
        WORLD.Scatter(None, b[:2], root)
    same(a, b)
    a, b = data.copy(), data.copy()
    if RANK == root:
        coll.Gather(MPI.IN_PLACE, a, root)
        WORLD.Gather(MPI.IN_PLACE, b, root)
    else:
        coll.Gather(a[:2], None, root)
        WORLD.Gather(b[:2], None, root)
    same(a, b)


@pytest.mark.parametrize("root", ROOTS)
def test_Scatterv_Gatherv(coll, root):
    counts = [(i % 3) + (i == 1) for i in range(SIZE)]   # includes zero counts
    displs = [sum(counts[:i]) + i for i in range(SIZE)]  # gaps between blocks
    total = displs[-1] + counts[-1] + 1
    send = values("f4", total)
    got, want = np.zeros(counts[RANK], "f4"), np.zeros(counts[RANK], "f4")
    coll.Scatterv([send, counts, displs, MPI.FLOAT], got, root)
    WORLD.Scatterv([send, counts, displs, MPI.FLOAT], want, root)
    same(got, want)
    got, want = np.full(total, -1, "f4"), np.full(total, -1, "f4")
    coll.Gatherv(send[:counts[RANK]], [got, (counts, displs), MPI.FLOAT], root)
    WORLD.Gatherv(send[:counts[RANK]], [want, (counts, displs), MPI.FLOAT], root)
    same(got, want)


def test_Scatterv_inferred_counts(coll):
    # [buf, datatype] splits an uneven buffer as evenly as possible.
    n = 2 * SIZE + 1
    send = np.arange(n, dtype="i2")
    mine = n // SIZE + (RANK < n % SIZE)
    got, want = np.zeros(mine, "i2"), np.zeros(mine, "i2")
    coll.Scatterv([send, MPI.SHORT], got, 0)
    WORLD.Scatterv([send, MPI.SHORT], want, 0)
    same(got, want)


@pytest.mark.parametrize("root", ROOTS)
def test_scatter_gather_objects(coll, root):
    items = [{"to": i, "from": RANK} for i in range(SIZE)] if RANK == root else None
    assert coll.scatter(items, root) == WORLD.scatter(items, root)
    assert coll.gather(("x", RANK), root) == WORLD.gather(("x", RANK), root)


# --- allgather / alltoall -----------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 5])
def test_Allgather(coll, n):
    send = values("i8", n)
    got, want = np.zeros(n * SIZE, "i8"), np.zeros(n * SIZE, "i8")
    coll.Allgather(send, got)
    WORLD.Allgather(send, want)
    same(got, want)
    got = np.zeros(n * SIZE, "i8")
    got[RANK * n:(RANK + 1) * n] = send
    coll.Allgather(MPI.IN_PLACE, got)
    same(got, want)


def test_Allgatherv(coll):
    counts = [i + 1 for i in range(SIZE)]
    send = values("f8", counts[RANK])
    got, want = np.zeros(sum(counts)), np.zeros(sum(counts))
    coll.Allgatherv(send, [got, counts])
    WORLD.Allgatherv(send, [want, counts])
    same(got, want)
    displs = [sum(counts[:i]) for i in range(SIZE)]
    got = np.zeros(sum(counts))
    got[displs[RANK]:displs[RANK] + counts[RANK]] = send
    coll.Allgatherv(MPI.IN_PLACE, [got, counts, displs, MPI.DOUBLE])
    same(got, want)


def test_Alltoall(coll):
    send = values("i4", 2 * SIZE)
    got, want = np.zeros(2 * SIZE, "i4"), np.zeros(2 * SIZE, "i4")
    coll.Alltoall(send, got)
    WORLD.Alltoall(send, want)
    same(got, want)
    inplace = send.copy()
    coll.Alltoall(MPI.IN_PLACE, inplace)
    same(inplace, want)


def test_Alltoallv(coll):
    scounts = [(RANK + i) % 3 for i in range(SIZE)]
    rcounts = [(i + RANK) % 3 for i in range(SIZE)]
    send = values("f8", sum(scounts))
    got, want = np.zeros(sum(rcounts)), np.zeros(sum(rcounts))
    coll.Alltoallv([send, scounts], [got, rcounts])
    WORLD.Alltoallv([send, scounts], [want, rcounts])
    same(got, want)


def test_alltoall_allgather_objects(coll):
    items = [(RANK, i) for i in range(SIZE)]
    assert coll.alltoall(items) == WORLD.alltoall(items)
    assert coll.allgather({RANK: "x"}) == WORLD.allgather({RANK: "x"})


@pytest.mark.parametrize("big", [70000, 1 << 20])
def test_large_alltoall_allgather_objects(coll, big):
    # Pickles over the eager limit (sent out of the sender's heap), mixed
    # with small ones, twice (the staging buffer is reused).
    for round in range(2):
        mine = bytes([RANK + round]) * (big if RANK % 2 == 0 else 5)
        assert coll.allgather((RANK, mine)) == WORLD.allgather((RANK, mine))
        items = [(RANK, i, bytes([i]) * (big + i if (RANK + i) % 3 else 7)) for i in range(SIZE)]
        assert coll.alltoall(items) == WORLD.alltoall(items)


# --- reductions -----------------------------------------------------------------

INT_OPS = ["SUM", "PROD", "MAX", "MIN", "BAND", "BOR", "BXOR", "LAND", "LOR", "LXOR"]
FLOAT_OPS = ["SUM", "PROD", "MAX", "MIN"]


def reduction_cases():
    """(op, dtype) pairs, as pytest params named like SUM-i4."""
    cases = [(op, dtype) for op in INT_OPS for dtype in ["i4", "u8", "i1"]]
    cases += [(op, dtype) for op in FLOAT_OPS for dtype in ["f8", "f4"]]
    cases += [("SUM", "c16")] + [(op, "?") for op in ["LAND", "LOR", "LXOR"]]
    return [pytest.param(getattr(MPI, op), dtype, id=f"{op}-{dtype}") for op, dtype in cases]


CASES = reduction_cases()


def exact(op, dtype):
    return np.dtype(dtype).kind not in "fc" or op in (MPI.MAX, MPI.MIN)


@pytest.mark.parametrize("op,dtype", CASES)
def test_Allreduce_Reduce(coll, op, dtype):
    send = values(dtype, 13)
    got, want = np.zeros_like(send), np.zeros_like(send)
    coll.Allreduce(send, got, op)
    WORLD.Allreduce(send, want, op)
    same(got, want, exact(op, dtype))
    for root in ROOTS:
        got, want = np.zeros_like(send), np.zeros_like(send)
        coll.Reduce(send, got, op, root)
        WORLD.Reduce(send, want, op, root)
        if RANK == root:
            same(got, want, exact(op, dtype))


@pytest.mark.parametrize("op,dtype", CASES)
def test_Scan_Exscan(coll, op, dtype):
    send = values(dtype, 6)
    got, want = np.zeros_like(send), np.zeros_like(send)
    coll.Scan(send, got, op)
    WORLD.Scan(send, want, op)
    same(got, want, exact(op, dtype))
    got, want = np.zeros_like(send), np.zeros_like(send)
    coll.Exscan(send, got, op)
    WORLD.Exscan(send, want, op)
    if RANK > 0:  # undefined at rank 0
        same(got, want, exact(op, dtype))


def test_reductions_in_place(coll):
    send = values("i8", 9)
    want = np.zeros_like(send)
    WORLD.Allreduce(send, want, MPI.SUM)
    buf = send.copy()
    coll.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
    same(buf, want)
    for root in ROOTS:
        buf = send.copy()
        coll.Reduce(MPI.IN_PLACE if RANK == root else buf, buf if RANK == root else None,
                    MPI.SUM, root)
        if RANK == root:
            same(buf, want)
    WORLD.Scan(send, want, MPI.MAX)
    buf = send.copy()
    coll.Scan(MPI.IN_PLACE, buf, MPI.MAX)
    same(buf, want)


def test_reduce_empty(coll):
    got = np.zeros(0, "i4")
    coll.Allreduce(np.zeros(0, "i4"), got, MPI.SUM)
    coll.Reduce(np.zeros(0, "i4"), got, MPI.SUM, 0)
    assert got.size == 0


@pytest.mark.parametrize("op", [MPI.MAXLOC, MPI.MINLOC])
def test_maxloc_minloc(coll, op):
    pair = np.dtype([("v", "f8"), ("i", "i4")], align=True)
    send = np.zeros(4, pair)
    send["v"] = [RANK % 2, -RANK, 3, RANK * 0.5]  # ties exercise the lowest-index rule
    send["i"] = RANK
    got, want = np.zeros_like(send), np.zeros_like(send)
    coll.Allreduce([send, MPI.DOUBLE_INT], [got, MPI.DOUBLE_INT], op)
    WORLD.Allreduce([send, MPI.DOUBLE_INT], [want, MPI.DOUBLE_INT], op)
    same(got["v"], want["v"])
    same(got["i"], want["i"])


def _matmul2x2(invec, inoutvec, datatype):
    # Non-commutative: 2x2 integer matrices, inout = in @ inout.
    a = np.frombuffer(invec, dtype="i8").reshape(-1, 2, 2)
    b = np.frombuffer(inoutvec, dtype="i8").reshape(-1, 2, 2)
    b[...] = a @ b


@pytest.fixture(scope="module")
def matmul_op():
    op = MPI.Op.Create(_matmul2x2, commute=False)
    yield op
    op.Free()


def matrices():
    m = np.zeros((3, 2, 2), "i8")
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = 1, RANK + 1, RANK % 2, 1
    return m


def test_noncommutative_user_op(coll, matmul_op):
    send = matrices()
    for call in ("Allreduce", "Scan"):
        got, want = np.zeros_like(send), np.zeros_like(send)
        getattr(coll, call)(send, got, matmul_op)
        getattr(WORLD, call)(send, want, matmul_op)
        same(got, want)
    got, want = np.zeros_like(send), np.zeros_like(send)
    coll.Exscan(send, got, matmul_op)
    WORLD.Exscan(send, want, matmul_op)
    if RANK > 0:
        same(got, want)
    for root in ROOTS:
        got, want = np.zeros_like(send), np.zeros_like(send)
        coll.Reduce(send, got, matmul_op, root)
        WORLD.Reduce(send, want, matmul_op, root)
        if RANK == root:
            same(got, want)
    # Reduce_scatter_block: every block is a product in rank order.
    send = np.tile(matrices(), (SIZE, 1, 1))
    got, want = np.zeros((3, 2, 2), "i8"), np.zeros((3, 2, 2), "i8")
    coll.Reduce_scatter_block(send, got, matmul_op)
    WORLD.Reduce_scatter_block(send, want, matmul_op)
    same(got, want)


def test_Reduce_scatter_block(coll):
    send = values("i4", 3 * SIZE)
    got, want = np.zeros(3, "i4"), np.zeros(3, "i4")
    coll.Reduce_scatter_block(send, got, MPI.SUM)
    WORLD.Reduce_scatter_block(send, want, MPI.SUM)
    same(got, want)
    buf = send.copy()
    coll.Reduce_scatter_block(MPI.IN_PLACE, buf, MPI.SUM)
    same(buf[:3], want)


def test_Reduce_scatter(coll):
    counts = [(i % 3) + 1 for i in range(SIZE)]
    send = values("i8", sum(counts))
    got, want = np.zeros(counts[RANK], "i8"), np.zeros(counts[RANK], "i8")
    coll.Reduce_scatter(send, got, counts, MPI.BXOR)
    WORLD.Reduce_scatter(send, want, counts, MPI.BXOR)
    same(got, want)
    got = np.zeros(counts[RANK], "i8")
    coll.Reduce_scatter(send, got, None, MPI.BXOR)   # counts gathered from recvbufs
    same(got, want)
    buf = send.copy()
    coll.Reduce_scatter(MPI.IN_PLACE, buf, counts, MPI.BXOR)
    same(buf[:counts[RANK]], want)


def test_reduction_count_mismatch(coll):
    with pytest.raises(BufferSpecError, match="count"):
        coll.Allreduce(np.zeros(3), np.zeros(4), MPI.SUM)


# --- object reductions -----------------------------------------------------------

def concat(a, b):
    return a + b  # non-commutative on lists and strings


@pytest.mark.parametrize("op", [MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN, concat, operator.sub],
                         ids=["SUM", "PROD", "MAX", "MIN", "concat", "sub"])
def test_object_reductions(coll, op):
    obj = RANK + 2 if op is not concat else [RANK]
    assert coll.allreduce(obj, op) == WORLD.allreduce(obj, op)
    for root in ROOTS:
        assert coll.reduce(obj, op, root) == WORLD.reduce(obj, op, root)
    assert coll.scan(obj, op) == WORLD.scan(obj, op)
    assert coll.exscan(obj, op) == WORLD.exscan(obj, op)


def test_object_reductions_never_touch_or_return_the_callers_object(coll):
    """The result is a private object on every rank, the caller's is left
    as it was, even by an op that changes its first argument and returns
    it (ranks that only send pickle theirs without copying it first)."""
    def extend(a, b):
        a.extend(b)
        return a

    def first(a, b):
        return a

    mine = [RANK]
    for root in ROOTS:
        got = coll.reduce(mine, extend, root)
        assert mine == [RANK]
        if RANK == root:
            assert got == list(range(SIZE)) and got is not mine
    got = coll.allreduce(mine, extend)
    assert mine == [RANK] and got == list(range(SIZE)) and got is not mine
    got = coll.allreduce(mine, first)
    assert got == [0] and got is not mine
    assert coll.reduce(mine, first, 0) == ([0] if RANK == 0 else None)


def test_object_maxloc(coll):
    obj = (RANK % 2, RANK)
    assert coll.allreduce(obj, MPI.MAXLOC) == WORLD.allreduce(obj, MPI.MAXLOC)
    assert coll.allreduce(obj, MPI.MINLOC) == WORLD.allreduce(obj, MPI.MINLOC)
