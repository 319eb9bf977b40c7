"""Routing between node groups: ranks that share a region use it, every
other pair the MPI library underneath (docs/routing.md).

Meant for several simulated hosts, each a region file of its own:

    mpirun -n 4 scripts/simulate-hosts 2+2 python -m pytest --with-mpi tests/mpi/test_routing.py

(layouts 2+2, 3+1, 1+1+1+1), and also run without the wrapper, where
every rank shares one region and every pair takes the region path.  Each
test exchanges between all pairs, so in a mixed layout both paths are
exercised in the same calls; results are checked against the data sent
and, for collectives, against plain mpi4py on the same processes.
"""
import os

import numpy as np
import pytest
from mpi4py import MPI as _native

import ivmpi
from ivmpi import MPI, stats
from ivmpi._fastcopy import DIRECT_MAX, MARKER_LEN

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("engine_timeout")]

# Eager, one ring chunk and larger than the eager limit and a ring chunk.
SIZES = (0, 8, 1000, 70_000, 1_500_000)


def payload(src, dst, tag, nbytes):
    return (np.arange(nbytes, dtype=np.int64) * 7 + src * 1000003 + dst * 101 + tag).astype(
        np.uint8)


def expected_groups():
    layout = os.environ.get("IVMPI_SIMULATED_HOSTS")
    size = _native.COMM_WORLD.Get_size()
    if not layout:
        return None
    counts = [int(n) for n in layout.split("+")]
    if sum(counts) != size:
        return None
    groups, first = [], 0
    for n in counts:
        groups.append(list(range(first, first + n)))
        first += n
    return groups


# --- locality ---------------------------------------------------------------------

def test_groups_match_the_layout_and_paths(world):
    groups = ivmpi.node_groups()
    assert sorted(w for g in groups for w in g) == list(range(world.size))
    want = expected_groups()
    if want is not None:
        assert groups == want
    elif not os.environ.get("IVMPI_REGION"):
        assert groups == [list(range(world.size))]   # the per-job file: one group
    mine = next(g for g in groups if world.rank in g)
    for r in range(world.size):
        want_path = "self" if r == world.rank else ("region" if r in mine else "mpi")
        assert ivmpi.path_to(world, r) == want_path
    # Every rank agrees on the groups.
    assert world.allgather(groups) == [groups] * world.size


def test_split_type_shared_is_the_node_group(world):
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        mine = next(g for g in ivmpi.node_groups() if world.rank in g)
        assert node.allgather(world.rank) == mine
        assert node.Get_size() == len(mine)
        # Inside one group the communicator takes the region path to every peer.
        assert all(ivmpi.path_to(node, r) in ("region", "self") for r in range(node.size))
        assert not node._routed
        # The library's communicator under it has the same members in order.
        assert _native.Comm.Get_size(node) == node.size
        assert _native.Comm.Get_rank(node) == node.rank
    finally:
        node.Free()


def test_path_to_rejects_a_bad_rank(world):
    with pytest.raises(ValueError):
        ivmpi.path_to(world, world.size)


# --- point-to-point, every pair -----------------------------------------------------

def _all_pairs(comm, send, recv):
    """Every rank sends to and receives from every other rank, by rounds of
    a shift (round k: to rank+k, from rank-k), so both paths mix."""
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        rreq = recv(src, k)
        sreq = send(dst, k)
        yield src, dst, k, rreq, sreq


@pytest.mark.parametrize("nbytes", SIZES)
def test_nonblocking_every_pair(comm, nbytes):
    for src, dst, tag, rreq, sreq in list(_all_pairs(
            comm,
            lambda d, t: comm.Isend(payload(comm.rank, d, t, nbytes), d, t),
            lambda s, t: (comm.Irecv(buf := np.empty(nbytes, np.uint8), s, t), buf))):
        status = MPI.Status()
        rreq[0].Wait(status)
        sreq.Wait()
        assert status.Get_source() == src and status.Get_tag() == tag
        assert status.Get_count(MPI.BYTE) == nbytes
        assert np.array_equal(rreq[1], payload(src, comm.rank, tag, nbytes))


