"""Collectives whose large sends go out of the sender's heap, against Open MPI.

On three ranks or more, blocks over the eager limit of Scatter(v),
Alltoall(v/w), Allgather and the neighbourhood collectives are staged in
the sender's heap and copied out by each receiver (ivmpi.staging, and
Collectives._isend_staged for the blocking calls), unless the receiver
copies them from the sender's memory (ranks of one kernel); ranks whose blocks are
all small keep the pairwise steps and meet the others in one call.  The
neighbourhood collectives send in the order the receivers take their
messages (CartTopology.send_order).  Large Allgatherv, and the
nonblocking and persistent Bcast (from 8 MiB) and Allreduce (from 256
KiB), go through the heaps too.  Every result must be mpi4py's over Open
MPI on the same data, for the blocking, nonblocking and persistent forms.
"""
import gc

import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI
from ivmpi.staging import pool_of

pytestmark = pytest.mark.mpi(min_size=1)

NATIVE = _native.COMM_WORLD
LARGE = 8200            # doubles per block: past the 64 KiB eager limit
SIZES = [3, LARGE]
FORMS = ["blocking", "nonblocking", "persistent"]


def run(comm, form, name, *args, before=None, **kwargs):
    """before(): called before each start (an in-place buffer refilled)."""
    if before is not None:
        before()
    if form == "blocking":
        getattr(comm, name)(*args, **kwargs)
    elif form == "nonblocking":
        getattr(comm, "I" + name[0].lower() + name[1:])(*args, **kwargs).Wait()
    else:
        req = getattr(comm, name + "_init")(*args, **kwargs)
        for k in range(2):          # a second start reuses the staged steps
            if k and before is not None:
                before()
            req.Start()
            req.Wait()
        req.Free()


