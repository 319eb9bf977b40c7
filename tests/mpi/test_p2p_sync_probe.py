"""Synchronous sends, probes and persistent requests on their one-call paths:
MPI's semantics (a synchronous send completes only once matched, probes
leave the message for the receive that matches it, status fields) whichever
path a message takes (straight from the ring, the unexpected queue, a
posted receive)."""
import numpy as np
import pytest

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=2)

SIZES = [0, 8, 1000, 65536, 200000]     # eager, and rendezvous past the eager limit


def _pair(comm):
    """Ranks 0 and 1 play; the others (with -n 3) only take part in barriers."""
    return comm.rank if comm.rank < 2 else None


@pytest.mark.parametrize("nbytes", SIZES)
def test_issend_completes_only_once_matched(comm, nbytes):
    me = _pair(comm)
    data = np.arange(nbytes, dtype="u1")
    if me == 0:
        req = comm.Issend(data, 1, 21)
        # Rank 1 has the message in view but has not received it yet.
        comm.Recv(bytearray(1), 1, 22)
        assert not req.Test()
        comm.Send(bytearray(1), 1, 23)
        req.Wait()
    elif me == 1:
        comm.Probe(0, 21)
        comm.Send(bytearray(1), 0, 22)
        comm.Recv(bytearray(1), 0, 23)
        got = np.empty(nbytes, "u1")
        status = MPI.Status()
        comm.Recv(got, 0, 21, status)
        assert (got == data).all()
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == \
            (0, 21, nbytes)
    comm.Barrier()


@pytest.mark.parametrize("nbytes", [8, 1000])
def test_ssend_ping_pong_and_from_the_unexpected_queue(comm, nbytes):
    me = _pair(comm)
    data = np.arange(nbytes, dtype="u1")
    got = np.empty_like(data)
    for _ in range(50):
        if me == 0:
            comm.Ssend(data, 1, 5)
            comm.Recv(got, 1, 5)
            assert (got == data).all()
        elif me == 1:
            comm.Recv(got, 0, 5)
            comm.Ssend(got, 0, 5)
    # A synchronous message that waited in the unexpected queue (the barrier's
    # progress put it there) is acknowledged when it is received.
    if me == 0:
        req = comm.Issend(data, 1, 6)
    comm.Barrier()
    if me == 1:
        comm.Recv(got, 0, 6)
        assert (got == data).all()
    if me == 0:
        req.Wait()
    comm.Barrier()


def test_ssend_and_issend_objects(comm):
    me = _pair(comm)
    if me == 0:
        comm.ssend({"a": 1}, 1, 7)
        req = comm.issend([1, 2, 3], 1, 8)
        assert comm.recv(source=1, tag=9) == "done"
        req.wait()
    elif me == 1:
        assert comm.recv(source=0, tag=7) == {"a": 1}
        assert comm.recv(source=0, tag=8) == [1, 2, 3]
        comm.send("done", 0, 9)
    comm.Barrier()


def test_issend_irecv_exchange(comm):
    """Both sides post a receive and a synchronous send, then wait for both."""
    left, right = (comm.rank - 1) % comm.size, (comm.rank + 1) % comm.size
    for n in (8, 1000, 100000):
        out = np.full(n, comm.rank, "i1")
        got = np.empty(n, "i1")
        MPI.Request.Waitall([comm.Irecv(got, left, 3), comm.Issend(out, right, 3)])
        assert (got == left).all()


def test_probes_leave_the_message_and_report_its_envelope(comm):
    me = _pair(comm)
    if me == 0:
        comm.Send(np.arange(3, dtype="f8"), 1, 11)
        comm.Issend(np.arange(5, dtype="f8"), 1, 12).Wait()
    elif me == 1:
        status = MPI.Status()
        comm.Probe(0, 11, status)
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.DOUBLE)) == \
            (0, 11, 3)
        # Probing again finds the same message; a probe of another tag does not.
        while not comm.Iprobe(MPI.ANY_SOURCE, 12, status):
            pass
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.DOUBLE)) == \
            (0, 12, 5)
        assert comm.Iprobe(0, 11, status) and status.Get_tag() == 11
        assert comm.Iprobe(0, MPI.ANY_TAG, status) and status.Get_tag() == 11
        got = np.empty(3)
        comm.Recv(got, 0, MPI.ANY_TAG)
        assert (got == np.arange(3)).all()
        got = np.empty(5)
        comm.Recv(got, 0, 12)
        assert (got == np.arange(5)).all()
        assert not comm.Iprobe(0, MPI.ANY_TAG)
    comm.Barrier()


