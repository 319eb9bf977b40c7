"""Eager messages of 16 KiB up to the eager limit go as EAGER_PARTS frames
(docs/layout.md): published before their payload, which a receiver reads
part by part behind the sender's fill word.  Every way of receiving one
(posted before, waiting, unexpected, probed, matched, ANY_SOURCE, into a
datatype with holes, as a pickle) must give the message whole, in order."""
import time

import numpy as np
import pytest

from ivmpi import MPI

# Between ranks that copy from each other's memory, buffers of
# FastPath.copy_min bytes and more go by rendezvous: these are the eager
# frames of ranks in different VMs.
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("streamed")]

PARTS_MIN = 16384


def _sizes(comm):
    limit = comm._engine.eager_limit
    return [n for n in (PARTS_MIN - 1, PARTS_MIN, PARTS_MIN + 1, 20001, 32768, limit - 1, limit)
            if n <= limit]


def _pattern(nbytes, seed):
    return ((np.arange(nbytes, dtype=np.int64) * 13 + seed * 7) % 251).astype(np.uint8)


def _last_frame(comm, peer, nbytes):
    """(kind, fill word) of the frame of nbytes we last published to peer."""
    engine = comm._engine
    geo = engine.geo
    ring = geo.ring(engine.slot, engine.slot_of[peer])
    fsize = 32 + (nbytes + 7) // 8 * 8
    pos = (engine.tx[peer].head_index - fsize) % geo.ring_bytes
    word0 = engine.mem.load(ring + 128 + pos)
    assert word0 >> 32 == nbytes, "not the frame just sent"
    return word0 & 0xFFFFFFFF, engine.mem.load(ring + 128 + pos + 16)


@pytest.mark.parametrize("method, parts_kind, whole_kind", [("Send", 9, 1), ("Ssend", 10, 2)])
def test_sends_from_16_kib_go_in_parts_and_arrive_whole(comm, method, parts_kind, whole_kind):
    """A receive already waiting (posted first, then the sender goes): the
    frames really are in parts from 16 KiB (EAGER_PARTS, or EAGER_SYNC_PARTS
    for a synchronous send), filled to their length."""
    if comm.rank > 1:
        return
    frames, expected = [], []
    for i, n in enumerate(_sizes(comm)):
        if comm.rank == 0:
            comm.Recv(np.empty(0, np.uint8), 1, 99)          # the receiver is posted
            getattr(comm, method)(_pattern(n, i), 1, i)
            frames.append(_last_frame(comm, 1, n))
            expected.append((parts_kind, n) if n >= PARTS_MIN else (whole_kind, 0))
        else:
            got = np.zeros(n, np.uint8)
            request = comm.Irecv(got, 0, i)
            comm.Send(np.empty(0, np.uint8), 0, 99)
            status = MPI.Status()
            request.Wait(status)
            assert status.Get_count(MPI.BYTE) == n and status.Get_tag() == i
            assert np.array_equal(got, _pattern(n, i))
    assert frames == expected       # (kind, fill word) of each frame rank 0 sent


def test_a_synchronous_send_in_parts_completes_only_when_matched(comm):
    """The receiver matches each message 50 ms after it has arrived: the
    synchronous send may not complete before, and the data comes whole."""
    if comm.rank > 1:
        return
    for i, n in enumerate(_sizes(comm)):
        if comm.rank == 0:
            started = time.monotonic()
            comm.Ssend(_pattern(n, i), 1, i)
            assert time.monotonic() - started >= 0.045
        else:
            got = np.zeros(n, np.uint8)
            while not comm.Iprobe(0, i):
                time.sleep(0.0005)
            time.sleep(0.05)
            comm.Recv(got, 0, i)
            assert np.array_equal(got, _pattern(n, i))


def test_unexpected_probed_and_matched_messages(comm):
    """Sent before any receive: taken by Recv, by Probe then Recv, by Mprobe
    then Message.Recv, by an ANY_SOURCE receive, in the order sent."""
    sizes = _sizes(comm)
    for way in range(4):
        if comm.rank == 0:
            for i, n in enumerate(sizes):
                comm.Send(_pattern(n, i + way), 1, 5)
        comm.Barrier()        # everything sent before anyone looks
        if comm.rank != 1:
            continue
        for i, n in enumerate(sizes):
            got = np.zeros(n, np.uint8)
            status = MPI.Status()
            if way == 0:
                comm.Recv(got, 0, 5, status)
            elif way == 1:
                comm.Probe(0, 5, status)
                assert status.Get_count(MPI.BYTE) == n
                comm.Recv(got, 0, 5)
            elif way == 2:
                comm.Mprobe(0, 5, status).Recv(got)
            else:
                comm.Recv(got, MPI.ANY_SOURCE, MPI.ANY_TAG, status)
            assert status.Get_source() == 0 and status.Get_count(MPI.BYTE) == n
            assert np.array_equal(got, _pattern(n, i + way)), (way, n)


def test_receives_with_holes_and_objects(comm):
    """A vector datatype receive (elements scattered from the ring) and a
    pickled object of eager size."""
    if comm.rank > 1:
        return
    limit = comm._engine.eager_limit
    count = min(limit, 40000) // 8 // 2        # doubles, every other one received
    vector = MPI.DOUBLE.Create_vector(count, 1, 2).Commit()
    try:
        if comm.rank == 0:
            comm.Send(np.arange(count, dtype=np.float64), 1, 1)
            comm.send(bytes(_pattern(min(limit, 30000) - 64, 3)), 1, 2)
        else:
            got = np.full(2 * count, -1.0)
            comm.Recv([got, 1, vector], 0, 1)
            assert np.array_equal(got[0::2], np.arange(count, dtype=np.float64))
            assert np.all(got[1::2] == -1.0)
            assert comm.recv(None, 0, 2) == bytes(_pattern(min(limit, 30000) - 64, 3))
    finally:
        vector.Free()


def test_a_slow_receiver_and_a_stream_of_them(comm):
    """Many messages of every size in both directions at once, the receiver
    sometimes late: the ring fills, waits and wraps with frames in parts."""
    if comm.rank > 1:
        return
    peer = 1 - comm.rank
    sizes = _sizes(comm) * 10
    requests, received = [], []
    for i, n in enumerate(sizes):
        buf = np.zeros(n, np.uint8)
        received.append(buf)
        requests.append(comm.Irecv(buf, peer, i))
    for i, n in enumerate(sizes):
        if i % 7 == 3:
            time.sleep(0.001)
        comm.Send(_pattern(n, i + 100 * comm.rank), peer, i)
    MPI.Request.Waitall(requests)
    for i, (n, buf) in enumerate(zip(sizes, received)):
        assert np.array_equal(buf, _pattern(n, i + 100 * peer)), (i, n)