def data(n, rank, salt=0):
    return np.random.default_rng(1000 * rank + salt).random(n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("form", FORMS)
def test_scatter_and_scatterv_every_root(comm, n, form):
    size, rank = comm.size, comm.rank
    counts = [n + i for i in range(size)]
    displs = [sum(counts[:i]) for i in range(size)]
    for root in range(size):
        whole = data(n * size, root, 1)
        ours, theirs = np.full(n, -1.0), np.full(n, -1.0)
        run(comm, form, "Scatter", whole if rank == root else None, ours, root=root)
        NATIVE.Scatter(whole if rank == root else None, theirs, root=root)
        np.testing.assert_array_equal(ours, theirs)

        whole = data(sum(counts), root, 2)
        spec = [whole, counts, displs, MPI.DOUBLE] if rank == root else None
        ours, theirs = np.full(counts[rank], -1.0), np.full(counts[rank], -1.0)
        run(comm, form, "Scatterv", spec, ours, root=root)
        NATIVE.Scatterv([whole, counts, displs, _native.DOUBLE] if rank == root else None,
                        theirs, root=root)
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", [False, True])
def test_alltoall_and_allgather(comm, n, form, in_place):
    size, rank = comm.size, comm.rank
    outgoing = data(n * size, rank, 3)
    theirs = np.full(n * size, -1.0)
    NATIVE.Alltoall(outgoing, theirs)
    if in_place:
        ours = outgoing.copy()
        run(comm, form, "Alltoall", MPI.IN_PLACE, ours,
            before=lambda: ours.__setitem__(slice(None), outgoing))
    else:
        ours = np.full(n * size, -1.0)
        run(comm, form, "Alltoall", outgoing, ours)
    np.testing.assert_array_equal(ours, theirs)

    mine = data(n, rank, 4)
    NATIVE.Allgather(mine, theirs)
    ours = np.full(n * size, -1.0)
    if in_place:
        ours[rank * n:(rank + 1) * n] = mine
        run(comm, form, "Allgather", MPI.IN_PLACE, ours)
    else:
        run(comm, form, "Allgather", mine, ours)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", [False, True])
def test_allgather_of_blocks_past_256k(comm, form, in_place):
    # Every rank's block through its heap, the others copying it out.
    size, rank = comm.size, comm.rank
    n = 32768 + 5
    mine = data(n, rank, 12)
    theirs = np.full(n * size, -1.0)
    NATIVE.Allgather(mine, theirs)
    for name in ("Allgather", "Allgatherv"):
        ours = np.full(n * size, -1.0)
        spec = ours if name == "Allgather" else [ours, [n] * size, None, MPI.DOUBLE]
        if in_place:
            ours[rank * n:(rank + 1) * n] = mine
            run(comm, form, name, MPI.IN_PLACE, spec)
        else:
            run(comm, form, name, mine, spec)
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("form", FORMS)
def test_alltoallv_some_ranks_small(comm, form):
    # Rank 0 sends small blocks only (the pairwise steps), the others large
    # ones (out of their heaps): one call, both paths.
    size, rank = comm.size, comm.rank

    def count(sender, receiver):
        return 5 + receiver if sender == 0 else LARGE + sender + receiver

    scounts = [count(rank, d) for d in range(size)]
    rcounts = [count(s, rank) for s in range(size)]
    sdispls = [sum(scounts[:d]) for d in range(size)]
    rdispls = [sum(rcounts[:s]) for s in range(size)]
    outgoing = data(sum(scounts), rank, 5)
    ours, theirs = np.full(sum(rcounts), -1.0), np.full(sum(rcounts), -1.0)
    run(comm, form, "Alltoallv", [outgoing, scounts, sdispls, MPI.DOUBLE],
        [ours, rcounts, rdispls, MPI.DOUBLE])
    NATIVE.Alltoallv([outgoing, scounts, sdispls, _native.DOUBLE],
                     [theirs, rcounts, rdispls, _native.DOUBLE])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("form", FORMS)
def test_alltoallw(comm, n, form):
    size, rank = comm.size, comm.rank
    counts = [n + i for i in range(size)]
    outgoing = data(sum(counts), rank, 6)
    sdispls = [8 * sum(counts[:d]) for d in range(size)]
    rcounts = [n + rank] * size
    rdispls = [8 * (n + rank) * s for s in range(size)]
    ours, theirs = np.full(sum(rcounts), -1.0), np.full(sum(rcounts), -1.0)
    run(comm, form, "Alltoallw", [outgoing, counts, sdispls, [MPI.DOUBLE] * size],
        [ours, rcounts, rdispls, [MPI.DOUBLE] * size])
    NATIVE.Alltoallw([outgoing, counts, sdispls, [_native.DOUBLE] * size],
                     [theirs, rcounts, rdispls, [_native.DOUBLE] * size])
    np.testing.assert_array_equal(ours, theirs)


@pytest.fixture
def rings(comm):
    ours = comm.Create_cart([comm.size], [True])
    theirs = NATIVE.Create_cart([comm.size], [True])
    yield ours, theirs
    ours.Free()
    theirs.Free()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("form", FORMS)
def test_neighbour_collectives_on_a_ring(rings, n, form):
    # Two neighbours per rank: on two ranks both are the same rank, and
    # what went toward -1 must still land in the +1 block.
    ours_comm, theirs_comm = rings
    rank = ours_comm.rank
    mine = data(n, rank, 7)
    ours, theirs = np.full(2 * n, -1.0), np.full(2 * n, -1.0)
    run(ours_comm, form, "Neighbor_allgather", mine, ours)
    theirs_comm.Neighbor_allgather(mine, theirs)
    np.testing.assert_array_equal(ours, theirs)

    outgoing = data(2 * n, rank, 8)
    ours, theirs = np.full(2 * n, -1.0), np.full(2 * n, -1.0)
    run(ours_comm, form, "Neighbor_alltoall", outgoing, ours)
    theirs_comm.Neighbor_alltoall(outgoing, theirs)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("nbytes", [8, 1024, 70000])
def test_neighbour_objects_on_a_ring(rings, nbytes):
    ours_comm, theirs_comm = rings
    rank = ours_comm.rank
    item = bytes([rank + 1]) * nbytes
    for _ in range(3):
        assert ours_comm.neighbor_allgather(item) == theirs_comm.neighbor_allgather(item)
        pair = [item + b"-", item + b"+"]
        assert ours_comm.neighbor_alltoall(pair) == theirs_comm.neighbor_alltoall(pair)


def test_staged_heap_bytes_come_back(comm, streamed):
    # A persistent Alltoall of large blocks holds its heap buffer while it
    # lives (on three ranks or more) and hands it back once freed.  (Ranks
    # that copy from each other's memory stage nothing: streamed here, as
    # between VMs; the next test.)
    size, rank = comm.size, comm.rank
    heap = comm._engine.heap
    if heap is None or heap.mem.strict:
        pytest.skip("no region heap")
    pool = pool_of(comm._engine)
    gc.collect()
    pool.release_retired()
    before = heap.available()
    outgoing = data(LARGE * size, rank, 9)
    ours = np.full(LARGE * size, -1.0)
    req = comm.Alltoall_init(outgoing, ours)
    held = before - heap.available()
    if size >= 3:
        assert held >= 8 * LARGE * (size - 1)
    else:
        assert held == 0
    _run_like_native_alltoall(req, outgoing, ours)
    req.Free()
    del req
    gc.collect()
    pool.release_retired()
    assert heap.available() == before


@pytest.mark.parametrize("form", FORMS)
def test_large_bcast_every_root(comm, form):
    # From 8 MiB the nonblocking and persistent forms send every segment
    # from the root (out of its heap on three ranks or more).
    n = (8 << 20) // 8 + 12345
    for root in range(comm.size):
        whole = data(n, root, 10)
        ours = whole.copy() if comm.rank == root else np.full(n, -1.0)
        # Each start fills a cleared buffer again (the root's stays).
        run(comm, form, "Bcast", ours, root=root,
            before=None if comm.rank == root else lambda: ours.fill(-1.0))
        np.testing.assert_array_equal(ours, whole)


@pytest.mark.parametrize("in_place", [False, True])
def test_allgatherv_with_large_and_small_blocks(comm, in_place):
    # One block past 256 KiB takes every rank's through the heaps; the
    # others may be tiny or empty.
    size, rank = comm.size, comm.rank
    counts = [40000 if j == size - 1 else (0 if j == 1 else 3 + j) for j in range(size)]
    displs = [sum(counts[:j]) + 2 * j for j in range(size)]
    total = displs[-1] + counts[-1]
    mine = data(counts[rank], rank, 11)
    ours, theirs = np.full(total, -1.0), np.full(total, -1.0)
    NATIVE.Allgatherv(mine, [theirs, counts, displs, _native.DOUBLE])
    if in_place:
        ours[displs[rank]:displs[rank] + counts[rank]] = mine
        comm.Allgatherv(MPI.IN_PLACE, [ours, counts, displs, MPI.DOUBLE])
    else:
        comm.Allgatherv(mine, [ours, counts, displs, MPI.DOUBLE])
    np.testing.assert_array_equal(ours, theirs)


def test_neighbour_objects_off_the_edges(comm):
    # A line (not periodic): the end ranks have PROC_NULL neighbours, whose
    # entries are None; calls repeat on one communicator.
    ours = comm.Create_cart([comm.size], [False])
    theirs = NATIVE.Create_cart([comm.size], [False])
    try:
        for k in range(3):
            item = (comm.rank, k)
            assert ours.neighbor_allgather(item) == theirs.neighbor_allgather(item)
            pair = [(comm.rank, k, "-"), (comm.rank, k, "+")]
            assert ours.neighbor_alltoall(pair) == theirs.neighbor_alltoall(pair)
    finally:
        ours.Free()
        theirs.Free()


def _keep_left(inbuf, inoutbuf, datatype):
    # op(a, b) = a: associative, not commutative: the result is rank 0's.
    np.frombuffer(inoutbuf, "f8")[:] = np.frombuffer(inbuf, "f8")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("opname", ["SUM", "MAX", "keep_left"])
def test_large_allreduce(comm, form, in_place, opname):
    # From 256 KiB each rank reduces one block of everyone's input, in rank
    # order, and every rank gets every block (out of the heaps).  Whole
    # numbers, so any order of summing gives Open MPI's bits.
    n = 40000 + 7
    mine = np.floor(data(n, comm.rank, 12) * 1000 - 500)
    if opname == "keep_left":
        op = MPI.Op.Create(_keep_left, commute=False)
        theirs = np.floor(data(n, 0, 12) * 1000 - 500)
    else:
        op = getattr(MPI, opname)
        theirs = np.empty(n)
        NATIVE.Allreduce(mine, theirs, op=getattr(_native, opname))
    try:
        if in_place:
            ours = mine.copy()
            run(comm, form, "Allreduce", MPI.IN_PLACE, ours, op=op,
                before=lambda: ours.__setitem__(slice(None), mine))
        else:
            ours = np.full(n, -1.0)
            run(comm, form, "Allreduce", mine, ours, op=op,
                before=lambda: ours.fill(-1.0))
        np.testing.assert_array_equal(ours, theirs)
    finally:
        if opname == "keep_left":
            op.Free()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", [32768, 131075])      # 256 KiB; 1 MiB and uneven blocks
def test_large_reduce_in_rank_order(comm, form, n):
    # From 256 KiB a reduce-scatter then the blocks to the root: each block
    # reduced in rank order, x0 + (x1 + (... + xp-1)), whatever the form.
    size, rank = comm.size, comm.rank
    for root in range(size):
        xs = [data(n, r, 13 + root) for r in range(size)]
        expect = xs[size - 1].copy()
        for j in range(size - 2, -1, -1):
            expect = xs[j] + expect
        for in_place in (False, True):
            ours = np.full(n, -1.0) if rank == root else None
            if in_place and rank == root:
                run(comm, form, "Reduce", MPI.IN_PLACE, ours, op=MPI.SUM, root=root,
                    before=lambda: ours.__setitem__(slice(None), xs[rank]))
            else:
                run(comm, form, "Reduce", xs[rank], ours, op=MPI.SUM, root=root)
            if rank == root:
                assert ours.view("u8").tolist() == expect.view("u8").tolist()
        theirs = np.empty(n) if rank == root else None
        NATIVE.Reduce(xs[rank], theirs, op=_native.SUM, root=root)
        if rank == root:
            np.testing.assert_allclose(expect, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", ["blocking", "nonblocking"])
def test_repeated_calls_on_the_same_large_buffers(comm, form):
    # 1 MiB blocks: the schedule of the previous call with the same buffers
    # runs again (with its heap buffer), the blocking calls reuse theirs,
    # and each call sends its new data.
    size, rank = comm.size, comm.rank
    n = 131072
    outgoing, ours, theirs = np.empty(n * size), np.empty(n * size), np.empty(n * size)
    block, theirs_block = np.empty(n), np.empty(n)
    for k in range(3):
        outgoing[:] = data(n * size, rank, 20 + k)
        ours[:] = -1.0
        run(comm, form, "Alltoall", outgoing, ours)
        NATIVE.Alltoall(outgoing, theirs)
        np.testing.assert_array_equal(ours, theirs)
        ours[:] = -1.0
        run(comm, form, "Allgather", outgoing[:n], ours)
        NATIVE.Allgather(outgoing[:n], theirs)
        np.testing.assert_array_equal(ours, theirs)
        for root in range(size):
            block[:] = -1.0
            run(comm, form, "Scatter", outgoing if rank == root else None, block, root=root)
            NATIVE.Scatter(outgoing if rank == root else None, theirs_block, root=root)
            np.testing.assert_array_equal(block, theirs_block)
            block[:] = outgoing[:n] if rank == root else -1.0
            run(comm, form, "Bcast", block, root=root)
            theirs_block[:] = outgoing[:n]
            NATIVE.Bcast(theirs_block, root=root)
            np.testing.assert_array_equal(block, theirs_block)


def test_no_staging_for_ranks_that_copy_from_our_memory(comm):
    """Ranks of one kernel copy large blocks straight from the caller's
    buffer (ivmpi/_single_copy.pxi): a persistent Alltoall holds no heap
    buffer, and its results are Open MPI's."""
    from ivmpi import _fastcopy
    size, rank = comm.size, comm.rank
    heap = comm._engine.heap
    peers = [comm._ranks[r] for r in range(size) if r != rank]
    if heap is None or heap.mem.strict or not set(peers) <= set(_fastcopy.single_copy_peers()):
        pytest.skip("not every pair copies from each other's memory here")
    before = heap.available()
    outgoing = data(LARGE * size, rank, 10)
    ours = np.full(LARGE * size, -1.0)
    req = comm.Alltoall_init(outgoing, ours)
    assert before - heap.available() == 0
    for _ in range(2):
        ours[:] = -1.0
        _run_like_native_alltoall(req, outgoing, ours)
    req.Free()


def _run_like_native_alltoall(req, outgoing, ours):
    """One round of the persistent Alltoall req (outgoing into ours): the
    result is Open MPI's Alltoall of the same data."""
    req.Start()
    req.Wait()
    theirs = np.full(len(ours), -1.0)
    NATIVE.Alltoall(outgoing, theirs)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("form", ["blocking", "persistent"])
def test_large_bcast_and_allgather_one_copy_per_pair(comm, form):
    """Where every pair copies from each other's memory, a large Bcast (and
    Bcast_init) or Allgather moves each block to each rank in one message
    copied from the sender's memory (no staging, no segments: one
    rendezvous per pair), and the results are Open MPI's."""
    from ivmpi import _fastcopy
    from ivmpi.collectives import PIPELINE_MIN_BYTES, REGION_MIN_BYTES
    size, rank = comm.size, comm.rank
    peers = [comm._ranks[r] for r in range(size) if r != rank]
    if size < 3 or not set(peers) <= set(_fastcopy.single_copy_peers()):
        pytest.skip("needs three ranks or more, every pair copying from each other")
    # Past both thresholds, in several of the 256 KiB segments staging uses.
    n = max(REGION_MIN_BYTES, PIPELINE_MIN_BYTES) // 8 * 3 + 5

    def copied():
        counts = _fastcopy.single_copy_counts()
        return {w: counts.get(w, (0, 0)) for w in peers}

    for root in range(size):
        block = data(n, rank, 20) if rank == root else np.full(n, -1.0)
        before = copied()
        run(comm, form, "Bcast", block, root=root)
        after = copied()
        theirs = data(n, rank, 20) if rank == root else np.empty(n)
        NATIVE.Bcast(theirs, root=root)
        np.testing.assert_array_equal(block, theirs)
        starts = 2 if form == "persistent" else 1
        for w in peers:
            grew = (after[w][0] - before[w][0], after[w][1] - before[w][1])
            want = (starts, starts * n * 8) if w == comm._ranks[root] else (0, 0)
            assert grew == want, (root, w)
    if form == "blocking":
        mine = data(n, rank, 21)
        got = np.full(size * n, -1.0)
        before = copied()
        comm.Allgather(mine, got)
        after = copied()
        theirs = np.empty(size * n)
        NATIVE.Allgather(mine, theirs)
        np.testing.assert_array_equal(got, theirs)
        for w in peers:
            assert (after[w][0] - before[w][0], after[w][1] - before[w][1]) == (1, n * 8)
        assert comm._collectives._staged is None


OWN = 8192              # doubles: 64 KiB, within the eager limit, past copy_min


def _copied_from(peers):
    from ivmpi import _fastcopy
    counts = _fastcopy.single_copy_counts()
    return {w: counts.get(w, (0, 0)) for w in peers}


def _grew(before, after, w):
    return (after[w][0] - before[w][0], after[w][1] - before[w][1])


def _copies_own_blocks(comm):
    from ivmpi import _fastcopy
    peers = [comm._ranks[r] for r in range(comm.size) if r != comm.rank]
    return (comm.size > 1 and comm._shared is not None and comm._shared.give_copies
            and set(peers) <= set(_fastcopy.single_copy_peers())), peers


@pytest.mark.parametrize("form", FORMS)
def test_own_blocks_within_the_eager_limit_go_in_one_copy(copies_under_eager, comm, form):
    """Where every pair copies from each other's memory, no rank waits for
    a core and one copy pays under the eager limit (here forced), a
    Gather's block of 64 KiB (within the eager limit) goes to the root in
    one message copied from the sender's buffer, and so do a Scatter's
    blocks from the root: one copy instead of the ring's two; the results
    are Open MPI's."""
    size, rank = comm.size, comm.rank
    ok, peers = _copies_own_blocks(comm)
    if not ok:
        pytest.skip("needs pairs that copy from each other's memory, a core per rank")
    starts = 2 if form == "persistent" else 1
    for root in range(size):
        mine = data(OWN, rank, 30 + root)
        got = np.full(size * OWN, -1.0) if rank == root else None
        before = _copied_from(peers)
        run(comm, form, "Gather", mine, got, root=root)
        after = _copied_from(peers)
        theirs = np.empty(size * OWN) if rank == root else None
        NATIVE.Gather(mine, theirs, root=root)
        for w in peers:
            want = (starts, starts * OWN * 8) if rank == root else (0, 0)
            assert _grew(before, after, w) == want, (root, w)
        if rank == root:
            np.testing.assert_array_equal(got, theirs)

        whole = data(size * OWN, rank, 40 + root) if rank == root else None
        part = np.full(OWN, -1.0)
        before = _copied_from(peers)
        run(comm, form, "Scatter", whole, part, root=root)
        after = _copied_from(peers)
        theirs = np.empty(OWN)
        NATIVE.Scatter(whole, theirs, root=root)
        np.testing.assert_array_equal(part, theirs)
        for w in peers:
            want = (starts, starts * OWN * 8) if w == comm._ranks[root] else (0, 0)
            assert _grew(before, after, w) == want, (root, w)


@pytest.mark.parametrize("n", [OWN, 16 * OWN + 3])
@pytest.mark.parametrize("name", ["Exscan", "Scan"])
@pytest.mark.parametrize("form", FORMS)
def test_two_rank_prefix_reductions_take_rank_0_in_one_copy(comm, form, name, n):
    """On two ranks that copy from each other's memory, Scan and Exscan
    move rank 0's whole input to rank 1 in one message copied from its
    buffer (not in eager segments, nor a rendezvous per segment), with
    Open MPI's results."""
    ok, peers = _copies_own_blocks(comm)
    if comm.size != 2 or not ok:
        pytest.skip("needs two ranks that copy from each other's memory")
    rank = comm.rank
    mine = data(n, rank, 50)
    got = np.full(n, -1.0)
    before = _copied_from(peers)
    run(comm, form, name, mine, got, op=MPI.SUM)
    after = _copied_from(peers)
    starts = 2 if form == "persistent" else 1
    want = (starts, starts * n * 8) if rank == 1 else (0, 0)
    assert _grew(before, after, peers[0]) == want
    theirs = np.full(n, -1.0)
    getattr(NATIVE, name)(mine, theirs, op=_native.SUM)
    np.testing.assert_array_equal(got, theirs)


def _sum_op(inmem, inoutmem, datatype):
    a = np.frombuffer(inmem, dtype="f8")
    b = np.frombuffer(inoutmem, dtype="f8")
    b += a


@pytest.mark.parametrize("n", [OWN, 12000, 40000, 131072 + 3])
@pytest.mark.parametrize("mixed", [False, True])
def test_two_rank_reductions_exchange_whole_inputs_once(comm, n, mixed):
    """On two ranks that copy each other's messages, Allreduce and Reduce
    (both roots, IN_PLACE too) move each input whole, in one message
    copied from its owner's buffer (64 KiB within the eager limit, 96 KiB
    and 1 MiB past it); the results are Open MPI's bit for bit.  mixed: rank 0
    reduces with a Python op of its own, so it takes the general path
    while rank 1 takes the one-call path: their messages still pair up."""
    ok, peers = _copies_own_blocks(comm)
    if comm.size != 2 or not ok:
        pytest.skip("needs two ranks that copy from each other's memory")
    rank = comm.rank
    user_sum = MPI.Op.Create(_sum_op, commute=True)
    op = user_sum if mixed and rank == 0 else MPI.SUM
    try:
        mine = data(n, rank, 60)
        theirs = np.empty(n)
        NATIVE.Allreduce(mine, theirs, op=_native.SUM)
        for in_place in (False, True):
            got = mine.copy() if in_place else np.full(n, -1.0)
            before = _copied_from(peers)
            comm.Allreduce(MPI.IN_PLACE if in_place else mine, got, op=op)
            after = _copied_from(peers)
            np.testing.assert_array_equal(got, theirs)
            if not mixed:
                assert _grew(before, after, peers[0]) == (1, n * 8)
        for root in range(2):
            got = np.full(n, -1.0) if rank == root else None
            before = _copied_from(peers)
            comm.Reduce(mine, got, op=op, root=root)
            after = _copied_from(peers)
            if rank == root:
                np.testing.assert_array_equal(got, theirs)
            if not mixed or n * 8 > 65536:
                want = (1, n * 8) if rank == root else (0, 0)
                assert _grew(before, after, peers[0]) == want, root
    finally:
        user_sum.Free()


@pytest.mark.parametrize("n", [OWN // 2, 65536])
@pytest.mark.parametrize("form", FORMS + ["mixed"])
def test_two_rank_reduce_scatter_exchanges_whole_blocks_once(comm, form, n):
    """On two ranks that copy each other's messages, Reduce_scatter_block
    and Reduce_scatter send each rank its block of the other's input whole,
    in one message copied from the caller's buffer (not in segments), with
    Open MPI's results; mixed: rank 0 reduces with a Python op (the general
    path) while rank 1 takes the one-call path."""
    ok, peers = _copies_own_blocks(comm)
    if comm.size != 2 or not ok:
        pytest.skip("needs two ranks that copy from each other's memory")
    rank = comm.rank
    user_sum = MPI.Op.Create(_sum_op, commute=True)
    op = user_sum if form == "mixed" and rank == 0 else MPI.SUM
    try:
        mine = data(2 * n, rank, 70)
        theirs = np.empty(n)
        NATIVE.Reduce_scatter_block(mine, theirs, op=_native.SUM)
        for name, args in (("Reduce_scatter_block", ()), ("Reduce_scatter", ([n, n],))):
            got = np.full(n, -1.0)
            before = _copied_from(peers)
            run(comm, "blocking" if form == "mixed" else form, name, mine, got, *args, op=op)
            after = _copied_from(peers)
            np.testing.assert_array_equal(got, theirs)
            if form != "mixed":
                starts = 2 if form == "persistent" else 1
                assert _grew(before, after, peers[0]) == (starts, starts * n * 8), name
    finally:
        user_sum.Free()


@pytest.mark.parametrize("form", ["nonblocking", "persistent"])
def test_a_block_for_several_readers_is_staged_where_ranks_wait_for_cores(comm, form):
    """Where ranks outnumber cores, a schedule's large block that three
    ranks or more read (an allgather's on 4 ranks) is staged once in the
    heap even for ranks that could copy it from our memory: none of them
    copies from ours; an all-to-all's blocks, one reader each, are still
    copied from our memory.  Results are Open MPI's."""
    from ivmpi import _fastcopy
    size, rank = comm.size, comm.rank
    peers = [comm._ranks[r] for r in range(size) if r != rank]
    if size < 4 or not comm._engine.oversubscribed \
            or not set(peers) <= set(_fastcopy.single_copy_peers()):
        pytest.skip("needs 4 ranks or more that wait for cores and copy each other's memory")
    counts = _fastcopy.single_copy_counts
    mine = data(LARGE, rank, 50)
    got = np.full(size * LARGE, -1.0)
    before = counts()
    run(comm, form, "Allgather", mine, got)
    after = counts()
    theirs = np.empty(size * LARGE)
    NATIVE.Allgather(mine, theirs)
    np.testing.assert_array_equal(got, theirs)
    copied = sum(after.get(w, (0, 0))[0] - before.get(w, (0, 0))[0] for w in peers)

    whole = data(size * LARGE, rank, 60)
    got = np.full(size * LARGE, -1.0)
    before = counts()
    run(comm, form, "Alltoall", whole, got)
    after = counts()
    NATIVE.Alltoall(whole, theirs)
    np.testing.assert_array_equal(got, theirs)
    copied_alltoall = sum(after.get(w, (0, 0))[0] - before.get(w, (0, 0))[0] for w in peers)
    comm.Barrier()
    assert copied == 0
    starts = 2 if form == "persistent" else 1
    assert copied_alltoall == starts * (size - 1)