def test_probe_does_not_see_a_message_a_posted_receive_takes(comm):
    me = _pair(comm)
    if me == 1:
        got = np.zeros(2)
        req = comm.Irecv(got, 0, 13)
    comm.Barrier()
    if me == 0:
        comm.Send(np.array([1.0, 2.0]), 1, 13)
    comm.Barrier()
    if me == 1:
        # The message is in the ring (sent before the barrier), but it is the
        # posted receive's: no probe may report it.
        assert not comm.Iprobe(0, 13)
        assert comm.Improbe(0, 13) is None
        req.Wait()
        assert list(got) == [1.0, 2.0]
    comm.Barrier()


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("nbytes", SIZES)
def test_matched_probe_receives(comm, sync, nbytes):
    me = _pair(comm)
    data = np.arange(nbytes, dtype="u1")
    if me == 0:
        req = (comm.Issend if sync else comm.Isend)(data, 1, 14)
        comm.send(("x", nbytes), 1, 15)
        req.Wait()
    elif me == 1:
        status = MPI.Status()
        msg = comm.Mprobe(0, 14, status)
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == \
            (0, 14, nbytes)
        # The matched message is out of reach of other receives and probes.
        assert not comm.Iprobe(0, 14)
        message = None
        while message is None:
            message = comm.improbe(0, 15)
        got = np.empty(nbytes, "u1")
        status = MPI.Status()
        msg.Recv(got, status)
        assert (got == data).all()
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == \
            (0, 14, nbytes)
        assert message.recv() == ("x", nbytes)
        assert not msg and not message
    comm.Barrier()


def test_matched_probe_truncation_is_an_error(comm):
    me = _pair(comm)
    if me == 0:
        comm.Send(np.arange(10, dtype="u1"), 1, 16)
    elif me == 1:
        msg = comm.Mprobe(0, 16)
        with pytest.raises(MPI.Exception) as excinfo:
            msg.Recv(np.empty(4, "u1"))
        assert excinfo.value.Get_error_class() == MPI.ERR_TRUNCATE
    comm.Barrier()


def test_any_source_probes(comm):
    if comm.rank == 0:
        seen = set()
        for _ in range(comm.size - 1):
            status = MPI.Status()
            msg = comm.Mprobe(MPI.ANY_SOURCE, 17, status)
            value = msg.recv()
            assert value == status.Get_source() and value not in seen
            seen.add(value)
        assert seen == set(range(1, comm.size))
    else:
        comm.ssend(comm.rank, 0, 17)
    comm.Barrier()


@pytest.mark.parametrize("init", ["Send_init", "Ssend_init", "Bsend_init", "Rsend_init"])
@pytest.mark.parametrize("nbytes", [8, 1000, 200000])
def test_persistent_rounds(comm, init, nbytes):
    left, right = (comm.rank - 1) % comm.size, (comm.rank + 1) % comm.size
    out = np.zeros(nbytes, "u1")
    got = np.empty(nbytes, "u1")
    recv = comm.Recv_init(got, left, 18)
    send = getattr(comm, init)(out, right, 18)
    comm.Barrier()          # ready mode: every receive is posted before the sends
    for k in range(5):
        out[:] = (comm.rank + k) % 256
        recv.Start()
        comm.Barrier()
        send.Start()
        status = MPI.Status()
        MPI.Request.Waitall([recv, send], [status, MPI.Status()])
        assert (got == (left + k) % 256).all()
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == \
            (left, 18, nbytes)
        assert recv and send        # inactive, not null
    recv.Free()
    send.Free()
    comm.Barrier()


def test_persistent_any_source_and_proc_null(comm):
    got = np.zeros(1)
    recv = comm.Recv_init(got, MPI.ANY_SOURCE, MPI.ANY_TAG)
    null = comm.Send_init(np.ones(1), MPI.PROC_NULL, 0)
    for _ in range(3):
        recv.Start()
        null.Start()
        comm.Send(np.array([float(comm.rank)]), (comm.rank + 1) % comm.size, 19)
        status = MPI.Status()
        recv.Wait(status)
        null.Wait()
        assert got[0] == (comm.rank - 1) % comm.size == status.Get_source()
        assert status.Get_tag() == 19
        comm.Barrier()
    recv.Free()
    null.Free()


@pytest.mark.parametrize("nbytes", [8, 1000, 200000])
def test_sendrecv_replace(comm, nbytes):
    left, right = (comm.rank - 1) % comm.size, (comm.rank + 1) % comm.size
    buf = np.full(nbytes // 8, float(comm.rank))
    status = MPI.Status()
    comm.Sendrecv_replace(buf, right, 20, left, 20, status)
    assert (buf == left).all()
    assert (status.Get_source(), status.Get_tag()) == (left, 20)
    buf = np.full(2, float(comm.rank))
    comm.Sendrecv_replace([buf, 1, MPI.DOUBLE], right, 20, left, 20)
    assert list(buf) == [left, comm.rank]
