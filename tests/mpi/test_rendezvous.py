"""Messages over the eager limit between plain buffers: a blocking Send and
Recv carry out the whole rendezvous (RTS, CTS, DATA chunks) in one call each,
and hand over to the engine, mid-way if need be, whenever the other side is
late or something else arrives in between.  Contents, status and MPI order
must be the same on every path.

Every test runs twice: with large messages copied from the sender's memory
where the pair may (ranks of one kernel, ivmpi/_single_copy.pxi), and with
them streamed through the rings, as between VMs."""
import time

import numpy as np
import pytest

from ivmpi import MPI, _fastcopy

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(autouse=True, params=["copied", "streamed"])
def large_path(request):
    # Copied: from copy_min bytes under the eager limit too, whatever
    # start-up chose for this machine.
    request.getfixturevalue("streamed" if request.param == "streamed" else "copies_under_eager")
    return request.param


def _copies(comm, peer):
    """Does this rank copy messages of comm rank `peer` from its memory?"""
    return comm._ranks[peer] in _fastcopy.single_copy_peers()


def _copying_peer(comm):
    """Ranks 0 and 1: the other one, the test skipped unless they copy from
    each other's memory; None on the other ranks (they sit it out)."""
    if comm.rank > 1:
        return None
    other = 1 - comm.rank
    if not _copies(comm, other):
        pytest.skip("this pair cannot copy from each other's memory here")
    return other


def _every_pair_copies(comm):
    """Skip the test (on every rank alike) unless all ranks of comm copy
    from each other's memory."""
    mine = all(_copies(comm, r) for r in range(comm.size) if r != comm.rank)
    if not comm.allreduce(mine, op=MPI.LAND):
        pytest.skip("these ranks cannot copy from each other's memory here")


def _messages_copied(comm, peer=None):
    """Messages this rank has copied from comm rank peer's memory (from
    every rank of comm when None)."""
    counts = ivmpi_stats().single_copies(comm)
    if peer is None:
        return sum(entry["messages"] for entry in counts.values())
    return counts.get(peer, {"messages": 0})["messages"]


def _limits(comm):
    engine = comm._engine
    return engine.eager_limit, engine.chunk_bytes


def _pattern(nbytes, seed):
    return (np.arange(nbytes, dtype=np.int64) * 7 + seed).astype(np.uint8)


def _no_general_path(comm, monkeypatch):
    """Make the general point-to-point paths fail loudly: whatever passes
    went through the one-call rendezvous."""
    def refuse(*args):
        raise AssertionError("the general path was taken")
    monkeypatch.setattr(comm._fast, "general_Send", refuse)
    monkeypatch.setattr(comm._fast, "general_Recv", refuse)


def _announced(comm, source):
    """Wait until a frame from source (here: the announcement) is in our
    ring, without taking it, or the engine has queued it."""
    ring = comm._engine.rx[source]          # comm is a Dup of the world
    deadline = time.monotonic() + 30
    # (A send of ours completed by the engine may have queued it already:
    # one copied from our memory completes without waiting for a stream.)
    while not ring.poll() and not any(m.source == source for m in comm._engine.unexpected):
        assert time.monotonic() < deadline, "no announcement came"
        time.sleep(0.001)


def _sizes(comm):
    eager, chunk = _limits(comm)
    return [eager + 1, eager + 8, 3 * chunk + 5, (1 << 20) + 3, 3 << 20]


def test_sizes_around_the_limits_in_one_call(comm, monkeypatch):
    """Each receive starts once the announcement is in its ring (a receive
    that comes first is posted to the engine, as an eager one would be);
    the sender meanwhile waits for its clear-to-send through the engine."""
    if comm.rank > 1:
        return
    _no_general_path(comm, monkeypatch)
    peer = 1 - comm.rank
    for i, n in enumerate(_sizes(comm)):
        if comm.rank == 0:
            comm.Send(_pattern(n, i), 1, 10 + i)
            back = np.empty(n, np.uint8)
            _announced(comm, 1)
            comm.Recv(back, 1, 20 + i)
            assert np.array_equal(back, _pattern(n, i + 1))
        else:
            got = np.zeros(n + 16, np.uint8)     # a larger buffer: the count says how much
            status = MPI.Status()
            _announced(comm, 0)
            comm.Recv(got, 0, 10 + i, status)
            assert np.array_equal(got[:n], _pattern(n, i)) and not got[n:].any()
            assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == \
                (peer, 10 + i, n)
            comm.Send(_pattern(n, i + 1), 0, 20 + i)


