"""Nonblocking and persistent collectives through the region (ivmpi.nbcoll).

Run under mpirun -n 1..4 with --with-mpi.  Every call must give what the
blocking ivmpi collective gives (bit for bit: the same algorithm) and what
the MPI library's own nonblocking call gives on the same data; requests
must complete in any order and mix with point-to-point requests, a rank
waiting on something else must still play its part in a collective, and
the bytes must go through the region's rings.
"""
import inspect

import numpy as np
import time

import pytest

import ivmpi
import ivmpi.stats
from ivmpi import MPI
from ivmpi.lib import MPI as LIB

pytestmark = pytest.mark.mpi(min_size=1)

LIB_WORLD = LIB.COMM_WORLD


def values(dtype, n, rank, salt=0):
    rng = np.random.default_rng(100 * rank + salt)
    if np.dtype(dtype).kind == "f":
        return rng.random(n) * 4 - 2
    return rng.integers(-3, 4, n).astype(dtype)


def _keep_left(inbuf, inoutbuf, datatype):
    # inout = in op inout with op(a, b) = a: associative, not commutative,
    # so any change of operand order shows.
    np.frombuffer(inoutbuf, "i8")[:] = np.frombuffer(inbuf, "i8")


KEEP_LEFT = MPI.Op.Create(_keep_left, commute=False)


# --- one collective, run four ways ---------------------------------------------------
# A case builds fresh buffers from fixed data, calls `call(name, *args)` and
# returns the arrays that hold the result on this rank.

def run(comm, kind, name, *args):
    if kind == "blocking":
        getattr(comm, name)(*args)
    elif kind == "nonblocking":
        req = getattr(comm, "I" + name[0].lower() + name[1:])(*args)
        assert isinstance(req, MPI.Request)
        req.Wait()
        assert not req
    elif kind == "persistent":
        req = getattr(comm, name + "_init")(*args)
        assert isinstance(req, MPI.Prequest)
        req.Start()
        req.Wait()
        req.Free()
    else:       # the MPI library's own nonblocking call, on its COMM_WORLD
        getattr(LIB.Intracomm, "I" + name[0].lower() + name[1:])(LIB_WORLD, *args).Wait()


def case_barrier(comm, kind):
    run(comm, kind, "Barrier")
    return []


def case_bcast(comm, kind, root, n=10, dtype="f8"):
    buf = values(dtype, n, root) if comm.rank == root else np.zeros(n, dtype)
    run(comm, kind, "Bcast", buf, root)
    return [buf]


def case_gather(comm, kind, root, in_place=False):
    size, rank = comm.size, comm.rank
    send = values("i8", 3, rank)
    recv = np.full((size, 3), -9, "i8") if rank == root else None
    if in_place and rank == root:
        recv[rank] = send
        send = MPI.IN_PLACE
    run(comm, kind, "Gather", send, recv, root)
    return [recv] if rank == root else []


def case_gatherv(comm, kind, root):
    size, rank = comm.size, comm.rank
    counts = [i + 1 for i in range(size)]
    send = values("f8", rank + 1, rank)
    recv = np.full(sum(counts), -9.0) if rank == root else None
    run(comm, kind, "Gatherv", send, [recv, counts] if rank == root else None, root)
    return [recv] if rank == root else []


def case_scatter(comm, kind, root, in_place=False):
    size, rank = comm.size, comm.rank
    send = values("i8", 4 * size, root).reshape(size, 4) if rank == root else None
    recv = np.full(4, -9, "i8")
    if in_place and rank == root:
        recv = MPI.IN_PLACE
    run(comm, kind, "Scatter", send, recv, root)
    return [send] if recv is MPI.IN_PLACE else [recv]


def case_scatterv(comm, kind, root):
    size, rank = comm.size, comm.rank
    counts = [size - i for i in range(size)]
    send = [values("f8", sum(counts), root), counts] if rank == root else None
    recv = np.full(counts[rank], -9.0)
    run(comm, kind, "Scatterv", send, recv, root)
    return [recv]


def case_allgather(comm, kind, in_place=False):
    size, rank = comm.size, comm.rank
    send = values("i8", 5, rank)
    recv = np.full((size, 5), -9, "i8")
    if in_place:
        recv[rank] = send
        send = MPI.IN_PLACE
    run(comm, kind, "Allgather", send, recv)
    return [recv]


def case_allgatherv(comm, kind):
    size, rank = comm.size, comm.rank
    counts = [2 * i + 1 for i in range(size)]
    recv = np.full(sum(counts), -9.0)
    run(comm, kind, "Allgatherv", values("f8", counts[rank], rank), [recv, counts])
    return [recv]


def case_alltoall(comm, kind, in_place=False):
    size, rank = comm.size, comm.rank
    send = values("i8", 3 * size, rank).reshape(size, 3)
    recv = np.full((size, 3), -9, "i8")
    if in_place:
        recv[:] = send
        send = MPI.IN_PLACE
    run(comm, kind, "Alltoall", send, recv)
    return [recv]


def case_alltoallv(comm, kind):
    size, rank = comm.size, comm.rank
    scounts = [(rank + i) % 3 + 1 for i in range(size)]
    rcounts = [(i + rank) % 3 + 1 for i in range(size)]
    send = values("f8", sum(scounts), rank)
    recv = np.full(sum(rcounts), -9.0)
    run(comm, kind, "Alltoallv", [send, scounts], [recv, rcounts])
    return [recv]


