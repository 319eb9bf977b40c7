"""Pickled objects a little over the eager limit, under a real launcher.

    mpirun --oversubscribe -n N python -m pytest --with-mpi tests/mpi/test_p2p_staged_objects.py

A pickle of up to two eager limits goes through the sender's heap (a
region rendezvous: one announcement, the receiver copies it out and
acknowledges): the blocking sends through one staging block, the
nonblocking ones through a block each until acknowledged; a larger one
streams through the ring.  The same program runs on mpi4py over the MPI
library and on ivmpi in the same processes and must observe the same
objects, statuses and order.
"""
import numpy as np
import pytest
from mpi4py import MPI as native_MPI

from ivmpi import MPI as ivmpi_MPI

pytestmark = pytest.mark.mpi(min_size=2)


def blob(nbytes, seed):
    return ((np.arange(nbytes, dtype=np.int64) * 7 + seed) % 251).astype(np.uint8).tobytes()


def sizes_around(limit):
    # Pickles just over the limit, in the middle and near the top of the
    # heap path, and past it (streamed).
    return [limit - 4, limit + 100, 2 * limit - 200, 2 * limit + 1000]


def ordered(comm, send, recv):
    """Blocking sends around the ring without a deadlock."""
    if comm.Get_rank() == 0:
        send()
        return recv()
    got = recv()
    send()
    return got


def envelope(status):
    return status.Get_source(), status.Get_tag(), status.Get_count()


def program(comm, MPI, limit):
    rank, size = comm.Get_rank(), comm.Get_size()
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    out = {}
    status = MPI.Status()
    for n in sizes_around(limit):
        obj = blob(n, rank)
        for mode in ("send", "ssend", "bsend"):
            send = getattr(comm, mode)
            got = ordered(comm, lambda: send(obj, nxt, 3),
                          lambda: comm.recv(source=prv, tag=3, status=status))
            out[mode, n] = (got, envelope(status))

        # Each probe, then the receive.
        probed = {}

        def probe():
            comm.probe(prv, 4, status)
            probed["probe"] = envelope(status)
            return comm.recv(source=prv, tag=4)

        def iprobe():
            while not comm.iprobe(prv, 4, status):
                pass
            probed["iprobe"] = envelope(status)
            return comm.recv(source=prv, tag=4)

        def mprobe():
            message = comm.mprobe(prv, 4, status)
            probed["mprobe"] = envelope(status)
            return message.recv(status)

        def improbe():
            message = None
            while message is None:
                message = comm.improbe(prv, 4, status)
            probed["improbe"] = envelope(status)
            return message.recv()

        for receive in (probe, iprobe, mprobe, improbe):
            got = ordered(comm, lambda: comm.send(obj, nxt, 4), receive)
            out[receive.__name__, n] = (got, probed[receive.__name__])
        out["mprobe recv status", n] = envelope(status)

        # Both directions at once.
        got = comm.sendrecv(obj, nxt, 5, None, prv, 5, status)
        out["sendrecv", n] = (got, envelope(status))

        # Everyone to rank 0, received with ANY_SOURCE and ANY_TAG.
        if rank == 0:
            seen = []
            for _ in range(size - 1):
                got = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
                seen.append((envelope(status), got))
            out["any source", n] = sorted(seen)
        else:
            comm.send(blob(n, 10 * rank), 0, 20 + rank)

        # Order with eager messages of the same tag, and across tags.
        if rank == 0:
            comm.send("first", 1, 1)
            comm.send(obj, 1, 1)
            comm.send("last", 1, 1)
            comm.send("other tag", 1, 2)
            comm.send(obj, 1, 3)
        elif rank == 1:
            out["same tag", n] = [comm.recv(source=0, tag=1) for _ in range(3)]
            out["tag 3 first", n] = comm.recv(source=0, tag=3, status=status)
            out["tag 3 first status", n] = envelope(status)
            out["then any tag", n] = comm.recv(source=0, tag=MPI.ANY_TAG, status=status)
            out["then any tag status", n] = envelope(status)

        # Nonblocking sends, the receive posted first and then the message
        # first (mpi4py's irecv takes the size of the buffer it is given).
        # (Rank 0 may still be receiving with ANY_TAG above.)
        comm.Barrier()
        room = bytearray(2 * limit + 4096)
        for mode in ("isend", "issend", "ibsend"):
            isend = getattr(comm, mode)
            incoming = comm.irecv(room, source=prv, tag=7)
            outgoing = isend(obj, nxt, 7)
            out[mode, "posted", n] = (incoming.wait(status), envelope(status))
            outgoing.wait()
            outgoing = isend(obj, nxt, 7)
            comm.Barrier()
            out[mode, "waiting", n] = (comm.irecv(room, source=prv, tag=7).wait(status),
                                       envelope(status))
            outgoing.wait()

        # More nonblocking sends in flight than the sender keeps heap blocks
        # for (the rest go by the general rendezvous): all arrive, in order,
        # received with ANY_TAG among eager ones of another tag.
        outgoing = [comm.isend(blob(n, 100 * rank + i), nxt, 10 + i % 2) for i in range(20)]
        outgoing += [comm.isend(("small", rank, i), nxt, 12) for i in range(3)]
        comm.Barrier()
        out["many", n] = [(comm.irecv(room, source=prv, tag=MPI.ANY_TAG).wait(status),
                           envelope(status)) for _ in range(23)]
        MPI.Request.Waitall(outgoing)

        # A message that waits in the unexpected queue before it is received
        # (another receive is pending, and testing it progresses).
        if rank == 0:
            comm.send(obj, 1, 6)
            comm.send(obj, 1, 8)
            comm.send("done", 1, 9)
        elif rank == 1:
            pending = comm.irecv(source=0, tag=9)
            while not comm.iprobe(0, 6):
                pass
            out["pending test", n] = pending.test()
            out["unexpected recv", n] = comm.recv(source=0, tag=6, status=status)
            out["unexpected recv status", n] = envelope(status)
            while not comm.iprobe(0, 8):
                pass
            pending.test()
            message = comm.mprobe(0, 8, status)
            out["unexpected mprobe", n] = (message.recv(), envelope(status))
            out["pending", n] = pending.wait()
        comm.Barrier()
    return out