@pytest.mark.parametrize("kind", ["float64", "bytes", "bytearray", "spec-displacement",
                                  "memoryview-2d"])
def test_buffer_kinds_and_specs(comm, monkeypatch, kind):
    if comm.rank > 1:
        return
    _no_general_path(comm, monkeypatch)
    eager, _ = _limits(comm)
    count = eager // 8 * 5 + 3
    values = np.arange(count, dtype="f8") * 1.5 - 7
    if comm.rank == 0:
        if kind == "float64":
            comm.Send(values, 1, 3)
        elif kind == "bytes":
            comm.Send(values.tobytes(), 1, 3)
        elif kind == "bytearray":
            comm.Send(bytearray(values.tobytes()), 1, 3)
        elif kind == "spec-displacement":
            padded = np.concatenate([np.full(11, -1.0), values, np.full(4, -1.0)])
            comm.Send([padded, (count, 11), MPI.DOUBLE], 1, 3)
        else:
            comm.Send(memoryview(values[:count - 3].reshape(-1, 5)), 1, 3)
    else:
        n = count - 3 if kind == "memoryview-2d" else count
        _announced(comm, 0)
        if kind == "spec-displacement":
            got = np.full(count + 20, 9.0)
            status = MPI.Status()
            comm.Recv([got, (count, 13), MPI.DOUBLE], 0, 3, status)
            assert np.array_equal(got[13:13 + count], values)
            assert (got[:13] == 9).all() and (got[13 + count:] == 9).all()
            assert status.Get_count(MPI.DOUBLE) == count
        else:
            got = bytearray(n * 8)
            comm.Recv(got, 0, 3)
            assert bytes(got) == values[:n].tobytes()


def test_late_receiver_sender_hands_over_to_the_engine(comm, monkeypatch):
    """The receiver is not there yet: the sender's wait for the clear-to-send
    passes to the engine, which streams the message once it comes."""
    if comm.rank > 1:
        return
    eager, chunk = _limits(comm)
    n = 2 * chunk + eager + 9
    if comm.rank == 0:
        waited = []
        real_wait = comm._fast.wait_op
        monkeypatch.setattr(comm._fast, "wait_op",
                            lambda op, what: (waited.append(what), real_wait(op, what)))
        comm.Send(_pattern(n, 3), 1, 5)
        assert waited == ["Send"]
        comm.Recv(bytearray(1), 1, 6)
    else:
        time.sleep(0.3)
        got = np.empty(n, np.uint8)
        comm.Recv(got, 0, 5)
        assert np.array_equal(got, _pattern(n, 3))
        comm.Send(bytearray(1), 0, 6)


def test_late_sender_receiver_hands_over_to_the_engine(comm, monkeypatch, large_path):
    """The message is announced but its data do not follow at once (the
    sender's engine streams only when it next makes progress): the receive,
    already cleared, is finished by the engine's wait.  Copied from the
    sender's memory, it needs nothing more from the sender: done at once."""
    if comm.rank > 1:
        return
    eager, chunk = _limits(comm)
    n = 3 * chunk + 17
    if comm.rank == 0:
        req = comm.Isend(_pattern(n, 5), 1, 7)       # announced now, streamed on Wait
        comm.Recv(bytearray(1), 1, 8)                # the receiver has seen the announcement
        time.sleep(0.3)
        req.Wait()
    else:
        handed = []
        real_request = comm._fast.new_request
        monkeypatch.setattr(comm._fast, "new_request",
                            lambda *a: (handed.append(a[3]), real_request(*a))[1])
        _announced(comm, 0)
        comm.Send(bytearray(1), 0, 8)
        time.sleep(0.05)        # the sender is asleep before it is cleared
        got = np.empty(n, np.uint8)
        status = MPI.Status()
        comm.Recv(got, 0, 7, status)
        assert np.array_equal(got, _pattern(n, 5))
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == (0, 7, n)
        copied = large_path == "copied" and _copies(comm, 0)
        assert handed == ([] if copied else [("Recv", "from", 0)])


