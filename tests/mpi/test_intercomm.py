"""Intercommunicators (-n 2, 3, 4): the groups are the even and the odd ranks
of COMM_WORLD.  Point-to-point between the groups goes through the region
(the ring counters prove it), with sources as ranks of the remote group;
collectives, Merge, Dup and Split give what mpi4py's own intercommunicator
over the same groups gives."""
import numpy as np
import pytest
from mpi4py import MPI as _native

import ivmpi.stats
from ivmpi import _fastcopy
from ivmpi import MPI

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("engine_timeout")]

NATIVE = _native.COMM_WORLD


def make_intercomm(comm):
    """(color, local, intercomm) with colour = world rank parity."""
    color = comm.rank % 2
    local = comm.Split(color, comm.rank)
    inter = local.Create_intercomm(0, comm, 1 - color, tag=11)
    return color, local, inter


@pytest.fixture
def pair(comm):
    ours = make_intercomm(comm)
    theirs = make_intercomm(NATIVE)
    yield ours, theirs
    for _, local, inter in (ours, theirs):
        inter.Free()
        local.Free()


def world_ranks(group):
    return _native.Group.Translate_ranks(group, list(range(group.Get_size())),
                                         NATIVE.Get_group())


def test_groups_match_the_library(pair):
    (color, _, inter), (_, _, native) = pair
    assert isinstance(inter, MPI.Intercomm) and isinstance(inter, _native.Intercomm)
    assert inter.Is_inter() and not inter.Is_intra()
    assert (inter.rank, inter.size) == (native.Get_rank(), native.Get_size())
    assert inter.Get_remote_size() == native.Get_remote_size() == inter.remote_size
    assert world_ranks(inter.Get_remote_group()) == world_ranks(native.Get_remote_group())
    assert world_ranks(inter.Get_group()) == world_ranks(native.Get_group())
    # As in mpi4py, an intercommunicator has no scans.
    assert not hasattr(inter, "Scan") and not hasattr(inter, "Exscan")
    assert hasattr(native, "Scan") is False


def test_point_to_point_goes_through_the_region(pair):
    (color, _, inter), _ = pair
    n = 1 << 14
    before = ivmpi.stats.traffic(inter)
    copied_before = ivmpi.stats.single_copies(inter)
    assert sorted(before) == list(range(inter.remote_size))
    reqs, got = [], {}
    for peer in range(inter.remote_size):
        buf = np.empty(n, "i4")
        got[peer] = buf
        reqs.append(inter.Irecv(buf, peer, 5))
    for peer in range(inter.remote_size):
        reqs.append(inter.Isend(np.full(n, 1000 * color + 10 * inter.rank + peer, "i4"), peer, 5))
    MPI.Request.Waitall(reqs)
    for peer, buf in got.items():
        # The sender's rank in its own group, and its colour, come back.
        assert (buf == 1000 * (1 - color) + 10 * peer + inter.rank).all()
    after = ivmpi.stats.traffic(inter)
    copied = ivmpi.stats.single_copies(inter)
    for peer in range(inter.remote_size):
        # Between ranks of one kernel the receiver copies the data from its
        # sender's memory, and only the envelopes cross the region.
        took = copied.get(peer, {}).get("bytes", 0) - copied_before.get(peer, {}).get("bytes", 0)
        assert after[peer]["read"] - before[peer]["read"] + took >= n * 4
        if not _fastcopy.single_copy_to(inter._ranks[peer]):
            assert after[peer]["written"] - before[peer]["written"] >= n * 4


def test_any_source_reports_remote_ranks(pair):
    (color, _, inter), _ = pair
    # The objects travel on a duplicate: an ANY_TAG receive there cannot take
    # the synchronous send below, which another sender may have started first.
    objects = inter.Dup()
    if color == 0:
        for peer in range(inter.remote_size):
            objects.send({"from": inter.rank}, dest=peer, tag=inter.rank)
        inter.Ssend(np.array([inter.rank], "i8"), dest=0, tag=99)
    else:
        seen = set()
        for _ in range(inter.remote_size):
            status = MPI.Status()
            msg = objects.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            assert status.Get_source() == status.Get_tag() == msg["from"]
            seen.add(msg["from"])
        assert seen == set(range(inter.remote_size))
        if inter.rank == 0:
            for _ in range(inter.remote_size):
                status = MPI.Status()
                inter.Probe(MPI.ANY_SOURCE, 99, status)
                message = inter.Mprobe(status.Get_source(), 99)
                value = np.zeros(1, "i8")
                message.Recv(value)
                assert value[0] == status.Get_source()
    objects.Free()