def run(MPI, limit):
    comm = MPI.COMM_WORLD.Dup()
    room = 4 * (2 * limit + 1000 + MPI.BSEND_OVERHEAD + 1024)
    MPI.Attach_buffer(bytearray(room))
    try:
        return program(comm, MPI, limit)
    finally:
        MPI.Detach_buffer()
        comm.Barrier()
        comm.Free()


def test_objects_near_the_eager_limit_as_the_library():
    limit = ivmpi_MPI.COMM_WORLD._engine.eager_limit
    expected = run(native_MPI, limit)
    got = run(ivmpi_MPI, limit)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key


def test_staged_object_goes_through_the_heap(comm):
    """A pickle a little over the limit is copied into the sender's staging
    block (not streamed through the ring), and the block is free again
    once the send returns."""
    engine = comm._engine
    if engine.mem.strict:
        pytest.skip("strict mode keeps the streamed rendezvous")
    limit = engine.eager_limit
    nxt, prv = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    obj = blob(limit + 10, comm.rank)
    got = ordered(comm, lambda: comm.send(obj, nxt, 1), lambda: comm.recv(source=prv, tag=1))
    assert got == blob(limit + 10, prv)
    assert engine._stage is not None and len(engine._stage) >= limit + 10
    assert not engine._stage_busy
    assert not engine.awaiting_ack and not engine.awaiting_cts and not engine.receiving


def test_collectives_announce_their_staged_pickles_in_one_call(comm):
    """The object collectives' pickles over the eager limit (staged once in
    the sender's heap, each distinct one once) are announced to each
    receiver without an engine send: one region rendezvous each, whose
    ACK completes it once the receiver has copied the pickle out."""
    from ivmpi._fastcopy import SendOp
    engine = comm._engine
    if engine.mem.strict:
        pytest.skip("strict mode stages nothing")
    coll = comm._collectives
    limit, size, rank = engine.eager_limit, comm.size, comm.rank
    item = blob(limit + 100, rank)
    pickle = ivmpi_MPI.pickle.dumps(item)
    others = [r for r in range(size) if r != rank]
    tag = 4321
    requests = coll._send_pickles([pickle] * len(others), others, [tag] * len(others), "test",
                                  True)
    ops = [request._op for request in requests]
    assert len(ops) == len(others)
    # Announced from the fast path: no engine send (which keeps the bytes it sends).
    assert all(type(op) is SendOp and op.mem is None and op.send_id for op in ops)
    got = {source: coll.p2p.recv(None, source, tag) for source in others}
    ivmpi_MPI.Request.Waitall(requests)
    assert all(op.done for op in ops)
    assert got == {source: blob(limit + 100, source) for source in others}
    assert not engine.awaiting_ack