def test_mpi_order_with_eager_messages_and_wildcards(comm):
    if comm.rank > 1:
        return
    eager, _ = _limits(comm)
    sizes = [8, 3 * eager, 100, eager + 1, 2 * eager, 0]
    if comm.rank == 0:
        for i, n in enumerate(sizes):
            comm.Send(_pattern(n, i), 1, 4)
    else:
        for i, n in enumerate(sizes):
            got = np.empty(3 * eager, np.uint8)
            status = MPI.Status()
            comm.Recv(got, MPI.ANY_SOURCE if i % 2 else 0, MPI.ANY_TAG if i % 3 else 4, status)
            assert status.Get_count(MPI.BYTE) == n and status.Get_source() == 0
            assert np.array_equal(got[:n], _pattern(n, i))


def test_a_receive_posted_earlier_takes_the_first_message(comm):
    if comm.rank > 1:
        return
    eager, _ = _limits(comm)
    n = 2 * eager
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 1)
        comm.Send(_pattern(n, 1), 1, 9)
        comm.Send(_pattern(n, 2), 1, 9)
    else:
        first = np.empty(n, np.uint8)
        req = comm.Irecv(first, 0, 9)
        comm.Send(bytearray(1), 0, 1)
        second = np.empty(n, np.uint8)
        comm.Recv(second, 0, 9)
        req.Wait()
        assert np.array_equal(first, _pattern(n, 1)) and np.array_equal(second, _pattern(n, 2))


def test_a_buffer_too_small_is_truncation_and_the_ring_stays_in_step(comm):
    if comm.rank > 1:
        return
    eager, _ = _limits(comm)
    n = 2 * eager + 5
    if comm.rank == 0:
        comm.Send(_pattern(n, 1), 1, 2)
        comm.Send(_pattern(n, 2), 1, 2)
    else:
        with pytest.raises(MPI.Exception) as excinfo:
            comm.Recv(np.empty(n - 1, np.uint8), 0, 2)
        assert excinfo.value.Get_error_class() == MPI.ERR_TRUNCATE
        got = np.empty(n, np.uint8)
        comm.Recv(got, 0, 2)
        assert np.array_equal(got, _pattern(n, 2))


def test_crossing_messages_of_both_kinds(comm):
    """Each side sends first, one a small message and the other a large one,
    then receives: the large sender meets an eager frame where it waits
    for its clear-to-send, and must still complete both."""
    if comm.rank > 1:
        return
    eager, _ = _limits(comm)
    n = 4 * eager + 3
    for _ in range(20):
        if comm.rank == 0:
            comm.Send(_pattern(n, 4), 1, 11)
            small = bytearray(16)
            comm.Recv(small, 1, 12)
            assert bytes(small) == bytes(range(16))
        else:
            comm.Send(bytes(range(16)), 0, 12)
            got = np.empty(n, np.uint8)
            comm.Recv(got, 0, 11)
            assert np.array_equal(got, _pattern(n, 4))


def test_every_pair_in_a_ring(comm):
    eager, _ = _limits(comm)
    n = 3 * eager + comm.size
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    got = np.empty(n, np.uint8)
    for step in range(3):
        if comm.rank % 2 == 0:
            comm.Send(_pattern(n, comm.rank + step), right, 6)
            comm.Recv(got, left, 6)
        else:
            comm.Recv(got, left, 6)
            comm.Send(_pattern(n, comm.rank + step), right, 6)
        assert np.array_equal(got, _pattern(n, left + step))


def _sent_in_turn(comm, sizes, first_tag):
    """Rank 0 sends one message of each size, tags first_tag, first_tag+1,
    ...; True on rank 1, which receives them."""
    if comm.rank == 0:
        for i, n in enumerate(sizes):
            comm.Send(_pattern(n, i), 1, first_tag + i)
    return comm.rank == 1