@pytest.mark.parametrize("mode", ["Send", "Ssend", "Bsend", "Rsend"])
@pytest.mark.parametrize("nbytes", (8, 1_500_000))
def test_blocking_modes_every_pair(comm, mode, nbytes):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        buf = np.empty(nbytes, np.uint8)
        # Receive first where needed: a synchronous or large send waits for the receiver.
        rreq = comm.Irecv(buf, src, 7)
        if mode == "Rsend":
            comm.Barrier()      # the receive is posted everywhere before a ready send
        getattr(comm, mode)(payload(comm.rank, dst, 7, nbytes), dst, 7)
        rreq.Wait()
        assert np.array_equal(buf, payload(src, comm.rank, 7, nbytes))


@pytest.mark.parametrize("nbytes", (8, 1_500_000))
def test_sendrecv_every_pair(comm, nbytes):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        got = np.empty(nbytes, np.uint8)
        comm.Sendrecv(payload(comm.rank, dst, k, nbytes), dst, k, got, src, k)
        assert np.array_equal(got, payload(src, comm.rank, k, nbytes))
        buf = payload(comm.rank, dst, k, nbytes).copy()
        comm.Sendrecv_replace(buf, dst, k, src, k)
        assert np.array_equal(buf, payload(src, comm.rank, k, nbytes))


