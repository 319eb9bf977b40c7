"""Point-to-point tests of the ivmpi communicator under a real launcher.

    mpirun --oversubscribe -n N python -m pytest --with-mpi tests/mpi/test_p2p.py

for N = 2, 3, 4.  Most tests use a ring: every rank sends to the next rank
and receives from the previous one, so each rank both sends and receives at
every size.  Blocking sends of large messages are ordered (rank 0 sends
first, the others receive first) because they may wait for the receiver, as
in MPI.
"""
import time

import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI, layout

pytestmark = pytest.mark.mpi(min_size=2)

SIZE = _native.COMM_WORLD.Get_size()
# The default rings (1 MiB) take eager messages up to the layout's maximum.
EAGER_LIMIT = layout.MAX_EAGER
# A rendezvous payload is streamed in chunks through a ring of 1 MiB by default.
SMALL, LARGE = 100, 200_000


def peers(comm):
    return (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size


def ordered(comm, send, recv):
    """Blocking send and receive around the ring without a deadlock."""
    if comm.rank == 0:
        send()
        return recv()
    got = recv()
    send()
    return got


def eventually(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
    return True


def error_class(excinfo):
    return excinfo.value.Get_error_class()


# --- pickled objects ------------------------------------------------------------

def obj_for(rank, big=False):
    return {"from": rank, "items": list(range(rank + 3)), "blob": bytes([rank]) * (LARGE if big else 10)}


@pytest.mark.parametrize("big", [False, True], ids=["eager", "rendezvous"])
def test_send_recv_object(comm, big):
    nxt, prv = peers(comm)
    status = MPI.Status()
    got = ordered(comm, lambda: comm.send(obj_for(comm.rank, big), nxt, tag=7),
                  lambda: comm.recv(source=prv, tag=7, status=status))
    assert got == obj_for(prv, big)
    assert (status.Get_source(), status.Get_tag()) == (prv, 7)


@pytest.mark.parametrize("big", [False, True], ids=["eager", "rendezvous"])
def test_isend_irecv_object(comm, big):
    nxt, prv = peers(comm)
    rreq = comm.irecv(source=prv, tag=3)
    sreq = comm.isend(obj_for(comm.rank, big), nxt, tag=3)
    assert rreq.wait() == obj_for(prv, big)
    assert sreq.wait() is None
    assert rreq == MPI.REQUEST_NULL and sreq == MPI.REQUEST_NULL


def test_recv_any_source_any_tag_object(comm):
    nxt, prv = peers(comm)
    sreq = comm.isend(("hello", comm.rank), nxt, tag=40 + comm.rank)
    status = MPI.Status()
    got = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
    sreq.wait()
    assert got == ("hello", prv)
    assert status.source == prv and status.tag == 40 + prv


@pytest.mark.parametrize("big", [False, True], ids=["eager", "rendezvous"])
def test_issend_waits_for_the_receiver(comm, big):
    nxt, prv = peers(comm)
    sreq = comm.issend(obj_for(comm.rank, big), nxt, tag=11)
    # The receiver posts its receive only after the barrier, so a
    # synchronous send cannot have completed before it.
    for _ in range(20):
        flag, _ = sreq.test()
        assert not flag
    comm.Barrier()
    assert comm.recv(source=prv, tag=11) == obj_for(prv, big)
    assert sreq.wait() is None


def test_ssend_object(comm):
    nxt, prv = peers(comm)
    got = ordered(comm, lambda: comm.ssend([comm.rank] * 5, nxt, tag=2),
                  lambda: comm.recv(source=prv, tag=2))
    assert got == [prv] * 5


@pytest.mark.parametrize("big", [False, True], ids=["eager", "rendezvous"])
def test_sendrecv_object(comm, big):
    nxt, prv = peers(comm)
    status = MPI.Status()
    got = comm.sendrecv(obj_for(comm.rank, big), dest=nxt, sendtag=5, source=prv, recvtag=5,
                        status=status)
    assert got == obj_for(prv, big)
    assert status.Get_source() == prv


def test_probe_and_iprobe_object(comm):
    nxt, prv = peers(comm)
    assert comm.iprobe(source=prv, tag=99) is False
    comm.Barrier()
    sreq = comm.isend("probed", nxt, tag=20 + comm.rank)
    status = MPI.Status()
    assert comm.probe(source=prv, tag=MPI.ANY_TAG, status=status) is True
    assert (status.source, status.tag) == (prv, 20 + prv)
    assert status.Get_count() > 0
    # A probe does not receive: the message is still there for iprobe and recv.
    assert eventually(lambda: comm.iprobe(source=MPI.ANY_SOURCE, tag=20 + prv))
    assert comm.recv(source=prv, tag=20 + prv) == "probed"
    assert comm.iprobe(source=prv, tag=20 + prv) is False
    sreq.wait()


def test_mprobe_takes_the_message(comm):
    nxt, prv = peers(comm)
    reqs = [comm.isend(("first", comm.rank), nxt, tag=8), comm.isend(("second", comm.rank), nxt, tag=8)]
    status = MPI.Status()
    message = comm.mprobe(source=prv, tag=8, status=status)
    assert status.source == prv and status.tag == 8
    # The matched message belongs to `message`: a plain receive gets the next one.
    assert comm.recv(source=prv, tag=8) == ("second", prv)
    assert message.recv() == ("first", prv)
    MPI.Request.waitall(reqs)


def test_improbe_and_message_irecv(comm):
    nxt, prv = peers(comm)
    assert comm.improbe(source=prv, tag=9) is None
    comm.Barrier()
    sreq = comm.isend({"x": comm.rank}, nxt, tag=9)
    found = []
    assert eventually(lambda: found.append(comm.improbe(source=prv, tag=9)) or found[-1] is not None)
    assert found[-1].irecv().wait() == {"x": prv}
    sreq.wait()


def test_lowercase_test_returns_the_object(comm):
    nxt, prv = peers(comm)
    rreq = comm.irecv(source=prv, tag=4)
    comm.isend(("t", comm.rank), nxt, tag=4).wait()
    results = []
    assert eventually(lambda: results.append(rreq.test()) or results[-1][0])
    assert results[-1] == (True, ("t", prv))


def test_lowercase_waitall_testall_waitany(comm):
    nxt, prv = peers(comm)
    n = 6
    rreqs = [comm.irecv(source=prv, tag=t) for t in range(n)]
    sreqs = [comm.isend((t, comm.rank), nxt, tag=t) for t in reversed(range(n))]
    assert MPI.Request.waitall(rreqs) == [(t, prv) for t in range(n)]
    assert MPI.Request.waitall(sreqs) == [None] * n

    rreqs = [comm.irecv(source=prv, tag=t) for t in range(n)]
    sreqs = [comm.isend(t * 10, nxt, tag=t) for t in range(n)]
    results = []
    assert eventually(lambda: results.append(MPI.Request.testall(rreqs)) or results[-1][0])
    assert results[-1] == (True, [t * 10 for t in range(n)])
    MPI.Request.waitall(sreqs)

    rreqs = [comm.irecv(source=prv, tag=t) for t in range(n)]
    sreqs = [comm.isend(t + 100, nxt, tag=t) for t in range(n)]
    seen = {}
    for _ in range(n):
        index, obj = MPI.Request.waitany(rreqs)
        assert index not in seen
        seen[index] = obj
    assert seen == {t: t + 100 for t in range(n)}
    assert MPI.Request.waitany(rreqs) == (MPI.UNDEFINED, None)
    MPI.Request.waitall(sreqs)


# --- buffers --------------------------------------------------------------------

DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8", "c8", "c16", "?", "g"]


def typed(dtype, n, seed):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, n, endpoint=True, dtype=dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_Send_Recv_every_dtype(comm, dtype):
    nxt, prv = peers(comm)
    n = 1000
    out = typed(dtype, n, comm.rank)
    got = np.zeros(n, dtype)
    status = MPI.Status()
    ordered(comm, lambda: comm.Send(out, nxt, tag=1), lambda: comm.Recv(got, prv, 1, status))
    np.testing.assert_array_equal(got, typed(dtype, n, prv))
    datatype = MPI._typedict[np.dtype(dtype).char]
    assert status.Get_source() == prv and status.Get_tag() == 1
    assert status.Get_count(datatype) == n and status.Get_elements(datatype) == n
    assert status.Get_count() == n * np.dtype(dtype).itemsize
    assert status.Get_error() == MPI.SUCCESS
    assert (status.source, status.tag, status.count) == (prv, 1, n * np.dtype(dtype).itemsize)


def test_buffer_spec_forms(comm):
    nxt, prv = peers(comm)
    out = np.arange(10, dtype="f8") + comm.rank * 100
    got = np.zeros(10)
    ordered(comm, lambda: comm.Send([out, MPI.DOUBLE], nxt, 1), lambda: comm.Recv([got, MPI.DOUBLE], prv, 1))
    np.testing.assert_array_equal(got, np.arange(10) + prv * 100)

    # [buf, count, datatype]: only the first `count` elements travel / are written.
    ints = np.arange(20, dtype="i4") + comm.rank * 1000
    into = np.full(20, -1, dtype="i4")
    status = MPI.Status()
    ordered(comm, lambda: comm.Send([ints, 5, MPI.INT], nxt, 2),
            lambda: comm.Recv([into, 12, MPI.INT], prv, 2, status))
    np.testing.assert_array_equal(into[:5], np.arange(5) + prv * 1000)
    assert (into[5:] == -1).all()
    assert status.Get_count(MPI.INT) == 5 and status.Get_elements(MPI.BYTE) == 20


@pytest.mark.parametrize("nbytes", [SMALL, LARGE], ids=["eager", "rendezvous"])
def test_Isend_Irecv_Wait_status(comm, pattern, nbytes):
    nxt, prv = peers(comm)
    got = np.zeros(nbytes, np.uint8)
    rreq = comm.Irecv(got, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
    sreq = comm.Isend(pattern(nbytes, comm.rank), nxt, tag=30 + comm.rank)
    status = MPI.Status()
    assert rreq.Wait(status) is True
    assert sreq.Wait() is True
    np.testing.assert_array_equal(got, pattern(nbytes, prv))
    assert (status.source, status.tag, status.Get_count(MPI.BYTE)) == (prv, 30 + prv, nbytes)
    assert rreq == MPI.REQUEST_NULL and sreq == MPI.REQUEST_NULL


@pytest.mark.parametrize("nbytes", [SMALL, LARGE], ids=["eager", "rendezvous"])
def test_Ssend_Issend(comm, pattern, nbytes):
    nxt, prv = peers(comm)
    got = np.zeros(nbytes, np.uint8)
    ordered(comm, lambda: comm.Ssend(pattern(nbytes, comm.rank), nxt, 1), lambda: comm.Recv(got, prv, 1))
    np.testing.assert_array_equal(got, pattern(nbytes, prv))

    sreq = comm.Issend(pattern(nbytes, comm.rank + 50), nxt, 2)
    assert not any(sreq.Test() for _ in range(20))   # nobody receives before the barrier
    comm.Barrier()
    comm.Recv(got, prv, 2)
    sreq.Wait()
    np.testing.assert_array_equal(got, pattern(nbytes, prv + 50))


@pytest.mark.parametrize("nbytes", [SMALL, LARGE], ids=["eager", "rendezvous"])
def test_Sendrecv_and_Sendrecv_replace(comm, pattern, nbytes):
    nxt, prv = peers(comm)
    got = np.zeros(nbytes, np.uint8)
    status = MPI.Status()
    comm.Sendrecv(pattern(nbytes, comm.rank), nxt, 6, got, prv, 6, status)
    np.testing.assert_array_equal(got, pattern(nbytes, prv))
    assert status.Get_source() == prv and status.Get_count() == nbytes

    buf = pattern(nbytes, comm.rank + 7).copy()
    comm.Sendrecv_replace(buf, nxt, 7, prv, 7, status)
    np.testing.assert_array_equal(buf, pattern(nbytes, prv + 7))
    assert status.Get_tag() == 7


def test_Probe_Iprobe_Mprobe(comm):
    nxt, prv = peers(comm)
    assert comm.Iprobe(prv, 77) is False
    comm.Barrier()
    sreqs = [comm.Isend(np.full(17, comm.rank, "i8"), nxt, 77),
             comm.Isend(np.full(3, comm.rank + 10, "i8"), nxt, 78)]
    status = MPI.Status()
    comm.Probe(prv, 77, status)
    assert status.Get_count(MPI.INT64_T) == 17 and status.Get_source() == prv
    assert eventually(lambda: comm.Iprobe(MPI.ANY_SOURCE, 78, status))
    assert status.Get_count(MPI.INT64_T) == 3 and status.Get_tag() == 78

    message = comm.Mprobe(prv, MPI.ANY_TAG, status)
    assert status.Get_tag() == 77
    got = np.zeros(17, "i8")
    message.Recv(got, status)
    np.testing.assert_array_equal(got, prv)
    assert status.Get_count(MPI.INT64_T) == 17

    found = []
    assert eventually(lambda: found.append(comm.Improbe(prv, 78)) or found[-1] is not None)
    got = np.zeros(3, "i8")
    found[-1].Irecv(got).Wait()
    np.testing.assert_array_equal(got, prv + 10)
    MPI.Request.Waitall(sreqs)


def test_persistent_requests_several_rounds(comm):
    nxt, prv = peers(comm)
    small_out, small_in = np.zeros(4, "i4"), np.zeros(4, "i4")
    big_out, big_in = np.zeros(LARGE // 8, "f8"), np.zeros(LARGE // 8, "f8")
    requests = [comm.Recv_init(small_in, prv, 1), comm.Recv_init(big_in, prv, 2),
                comm.Send_init(small_out, nxt, 1), comm.Send_init(big_out, nxt, 2)]
    for round_ in range(4):
        # The persistent sends read the buffers' contents at each Start.
        small_out[:] = [comm.rank, round_, 7, -1]
        big_out[:] = np.arange(big_out.size) * (round_ + 1) + comm.rank
        if round_ % 2:
            MPI.Prequest.Startall(requests)
        else:
            for req in requests:
                req.Start()
        MPI.Request.Waitall(requests)
        np.testing.assert_array_equal(small_in, [prv, round_, 7, -1])
        np.testing.assert_array_equal(big_in, np.arange(big_in.size) * (round_ + 1) + prv)
    for req in requests:
        req.Free()


# --- requests -------------------------------------------------------------------

def test_cancel_unmatched_Irecv(comm):
    nxt, prv = peers(comm)
    buf = np.full(4, -1, "i4")
    req = comm.Irecv(buf, prv, tag=555)
    req.Cancel()
    status = MPI.Status()
    req.Wait(status)
    assert status.Is_cancelled() and status.cancelled
    assert req == MPI.REQUEST_NULL
    # The cancelled receive must not take the next message with its tag.
    comm.Barrier()
    sreq = comm.Isend(np.full(4, comm.rank, "i4"), nxt, tag=555)
    got = np.zeros(4, "i4")
    comm.Recv(got, prv, 555, status)
    assert not status.Is_cancelled()
    np.testing.assert_array_equal(got, prv)
    assert (buf == -1).all()
    sreq.Wait()


def test_free_send_request_still_delivers(comm):
    nxt, prv = peers(comm)
    out = np.full(8, comm.rank, "i8")
    req = comm.Isend(out, nxt, 3)
    req.Free()
    assert req == MPI.REQUEST_NULL
    assert req.Wait() is True          # a null request: returns at once
    got = np.zeros(8, "i8")
    comm.Recv(got, prv, 3)
    np.testing.assert_array_equal(got, prv)
    # Lowercase free, and Get_status, which completes nothing.
    req = comm.isend(("freed", comm.rank), nxt, 4)
    req.free()
    rreq = comm.irecv(source=prv, tag=4)
    status = MPI.Status()
    assert eventually(lambda: rreq.Get_status(status))
    assert status.Get_source() == prv and rreq != MPI.REQUEST_NULL
    assert rreq.get_status() is True
    assert rreq.wait() == ("freed", prv)


def test_Waitall_Waitany_Waitsome_Testall_Testany(comm):
    nxt, prv = peers(comm)
    n = 5
    bufs = [np.zeros(3, "i4") for _ in range(n)]

    def post():
        rreqs = [comm.Irecv(bufs[t], prv, t) for t in range(n)]
        sreqs = [comm.Isend(np.array([comm.rank, t, 9], "i4"), nxt, t) for t in range(n)]
        return rreqs, sreqs

    def check():
        for t in range(n):
            np.testing.assert_array_equal(bufs[t], [prv, t, 9])
            bufs[t][:] = 0

    rreqs, sreqs = post()
    statuses = [MPI.Status() for _ in range(n)]
    assert MPI.Request.Waitall(rreqs, statuses) is True
    assert [s.Get_tag() for s in statuses] == list(range(n))
    assert all(r == MPI.REQUEST_NULL for r in rreqs)
    MPI.Request.Waitall(sreqs)
    check()

    rreqs, sreqs = post()
    done = set()
    status = MPI.Status()
    for _ in range(n):
        index = MPI.Request.Waitany(rreqs, status)
        assert index not in done and status.Get_tag() == index
        done.add(index)
    assert MPI.Request.Waitany(rreqs) == MPI.UNDEFINED
    MPI.Request.Waitall(sreqs)
    check()

    rreqs, sreqs = post()
    done = []
    while True:
        indices = MPI.Request.Waitsome(rreqs)
        if indices is None:
            break
        assert indices and not set(indices) & set(done)
        done += indices
    assert sorted(done) == list(range(n))
    MPI.Request.Waitall(sreqs)
    check()

    rreqs, sreqs = post()
    assert eventually(lambda: MPI.Request.Testall(rreqs))
    MPI.Request.Waitall(sreqs)
    check()

    rreqs, sreqs = post()
    done = set()

    def any_done():
        index, flag = MPI.Request.Testany(rreqs)
        if flag and index != MPI.UNDEFINED:
            done.add(index)
        return len(done) == n
    assert eventually(any_done)
    assert MPI.Request.Testany(rreqs) == (MPI.UNDEFINED, True)
    MPI.Request.Waitall(sreqs)
    check()


def test_Testany_without_completion(comm):
    nxt, prv = peers(comm)
    req = comm.Irecv(np.zeros(1), prv, tag=4242)
    assert MPI.Request.Testany([req]) == (MPI.UNDEFINED, False)
    assert MPI.Request.Testall([req]) is False
    assert req.Test() is False
    comm.Barrier()
    comm.Send(np.zeros(1), nxt, tag=4242)
    req.Wait()


def test_request_null_after_completion(comm):
    nxt, prv = peers(comm)
    rreq = comm.Irecv(np.zeros(2), prv, 1)
    comm.Send(np.ones(2), nxt, 1)
    rreq.Wait()
    assert rreq == MPI.REQUEST_NULL
    status = MPI.Status()
    # Waiting on a null request returns at once with an empty status.
    assert rreq.Wait(status) is True
    assert (status.Get_source(), status.Get_tag()) == (MPI.ANY_SOURCE, MPI.ANY_TAG)
    assert status.Get_count() == 0
    assert rreq.Test() is True
    assert MPI.Request.Waitall([rreq, MPI.REQUEST_NULL]) is True


# --- semantics ------------------------------------------------------------------

ORDER_SIZES = [0, 1, 300, EAGER_LIMIT, EAGER_LIMIT + 1, 70_000, 8, 250_000]


def test_non_overtaking_mixed_sizes(comm):
    """Messages between a pair with one tag arrive in the order they were sent,
    whether eager or rendezvous."""
    nxt, prv = peers(comm)
    rounds = 3
    sizes = ORDER_SIZES * rounds
    sreqs = []
    for i, n in enumerate(sizes):
        out = np.full(max(n // 4, 0), i, "i4")
        sreqs.append(comm.Isend(out, nxt, tag=1))
    status = MPI.Status()
    for i, n in enumerate(sizes):
        got = np.full(max(sizes) // 4, -1, "i4")
        comm.Recv(got, prv, MPI.ANY_TAG, status)
        assert status.Get_count(MPI.INT) == n // 4
        assert (got[:n // 4] == i).all(), f"message {i} overtaken"
    MPI.Request.Waitall(sreqs)


def test_non_overtaking_objects_any_tag(comm):
    nxt, prv = peers(comm)
    sreqs = [comm.isend((i, b"z" * (30_000 if i % 3 == 0 else i)), nxt, tag=i % 4) for i in range(40)]
    for i in range(40):
        status = MPI.Status()
        index, _ = comm.recv(source=prv, tag=MPI.ANY_TAG, status=status)
        assert index == i and status.tag == i % 4
    MPI.Request.waitall(sreqs)


def test_any_source_race_every_message_once(comm):
    """Every rank (rank 0 too) sends to rank 0, which receives with ANY_SOURCE."""
    per_rank = 30
    sreqs = [comm.Isend(np.array([comm.rank, i] + [i] * (5000 if i % 5 == 0 else 0), "i4"), 0, tag=2)
             for i in range(per_rank)]
    if comm.rank == 0:
        seen = {r: [] for r in range(comm.size)}
        status = MPI.Status()
        buf = np.zeros(5002, "i4")
        for _ in range(per_rank * comm.size):
            comm.Recv(buf, MPI.ANY_SOURCE, 2, status)
            source, i = buf[:2]
            assert status.Get_source() == source
            assert (buf[2:status.Get_count(MPI.INT)] == i).all()
            seen[source].append(int(i))
        # Exactly once each, and in order per source.
        assert seen == {r: list(range(per_rank)) for r in range(comm.size)}
        assert comm.Iprobe(MPI.ANY_SOURCE, 2) is False
    MPI.Request.Waitall(sreqs)


def test_proc_null(comm):
    buf = np.full(5, 3.0)
    comm.Send(buf, MPI.PROC_NULL, 1)
    comm.Ssend(buf, MPI.PROC_NULL, 1)
    status = MPI.Status()
    comm.Recv(buf, MPI.PROC_NULL, 1, status)
    assert (buf == 3.0).all()
    assert (status.Get_source(), status.Get_tag(), status.Get_count()) == (MPI.PROC_NULL, MPI.ANY_TAG, 0)
    assert comm.recv(source=MPI.PROC_NULL) is None
    assert comm.sendrecv("x", MPI.PROC_NULL, source=MPI.PROC_NULL) is None
    req = comm.Irecv(buf, MPI.PROC_NULL)
    req.Wait(status)
    assert status.Get_source() == MPI.PROC_NULL
    MPI.Request.Waitall([comm.Isend(buf, MPI.PROC_NULL), comm.isend(1, MPI.PROC_NULL)])
    assert comm.Iprobe(MPI.PROC_NULL) is True
    # A matched probe of PROC_NULL gives MESSAGE_NO_PROC, whose receive is empty.
    message = comm.Mprobe(MPI.PROC_NULL)
    assert message == MPI.MESSAGE_NO_PROC and message
    message.Recv(buf, status)
    assert (status.Get_source(), status.Get_tag(), status.Get_count()) == (MPI.PROC_NULL, MPI.ANY_TAG, 0)
    assert comm.mprobe(source=MPI.PROC_NULL).recv() is None
    assert comm.improbe(source=MPI.PROC_NULL).irecv().wait() is None


@pytest.mark.parametrize("nbytes", [SMALL, LARGE], ids=["eager", "rendezvous"])
def test_truncation_is_an_error_and_comm_survives(comm, pattern, nbytes):
    nxt, prv = peers(comm)
    sreq = comm.Isend(pattern(nbytes, comm.rank), nxt, tag=1)
    small = np.zeros(nbytes // 2, np.uint8)
    with pytest.raises(MPI.Exception) as excinfo:
        comm.Recv(small, prv, 1)
    assert error_class(excinfo) == MPI.ERR_TRUNCATE
    sreq.Wait()
    # The communicator still works, with the same sizes.
    got = np.zeros(nbytes, np.uint8)
    comm.Sendrecv(pattern(nbytes, comm.rank + 1), nxt, 2, got, prv, 2)
    np.testing.assert_array_equal(got, pattern(nbytes, prv + 1))


def test_truncated_object_receive_into_small_buffer(comm):
    nxt, prv = peers(comm)
    sreq = comm.Isend(np.arange(10, dtype="i8"), nxt, 1)
    req = comm.Irecv(np.zeros(3, "i8"), prv, 1)
    with pytest.raises(MPI.Exception) as excinfo:
        req.Wait()
    assert error_class(excinfo) == MPI.ERR_TRUNCATE
    sreq.Wait()


def test_invalid_rank_and_tag(comm):
    buf = np.zeros(1)
    for bad in (comm.size, comm.size + 5, -7):
        with pytest.raises(MPI.Exception) as excinfo:
            comm.Send(buf, bad, 0)
        assert error_class(excinfo) == MPI.ERR_RANK
        with pytest.raises(MPI.Exception) as excinfo:
            comm.Irecv(buf, bad, 0)
        assert error_class(excinfo) == MPI.ERR_RANK
    with pytest.raises(MPI.Exception) as excinfo:
        comm.send("x", comm.size)
    assert error_class(excinfo) == MPI.ERR_RANK
    for bad in (-5, MPI.ANY_TAG):
        with pytest.raises(MPI.Exception) as excinfo:
            comm.Send(buf, 0, bad)
        assert error_class(excinfo) == MPI.ERR_TAG
    with pytest.raises(MPI.Exception) as excinfo:
        comm.Recv(buf, 0, -5)
    assert error_class(excinfo) == MPI.ERR_TAG


def test_zero_length_messages(comm):
    nxt, prv = peers(comm)
    status = MPI.Status()
    comm.Sendrecv(np.zeros(0), nxt, 1, np.zeros(0), prv, 1, status)
    assert status.Get_count() == 0 and status.Get_source() == prv
    # A zero-length message into a non-empty buffer leaves it untouched.
    buf = np.full(4, 9, "i4")
    comm.Sendrecv(np.zeros(0, "i4"), nxt, 2, buf, prv, 2, status)
    assert (buf == 9).all() and status.Get_count(MPI.INT) == 0
    assert comm.sendrecv(b"", nxt, 3, source=prv, recvtag=3) == b""


def test_hundreds_of_outstanding_requests(comm):
    nxt, prv = peers(comm)
    n = 400
    inbox = np.full((n, 16), -1, "i8")
    rreqs = [comm.Irecv(inbox[i], prv, tag=i) for i in range(n)]
    outbox = np.arange(n * 16, dtype="i8").reshape(n, 16) + comm.rank * 1_000_000
    # Sent in reverse tag order: each message must find its own receive.
    sreqs = [comm.Isend(outbox[i], nxt, tag=i) for i in reversed(range(n))]
    MPI.Request.Waitall(rreqs + sreqs)
    np.testing.assert_array_equal(inbox, np.arange(n * 16).reshape(n, 16) + prv * 1_000_000)


SIZES = [0, 1, 7, 8, 4095, EAGER_LIMIT, EAGER_LIMIT + 1, 65_537, 1 << 20, (8 << 20) + 3, 64 << 20]


@pytest.mark.parametrize("nbytes", SIZES)
def test_message_sizes(comm, pattern, nbytes):
    nxt, prv = peers(comm)
    got = np.zeros(nbytes, np.uint8)
    rreq = comm.Irecv(got, prv, 1)
    sreq = comm.Isend(pattern(nbytes, comm.rank + nbytes), nxt, 1)
    status = MPI.Status()
    MPI.Request.Waitall([rreq, sreq], [status, MPI.Status()])
    assert status.Get_count() == nbytes
    np.testing.assert_array_equal(got, pattern(nbytes, prv + nbytes))


def test_symmetric_Sendrecv_large(comm, pattern):
    """Every rank sends 16 MiB and receives 16 MiB at once (16 ring's worth): no deadlock."""
    nxt, prv = peers(comm)
    nbytes = 16 << 20
    got = np.zeros(nbytes, np.uint8)
    comm.Sendrecv(pattern(nbytes, comm.rank), nxt, 1, got, prv, 1)
    np.testing.assert_array_equal(got, pattern(nbytes, prv))
    # And both ways at once between neighbours.
    back = np.zeros(nbytes, np.uint8)
    comm.Sendrecv(got, prv, 2, back, nxt, 2)
    np.testing.assert_array_equal(back, pattern(nbytes, comm.rank))


@pytest.mark.parametrize("nbytes", [SMALL, LARGE], ids=["eager", "rendezvous"])
def test_self_messages(comm, pattern, nbytes):
    me = comm.rank
    got = np.zeros(nbytes, np.uint8)
    sreq = comm.Isend(pattern(nbytes, 1), me, 1)
    status = MPI.Status()
    comm.Recv(got, me, 1, status)
    sreq.Wait()
    np.testing.assert_array_equal(got, pattern(nbytes, 1))
    assert status.Get_source() == me

    sreq = comm.Issend(pattern(nbytes, 2), me, 2)
    assert sreq.Test() is False        # synchronous: needs the receive
    comm.Recv(got, MPI.ANY_SOURCE, 2)
    sreq.Wait()
    np.testing.assert_array_equal(got, pattern(nbytes, 2))

    comm.Sendrecv(pattern(nbytes, 3), me, 3, got, me, 3)
    np.testing.assert_array_equal(got, pattern(nbytes, 3))
    comm.send({"me": me}, me, 4)
    assert comm.recv(source=me, tag=4) == {"me": me}


def test_dup_and_split_are_isolated(comm):
    nxt, prv = peers(comm)
    dup = comm.Dup()
    split = comm.Split(0, comm.rank)   # same members, its own context
    sreqs = [comm.isend("on comm", nxt, tag=5), dup.isend("on dup", nxt, tag=5),
             split.isend("on split", nxt, tag=5)]
    # Received in the opposite order: a message never crosses communicators.
    assert split.recv(source=prv, tag=5) == "on split"
    assert dup.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG) == "on dup"
    assert comm.recv(source=prv, tag=5) == "on comm"
    MPI.Request.waitall(sreqs)
    assert dup.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG) is False
    dup.Free()
    split.Free()


@pytest.mark.skipif(SIZE != 2, reason="one 1 GiB transfer, at -n 2 only")
def test_one_gibibyte_message(comm):
    nbytes = 1 << 30
    words = nbytes // 8
    if comm.rank == 0:
        data = np.arange(words, dtype=np.uint64)
        data ^= np.uint64(0x9E3779B97F4A7C15)
        comm.Send(data, 1, tag=1)
        del data
    else:
        data = np.empty(words, dtype=np.uint64)
        status = MPI.Status()
        comm.Recv(data, 0, 1, status)
        assert status.Get_count() == nbytes
        # Checked in slices to keep the memory use at one copy.
        step = 1 << 24
        for start in range(0, words, step):
            expected = np.arange(start, min(start + step, words), dtype=np.uint64)
            expected ^= np.uint64(0x9E3779B97F4A7C15)
            assert np.array_equal(data[start:start + step], expected), f"mismatch in words {start}.."
        del data