def test_probe_then_receive_of_the_size_it_reports(comm, monkeypatch):
    """The usual way to receive a message of unknown size: the probe leaves
    the announcement queued, and the receive clears it from there."""
    eager, chunk = _limits(comm)
    sizes = [eager + 3, 5 * chunk + 1]
    if _sent_in_turn(comm, sizes, 30):
        _no_general_path(comm, monkeypatch)
        for i, n in enumerate(sizes):
            status = MPI.Status()
            comm.Probe(0, MPI.ANY_TAG, status)
            assert (status.Get_tag(), status.Get_count(MPI.BYTE)) == (30 + i, n)
            got = np.empty(status.Get_count(MPI.BYTE), np.uint8)
            comm.Recv(got, status.Get_source(), status.Get_tag())
            assert np.array_equal(got, _pattern(n, i))


def test_large_objects_and_probes(comm, monkeypatch):
    """Pickles over the eager limit (beyond the heap-staged ones just above
    it) take the one-call rendezvous too, after a probe as well."""
    if comm.rank > 1:
        return
    eager, chunk = _limits(comm)
    objects = [np.arange(eager, dtype="f8"), {"a": bytes(5 * chunk), "b": list(range(9))}]
    if comm.rank == 0:
        monkeypatch.setattr(comm._fast, "general_send",
                            lambda *a: (_ for _ in ()).throw(AssertionError("general send")))
        for i, obj in enumerate(objects):
            comm.send(obj, 1, 40 + i)
    else:
        monkeypatch.setattr(comm._fast, "general_recv",
                            lambda *a: (_ for _ in ()).throw(AssertionError("general recv")))
        _announced(comm, 0)
        status = MPI.Status()
        got = comm.recv(None, 0, 40, status)
        assert np.array_equal(got, objects[0]) and status.Get_tag() == 40
        assert comm.probe(0, MPI.ANY_TAG, status) and status.Get_tag() == 41
        got = comm.recv(None, 0, 41)
        assert got == objects[1]