def test_peer_ranks_are_checked(pair):
    (_, _, inter), _ = pair
    with pytest.raises(MPI.Exception) as info:
        inter.Send(np.zeros(1), dest=inter.remote_size, tag=0)
    assert info.value.Get_error_class() == MPI.ERR_RANK


def test_collectives_match_the_library(pair):
    (color, _, inter), (_, _, native) = pair

    def rooted(c):
        # Group 0's rank 0 is the root; its other ranks take no part.
        if color == 0:
            return MPI.ROOT if c.Get_rank() == 0 else MPI.PROC_NULL
        return 0

    for c in (inter, native):
        got = c.bcast({"root": color} if color == 0 and c.Get_rank() == 0 else None, root=rooted(c))
        if color == 1:
            assert got == {"root": 0}
    results = []
    for c in (inter, native):
        send = np.array([c.Get_rank() + 100 * color], "f8")
        recv = np.zeros(1, "f8")
        c.Allreduce(send, recv, op=MPI.SUM)
        gathered = c.allgather(("c", color, c.Get_rank()))
        results.append((recv[0], gathered))
    assert results[0] == results[1]
    # The remote group's values: the other colour.
    assert all(entry[1] == 1 - color for entry in results[0][1])


def test_merge_orders_as_the_library_and_uses_the_region(pair):
    (color, _, inter), (_, _, native) = pair
    for high in (False, True):
        merged = inter.Merge(high=bool(color) if high else not color)
        expected = native.Merge(high=bool(color) if high else not color)
        assert isinstance(merged, MPI.Intracomm) and not isinstance(merged, MPI.Intercomm)
        assert (merged.rank, merged.size) == (expected.Get_rank(), expected.Get_size())
        assert world_ranks(merged.Get_group()) == world_ranks(expected.Get_group())
        assert merged.allreduce(merged.rank) == sum(range(merged.size))
        before = ivmpi.stats.total(merged)
        # Not before the peer has counted: the progress of a call still
        # running there could take the message early, and count it in before.
        merged.Barrier()
        merged.Bcast(np.zeros(4096, "u1"), root=0)
        assert ivmpi.stats.total(merged)["read" if merged.rank else "written"] > \
            before["read" if merged.rank else "written"]
        merged.Free()
        expected.Free()


def test_dup_and_split_stay_intercommunicators(pair):
    (color, _, inter), _ = pair
    dup = inter.Dup()
    assert isinstance(dup, MPI.Intercomm) and dup.remote_size == inter.remote_size
    assert dup._ctx != inter._ctx
    # A message on the duplicate never matches a receive on the original.
    if color == 0 and inter.rank == 0:
        dup.send("dup", dest=0, tag=1)
        inter.send("orig", dest=0, tag=1)
    if color == 1 and inter.rank == 0:
        assert inter.recv(source=0, tag=1) == "orig"
        assert dup.recv(source=0, tag=1) == "dup"
    dup.Free()
    # Split by the local rank's parity: some members of each side may end
    # up with an empty remote group, which MPI makes COMM_NULL.
    sub = inter.Split(inter.rank % 2, inter.rank)
    native_sub = _native.Intercomm.Split(pair[1][2], inter.rank % 2, inter.rank)
    assert (sub == MPI.COMM_NULL) == (native_sub == _native.COMM_NULL)
    if sub != MPI.COMM_NULL:
        assert isinstance(sub, MPI.Intercomm)
        assert world_ranks(sub.Get_remote_group()) == world_ranks(native_sub.Get_remote_group())
        for peer in range(sub.remote_size):
            sub.Isend(np.array([sub.rank], "i4"), peer, 3).Wait()
        for peer in range(sub.remote_size):
            v = np.zeros(1, "i4")
            sub.Recv(v, peer, 3)
            assert v[0] == peer
        sub.Free()
        native_sub.Free()