def case_reduce(comm, kind, root, op, dtype="i8", in_place=False):
    rank = comm.rank
    send = values(dtype, 6, rank)
    recv = np.full(6, -9, dtype) if rank == root else None
    if in_place and rank == root:
        recv[:] = send
        send = MPI.IN_PLACE
    run(comm, kind, "Reduce", send, recv, op, root)
    return [recv] if rank == root else []


def case_allreduce(comm, kind, op, dtype="i8", in_place=False, n=8):
    send = values(dtype, n, comm.rank)
    recv = np.full(n, -9, dtype)
    if in_place:
        recv[:] = send
        send = MPI.IN_PLACE
    run(comm, kind, "Allreduce", send, recv, op)
    return [recv]


def case_reduce_scatter_block(comm, kind, op, in_place=False):
    size, rank = comm.size, comm.rank
    send = values("i8", 3 * size, rank)
    recv = np.full(3, -9, "i8")
    if in_place:
        recv = send
        send = MPI.IN_PLACE
    run(comm, kind, "Reduce_scatter_block", send, recv, op)
    return [recv[:3]]


def case_reduce_scatter(comm, kind, op):
    size, rank = comm.size, comm.rank
    counts = [i % 3 + 1 for i in range(size)]
    send = values("f8", sum(counts), rank)
    recv = np.full(counts[rank], -9.0)
    run(comm, kind, "Reduce_scatter", send, recv, counts, op)
    return [recv]


def case_scan(comm, kind, op, dtype="i8", in_place=False):
    send = values(dtype, 5, comm.rank)
    recv = np.full(5, -9, dtype)
    if in_place:
        recv[:] = send
        send = MPI.IN_PLACE
    run(comm, kind, "Scan", send, recv, op)
    return [recv]


def case_exscan(comm, kind, op, dtype="i8"):
    recv = np.full(5, -9, dtype)
    run(comm, kind, "Exscan", values(dtype, 5, comm.rank), recv, op)
    return [recv] if comm.rank > 0 else []      # undefined at rank 0


