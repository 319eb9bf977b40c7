"""Completing requests and matched messages, as the MPI library does.

    mpirun --oversubscribe -n N python -m pytest --with-mpi tests/mpi/test_request_fast_paths.py

Request.Wait/wait/Waitall/Test/Testall/Waitany/Testany/Waitsome/Testsome,
Prequest.Start/Startall and Message.Recv/recv complete the common case in
one Cython call and leave everything else
(statuses, errors, subclasses, null and inactive handles) to the Python
methods.  One program runs on mpi4py over the MPI library and on ivmpi in
the same processes and must observe the same results, statuses, handles
and errors.
"""
import numpy as np
import pytest
from mpi4py import MPI as native_MPI

from ivmpi import MPI as ivmpi_MPI

pytestmark = pytest.mark.mpi(min_size=2)


def program(comm, MPI):
    rank, size = comm.Get_rank(), comm.Get_size()
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    out = {}
    status = MPI.Status()

    # Nonblocking buffers, one exchange after another, every request
    # completed by Waitall with no statuses.
    for n in (1, 128, 8192):
        sbuf, rbuf = np.arange(n, dtype="i8") + 100 * rank, np.zeros(n, "i8")
        for rounds in range(3):
            reqs = [comm.Irecv(rbuf, prv, 1), comm.Isend(sbuf, nxt, 1)]
            out["Waitall", n, rounds] = (MPI.Request.Waitall(reqs), [bool(r) for r in reqs],
                                         rbuf.tolist())
        reqs = [comm.Irecv(rbuf, prv, 2), comm.Issend(sbuf, nxt, 2)]
        out["Wait each", n] = [r.Wait() for r in reversed(reqs)] + [bool(r) for r in reqs]
        # Null requests in the list.
        req = comm.Irecv(rbuf, prv, 3)
        send = comm.Isend(sbuf, nxt, 3)
        out["Waitall nulls", n] = (MPI.Request.Waitall([MPI.REQUEST_NULL, req, send]),
                                   req == MPI.REQUEST_NULL, send == MPI.REQUEST_NULL)
        # A tuple, and a status list: the statuses are filled.
        statuses = [MPI.Status(), MPI.Status()]
        reqs = (comm.Irecv(rbuf, prv, 4), comm.Isend(sbuf, nxt, 4))
        MPI.Request.Waitall(reqs, statuses)
        out["Waitall statuses", n] = [(s.Get_source(), s.Get_tag(), s.Get_count(MPI.BYTE))
                                      for s in statuses[:1]]
        # Wait with a status.
        req = comm.Irecv(rbuf, prv, 5)
        comm.Send(sbuf, nxt, 5)
        req.Wait(status)
        out["Wait status", n] = (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE))
    # Waiting twice: the second is on a null request.
    req = comm.Irecv(np.zeros(1, "i8"), prv, 6)
    comm.Send(np.ones(1, "i8"), nxt, 6)
    out["Wait twice"] = (req.Wait(), req.Wait(status), status.Get_source(), status.Get_tag())

    # Truncation (Waitall's error is the library's own: see below).
    small = np.zeros(1, "i8")
    req = comm.Irecv(small, prv, 8)
    comm.Send(np.arange(4, dtype="i8"), nxt, 8)
    try:
        req.Wait()
        out["truncated Wait"] = "no error"
    except MPI.Exception as exc:
        out["truncated Wait"] = (exc.Get_error_class() == MPI.ERR_TRUNCATE, bool(req))

    # Objects: isend/irecv completed by wait.
    for obj in (None, b"", 7, {"rank": rank, "data": list(range(50))}):
        rreq = comm.irecv(bytearray(4096), source=prv, tag=9)
        sreq = comm.isend(obj, nxt, 9)
        out["wait", repr(obj)] = (sreq.wait(), rreq.wait(), bool(rreq), rreq.wait())
    # Objects: waitall over nulls and both kinds, test polled until done.
    for obj in (None, 7, {"rank": rank, "data": list(range(5000))}):
        reqs = [MPI.REQUEST_NULL, comm.irecv(source=prv, tag=17), comm.isend(obj, nxt, 17)]
        out["waitall", repr(obj)[:30]] = (MPI.Request.waitall(reqs), [bool(r) for r in reqs])
        rreq, sreq = comm.irecv(source=prv, tag=18), comm.isend((obj, rank), nxt, 18)
        flag, got = rreq.test()
        while not flag:
            flag, got = rreq.test()
        out["test", repr(obj)[:30]] = (got, rreq.test(), sreq.wait(), bool(rreq))
    rreq = comm.irecv(bytearray(4096), source=prv, tag=10)
    comm.send(("status", rank), nxt, 10)
    out["wait status"] = (rreq.wait(status), status.Get_source(), status.Get_tag())

    # Persistent requests: Startall/Waitall rounds, Start/Wait, inactive
    # and freed handles, a Start of an active one.
    sbuf, rbuf = np.zeros(16, "i8"), np.zeros(16, "i8")
    for init in ("Send_init", "Ssend_init", "Bsend_init", "Rsend_init"):
        reqs = [comm.Recv_init(rbuf, prv, 11), getattr(comm, init)(sbuf, nxt, 11)]
        seen = []
        for rounds in range(3):
            sbuf[:] = np.arange(16) * (rounds + 1) + rank
            MPI.Prequest.Startall(reqs)
            MPI.Request.Waitall(reqs)
            seen.append((rbuf.tolist(), [bool(r) for r in reqs],
                         [r == MPI.REQUEST_NULL for r in reqs]))
        for req in reqs:
            req.Start()
        try:
            reqs[0].Start()
            seen.append("started twice")
        except MPI.Exception as exc:
            seen.append(exc.Get_error_class() == MPI.ERR_REQUEST)
        MPI.Request.Waitall(reqs, [MPI.Status(), MPI.Status()])
        seen.append((reqs[0].Wait(status), status.Get_source(), status.Get_tag()))
        for req in reqs:
            req.Free()
        seen.append([bool(r) for r in reqs])
        try:
            MPI.Prequest.Startall(reqs)
            seen.append("started after Free")
        except MPI.Exception as exc:
            seen.append(exc.Get_error_class() == MPI.ERR_REQUEST)
        out["persistent", init] = seen
    # A persistent collective in the same Startall.
    value = np.array([rank + 1.0])
    total = np.zeros(1)
    reqs = [comm.Allreduce_init(value, total), comm.Recv_init(rbuf, prv, 12),
            comm.Send_init(sbuf, nxt, 12)]
    MPI.Prequest.Startall(reqs)
    MPI.Request.Waitall(reqs)
    out["with a collective"] = (total.tolist(), rbuf.tolist())
    for req in reqs:
        req.Free()

    # Matched probes: Message.Recv and Message.recv.
    for n in (8, 4096):
        sent = comm.Isend(np.arange(n // 8, dtype="i8") + rank, nxt, 13)
        message = comm.Mprobe(prv, 13, status)
        probed = (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE))
        got = np.zeros(n // 8, "i8")
        message.Recv(got, status)
        out["Message.Recv", n] = (probed, got.tolist(), status.Get_source(), status.Get_tag(),
                                  status.Get_count(MPI.BYTE), message == MPI.MESSAGE_NULL)
        sent.Wait()
        comm.send(("obj", n, rank), nxt, 14)
        message = comm.mprobe(prv, 14)
        out["Message.recv", n] = (message.recv(status), status.Get_source(), status.Get_tag(),
                                  message == MPI.MESSAGE_NULL)
    # Truncation through Message.Recv.
    comm.Send(np.arange(4, dtype="i8"), nxt, 15)
    message = comm.Mprobe(prv, 15)
    try:
        message.Recv(np.zeros(1, "i8"))
        out["Message.Recv truncated"] = "no error"
    except MPI.Exception as exc:
        out["Message.Recv truncated"] = exc.Get_error_class() == MPI.ERR_TRUNCATE
    # PROC_NULL.
    message = comm.Mprobe(MPI.PROC_NULL, 0, status)
    out["NO_PROC"] = (message.recv(status), status.Get_source(), status.Get_tag(),
                      message == MPI.MESSAGE_NO_PROC)
    req = comm.Irecv(np.zeros(1, "i8"), MPI.PROC_NULL, 0)
    out["PROC_NULL Waitall"] = (MPI.Request.Waitall([req]), req == MPI.REQUEST_NULL)

    # sendrecv of objects, eager and over the limit, any source.
    for obj in (None, ("small", rank), bytes([rank]) * 70_000):
        got = comm.sendrecv(obj, nxt, 16, None, MPI.ANY_SOURCE, MPI.ANY_TAG, status)
        out["sendrecv", repr(obj)[:20]] = (got, status.Get_source(), status.Get_tag(),
                                           status.Get_count())
    out["sendrecv PROC_NULL"] = comm.sendrecv(1, MPI.PROC_NULL, 0, None, MPI.PROC_NULL, 0)

    # Waitany, Testany, Waitsome, Testsome over nulls, an inactive
    # persistent request and pending ones: every active index reported
    # once (in whichever order they complete), then UNDEFINED / None.
    for n in (1, 8192):
        sbuf, rbuf = np.arange(n, dtype="i8") + rank, np.zeros(n, "i8")
        for call in ("Waitany", "Testany", "Waitsome", "Testsome"):
            rbuf[:] = 0
            inactive = comm.Recv_init(np.zeros(1, "i8"), prv, 21)
            reqs = [MPI.REQUEST_NULL, comm.Irecv(rbuf, prv, 20), inactive,
                    comm.Isend(sbuf, nxt, 20), comm.Irecv(np.zeros(1, "i8"), MPI.PROC_NULL, 0)]
            seen, calls = [], 0
            while calls < 10 ** 7:
                calls += 1
                if call == "Waitany":
                    i = MPI.Request.Waitany(reqs)
                    if i == MPI.UNDEFINED:
                        break
                    seen.append(i)
                elif call == "Testany":
                    i, flag = MPI.Request.Testany(reqs)
                    if flag and i == MPI.UNDEFINED:
                        break
                    if flag:
                        seen.append(i)
                else:
                    done = getattr(MPI.Request, call)(reqs)
                    if done is None:
                        break
                    seen.extend(done)
            out[call, n] = (sorted(seen), (rbuf == np.arange(n) + prv).all(),
                            [bool(r) for r in reqs])
            inactive.Free()
        # Test and Testall polled until done.
        req, sent = comm.Irecv(rbuf, prv, 22), comm.Isend(sbuf + 1, nxt, 22)
        while not req.Test():
            pass
        sent.Wait()
        reqs = [comm.Irecv(rbuf[:1], prv, 23), comm.Isend(sbuf[:1], nxt, 23)]
        while not MPI.Request.Testall(reqs):
            pass
        out["Test, Testall", n] = (bool(req), req.Test(), [bool(r) for r in reqs],
                                   (rbuf[1:] == np.arange(1, n) + prv + 1).all())
    # A truncated receive completed by each: the error, and the request null.
    for call in ("Test", "Waitany", "Testany"):
        req = comm.Irecv(np.zeros(1, "i8"), prv, 24)
        comm.Send(np.arange(4, dtype="i8"), nxt, 24)
        try:
            for _ in range(10 ** 7):
                if call == "Test" and req.Test():
                    break
                if call == "Waitany" and MPI.Request.Waitany([req]) is not None:
                    break
                if call == "Testany" and MPI.Request.Testany([MPI.REQUEST_NULL, req])[1]:
                    break
            out["truncated", call] = "no error"
        except MPI.Exception as exc:
            out["truncated", call] = (exc.Get_error_class() == MPI.ERR_TRUNCATE, bool(req))
    comm.Barrier()
    return out


def run(MPI):
    comm = MPI.COMM_WORLD.Dup()
    MPI.Attach_buffer(bytearray(1 << 16))
    try:
        return program(comm, MPI)
    finally:
        MPI.Detach_buffer()
        comm.Barrier()
        comm.Free()


def test_completions_as_the_library():
    expected = run(native_MPI)
    got = run(ivmpi_MPI)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key


def test_fast_completions_are_bound():
    """The methods that do the work are the Cython ones."""
    from ivmpi import _fastcopy
    from ivmpi.request import Message, Prequest, Request
    assert Request.Wait is _fastcopy.request_Wait
    assert Request.wait is _fastcopy.request_wait
    assert Request.Waitall.__func__ is _fastcopy.request_Waitall
    assert Request.Test is _fastcopy.request_Test and Request.test is _fastcopy.request_test
    assert Request.waitall.__func__ is _fastcopy.request_waitall
    for name in ("Testall", "Waitany", "Testany", "Waitsome", "Testsome"):
        assert getattr(Request, name).__func__ is getattr(_fastcopy, f"request_{name}")
    assert Prequest.Start is _fastcopy.prequest_Start
    assert Prequest.Startall.__func__ is _fastcopy.prequest_Startall
    assert Message.Recv is _fastcopy.message_Recv and Message.recv is _fastcopy.message_recv


def test_message_copy_received_once(comm):
    """A copy of a matched message shares it: once either is received the
    other's receive is an error (the library's handles would dangle)."""
    nxt, prv = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    for upper in (True, False):
        if upper:
            comm.Send(np.arange(3, dtype="i8"), nxt, 1)
        else:
            comm.send("x", nxt, 1)
        message = comm.Mprobe(prv, 1)
        copy = ivmpi_MPI.Message(message)
        got = np.zeros(3, "i8")
        if upper:
            copy.Recv(got)
            assert got.tolist() == [0, 1, 2]
        else:
            assert copy.recv() == "x"
        assert copy == ivmpi_MPI.MESSAGE_NULL and message != ivmpi_MPI.MESSAGE_NULL
        with pytest.raises(ivmpi_MPI.Exception) as excinfo:
            message.Recv(got) if upper else message.recv()
        assert excinfo.value.Get_error_class() == ivmpi_MPI.ERR_REQUEST


def test_truncated_waitall_completes_every_request(comm):
    """Waitall completes every request, then raises the truncation (the
    Python path's rule, which the Cython one leaves errors to)."""
    nxt, prv = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    small = np.zeros(1, "i8")
    reqs = [comm.Irecv(small, prv, 7), comm.Isend(np.arange(4, dtype="i8"), nxt, 7),
            comm.Irecv(np.zeros(4, "i8"), prv, 8)]
    comm.Send(np.arange(4, dtype="i8"), nxt, 8)
    with pytest.raises(ivmpi_MPI.Exception) as excinfo:
        ivmpi_MPI.Request.Waitall(reqs)
    assert excinfo.value.Get_error_class() == ivmpi_MPI.ERR_TRUNCATE
    assert [bool(r) for r in reqs] == [False, False, False]


@pytest.mark.parametrize("poll", ["Iprobe", "Improbe", "iprobe", "Test", "Testall", "Testany",
                                  "test"])
def test_polling_loops_give_the_core_away_only_when_ranks_outnumber_cores(comm, poll):
    """A program that polls in a loop (Iprobe, Improbe, Test, ...) for a
    message relayed round the ranks: with more ranks than cores a poll
    that finds nothing gives the core away (sched_yield), as Open MPI's
    progress does when oversubscribed; such a relay through 4 ranks on 2
    cores took about 10 ms a message (a time slice of the pollers
    spinning), against Open MPI's 11 us.  With a core each, polls never
    yield.  The relayed values arrive intact either way."""
    from ivmpi import _fastcopy
    rank, size = comm.Get_rank(), comm.Get_size()
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    got = np.zeros(4, "i8")

    def wait_for_message():
        if poll in ("Iprobe", "iprobe"):
            while not getattr(comm, poll)(prv, 5):
                pass
            comm.Recv(got, prv, 5)
        elif poll == "Improbe":
            message = None
            while message is None:
                message = comm.Improbe(prv, 5)
            message.Recv(got)
        elif poll == "test":
            request = comm.irecv(source=prv, tag=5)
            while True:
                done, value = request.test()
                if done:
                    got[:] = value
                    break
        else:
            request = comm.Irecv(got, prv, 5)
            if poll == "Test":
                while not request.Test():
                    pass
            elif poll == "Testall":
                while not ivmpi_MPI.Request.Testall([request]):
                    pass
            else:
                while not ivmpi_MPI.Request.Testany([request])[1]:
                    pass

    def send(values):
        if poll == "test":
            comm.send(values, nxt, 5)
        else:
            comm.Send(values, nxt, 5)

    before = _fastcopy.idle_yields()
    for k in range(10):
        start = np.arange(4, dtype="i8") + 1000 * k
        if rank == 0:
            send(start)
            wait_for_message()
            assert got.tolist() == (start + size - 1).tolist()
        else:
            wait_for_message()
            send(got + 1)
    yielded = _fastcopy.idle_yields() - before
    everyone = native_MPI.COMM_WORLD.allgather(yielded)
    if comm._engine.oversubscribed:
        # Rank 0 polls right after its send for a message that must pass
        # every other rank first.
        assert sum(everyone) > 0
    else:
        assert everyone == [0] * size


def _set_aside_by_a_probe(comm, values, tag):
    """Rank 1 sends values with tag to rank 0; rank 0 then probes for
    another tag, which moves that frame out of its ring into the unexpected
    messages.  Returns (frames set aside, yields of that probe, yields of a
    second probe that finds nothing at all, whether either found
    anything) on rank 0, None elsewhere.
    The library's barriers order the send before the probes, without a
    frame of ivmpi's own in the ring, and keep the other ranks (whose
    next collective would send rank 0 frames) out until the probes are
    done."""
    from ivmpi import _fastcopy
    rank = comm.Get_rank()
    if rank == 1:
        comm.Send(values, 0, tag)
    native_MPI.COMM_WORLD.Barrier()
    found = None
    if rank == 0:
        # Checked by the caller after the barrier: a rank that failed here
        # would leave the others in it.
        engine = comm._engine
        queued = len(engine.unexpected)
        before = _fastcopy.idle_yields()
        first = comm.Iprobe(1, tag + 1)
        took = _fastcopy.idle_yields() - before
        moved = len(engine.unexpected) - queued
        before = _fastcopy.idle_yields()
        second = comm.Iprobe(1, tag + 1)
        found = moved, took, _fastcopy.idle_yields() - before, first or second
    native_MPI.COMM_WORLD.Barrier()
    return found


def _one_region(comm):
    import ivmpi
    return all(ivmpi.path_to(comm, r) in ("region", "self") for r in range(comm.Get_size()))


def test_a_probe_that_moved_a_frame_keeps_the_core(comm):
    """With more ranks than cores a probe that finds nothing gives the core
    away, as Open MPI's progress does when it handled no event; one that
    took a frame on the way (here a message of another tag, set aside)
    keeps it, as Open MPI's keeps it after an event: the program's next
    call may complete on what moved.  On the code before, both yielded."""
    if not _one_region(comm):
        pytest.skip("ranks 0 and 1 talk through the MPI library")
    values = np.arange(5, dtype="f8")
    found = _set_aside_by_a_probe(comm, values, 31)
    if found is not None:
        moved, took, idle, probed = found
        got = np.zeros(5)
        comm.Recv(got, 1, 31)
        assert got.tolist() == values.tolist()
        assert not probed
        assert moved == 1
        assert took == 0
        assert idle == (1 if comm._fast.spins < 0 else 0)


@pytest.mark.parametrize("source, tag", [(1, 41), (-1, 41), (1, -1)])
def test_a_receive_of_a_message_set_aside_completes_in_one_call(comm, source, tag):
    """An Irecv (and a collective's receive, which posts the same way)
    whose message a probe has already set aside as unexpected is completed
    in C, with the status the engine would give; the engine's receive is
    not called.  One the message does not fit still goes to the engine,
    which reports the truncation."""
    if not _one_region(comm):
        pytest.skip("ranks 0 and 1 talk through the MPI library")
    source = ivmpi_MPI.ANY_SOURCE if source == -1 else source
    tag = ivmpi_MPI.ANY_TAG if tag == -1 else tag
    values = np.arange(6, dtype="i4") + 7
    found = _set_aside_by_a_probe(comm, values, 41)
    if found is None:
        return
    assert found[0] == 1 and not found[3]
    fast = comm._fast
    calls = []
    engine_irecv = fast.engine_irecv

    def counted(*args):
        calls.append(args)
        return engine_irecv(*args)
    fast.engine_irecv = counted
    try:
        got = np.zeros(6, "i4")
        request = comm.Irecv(got, source, tag)
        assert calls == []
        status = ivmpi_MPI.Status()
        assert request.Test(status)
        assert got.tolist() == values.tolist()
        assert (status.Get_source(), status.Get_tag(), status.Get_count(ivmpi_MPI.INT)) == \
            (1, 41, 6)
    finally:
        fast.engine_irecv = engine_irecv


def test_a_receive_too_small_for_a_message_set_aside_reports_truncation(comm):
    if not _one_region(comm):
        pytest.skip("ranks 0 and 1 talk through the MPI library")
    values = np.arange(6, dtype="i4")
    found = _set_aside_by_a_probe(comm, values, 51)
    if found is None:
        return
    small = np.zeros(2, "i4")
    request = comm.Irecv(small, 1, 51)
    with pytest.raises(ivmpi_MPI.Exception) as info:
        request.Wait()
    assert info.value.Get_error_class() == ivmpi_MPI.ERR_TRUNCATE
    assert small.tolist() == [0, 0]
    assert all(m.tag != 51 for m in comm._engine.unexpected)


def _counting(obj, names, calls):
    """Wrap obj's attributes `names` to count their calls in `calls`; the
    wrappers' undo."""
    saved = {name: getattr(obj, name) for name in names}
    for name, call in saved.items():
        def counted(*args, _call=call, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _call(*args, **kwargs)
        setattr(obj, name, counted)
    return lambda: [setattr(obj, name, call) for name, call in saved.items()]


def _rendezvous_set_aside(comm):
    """A probe for one tag past the announcement (RTS) of a message too
    large for the eager path, of another tag, moves it to the unexpected
    messages itself, as the engine's round would, and looks on; the message
    is then received whole (copied from the sender's memory, or streamed).
    When the receiver copied it, the sender's probe, for another tag too,
    takes the clear-to-send that says so, and the send completes.  Before,
    both went to the engine's round in Python (the sparse exchange's large
    rounds spent most of their time there).  The library's barriers keep
    every rank in step (the others' next collective would send frames to
    the probing ranks); everything is checked after the last one, so that
    a failure cannot leave the other ranks waiting in one.  Returns
    whether the receiver copied."""
    from ivmpi import _fastcopy
    if not _one_region(comm):
        pytest.skip("ranks 0 and 1 talk through the MPI library")
    rank = comm.Get_rank()
    n = 3 * comm._engine.eager_limit // 8
    values = np.arange(n, dtype="f8") * 0.5
    calls, seen = {}, {}
    undo = _counting(comm._fast, ["general_Iprobe"], calls)
    try:
        # comm is a Dup of COMM_WORLD: its rank 1 is world rank 1.
        copied = native_MPI.COMM_WORLD.bcast(
            _fastcopy.single_copy_from(1) if rank == 0 else None, root=0)
        if rank == 1:
            request = comm.Isend(values, 0, 61)
        native_MPI.COMM_WORLD.Barrier()
        if rank == 0:
            queued = len(comm._engine.unexpected)
            seen["found"] = comm.Iprobe(1, 62)
            seen["set aside"] = len(comm._engine.unexpected) - queued
            seen["general"] = dict(calls)
            got = np.zeros(n)
            comm.Recv(got, 1, 61)
            seen["data"] = got.tolist() == values.tolist()
        if rank == 1 and not copied:
            request.Wait()          # streams the message as rank 0 receives
        native_MPI.COMM_WORLD.Barrier()
        if rank == 1 and copied:
            # The clear-to-send is in the ring: the probe takes it.
            seen["done before"] = request._op.done
            seen["found"] = comm.Iprobe(0, 63)
            seen["done after"] = request._op.done
            seen["general"] = dict(calls)
        native_MPI.COMM_WORLD.Barrier()
        if rank == 1:
            request.Wait()
    finally:
        undo()
    if rank == 0:
        assert seen == {"found": False, "set aside": 1, "general": {}, "data": True}
    if rank == 1 and copied:
        assert seen == {"done before": False, "found": False, "done after": True,
                        "general": {}}
    return copied


def test_a_probe_sets_a_rendezvous_aside_in_one_call(comm):
    _rendezvous_set_aside(comm)


def test_a_probe_sets_a_streamed_rendezvous_aside_in_one_call(comm, streamed):
    assert not _rendezvous_set_aside(comm)