def test_objects_every_pair(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        big = list(range(50_000))
        req = comm.irecv(source=src, tag=k)
        comm.send({"from": comm.rank, "to": dst, "big": big}, dst, k)
        assert req.wait() == {"from": src, "to": comm.rank, "big": big}
        sreq = comm.issend(("sync", comm.rank), dst, k + 100)
        assert comm.recv(source=src, tag=k + 100) == ("sync", src)
        sreq.wait()
        assert comm.sendrecv(comm.rank * 3, dst, 5, source=src, recvtag=5) == src * 3


def test_persistent_every_pair(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        out = np.empty(100_000, np.uint8)
        got = np.empty_like(out)
        sreq = comm.Send_init(out, dst, 9)
        ssreq = comm.Ssend_init(out[:10], dst, 10)
        rreq = comm.Recv_init(got, src, 9)
        small = np.empty(10, np.uint8)
        rsreq = comm.Recv_init(small, src, 10)
        for round_ in range(3):
            out[:] = payload(comm.rank, dst, round_, out.size)
            MPI.Prequest.Startall([rreq, rsreq, sreq, ssreq])
            MPI.Request.Waitall([rreq, rsreq, sreq, ssreq])
            want = payload(src, comm.rank, round_, out.size)
            assert np.array_equal(got, want) and np.array_equal(small, want[:10])
        for r in (sreq, ssreq, rreq, rsreq):
            r.Free()


def test_derived_communicators_keep_contexts_apart(comm):
    """The same (source, tag) on three communicators: each receive gets its
    own communicator's message, whichever path the pair takes."""
    dup = comm.Dup()
    split = comm.Split(0, comm.size - comm.rank)     # reversed ranks
    try:
        for k in range(1, comm.size):
            dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
            sdst = split.size - 1 - dst
            ssrc = split.size - 1 - src
            reqs = [comm.isend(("comm", comm.rank), dst, 1),
                    dup.isend(("dup", comm.rank), dst, 1),
                    split.isend(("split", comm.rank), sdst, 1)]
            # Received in the opposite order of sending.
            assert split.recv(source=ssrc, tag=1) == ("split", src)
            assert dup.recv(source=src, tag=1) == ("dup", src)
            assert comm.recv(source=src, tag=1) == ("comm", src)
            MPI.Request.waitall(reqs)
    finally:
        dup.Free()
        split.Free()


# --- ANY_SOURCE, probes, cancel, mixed waits -----------------------------------------

def test_any_source_sees_both_paths_in_order(comm):
    """Rank 0 takes everyone's numbered messages with ANY_SOURCE; from each
    source they arrive in the order sent, whichever path it takes."""
    count = 20
    if comm.rank == 0:
        seen = {r: [] for r in range(1, comm.size)}
        status = MPI.Status()
        for _ in range(count * (comm.size - 1)):
            n = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            assert status.Get_tag() == 3
            seen[status.Get_source()].append(n)
        assert seen == {r: list(range(count)) for r in range(1, comm.size)}
    else:
        for n in range(count):
            comm.send(n, 0, 3)


def test_any_source_buffers_mixed_sizes(comm):
    nbytes = {r: (r * 40_000) % 150_000 + 8 for r in range(comm.size)}
    if comm.rank == 0:
        status = MPI.Status()
        got = set()
        for _ in range(comm.size - 1):
            buf = np.empty(200_000, np.uint8)
            comm.Recv(buf, MPI.ANY_SOURCE, 4, status)
            src = status.Get_source()
            n = status.Get_count(MPI.BYTE)
            assert n == nbytes[src]
            assert np.array_equal(buf[:n], payload(src, 0, 4, n))
            got.add(src)
        assert got == set(range(1, comm.size))
    else:
        comm.Send(payload(comm.rank, 0, 4, nbytes[comm.rank]), 0, 4)


def test_probes_from_every_peer(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        sreq = comm.Isend(payload(comm.rank, dst, k, 3000), dst, k)
        status = MPI.Status()
        comm.Probe(src, k, status)
        assert status.Get_source() == src and status.Get_count(MPI.BYTE) == 3000
        while not comm.Iprobe(MPI.ANY_SOURCE, k, status):
            pass
        assert status.Get_source() == src
        msg = comm.Mprobe(src, k, status)
        assert status.Get_count(MPI.BYTE) == 3000
        buf = np.empty(3000, np.uint8)
        msg.Recv(buf)
        assert np.array_equal(buf, payload(src, comm.rank, k, 3000))
        sreq.Wait()
        # A matched probe of an object, nonblocking.
        sreq = comm.isend(("probe", comm.rank), dst, k)
        msg = None
        while msg is None:
            msg = comm.improbe(MPI.ANY_SOURCE, k)
        assert msg.recv() == ("probe", src)
        sreq.wait()
        comm.Barrier()


def test_cancel_a_receive_on_each_path(comm):
    for src in range(comm.size):
        if src == comm.rank:
            continue
        req = comm.Irecv(np.empty(8, np.uint8), src, 77)
        req.Cancel()
        status = MPI.Status()
        req.Wait(status)
        assert status.Is_cancelled()
    req = comm.Irecv(np.empty(8, np.uint8), MPI.ANY_SOURCE, 78)
    req.Cancel()
    status = MPI.Status()
    req.Wait(status)
    assert status.Is_cancelled()
    # Nothing was left behind: a later message on the same tag is received
    # normally (after everyone's cancels: a receive that matched cannot be cancelled).
    comm.Barrier()
    dst, src = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    got = np.empty(8, np.uint8)
    rreq = comm.Irecv(got, src, 77)
    comm.Send(payload(comm.rank, dst, 77, 8), dst, 77)
    rreq.Wait()
    assert np.array_equal(got, payload(src, comm.rank, 77, 8))


def test_synchronous_send_waits_for_the_receiver(comm):
    """An Issend is not complete before its receive is posted, on either path."""
    other = comm.Dup()
    try:
        for k in range(1, comm.size):
            dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
            req = comm.Issend(payload(comm.rank, dst, k, 100), dst, k)
            # The receivers probe meanwhile: seeing the message is not receiving it.
            for _ in range(50):
                comm.Iprobe(src, k)
                assert not req.Test()
            other.Barrier()
            got = np.empty(100, np.uint8)
            comm.Recv(got, src, k)
            req.Wait()
            assert np.array_equal(got, payload(src, comm.rank, k, 100))
    finally:
        other.Free()


def test_waitany_waitsome_testall_over_mixed_requests(comm):
    reqs, bufs, froms = [], [], []
    for src in range(comm.size):
        if src != comm.rank:
            buf = np.empty(5000, np.uint8)
            reqs.append(comm.Irecv(buf, src, 11))
            bufs.append(buf)
            froms.append(src)
    sends = [comm.Isend(payload(comm.rank, dst, 11, 5000), dst, 11)
             for dst in range(comm.size) if dst != comm.rank]
    done = set()
    status = MPI.Status()
    i = MPI.Request.Waitany(reqs, status)
    assert status.Get_source() == froms[i]
    done.add(i)
    while len(done) < len(reqs):
        some = MPI.Request.Waitsome(reqs)
        done.update(some)
    assert MPI.Request.Waitany(reqs) == MPI.UNDEFINED
    for buf, src in zip(bufs, froms):
        assert np.array_equal(buf, payload(src, comm.rank, 11, 5000))
    while not MPI.Request.Testall(sends):
        pass


def test_truncation_on_each_path(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        sreq = comm.Isend(payload(comm.rank, dst, k, 5000), dst, k)
        with pytest.raises(MPI.Exception) as info:
            comm.Recv(np.empty(100, np.uint8), src, k)
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        sreq.Wait()
        comm.Barrier()


# --- collectives -----------------------------------------------------------------------

def _native_of(comm):
    """Plain mpi4py on the same processes: the library communicator carried by comm."""
    return _native.Intracomm.fromhandle(comm.handle)


def test_collectives_equal_plain_mpi4py(comm):
    lib = _native_of(comm)
    rank, size = comm.rank, comm.size
    x = np.arange(1000, dtype="f8") * (rank + 1)
    for name, call in [
        ("Allreduce", lambda c, out: c.Allreduce(x, out)),
        ("Reduce", lambda c, out: c.Reduce(x, out, op=MPI.MAX, root=size - 1)),
        ("Scan", lambda c, out: c.Scan(x, out)),
        ("Reduce_scatter_block", lambda c, out: c.Reduce_scatter_block(
            np.tile(x[:10], size), out[:10])),
    ]:
        mine, theirs = np.zeros_like(x), np.zeros_like(x)
        call(comm, mine)
        call(lib, theirs)
        assert np.array_equal(mine, theirs), name
    for root in range(size):
        mine = x.copy() if rank == root else np.zeros_like(x)
        comm.Bcast(mine, root)
        assert np.array_equal(mine, np.arange(1000, dtype="f8") * (root + 1))
    got = np.empty((size, 3), "i8")
    comm.Allgather(np.full(3, rank, "i8"), got)
    assert (got == np.arange(size)[:, None]).all()
    sendto = np.arange(size, dtype="i8") + 100 * rank
    recvd = np.empty(size, "i8")
    comm.Alltoall(sendto, recvd)
    assert list(recvd) == [100 * r + rank for r in range(size)]
    assert comm.allgather(rank) == lib.allgather(rank)
    assert comm.allreduce(rank, op=MPI.SUM) == lib.allreduce(rank, op=_native.SUM)
    assert comm.gather(("g", rank), root=0) == lib.gather(("g", rank), root=0)
    assert comm.scatter([i * 2 for i in range(size)] if rank == 0 else None) == rank * 2
    assert comm.bcast("b" if rank == 1 else None, root=1) == "b"
    assert comm.alltoall(list(range(size))) == [rank] * size
    assert comm.exscan(rank) == lib.exscan(rank)
    comm.Barrier()


def test_nonblocking_and_persistent_collectives_mix_with_p2p(comm):
    size, rank = comm.size, comm.rank
    x = np.full(10, rank + 1.0)
    total = np.empty(10)
    creq = comm.Iallreduce(x, total)
    dst, src = (rank + 1) % size, (rank - 1) % size
    got = np.empty(10)
    reqs = [creq, comm.Irecv(got, src, 1), comm.Isend(x, dst, 1), comm.Ibarrier()]
    MPI.Request.Waitall(reqs)
    assert (total == size * (size + 1) / 2).all()
    assert (got == src + 1.0).all()
    preq = comm.Allreduce_init(x, total)
    for round_ in range(3):
        x[:] = rank + round_
        preq.Start()
        i = MPI.Request.Waitany([preq])
        assert i == 0
        assert (total == sum(r + round_ for r in range(size))).all()
    preq.Free()
    buf = np.arange(5.0) if rank == 0 else np.empty(5)
    req = comm.Ibcast(buf, 0)
    while not req.Test():
        pass
    assert (buf == np.arange(5.0)).all()


def test_a_communicator_inside_one_group_keeps_the_region_paths(comm):
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        assert not node._routed
        assert node.allreduce(1) == node.size
        assert comm._routed == (node.size != comm.size)
    finally:
        node.Free()


# --- counters ------------------------------------------------------------------------

def test_counters_prove_each_pair_used_its_own_path(comm):
    before = stats.paths(comm)
    n = 5
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        for i in range(n):
            got = np.empty(1000, np.uint8)
            comm.Sendrecv(payload(comm.rank, dst, i, 1000), dst, i, got, src, i)
    after = stats.paths(comm)
    for peer, now in after.items():
        was = before[peer]
        assert now["path"] == ivmpi.path_to(comm, peer)
        sent = now["mpi"]["sent"][0] - was["mpi"]["sent"][0]
        received = now["mpi"]["received"][0] - was["mpi"]["received"][0]
        if now["path"] == "region":
            # Never the library; the ring moved.
            assert sent == 0 and received == 0
            assert now["mpi"]["sent"] == [0, 0] and now["mpi"]["received"] == [0, 0]
            assert now["region"]["written"] > was["region"]["written"]
            assert now["region"]["read"] > was["region"]["read"]
        else:
            # No ring at all between the pair; every message through the library.
            assert now["region"] is None
            assert sent >= n and received >= n
            assert now["mpi"]["sent"][1] - was["mpi"]["sent"][1] >= n * 1000


def test_info_job_lines_name_the_groups_and_paths(world):
    from ivmpi.routing import describe_job
    lines = describe_job(world)
    groups = ivmpi.node_groups()
    assert lines[0] == f"ranks: {world.size}, node groups: {len(groups)}"
    for g, members in enumerate(groups):
        assert f"  group {g}: ranks {', '.join(map(str, members))}" in lines
    assert lines[-3].endswith(", ".join(f"{r}:{ivmpi.path_to(world, r)}"
                                        for r in range(world.size)))
    # Ranks of one kernel copy from each other's memory, unless told not to;
    # never from a rank outside the group (its messages take the library).
    sources = [int(r) for r in lines[-2].split(": ", 1)[1].split(", ") if r != "none"]
    assert lines[-2].startswith(f"one copy into rank {world.rank} from: ")
    group = next(m for m in groups if world.rank in m)
    if os.environ.get("IVMPI_SINGLE_COPY") == "0":
        assert sources == []
    else:
        assert sources == [r for r in group if r != world.rank]
    # They share those copies too, where every rank has a core of its own.
    assert lines[-1].startswith("copies shared with: ")
    shared = [int(r) for r in lines[-1].split(": ", 1)[1].split(", ") if r != "none"]
    if world._engine.oversubscribed or os.environ.get("IVMPI_SINGLE_COPY") == "0":
        assert shared == []
    else:
        assert shared == sources


# --- the direct path between regions (ivmpi/_route.pxi) ------------------------------
# A routed pair's usual calls go straight to the library; the engine's path
# takes over whenever something could precede them in MPI order.  Each test
# runs the same exchange over ivmpi and over plain mpi4py on the same
# processes (the library communicator carried by comm) and compares.

def _direct(comm, peer):
    entry = stats.paths(comm)[peer]["mpi"]["direct"]
    return entry["sent"][0], entry["received"][0]


def _routed(comm, rank):
    return ivmpi.path_to(comm, rank) == "mpi"


@pytest.mark.parametrize("form", ["Send/Recv", "send/recv", "Isend/Irecv", "Sendrecv"])
def test_the_usual_calls_go_straight_to_the_library(comm, form):
    """Between ranks of different regions each usual form moves its messages
    straight between the caller's buffer and the library: the direct
    counters count every one (the engine's queues never see them)."""
    n = 4
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        before = {p: _direct(comm, p) for p in (dst, src) if p != comm.rank}
        for i in range(n):
            out = payload(comm.rank, dst, i, 1000)
            got = np.empty(1000, np.uint8)
            if form == "Send/Recv":
                # Lower rank first each way, so that neither waits on the other.
                if comm.rank < dst:
                    comm.Send(out, dst, i)
                    comm.Recv(got, src, i)
                else:
                    comm.Recv(got, src, i)
                    comm.Send(out, dst, i)
            elif form == "send/recv":
                req = comm.isend(out.tobytes(), dst, i)
                got[:] = np.frombuffer(comm.recv(source=src, tag=i), np.uint8)
                req.wait()
            elif form == "Isend/Irecv":
                rreq = comm.Irecv(got, src, i)
                sreq = comm.Isend(out, dst, i)
                MPI.Request.Waitall([rreq, sreq])
            else:
                comm.Sendrecv(out, dst, i, got, src, i)
            assert np.array_equal(got, payload(src, comm.rank, i, 1000))
        if _routed(comm, dst):
            assert _direct(comm, dst)[0] - before[dst][0] >= n
        if _routed(comm, src):
            assert _direct(comm, src)[1] - before[src][1] == n
        comm.Barrier()


def _mixed_order(comm, mpi, nbytes):
    """Receives of one source and tag posted through both paths (known
    source, ANY_SOURCE, a probe, a matched probe), interleaved: what each
    got, in post order."""
    got = []
    for k in range(1, comm.Get_size()):
        rank = comm.Get_rank()
        dst, src = (rank + k) % comm.Get_size(), (rank - k) % comm.Get_size()
        tag = 40 + k
        bufs = [np.zeros(nbytes, np.uint8) for _ in range(6)]
        st = [mpi.Status() for _ in range(6)]
        r0 = comm.Irecv(bufs[0], src, tag)                  # direct
        r1 = comm.Irecv(bufs[1], mpi.ANY_SOURCE, tag)       # the engine's, after r0
        r2 = comm.Irecv(bufs[2], src, tag)                  # behind r1: the engine's
        sends = [comm.Isend(payload(rank, dst, i, nbytes), dst, tag) for i in range(6)]
        r2.Wait(st[2])
        r1.Wait(st[1])
        r0.Wait(st[0])
        comm.Probe(src, tag, st[3])                         # the 4th message, seen
        comm.Recv(bufs[3], src, tag)
        msg = comm.Mprobe(src, mpi.ANY_TAG, st[4])
        msg.Recv(bufs[4])
        comm.Recv(bufs[5], mpi.ANY_SOURCE, mpi.ANY_TAG, st[5])
        mpi.Request.Waitall(sends)
        for b, s in zip(bufs, st):
            got.append((s.Get_source(), s.Get_tag(), s.Get_count(mpi.BYTE), b.tobytes()))
        comm.Barrier()
    return got


@pytest.mark.parametrize("nbytes", (8, 70_000))
def test_order_holds_when_direct_and_engine_receives_mix(comm, nbytes):
    mine = _mixed_order(comm, MPI, nbytes)
    plain = _mixed_order(_native_of(comm), _native, nbytes)
    assert mine == plain
    for k in range(1, comm.size):
        src = (comm.rank - k) % comm.size
        for i in range(6):
            assert mine[(k - 1) * 6 + i] == (src, 40 + k, nbytes,
                                             payload(src, comm.rank, i, nbytes).tobytes())


def test_direct_receives_of_one_source_keep_post_order(comm):
    """Several direct receives of one source and tag, completed in the
    opposite order; a receive of another tag does not wait behind them."""
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        bufs = [np.empty(3000, np.uint8) for _ in range(4)]
        reqs = [comm.Irecv(b, src, 5) for b in bufs]
        other = np.empty(8, np.uint8)
        sends = [comm.Isend(payload(comm.rank, dst, 99, 8), dst, 6)]
        sends += [comm.Isend(payload(comm.rank, dst, i, 3000), dst, 5) for i in range(4)]
        comm.Recv(other, src, 6)       # sent first, posted after the four
        assert np.array_equal(other, payload(src, comm.rank, 99, 8))
        for r in reversed(reqs):
            r.Wait()
        MPI.Request.Waitall(sends)
        for i, b in enumerate(bufs):
            assert np.array_equal(b, payload(src, comm.rank, i, 3000))
        comm.Barrier()


def test_small_direct_receives_in_flight_keep_their_own_bytes(comm):
    """Receives into buffers smaller than a handle message take theirs
    through a buffer of that size, which a completed receive hands to the
    next one: receives in flight never share one, whatever the order in
    which they complete and are posted."""
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        for round in range(8):
            n = 16 + round
            bufs = {tag: np.zeros(n, np.uint8) for tag in (40, 41, 42, 43)}
            reqs = {tag: comm.Irecv(bufs[tag], src, tag) for tag in (40, 41, 42)}
            sends = [comm.Isend(payload(comm.rank, dst, tag + round, n), dst, tag)
                     for tag in (42, 40, 41, 43)]
            reqs[41].Wait()
            reqs[43] = comm.Irecv(bufs[43], src, 43)    # while 40 and 42 are in flight
            for tag in (42, 43, 40):
                reqs[tag].Wait()
            MPI.Request.Waitall(sends)
            for tag, buf in bufs.items():
                assert np.array_equal(buf, payload(src, comm.rank, tag + round, n)), (tag, round)
        comm.Barrier()


def test_any_source_after_a_direct_receive_gets_the_next_message(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        first = comm.irecv(source=src, tag=3)
        second = comm.irecv(source=MPI.ANY_SOURCE, tag=3)
        comm.send(("one", comm.rank), dst, 3)
        comm.send(("two", comm.rank), dst, 3)
        status = MPI.Status()
        assert second.wait(status) == ("two", src)
        assert status.Get_source() == src
        assert first.wait() == ("one", src)
        comm.Barrier()


def test_status_of_a_direct_receive(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        sreq = comm.Isend(payload(comm.rank, dst, 21, 1200), dst, 21)
        got = np.empty(2000, np.uint8)
        status = MPI.Status()
        comm.Recv(got, src, MPI.ANY_TAG, status)
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE),
                status.Get_count(MPI.INT), status.Get_elements(MPI.BYTE)) == \
            (src, 21, 1200, 300, 1200)
        assert not status.Is_cancelled() and status.Get_error() == MPI.SUCCESS
        assert np.array_equal(got[:1200], payload(src, comm.rank, 21, 1200))
        sreq.Wait()
        comm.Barrier()


def test_cancel_a_direct_receive_then_receive_normally(comm):
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        before = comm.Irecv(np.empty(8, np.uint8), src, 31)
        cancelled = comm.Irecv(np.empty(8, np.uint8), src, 31)
        cancelled.Cancel()
        status = MPI.Status()
        cancelled.Wait(status)
        assert status.Is_cancelled()
        comm.Barrier()
        sends = [comm.Isend(payload(comm.rank, dst, i, 8), dst, 31) for i in range(2)]
        got = np.empty(8, np.uint8)
        comm.Recv(got, src, 31)
        before.Wait()
        MPI.Request.Waitall(sends)
        assert np.array_equal(got, payload(src, comm.rank, 1, 8))
        comm.Barrier()


@pytest.mark.parametrize("nbytes", (1000, 70_000))
def test_truncation_never_writes_past_the_receive_buffer(comm, nbytes):
    """A message larger than the receive: ERR_TRUNCATE, and not a byte past
    the buffer changes (the library on its own may write past it)."""
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        sends = [comm.Isend(payload(comm.rank, dst, i, nbytes), dst, 8) for i in range(2)]
        room = np.zeros(nbytes + 4096, np.uint8)
        with pytest.raises(MPI.Exception) as info:
            comm.Recv([room, 100, MPI.BYTE], src, 8)
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        req = comm.Irecv([room, 50, MPI.BYTE], src, 8)
        with pytest.raises(MPI.Exception) as info:
            req.Wait()
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        assert not room[100:].any()
        MPI.Request.Waitall(sends)
        comm.Barrier()


# --- the wire protocol between regions: direct messages and markers ---------------

# Around both boundaries: the largest direct message, the smallest marked one,
# and a message of exactly a marker's length (sent as a marker and its data,
# so that a handle message of that length is always a marker).
EDGES = (DIRECT_MAX - 1, DIRECT_MAX, DIRECT_MAX + 1, MARKER_LEN - 1, MARKER_LEN,
         MARKER_LEN + 1, 3 * MARKER_LEN)


@pytest.mark.parametrize("room", (16, MARKER_LEN - 1, MARKER_LEN, 4 * MARKER_LEN,
                                  DIRECT_MAX - 1, DIRECT_MAX, DIRECT_MAX + 64))
def test_sizes_around_the_marker_reach_direct_and_engine_receives(comm, room):
    """Every size near the boundaries, into receive buffers smaller and
    larger than a marker and than the largest direct message (a receive
    posted ahead into the caller's buffer or a buffer of its own), through a
    direct receive (known source) and the engine's (ANY_SOURCE, after a
    probe that must report the real size); nothing is written past the
    receive's room."""
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        sends = [comm.Isend(payload(comm.rank, dst, n % 97, n), dst, 50 + i)
                 for i, n in enumerate(EDGES)]
        for i, n in enumerate(EDGES):
            buf = np.zeros(room + 64, np.uint8)
            status = MPI.Status()
            if i % 2:
                comm.Probe(MPI.ANY_SOURCE, 50 + i, status)
                assert (status.Get_source(), status.Get_count(MPI.BYTE)) == (src, n)
                source = MPI.ANY_SOURCE
            else:
                source = src
            if n > room:
                with pytest.raises(MPI.Exception) as info:
                    comm.Recv([buf, room, MPI.BYTE], source, 50 + i)
                assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
            else:
                comm.Recv([buf, room, MPI.BYTE], source, 50 + i, status)
                assert (status.Get_source(), status.Get_count(MPI.BYTE)) == (src, n)
                assert np.array_equal(buf[:n], payload(src, comm.rank, n % 97, n))
            assert not buf[room:].any()
        MPI.Request.Waitall(sends)
        comm.Barrier()


@pytest.mark.parametrize("what", ("a bad marker", "an oversized message"))
def test_a_foreign_message_on_the_handle_is_a_clear_error(comm, what):
    """The handle carries messages of at most DIRECT_MAX bytes and markers:
    anything else (another program on the library's communicator, a
    corrupt peer) fails the receive with an ivmpi error naming it, on the
    direct and on the engine's path.  (The receive buffer holds the
    oversized message: one larger than the room a receive posts ahead
    would be the library's overrun, which ivmpi's own senders never cause.)"""
    peers = [r for r in range(comm.size) if ivmpi.path_to(comm, r) == "mpi"]
    target = comm.bcast(peers[0] if comm.rank == 0 and peers else None, 0)
    if target is None:
        pytest.skip("rank 0 shares its region with every rank")
    n = MARKER_LEN if what == "a bad marker" else DIRECT_MAX + 8
    if comm.rank == 0:
        handle = _native_of(comm)
        for tag in (77, 78):
            handle.Send(np.full(n, 0x5A, np.uint8), target, tag)
    elif comm.rank == target:
        for source, tag in ((0, 77), (MPI.ANY_SOURCE, 78)):
            with pytest.raises(Exception) as info:
                comm.Recv(np.empty(2 * DIRECT_MAX, np.uint8), source, tag)
            assert "between regions" in str(info.value)
    comm.Barrier()


def test_the_handle_carries_messages_up_to_the_eager_limit_whole(comm):
    """On the wire (read with plain mpi4py on the handle): a message of up
    to DIRECT_MAX bytes, the region's eager limit among them, is one
    library message with the caller's tag; one of MARKER_LEN or more than
    DIRECT_MAX bytes is a marker there, its data on the bulk communicator
    under the tag the marker names."""
    from ivmpi import routing
    peers = [r for r in range(comm.size) if ivmpi.path_to(comm, r) == "mpi"]
    target = comm.bcast(peers[0] if comm.rank == 0 and peers else None, 0)
    if target is None:
        pytest.skip("rank 0 shares its region with every rank")
    eager = comm._engine.eager_limit
    assert eager <= DIRECT_MAX
    for n in (eager, DIRECT_MAX, MARKER_LEN, DIRECT_MAX + 1):
        if comm.rank == 0:
            comm.Send(payload(0, target, n % 97, n), target, 90)
        elif comm.rank == target:
            got = np.zeros(DIRECT_MAX + 4096, np.uint8)
            status = _native.Status()
            _native_of(comm).Recv(got, 0, 90, status)
            count = status.Get_count(_native.BYTE)
            if n <= DIRECT_MAX and n != MARKER_LEN:
                assert count == n
            else:
                assert count == MARKER_LEN
                magic, tag, size = np.frombuffer(got[:16].tobytes(), "<u4,<u4,<u8")[0]
                assert (magic, size) == (0x424D5649, n)
                routing._bulk.Recv([got, n, _native.BYTE], comm._ranks[0], int(tag))
            assert np.array_equal(got[:n], payload(0, target, n % 97, n))
        comm.Barrier()


def test_cancel_after_a_rendezvous_sized_direct_message_matched(comm):
    """A direct receive whose message (larger than the library's eager size,
    at most DIRECT_MAX) is already there when it is posted: the library
    matched it, so Cancel cannot take it back; it neither blocks nor loses
    the message, and the receive completes with it."""
    n = 60_000
    for k in range(1, comm.size):
        dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
        sreq = comm.Isend(payload(comm.rank, dst, k, n), dst, 33)
        comm.Barrier()
        got = np.zeros(n, np.uint8)
        rreq = comm.Irecv(got, src, 33)
        rreq.Cancel()
        status = MPI.Status()
        rreq.Wait(status)
        if not status.Is_cancelled():
            assert status.Get_count(MPI.BYTE) == n
            assert np.array_equal(got, payload(src, comm.rank, k, n))
        else:   # (the region path may cancel one it has not matched yet)
            comm.Recv(got, src, 33)
            assert np.array_equal(got, payload(src, comm.rank, k, n))
        sreq.Wait()
        comm.Barrier()


def test_a_collective_kept_alone_keeps_its_communicator(comm):
    """`allreduce = comm.Dup().allreduce`, as with mpi4py's bound methods:
    the call holds its communicator (on every layout, the calls bound to
    the instance of a communicator spanning regions too)."""
    import gc
    allreduce = comm.Dup().allreduce
    barrier = comm.Dup().Barrier
    gc.collect()
    assert allreduce(comm.rank) == sum(range(comm.size))
    barrier()