def test_both_sides_announce_before_they_receive(comm):
    """Each rank starts a large send, then receives: neither may wait for
    data the other only streams from its engine (all ranks, alltoall of
    large objects and Isend + Recv of large buffers)."""
    eager, _ = _limits(comm)
    items = [np.full(eager // 2, comm.rank * 100 + dest, dtype="i8") for dest in range(comm.size)]
    got = comm.alltoall(items)
    for source, arr in enumerate(got):
        assert (arr == source * 100 + comm.rank).all() and len(arr) == eager // 2
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    n = 3 * eager
    req = comm.Isend(_pattern(n, comm.rank), right, 13)
    back = np.empty(n, np.uint8)
    comm.Recv(back, left, 13)
    req.Wait()
    assert np.array_equal(back, _pattern(n, left))


def test_matched_probe_then_message_recv(comm, monkeypatch):
    """Mprobe takes the announcement; Message.Recv clears it and copies the
    data in as it comes; the status is the message's."""
    eager, chunk = _limits(comm)
    sizes = [eager + 5, 4 * chunk + 3]
    if _sent_in_turn(comm, sizes, 50):
        for i, n in enumerate(sizes):
            status = MPI.Status()
            message = comm.Mprobe(0, MPI.ANY_TAG, status)
            assert status.Get_count(MPI.BYTE) == n
            monkeypatch.setattr(type(message), "_irecv", lambda *a: (_ for _ in ()).throw(
                AssertionError("the general path was taken")))
            got = np.empty(n + 3, np.uint8)
            status = MPI.Status()
            message.Recv(got, status)
            assert np.array_equal(got[:n], _pattern(n, i))
            assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == \
                (0, 50 + i, n)


def test_copied_from_the_senders_memory(comm):
    """Ranks of one kernel: a large message's data never enter the ring,
    whichever receive takes it into a buffer (blocking, posted earlier,
    unexpected, Sendrecv both ways at once); the receiver's counts say so.
    An object's receive streams it (its new buffer's pages fault in as the
    chunks come, overlapped with the sender's copies)."""
    other = _copying_peer(comm)
    if other is None:
        return
    eager, chunk = _limits(comm)
    n = 4 * chunk + 3
    stats = ivmpi_stats()
    before = stats.single_copies(comm).get(other, {"messages": 0, "bytes": 0})
    ring_before = stats.traffic(comm)[other]
    got = np.empty(n, np.uint8)
    if comm.rank == 0:
        comm.Send(_pattern(n, 1), 1, 1)                 # blocking receive on the other side
        comm.Isend(_pattern(n, 2), 1, 2).Wait()         # into a receive posted earlier
        comm.Send(_pattern(n, 3), 1, 3)                 # unexpected, then received
    else:
        comm.Recv(got, 0, 1)
        assert np.array_equal(got, _pattern(n, 1))
        req = comm.Irecv(got, 0, 2)
        req.Wait()
        assert np.array_equal(got, _pattern(n, 2))
        comm.Probe(0, 3)
        comm.Recv(got, 0, 3)
        assert np.array_equal(got, _pattern(n, 3))
    comm.Sendrecv(_pattern(n, 10 + comm.rank), other, 5, got, other, 5)
    assert np.array_equal(got, _pattern(n, 10 + other))
    after = stats.single_copies(comm)[other]
    ring_after = stats.traffic(comm)[other]
    copies = 4 if comm.rank == 1 else 1
    assert after["messages"] - before["messages"] == copies
    assert after["bytes"] - before["bytes"] == copies * n
    # Only envelopes crossed the ring: far less than one message's data.
    assert ring_after["read"] - ring_before["read"] < n
    if comm.rank == 0:
        comm.send(_pattern(n, 4), 1, 4)
    else:
        assert np.array_equal(comm.recv(None, 0, 4), _pattern(n, 4))
        assert stats.single_copies(comm)[other] == after
        assert stats.traffic(comm)[other]["read"] - ring_after["read"] > n


def test_synchronous_and_persistent_large_sends_copied(comm):
    """Issend, Send_init and Ssend_init of a large buffer to a peer that
    copies from our memory: copied, and a synchronous one completes only
    once its receive has matched it."""
    other = _copying_peer(comm)
    if other is None:
        return
    n = 2 * _limits(comm)[0] + 5            # twice the eager limit, and a little
    before = _messages_copied(comm, other)
    if comm.rank == 0:
        req = comm.Issend(_pattern(n, 1), 1, 1)
        time.sleep(0.1)
        assert not req.Test()               # not matched yet
        comm.Send(bytearray(1), 1, 9)       # now the receiver posts its receive
        req.Wait()
        data = _pattern(n, 2)
        persistent = [comm.Send_init(data, 1, 2), comm.Ssend_init(data, 1, 3)]
        for _ in range(2):
            MPI.Prequest.Startall(persistent)
            MPI.Request.Waitall(persistent)
        for req in persistent:
            req.Free()
    else:
        got = np.empty(n, np.uint8)
        comm.Recv(bytearray(1), 0, 9)
        comm.Recv(got, 0, 1)
        assert np.array_equal(got, _pattern(n, 1))
        for _ in range(2):
            for tag in (2, 3):
                got[:] = 0
                comm.Recv(got, 0, tag)
                assert np.array_equal(got, _pattern(n, 2))
        assert _messages_copied(comm, other) - before == 5


def ivmpi_stats():
    import ivmpi.stats
    return ivmpi.stats


def _copy_min(comm):
    return comm._fast.copy_min


def test_buffers_from_copy_min_are_copied_under_the_eager_limit(comm):
    """To a peer that copies from our memory, buffers of copy_min bytes and
    more go by rendezvous below the eager limit too, in every call that may
    wait for its receiver (standard, synchronous, ready, nonblocking,
    persistent, Sendrecv); one byte less goes eagerly."""
    other = _copying_peer(comm)
    if other is None:
        return
    eager, lo = _limits(comm)[0], _copy_min(comm)
    assert 0 < lo <= eager
    before = _messages_copied(comm, other)
    sizes = (lo - 1, lo, eager)
    copied = 0
    if comm.rank == 0:
        for i, n in enumerate(sizes):
            data = _pattern(n, i)
            comm.Send(data, 1, 1)
            comm.Ssend(data, 1, 2)
            comm.Isend(data, 1, 3).Wait()
            comm.Issend(data, 1, 4).Wait()
            persistent = comm.Send_init(data, 1, 5)
            persistent.Start()
            persistent.Wait()
            persistent.Free()
            comm.Recv(bytearray(1), 1, 8)              # its ready send's receive is posted
            comm.Rsend(data, 1, 6)
    else:
        for i, n in enumerate(sizes):
            for tag in (1, 2, 3, 4, 5):
                got = np.zeros(n, np.uint8)
                comm.Recv(got, 0, tag)
                assert np.array_equal(got, _pattern(n, i)), tag
            got = np.zeros(n, np.uint8)
            req = comm.Irecv(got, 0, 6)
            comm.Send(bytearray(1), 0, 8)
            req.Wait()
            assert np.array_equal(got, _pattern(n, i))
            copied += 6 if n >= lo else 0
    for n in sizes:
        got = np.zeros(n, np.uint8)
        comm.Sendrecv(_pattern(n, 20 + comm.rank), other, 7, got, other, 7)
        assert np.array_equal(got, _pattern(n, 20 + other))
        copied += 1 if n >= lo else 0
    assert _messages_copied(comm, other) - before == copied


def test_buffered_sends_and_objects_stay_eager_to_a_peer_that_copies(comm):
    """A buffered send completes without its receiver (MPI's promise) up to
    the eager limit whoever the receiver; objects go eagerly too (a new
    buffer's pages fault in during a copy): none of them is copied."""
    other = _copying_peer(comm)
    if other is None:
        return
    n = _limits(comm)[0]
    before = _messages_copied(comm, other)
    if comm.rank == 0:
        data = _pattern(n, 3)
        assert comm.Ibsend(data, 1, 1).Test()       # complete before any receive
        comm.Bsend(data, 1, 2)
        persistent = comm.Bsend_init(data, 1, 3)
        persistent.Start()
        assert persistent.Test()
        persistent.Free()
        comm.send(bytes(n - 64), 1, 4)
        comm.Send(bytearray(1), 1, 9)               # only now does the receiver start
    else:
        comm.Recv(bytearray(1), 0, 9)
        for tag in (1, 2, 3):
            got = np.zeros(n, np.uint8)
            comm.Recv(got, 0, tag)
            assert np.array_equal(got, _pattern(n, 3))
        assert comm.recv(None, 0, 4) == bytes(n - 64)
    assert _messages_copied(comm, other) == before


@pytest.mark.parametrize("memory", ["ordinary", "device"])
def test_a_receive_in_the_region_is_copied_only_in_ordinary_memory(comm, memory):
    """A receive buffer inside the region (Alloc_mem) is a copy's target
    where the region is ordinary memory (a host file); where it may be
    device memory (a guest's BAR: the kernel's copy would break ARM64's
    alignment rules) the announced message streams through the ring."""
    other = _copying_peer(comm)
    if other is None:
        return
    n = _copy_min(comm) + 100
    if comm.rank == 0:
        comm.Send(_pattern(n, 5), 1, 1)
    else:
        region = comm._engine.mem
        assert region.ordinary          # a /dev/shm file here
        before = _messages_copied(comm, other)
        mem = MPI.Alloc_mem(n)
        region.ordinary = memory == "ordinary"
        try:
            got = np.frombuffer(mem, np.uint8)
            comm.Recv(got, 0, 1)
            assert np.array_equal(got, _pattern(n, 5))
            del got
        finally:
            region.ordinary = True
            MPI.Free_mem(mem)
        assert _messages_copied(comm, other) == before + (memory == "ordinary")


def test_alloc_mem_buffers_are_copied_from_24_kib(comm):
    """A send buffer in the region (Alloc_mem, ordinary memory) goes in one
    copy from 24 KiB (the eager limit or less), eagerly below: region to
    region, the two eager copies are quicker up to about 20 KiB."""
    other = _copying_peer(comm)
    if other is None:
        return
    eager = comm._engine.eager_limit
    sizes = [n for n in (24576 - 8, 24576, eager) if _copy_min(comm) <= n <= eager]
    for n in sizes:
        if comm.rank == 0:
            mem = MPI.Alloc_mem(n)
            try:
                np.frombuffer(mem, np.uint8)[:] = _pattern(n, 9)
                comm.Send([mem, MPI.BYTE], 1, 2)
            finally:
                MPI.Free_mem(mem)
        else:
            before = _messages_copied(comm, other)
            got = np.zeros(n, np.uint8)
            comm.Recv(got, 0, 2)
            assert np.array_equal(got, _pattern(n, 9))
            assert _messages_copied(comm, other) == before + (n >= 24576), n


@pytest.mark.parametrize("call", ["Allgather", "Alltoall", "Bcast"])
def test_collective_exchange_steps_copy_large_blocks(comm, call):
    """Alltoall's steps (send to one rank, receive from another) announce
    a block of copy_min bytes or more to a peer that copies from our
    memory, receive, then wait: one copy a block; Bcast's parents announce
    it to every child, then wait; Allgather's first step (each rank's own
    block, from the caller's buffer) too, its later ones stay eager.  The
    same results as Open MPI's."""
    _every_pair_copies(comm)
    from mpi4py import MPI as native
    for n in (_copy_min(comm) - 8, _copy_min(comm), _limits(comm)[0]):
        items = n // 8
        before = _messages_copied(comm)
        if call == "Bcast":
            root = comm.size - 1
            got = np.arange(items, dtype="f8") + n if comm.rank == root else np.zeros(items)
            comm.Bcast(got, root)
            assert np.array_equal(got, np.arange(items, dtype="f8") + n)
            expected = 0 if comm.rank == root else 1
        else:
            send = np.arange(comm.size * items, dtype="f8") + 1000 * comm.rank
            mine = send[:items] if call == "Allgather" else send
            got = np.zeros(comm.size * items)
            getattr(comm, call)(mine, got)
            want = np.zeros_like(got)
            getattr(native.COMM_WORLD, call)(mine, want)
            assert np.array_equal(got, want)
            # Allgather's first step sends each rank's own block from the
            # caller's buffer; the blocks forwarded later go eagerly.
            expected = comm.size - 1 if call == "Alltoall" else 1
        copies = _messages_copied(comm) - before
        assert copies == (expected if n >= _copy_min(comm) else 0), (n, copies)


@pytest.mark.parametrize("call", ["Ialltoall", "Neighbor_alltoall", "Iallreduce"])
def test_schedules_copy_the_callers_large_blocks(comm, call):
    """The schedules that send each block once from the caller's buffer
    (Alltoall family, neighbourhood collectives) announce blocks of
    copy_min bytes or more to peers that copy from our memory, unless the
    ranks outnumber the cores; the others (here Iallreduce) stay eager.
    The same results as Open MPI's."""
    _every_pair_copies(comm)
    from mpi4py import MPI as native
    items = _limits(comm)[0] // 8
    before = _messages_copied(comm)
    if call == "Neighbor_alltoall":
        ours, theirs = (c.Create_cart([comm.size], [True]) for c in (comm, native.COMM_WORLD))
        send = np.arange(2 * items, dtype="f8") + 1000 * comm.rank
        got, want = np.zeros(2 * items), np.zeros(2 * items)
        ours.Neighbor_alltoall(send, got)
        theirs.Neighbor_alltoall(send, want)
        ours.Free()
        theirs.Free()
        blocks = 2
    else:
        # (Iallreduce: one eager limit in all, not over it.)
        count = items if call == "Iallreduce" else comm.size * items
        send = np.arange(count, dtype="f8") + 1000 * comm.rank
        got, want = np.zeros_like(send), np.zeros_like(send)
        getattr(comm, call)(send, got).Wait()
        getattr(native.COMM_WORLD, call)(send, want).Wait()
        blocks = comm.size - 1
    assert np.array_equal(got, want)
    copies = _messages_copied(comm) - before
    copied = call != "Iallreduce" and not comm._engine.oversubscribed
    assert copies == (blocks if copied else 0), copies