SIZE = LIB_WORLD.Get_size()
ROOTS = sorted({0, SIZE - 1, SIZE // 2})
OPS = [MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN]
OP_NAMES = ["sum", "prod", "max", "min"]

CASES = (
    [("barrier", case_barrier, {})]
    + [(f"bcast-root{r}", case_bcast, {"root": r}) for r in ROOTS]
    + [("bcast-i4-large", case_bcast, {"root": SIZE - 1, "n": 70000, "dtype": "i4"})]
    + [(f"gather-root{r}", case_gather, {"root": r}) for r in ROOTS]
    + [("gather-in-place", case_gather, {"root": SIZE - 1, "in_place": True})]
    + [(f"gatherv-root{r}", case_gatherv, {"root": r}) for r in ROOTS]
    + [(f"scatter-root{r}", case_scatter, {"root": r}) for r in ROOTS]
    + [("scatter-in-place", case_scatter, {"root": SIZE // 2, "in_place": True})]
    + [(f"scatterv-root{r}", case_scatterv, {"root": r}) for r in ROOTS]
    + [("allgather", case_allgather, {}), ("allgather-in-place", case_allgather, {"in_place": True})]
    + [("allgatherv", case_allgatherv, {})]
    + [("alltoall", case_alltoall, {}), ("alltoall-in-place", case_alltoall, {"in_place": True})]
    + [("alltoallv", case_alltoallv, {})]
    + [(f"reduce-{OP_NAMES[i]}-root{r}", case_reduce, {"root": r, "op": op})
       for i, op in enumerate(OPS) for r in ROOTS]
    + [("reduce-f8-in-place", case_reduce, {"root": SIZE - 1, "op": MPI.SUM, "dtype": "f8",
                                            "in_place": True})]
    + [(f"allreduce-{OP_NAMES[i]}", case_allreduce, {"op": op}) for i, op in enumerate(OPS)]
    + [("allreduce-f8", case_allreduce, {"op": MPI.SUM, "dtype": "f8"}),
       ("allreduce-f8-large", case_allreduce, {"op": MPI.SUM, "dtype": "f8", "n": 20000}),
       ("allreduce-in-place", case_allreduce, {"op": MPI.MAX, "in_place": True})]
    # From 256 KiB: a reduce-scatter, then the result blocks in segments.
    + [("allreduce-f8-region", case_allreduce, {"op": MPI.SUM, "dtype": "f8", "n": 40003}),
       ("allreduce-region-in-place", case_allreduce, {"op": MPI.MIN, "in_place": True,
                                                      "n": 70001})]
    + [("reduce-scatter-block", case_reduce_scatter_block, {"op": MPI.SUM}),
       ("reduce-scatter-block-in-place", case_reduce_scatter_block, {"op": MPI.MIN,
                                                                     "in_place": True}),
       ("reduce-scatter", case_reduce_scatter, {"op": MPI.SUM})]
    + [(f"scan-{OP_NAMES[i]}", case_scan, {"op": op}) for i, op in enumerate(OPS)]
    + [("scan-f8-in-place", case_scan, {"op": MPI.SUM, "dtype": "f8", "in_place": True})]
    + [(f"exscan-{OP_NAMES[i]}", case_exscan, {"op": op}) for i, op in enumerate(OPS)]
)

# The non-commutative op is ivmpi's to check against itself: the library
# (Open MPI) runs user ops too, so it is compared as well.
ORDERED = [
    ("reduce-keep-left", case_reduce, {"root": SIZE - 1, "op": KEEP_LEFT}),
    ("allreduce-keep-left", case_allreduce, {"op": KEEP_LEFT}),
    ("allreduce-region-keep-left", case_allreduce, {"op": KEEP_LEFT, "n": 40003}),
    ("scan-keep-left", case_scan, {"op": KEEP_LEFT}),
    ("exscan-keep-left", case_exscan, {"op": KEEP_LEFT}),
]


def assert_results(ours, theirs, exact=True):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if exact or a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, case, kwargs", CASES + ORDERED, ids=[c[0] for c in CASES + ORDERED])
def test_matches_blocking_and_library(comm, name, case, kwargs):
    blocking = case(comm, "blocking", **kwargs)
    nonblocking = case(comm, "nonblocking", **kwargs)
    persistent = case(comm, "persistent", **kwargs)
    library = case(comm, "library", **kwargs)
    assert_results(nonblocking, blocking)          # same algorithm: the same bits
    assert_results(persistent, blocking)
    assert_results(library, blocking, exact=False)  # another summation order


# --- persistent requests ------------------------------------------------------------

def test_persistent_requests_restart_with_new_data(comm):
    size, rank = comm.size, comm.rank
    send, recv = np.zeros(4), np.zeros(4)
    bsend = np.zeros((size, 2), "i8")
    brecv = np.zeros((size, 2), "i8")
    bcast = np.zeros(3, "i8")
    scan = np.zeros(2, "i8")
    reqs = [comm.Allreduce_init(send, recv), comm.Alltoall_init(bsend, brecv),
            comm.Bcast_init(bcast, root=size - 1), comm.Barrier_init(),
            comm.Scan_init(bsend[0], scan, MPI.MAX)]
    for round_ in range(4):
        send[:] = values("f8", 4, rank, salt=round_)
        bsend[:] = values("i8", 2 * size, rank, salt=round_).reshape(size, 2)
        if rank == size - 1:
            bcast[:] = [round_, round_ + 1, round_ + 2]
        if round_ % 2:
            MPI.Prequest.Startall(reqs)
            MPI.Request.Waitall(reqs)
        else:
            for req in reversed(reqs):
                req.Start()
            while not MPI.Request.Testall(reqs):
                pass
        expected = np.zeros(4)
        comm.Allreduce(send, expected)
        np.testing.assert_array_equal(recv, expected)
        expected = np.zeros((size, 2), "i8")
        comm.Alltoall(bsend, expected)
        np.testing.assert_array_equal(brecv, expected)
        np.testing.assert_array_equal(bcast, [round_, round_ + 1, round_ + 2])
        expected = np.zeros(2, "i8")
        comm.Scan(bsend[0], expected, MPI.MAX)
        np.testing.assert_array_equal(scan, expected)
        assert all(reqs)          # inactive, not null
    for req in reqs:
        req.Free()
        assert not req


# --- several at once, with point-to-point --------------------------------------------

def test_outstanding_collectives_complete_in_reverse_order(comm):
    size, rank = comm.size, comm.rank
    a = values("f8", 8, rank)
    results = [np.zeros(8) for _ in range(3)]
    gathered = np.zeros((size, 8))
    bcast = a.copy() if rank == 0 else np.zeros(8)
    reqs = [comm.Iallreduce(a, results[0]), comm.Ibarrier(),
            comm.Iallreduce(a, results[1], MPI.MAX), comm.Iallgather(a, gathered),
            comm.Ibcast(bcast, root=0), comm.Iallreduce(a, results[2], MPI.MIN)]
    for req in reversed(reqs):
        req.Wait()
    for result, op in zip(results, (MPI.SUM, MPI.MAX, MPI.MIN)):
        expected = np.zeros(8)
        comm.Allreduce(a, expected, op)
        np.testing.assert_array_equal(result, expected)
    expected = np.zeros((size, 8))
    comm.Allgather(a, expected)
    np.testing.assert_array_equal(gathered, expected)
    np.testing.assert_array_equal(bcast, values("f8", 8, 0))


def test_overlap_with_point_to_point(comm):
    size, rank = comm.size, comm.rank
    right, left = (rank + 1) % size, (rank - 1) % size
    inbox = np.zeros(1000)
    a = values("i8", 16, rank)
    total = np.zeros(16, "i8")
    bcast = np.arange(70000, dtype="i4") if rank == 0 else np.zeros(70000, "i4")
    rreq = comm.Irecv(inbox, source=left, tag=3)
    coll = comm.Iallreduce(a, total)
    big = comm.Ibcast(bcast, root=0)
    sreq = comm.Isend(np.full(1000, float(rank)), dest=right, tag=3)
    # Waits in the order that makes each one depend on the others progressing.
    big.Wait()
    MPI.Request.Waitall([sreq, coll, rreq])
    assert (inbox == left).all()
    expected = np.zeros(16, "i8")
    comm.Allreduce(a, expected)
    np.testing.assert_array_equal(total, expected)
    np.testing.assert_array_equal(bcast, np.arange(70000, dtype="i4"))


def test_waitany_testsome_testall_mixes(comm):
    size, rank = comm.size, comm.rank
    right, left = (rank + 1) % size, (rank - 1) % size
    sums = [np.zeros(4, "i8") for _ in range(4)]
    inbox = np.zeros(4, "i8")
    reqs = [comm.Iallreduce(values("i8", 4, rank, salt=k), sums[k]) for k in range(4)]
    reqs.insert(2, comm.Irecv(inbox, source=left, tag=9))
    reqs.append(comm.Ibarrier())
    comm.Send(np.full(4, rank, "i8"), dest=right, tag=9)
    done = set()
    index = MPI.Request.Waitany(reqs)
    done.add(index)
    while len(done) < len(reqs):
        some = MPI.Request.Testsome(reqs)
        done.update(some or ())
    assert MPI.Request.Testall(reqs)
    assert MPI.Request.Waitany(reqs) == MPI.UNDEFINED
    assert (inbox == left).all()
    for k in range(4):
        expected = np.zeros(4, "i8")
        comm.Allreduce(values("i8", 4, rank, salt=k), expected)
        np.testing.assert_array_equal(sums[k], expected)


@pytest.mark.parametrize("kind", ["Ibarrier", "Iallreduce", "Ibcast"])
def test_progress_while_waiting_on_another_request(comm, kind):
    # Rank 0 waits on the collective before it sends; every other rank first
    # waits on a receive of that send.  The others must advance their part
    # of the collective (later rounds depend on earlier ones) while they wait.
    size, rank = comm.size, comm.rank
    buf = np.zeros(4)
    make = {"Ibarrier": lambda: comm.Ibarrier(),
            "Iallreduce": lambda: comm.Iallreduce(np.full(4, rank + 1.0), buf),
            "Ibcast": lambda: comm.Ibcast(buf if rank else np.ones(4), root=0)}[kind]
    if rank == 0:
        make().Wait()
        for peer in range(1, size):
            comm.Send(np.full(1, 7.0), dest=peer, tag=4)
    else:
        got = np.zeros(1)
        rreq = comm.Irecv(got, source=0, tag=4)
        coll = make()
        rreq.Wait()
        coll.Wait()
        assert got[0] == 7.0
    if kind == "Iallreduce":
        assert (buf == size * (size + 1) / 2).all()


def test_blocking_collective_between(comm):
    # A blocking collective issued while nonblocking ones are outstanding:
    # different tags, and the blocking one's waits advance the others.
    rank = comm.rank
    out = np.zeros(3)
    req = comm.Iallreduce(np.full(3, rank + 1.0), out)
    bar = comm.Ibarrier()
    comm.Barrier()
    assert comm.allreduce(rank) == comm.size * (comm.size - 1) // 2
    MPI.Request.Waitall([bar, req])
    assert (out == comm.size * (comm.size + 1) / 2).all()


def test_freed_request_completes_in_the_background(comm):
    out = np.zeros(2)
    req = comm.Iallreduce(np.ones(2), out)
    req.Free()
    assert not req
    comm.Barrier()
    comm.Ibarrier().Wait()
    while not (out == comm.size).all():
        comm.Iprobe()       # a round of progress
    assert (out == comm.size).all()


@pytest.mark.parametrize("rounds", [1, 12])
def test_sparse_exchange_with_a_nonblocking_barrier(comm, rounds):
    """The sparse exchange of scientific codes (synchronous sends, ANY_SOURCE
    probes, and an Ibarrier entered once this rank's sends are matched):
    every rank gets exactly the messages addressed to it, once each, round
    after round (the next round's barrier frames and messages may come from
    ranks ahead while this rank still polls: each round has its own tag)."""
    size, rank = comm.size, comm.rank
    rng = np.random.default_rng(5)
    for k in range(rounds):
        plan = rng.random((size, size)) < 0.5          # plan[src, dst]: src sends to dst
        lengths = rng.integers(0, 40, (size, size))
        tag = 11 + k
        sends = [comm.Issend(np.full(lengths[rank, d], 1000 * k + 10 * rank + d, "i8"), d, tag)
                 for d in range(size) if plan[rank, d]]
        got = {}
        status = MPI.Status()
        barrier = None
        while True:
            if comm.Iprobe(MPI.ANY_SOURCE, tag, status):
                source = status.Get_source()
                buf = np.empty(status.Get_count(MPI.INT64_T), "i8")
                comm.Recv(buf, source, tag)
                assert source not in got, "a message arrived twice"
                got[source] = buf
            if barrier is None:
                if MPI.Request.Testall(sends):
                    barrier = comm.Ibarrier()
            elif barrier.Test():
                break
        assert sorted(got) == [s for s in range(size) if plan[s, rank]]
        for source, buf in got.items():
            assert buf.tolist() == [1000 * k + 10 * source + rank] * lengths[source, rank]


def _counting(obj, name):
    """Count the calls of obj.name from now on: (calls, the original)."""
    calls = []
    original = getattr(obj, name)

    def count(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)
    setattr(obj, name, count)
    return calls, original


def test_test_loops_and_probes_on_running_collectives_stay_in_c(comm):
    """A rank polling a nonblocking collective with Test, or probing while
    one runs, makes the collective's progress without the engine's round
    in Python: the frames in the inbox are the collective's own, which its
    receives take from the rings (in Python, a failing test cost 1.5 us
    against Open MPI's 0.17, and a probe went to the engine's general
    path, as it did for an acknowledgement in the way).  Rank 0 probes
    past the acknowledgements of its synchronous sends, starts a barrier
    and polls while the others still wait for it; then all run barriers
    and Iallreduces with Test loops."""
    size, rank = comm.size, comm.rank
    here = all(ivmpi.path_to(comm, r) in ("region", "self") for r in range(size))
    if size < 2 or not comm.allreduce(here, op=MPI.LAND):
        pytest.skip("needs two ranks or more, all of one region")
    engine = comm._engine
    rounds, _ = _counting(engine, "progress")
    general_probes, general_Iprobe = _counting(comm._fast, "general_Iprobe")
    try:
        go = np.zeros(1)
        # Probes look past the acknowledgement of a synchronous send.
        if rank == 0:
            for tag, source in ((102, MPI.ANY_SOURCE), (104, 1)):
                sent = comm.Issend(go, 1, tag)
                while not comm.Iprobe(source, tag + 1):
                    pass
                comm.Recv(go, 1, tag + 1)
                assert sent.Test()
        elif rank == 1:
            for tag in (102, 104):
                comm.Recv(go, 0, tag)
                comm.Send(go, 0, tag + 1)
        if rank == 0:
            early = comm.Ibarrier()
            for _ in range(50):
                assert not comm.Iprobe(MPI.ANY_SOURCE, 100)
                assert not comm.Iprobe(1, 100)
                assert not early.Test()
            probes, tests = len(general_probes), len(rounds)
            for peer in range(1, size):
                comm.Send(go, peer, 101)
        else:
            comm.Recv(go, 0, 101)
            early = comm.Ibarrier()
        early.Wait()
        start = len(rounds)
        out = np.zeros(4)
        for k in range(20):
            req = comm.Ibarrier() if k % 2 else comm.Iallreduce(np.full(4, float(k + rank)), out)
            while not req.Test():
                pass
            if k % 2 == 0:
                assert out.tolist() == [k * size + size * (size - 1) // 2] * 4
        loops = len(rounds) - start
    finally:
        del engine.progress
        comm._fast.general_Iprobe = general_Iprobe
    if rank == 0:
        assert (probes, tests) == (0, 0)
    assert loops == 0


def test_probes_set_aside_frames_they_do_not_look_for(comm):
    """A probe whose ring holds, before what it looks for, messages of
    another tag or communicator (a rank ahead in a sparse exchange sends
    the next round's) moves them to the unexpected messages in C, as the
    engine's round would, and finds what follows: no general probe and no
    engine round in Python.  Every message is then received, once, with
    its own data (on 86e6664's code every such probe went general)."""
    size, rank = comm.size, comm.rank
    here = all(ivmpi.path_to(comm, r) in ("region", "self") for r in range(size))
    if size < 2 or not comm.allreduce(here, op=MPI.LAND):
        pytest.skip("needs two ranks or more, all of one region")
    other = comm.Dup()
    engine = comm._engine
    rounds, _ = _counting(engine, "progress")
    general_probes, general_Iprobe = _counting(comm._fast, "general_Iprobe")
    try:
        if rank == 1:
            other.Send(np.full(3, 5.0), 0, 5)
            comm.Send(np.full(2, 201.0), 0, 201)
            sync = comm.Issend(np.full(4, 202.0), 0, 202)
            comm.Send(np.full(1, 203.0), 0, 203)
        elif rank == 0:
            for source, tag in ((MPI.ANY_SOURCE, 203), (1, 202)):
                status = MPI.Status()
                while not comm.Iprobe(source, tag, status):
                    pass
                assert (status.Get_source(), status.Get_tag()) == (1, tag)
            probes, loops = len(general_probes), len(rounds)
    finally:
        del engine.progress
        comm._fast.general_Iprobe = general_Iprobe
    if rank == 0:
        got = []
        for c, tag, n in ((comm, 203, 1), (comm, 202, 4), (comm, 201, 2), (other, 5, 3)):
            buf = np.zeros(n)
            c.Recv(buf, 1, tag)
            got.append(buf.tolist())
        assert got == [[203.0], [202.0] * 4, [201.0] * 2, [5.0] * 3]
        assert (probes, loops) == (0, 0)
    elif rank == 1:
        sync.Wait()
    other.Free()


@pytest.mark.parametrize("poll", ["Iprobe", "Irecv+Test"])
def test_a_frame_left_for_a_collective_hides_nothing_behind_it(comm, poll):
    """Rank 1 enters a barrier (its frames to rank 0 go out) and then sends
    rank 0 a message; rank 0's barrier cannot finish until the others enter
    it, which they do only after rank 0 has that message.  A probe or test
    loop of rank 0 that left rank 1's barrier frame in its ring, for the
    barrier's own receive, would never see the message behind it: the
    frame must be moved aside when anything follows it."""
    size, rank = comm.size, comm.rank
    here = all(ivmpi.path_to(comm, r) in ("region", "self") for r in range(size))
    if size < 3 or not comm.allreduce(here, op=MPI.LAND):
        pytest.skip("needs three ranks or more, all of one region")
    # A new communicator whose only collective so far is a barrier: its
    # Ibarrier runs as frames through the rings (an object allreduce first
    # would have it take another path).
    comm = comm.Dup()
    comm.Barrier()
    got = np.zeros(2)
    if rank == 0:
        barrier = comm.Ibarrier()
        found = False
        deadline = time.monotonic() + 10
        request = comm.Irecv(got, 1, 301) if poll == "Irecv+Test" else None
        while not found and time.monotonic() < deadline:
            found = request.Test() if request is not None else comm.Iprobe(1, 301)
        for peer in range(2, size):
            comm.Send(got[:1], peer, 302)
        barrier.Wait()
        if request is None:
            comm.Recv(got, 1, 301)
        else:
            request.Wait()
        assert found, "the message behind the barrier's frame was not seen"
        assert got.tolist() == [301.0, 1.0]
    elif rank == 1:
        barrier = comm.Ibarrier()
        for _ in range(100):
            barrier.Test()          # its first frames out
        comm.Send(np.array([301.0, 1.0]), 0, 301)
        barrier.Wait()
    else:
        comm.Recv(got[:1], 0, 302)
        comm.Ibarrier().Wait()
    comm.Free()


def test_the_rounds_in_c_see_the_engines_own_tables(comm):
    """The C rounds of a test read the engine's queues through its core:
    the same objects, so that a frame they set aside or a receive the
    engine posts is seen by both, and the core follows oversubscription."""
    engine = comm._engine
    core = engine.core
    assert comm._fast.core is core
    for name in ("posted", "unexpected", "tx", "rx_by_slot", "services", "library_ops",
                 "backlog", "sharing", "routes", "awaiting_ack", "service_contexts",
                 "awaiting_cts", "inbox", "lock"):
        assert getattr(core, name) is getattr(engine, name), name
    assert core.eager_limit == engine.eager_limit
    before = engine.oversubscribed
    try:
        for value in (not before, before):
            engine.set_oversubscribed(value)
            assert core.oversubscribed == value
    finally:
        engine.set_oversubscribed(before)


def test_copies_of_a_communicator_share_the_sequence(comm):
    copy = MPI.Intracomm(comm)
    a, b = np.zeros(1), np.zeros(1)
    r1 = comm.Iallreduce(np.ones(1), a)
    r2 = copy.Iallreduce(np.full(1, 2.0), b)
    MPI.Request.Waitall([r2, r1])
    assert a[0] == comm.size and b[0] == 2 * comm.size


# --- errors ---------------------------------------------------------------------------

def test_bad_root_is_refused_at_the_call(comm):
    with pytest.raises(MPI.Exception) as info:
        comm.Ibcast(np.zeros(1), root=comm.size)
    assert info.value.Get_error_class() == MPI.ERR_ROOT
    with pytest.raises(MPI.Exception):
        comm.Reduce_init(np.zeros(1), np.zeros(1), root=-1)


@pytest.mark.mpi(min_size=2)
def test_truncation_is_reported_by_the_wait(comm):
    size, rank = comm.size, comm.rank
    send = np.zeros((size, 2)) if rank == 0 else None
    recv = np.zeros(2 if rank == 0 else 1)          # the others' is too small
    req = comm.Iscatter([send, MPI.DOUBLE] if rank == 0 else None, recv, root=0)
    if rank == 0:
        req.Wait()
    else:
        with pytest.raises(MPI.Exception) as info:
            req.Wait()
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        assert not req


def test_freed_communicator_is_refused(world):
    dup = world.Dup()
    dup.Free()
    with pytest.raises(MPI.Exception) as info:
        dup.Ibarrier()
    assert info.value.Get_error_class() == MPI.ERR_COMM


# --- the region carries the bytes ------------------------------------------------------

@pytest.mark.mpi(min_size=2)
def test_traffic_goes_through_the_region(comm, streamed):
    # (streamed: the blocks cross the rings, as between VMs; ranks of one
    # kernel copy an Ialltoall's 64 KiB blocks from each other's memory.)
    size, rank = comm.size, comm.rank
    block = 1 << 16
    send = np.full(block, rank, "u1")
    recv = np.zeros((size, block), "u1")
    before = ivmpi.stats.total(comm)
    comm.Iallgather(send, recv).Wait()
    req = comm.Allreduce_init(np.ones(block // 8), np.zeros(block // 8))
    req.Start()
    req.Wait()
    after = ivmpi.stats.total(comm)
    # Each rank sends its block to every other and reads every other's.
    assert after["written"] - before["written"] >= (size - 1) * block
    assert after["read"] - before["read"] >= (size - 1) * block
    assert (recv == np.arange(size, dtype="u1")[:, None]).all()


@pytest.mark.parametrize("form", ["nonblocking", "persistent"])
def test_large_allreduce_segments_stay_in_the_rings(comm, form):
    """A large Iallreduce/Allreduce_init streams its blocks in eager
    segments round by round, as the blocking call does: none is handed to
    the engine's queue (sends of every round at once overflowed the rings
    into it).  The result is the blocking call's, bit for bit."""
    size, rank = comm.size, comm.rank
    here = all(ivmpi.path_to(comm, r) in ("region", "self") for r in range(size))
    if size < 2 or not comm.allreduce(here, op=MPI.LAND):
        pytest.skip("needs two ranks or more, all of one region")
    n = (4 << 20) // 8 + 3
    data = values("f8", n, rank, 7)
    engine = comm._engine
    queued = []
    real = engine.isend

    def counting(*args, **kwargs):
        queued.append(args[0])
        return real(*args, **kwargs)

    got = np.zeros(n)
    engine.isend = counting
    try:
        if form == "nonblocking":
            comm.Iallreduce(data, got).Wait()
        else:
            req = comm.Allreduce_init(data, got)
            for _ in range(2):
                got[:] = 0
                req.Start()
                req.Wait()
            req.Free()
    finally:
        del engine.isend
    want = np.zeros(n)
    comm.Allreduce(data, want)
    assert got.tobytes() == want.tobytes()
    assert queued == []


def test_only_schedules_that_fill_a_ring_wait_for_room(comm):
    """A run that sends a peer half its ring or more (a large prefix chain)
    waits a little for room in it; a small one (a 64 KiB Scatter_init,
    whose caller may run ahead of its receiver) does not spin on the ring
    its receiver is emptying."""
    size, rank = comm.size, comm.rank
    here = all(ivmpi.path_to(comm, r) in ("region", "self") for r in range(size))
    if size < 2 or not comm.allreduce(here, op=MPI.LAND):
        pytest.skip("needs two ranks or more, all of one region")
    ring = comm._engine.geo.ring_bytes
    big = np.ones(ring // 8)
    out = np.zeros_like(big)
    scan = comm.Scan_init(big, out)
    small = np.ones(8192)
    scatter = comm.Scatter_init(np.ones(8192 * size) if rank == 0 else None, small, root=0)
    try:
        # Every rank but the last passes a whole ring's worth on.
        assert scan._start.__self__.streams == (rank < size - 1)
        assert not scatter._start.__self__.streams
        for req in (scan, scatter):
            req.Start()
            req.Wait()
        assert (out == rank + 1).all()
    finally:
        scan.Free()
        scatter.Free()


# --- repeated calls (a call with the same arguments reuses its schedule) -------------

def test_repeated_calls_see_new_data_and_changed_specs(comm):
    size, rank = comm.size, comm.rank
    send, recv = np.zeros(4), np.zeros(4)
    for k in range(3):
        send[:] = values("f8", 4, rank, salt=k)
        comm.Iallreduce(send, recv).Wait()
        expected = np.zeros(4)
        comm.Allreduce(send, expected)
        np.testing.assert_array_equal(recv, expected)
    # The same list objects, their counts changed between calls.
    data, out, counts = np.zeros(2), np.zeros(2 * size), [1] * size
    sspec, rspec = [data, 1, MPI.DOUBLE], [out, counts, MPI.DOUBLE]
    for k in (1, 2, 1, 1):
        data[:] = rank + 10 * k
        sspec[1] = k
        counts[:] = [k] * size
        out[:] = -9
        comm.Iallgatherv(sspec, rspec).Wait()
        expected = np.full(2 * size, -9.0)
        expected[:k * size] = np.repeat(np.arange(size) + 10.0 * k, k)
        np.testing.assert_array_equal(out, expected)


def test_new_views_of_the_same_arrays_reuse_the_schedule_and_nothing_else_does(comm):
    size, rank = comm.size, comm.rank
    send, out = np.zeros(2), np.zeros(2 * size)
    # Across regions the collectives are the library's: no schedules there,
    # the results are checked all the same.
    schedules = not comm._routed

    def allgather(sendbuf, recvbuf):
        # The cache keeps the last schedule alive, so a new one made on a
        # miss never has the id of the one before it.
        request = comm.Iallgather(sendbuf, recvbuf)
        schedule = id(request._op) if schedules else None
        request.Wait()
        return schedule

    send[:] = [rank, -rank]
    first = allgather(send[...], out[...])
    for k in range(1, 3):
        send[:] = [rank + 10 * k, -rank]
        out[:] = -9
        assert allgather(send[...], out[...]) == first or not schedules
        np.testing.assert_array_equal(out, np.ravel([[r + 10 * k, -r] for r in range(size)]))
    # Same address, other shapes: one element per rank, into the first half.
    out[:] = -9
    halves = allgather(send[:1], out[:size])
    assert halves != first or not schedules
    np.testing.assert_array_equal(out[:size], np.arange(size) + 20.0)
    assert (out[size:] == -9).all()
    # Same bytes through another dtype.
    ints = out.view("i8")
    assert allgather(send.view("i8")[...], ints[...]) != halves or not schedules
    np.testing.assert_array_equal(out, np.ravel([[r + 20, -r] for r in range(size)]))
    # A read-only view of a cached receive buffer is still refused.
    frozen = out[...]
    frozen.flags.writeable = False
    out[:] = -9
    with pytest.raises(Exception):
        comm.Iallgather(send, frozen).Wait()
    assert (out == -9).all()


def test_a_repeat_is_recognised_only_when_nothing_the_schedule_depends_on_changed(comm):
    """The cache's key: ops, datatypes (replaced in a spec list, or named by
    a type character), roots, and numbers too large for a machine word."""
    size, rank = comm.size, comm.rank
    schedules = not comm._routed

    def run(start):
        request = start()
        schedule = id(request._op) if schedules else None
        request.Wait()
        return schedule

    send, recv = values("f8", 3, rank), np.zeros(3)
    by_sum = run(lambda: comm.Iallreduce(send, recv, op=MPI.SUM))
    assert run(lambda: comm.Iallreduce(send, recv, op=MPI.SUM)) == by_sum or not schedules
    assert run(lambda: comm.Iallreduce(send, recv, op=MPI.MAX)) != by_sum or not schedules
    expected = np.zeros(3)
    comm.Allreduce(send, expected, op=MPI.MAX)
    np.testing.assert_array_equal(recv, expected)
    # The same lists, only their datatype replaced: the bytes are counted
    # in the new type (one 8-byte element per rank instead of two ints).
    data = np.arange(2, dtype="i4") + 10 * rank
    out = np.zeros(2 * size, "i4")
    sspec, rspec = [data, MPI.INT], [out, MPI.INT]
    as_ints = run(lambda: comm.Iallgather(sspec, rspec))
    np.testing.assert_array_equal(out, np.ravel([[10 * r, 10 * r + 1] for r in range(size)]))
    sspec[1] = rspec[1] = MPI.INT64_T
    out[:] = -1
    assert run(lambda: comm.Iallgather(sspec, rspec)) != as_ints or not schedules
    whole = np.ravel([[10 * r, 10 * r + 1] for r in range(size)]).astype("i4")
    np.testing.assert_array_equal(out, whole)
    # A type character names the datatype as mpi4py allows.
    out[:] = -1
    first = run(lambda: comm.Iallgather([data, "i"], [out, "i"]))
    assert run(lambda: comm.Iallgather([data, "i"], [out, "i"])) == first or not schedules
    np.testing.assert_array_equal(out, whole)
    # Another root.
    block = np.full(1, float(rank))
    gathered = np.zeros(size)
    for root in (0, size - 1, 0):
        gathered[:] = -1
        comm.Igather(block, gathered if rank == root else None, root=root).Wait()
        if rank == root:
            np.testing.assert_array_equal(gathered, np.arange(size, dtype=float))
    # A count too large for a machine word is refused as ever, not cached.
    with pytest.raises(Exception):
        comm.Iallgather([data, 1 << 70, MPI.INT], [out, MPI.INT]).Wait()


def test_counts_in_numpy_arrays_changed_in_place_are_new_arguments(comm):
    """Counts and displacements given as numpy arrays are keyed by their
    values: the same arrays, changed in place between two calls, give a
    new schedule and the right data (the same memory is not the same
    numbers), and unchanged ones still find the schedule."""
    size, rank = comm.size, comm.rank
    schedules = not comm._routed
    counts = np.full(size, 2)
    displs = np.arange(size) * 2
    send = np.full(2, float(rank))
    recv = np.full(2 * size, -1.0)
    first = comm.Iallgatherv(send, [recv, counts, displs, MPI.DOUBLE])
    key = id(first._op)
    first.Wait()
    np.testing.assert_array_equal(recv, np.repeat(np.arange(size, dtype=float), 2))
    again = comm.Iallgatherv(send, [recv, counts, displs, MPI.DOUBLE])
    assert id(again._op) == key or not schedules
    again.Wait()
    displs[:] = displs[::-1].copy()            # the blocks in reverse order
    recv[:] = -1
    comm.Iallgatherv(send, [recv, (counts, displs), MPI.DOUBLE]).Wait()
    comm.Iallgatherv(send, [recv, counts, displs, MPI.DOUBLE]).Wait()
    np.testing.assert_array_equal(recv, np.repeat(np.arange(size, dtype=float)[::-1], 2))
    # Ireduce_scatter's counts, passed on their own (in place: the same
    # buffer takes other counts of the same sum).
    recvcounts = np.full(size, 2)
    data = np.arange(2 * size, dtype=float)
    buf = np.empty_like(data)
    for change in (False, True):
        if change and size > 1:
            recvcounts[0] += 1
            recvcounts[-1] -= 1
        buf[:] = data
        comm.Ireduce_scatter(MPI.IN_PLACE, buf, recvcounts, MPI.SUM).Wait()
        at, mine = int(recvcounts[:rank].sum()), int(recvcounts[rank])
        np.testing.assert_array_equal(buf[:mine], size * data[at:at + mine])


def test_bound_nonblocking_calls_take_arguments_as_the_methods_do(comm):
    """The nonblocking collectives are bound to the instance
    (ivmpi.nbcoll.NONBLOCKING_STARTERS): keywords, defaults and the errors
    of a wrong call as mpi4py's methods have them, and the same results."""
    from ivmpi.nbcoll import BLOCKING_SCHEDULED, NONBLOCKING_STARTERS
    size, rank = comm.size, comm.rank
    if not comm._routed:      # across regions they are the library's calls
        comm.Barrier()          # (bound with the collectives, on first use)
        assert type(comm.__dict__["Iallreduce"]).__name__ == "BoundCollective"
        assert type(comm.__dict__["Alltoallw"]).__name__ == "BoundCollective"
    for name, _, names, defaults, _ in NONBLOCKING_STARTERS + BLOCKING_SCHEDULED:
        # The parameters of mpi4py's method (after self), and its defaults.
        params = list(inspect.signature(getattr(LIB.Intracomm, name)).parameters.values())[1:]
        assert tuple(p.name for p in params) == names, name
        assert tuple(p.default for p in params if p.default is not p.empty) == defaults, name
    send = np.arange(3.0) + rank
    for call in (lambda out: comm.Iallreduce(send, out),
                 lambda out: comm.Iallreduce(sendbuf=send, recvbuf=out, op=MPI.SUM),
                 lambda out: comm.Iallreduce(send, recvbuf=out)):
        out = np.zeros(3)
        call(out).Wait()
        np.testing.assert_array_equal(out, size * np.arange(3.0) + size * (size - 1) / 2)
    buf = np.full(2, float(rank))
    comm.Ibcast(buf=buf).Wait()
    assert (buf == 0).all()
    got = np.zeros(size)
    comm.Ireduce(np.ones(1), got[:1], root=size - 1).Wait()
    if rank == size - 1:
        assert got[0] == size
    comm.Ibarrier().Wait()
    ones, each = np.ones(size, "i4"), np.zeros(size, "i4")
    spec = [list(range(size)), [1] * size, [4 * i for i in range(size)], [MPI.INT] * size]
    assert comm.Alltoallw(recvbuf=[each] + spec[1:], sendbuf=[ones] + spec[1:]) is None
    assert (each == 1).all()
    for wrong in (lambda: comm.Ibarrier(1), lambda: comm.Ibcast(), lambda: comm.Ibcast(buf, 0, 1),
                  lambda: comm.Alltoallw([ones] + spec[1:]),
                  lambda: comm.Iallreduce(send, out, bogus=1),
                  lambda: comm.Iallreduce(send, out, sendbuf=send)):
        with pytest.raises(TypeError):
            wrong()


def test_outstanding_calls_with_the_same_arguments(comm):
    # A call cannot reuse the schedule of an earlier one with the same
    # arguments while a request holds it; all complete, in either order.
    size, rank = comm.size, comm.rank
    for order in (0, 1, 0):
        reqs = [comm.Ibarrier() for _ in range(3)]
        out = np.zeros(2)
        reqs.append(comm.Iallreduce(np.full(2, rank + 1.0), out))
        reqs += [comm.Ibarrier() for _ in range(2)]
        for req in (reqs[::-1] if order else reqs):
            req.Wait()
        assert (out == size * (size + 1) / 2).all()