def test_nonblocking_object_sends_take_heap_blocks_and_reuse_them(comm):
    """An isend of a pickle a little over the limit is complete at once
    (the pickle is in a heap block of its own); the block is reused once the
    receiver's ACK arrives, even on a rank that never receives from the
    rank it sends to (the ACKs are taken when blocks run out)."""
    engine = comm._engine
    if engine.mem.strict:
        pytest.skip("strict mode keeps the streamed rendezvous")
    blocks = engine.send_blocks
    limit = engine.eager_limit
    nxt, prv = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    sent = blocks.sent
    for i in range(40):
        outgoing = comm.isend(blob(limit + 100, comm.rank + i), nxt, 1)
        assert outgoing.Test()
        assert comm.irecv(source=prv, tag=1).wait() == blob(limit + 100, prv + i)
    comm.Barrier()
    assert blocks.sent - sent == 40
    assert 1 <= blocks.made <= blocks.most < 40


def test_nonblocking_synchronous_object_send_completes_only_once_received(comm):
    """An issend from a heap block completes on the receiver's ACK, which
    comes only after its receive matched and copied the message."""
    limit = comm._engine.eager_limit
    obj = blob(limit + 500, 7)
    if comm.rank == 0:
        outgoing = comm.issend(obj, 1, 2)
        assert not outgoing.Test()
        comm.Barrier()
        outgoing.wait()
    else:
        comm.Barrier()
        if comm.rank == 1:
            assert comm.recv(source=0, tag=2) == obj


@pytest.mark.parametrize("limits", [1.5, 3, 8])
def test_object_receive_goes_into_the_buffer_offered(comm, limits):
    """irecv(buf) receives a message too large for the eager path into buf
    when it fits, as mpi4py does (heap-staged, copied from the sender's
    memory or streamed); one that does not fit gets a buffer of its own,
    leaving buf alone."""
    if comm.size < 2 or comm.rank > 1:
        return
    n = int(comm._engine.eager_limit * limits)
    obj = blob(n, 3)
    pickled = ivmpi_MPI.pickle.dumps(obj)
    if comm.rank == 0:
        comm.isend(obj, 1, 5).wait()
        comm.isend(obj, 1, 6).wait()
    else:
        room = bytearray(len(pickled) + 64)
        assert comm.irecv(room, source=0, tag=5).wait() == obj
        assert room[:len(pickled)] == pickled
        small = bytearray(100)
        assert comm.irecv(small, source=0, tag=6).wait() == obj
        assert small == bytearray(100)


def test_two_rank_object_collectives_send_large_pickles_from_heap_blocks(comm):
    """On two ranks the object collectives send a pickle over the eager
    limit from a heap block of its own (one call, nothing to wait for)."""
    engine = comm._engine
    if engine.mem.strict:
        pytest.skip("strict mode keeps the streamed rendezvous")
    pair = comm.Split(0 if comm.rank < 2 else 1, comm.rank)
    try:
        if comm.rank >= 2 or pair.size != 2:
            return
        blocks, limit = engine.send_blocks, engine.eager_limit
        sent = blocks.sent
        mine = blob(limit + 100, pair.rank)
        assert pair.allgather(mine) == [blob(limit + 100, 0), blob(limit + 100, 1)]
        assert pair.gather(mine, 1) == (None if pair.rank == 0 else
                                        [blob(limit + 100, 0), blob(limit + 100, 1)])
        assert pair.alltoall([mine, mine]) == [blob(limit + 100, 0), blob(limit + 100, 1)]
        assert blocks.sent - sent == 2 + (pair.rank == 0)
    finally:
        pair.Free()
