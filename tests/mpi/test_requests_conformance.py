"""Requests, persistent requests and messages behave as mpi4py's.

    mpirun --oversubscribe -n N python -m pytest --with-mpi tests/mpi/test_requests_conformance.py

Each check compares ivmpi's object with mpi4py's own where mpi4py can do the
same thing without a peer (null handles, PROC_NULL, messages to self).
"""
import copy
import pickle
import warnings

import pytest
from mpi4py import MPI as _native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=1)


def status():
    s = MPI.Status()
    s.source, s.tag, s.error = 0, 0, MPI.ERR_OTHER
    return s


@pytest.mark.parametrize("cls", ["Request", "Prequest", "Message"])
def test_null_handles(cls):
    ours, theirs = getattr(MPI, cls), getattr(_native, cls)
    null = MPI.MESSAGE_NULL if cls == "Message" else MPI.REQUEST_NULL
    for obj, ref in ((ours(), theirs()), (ours(null), theirs(getattr(_native, null_name(cls))))):
        assert bool(obj) is bool(ref) is False
        assert obj == null and not obj != null
        assert obj == ours() and obj != 1 and not obj == "abc"
        assert obj.handle == ref.handle and obj.toint() == ref.toint() and obj.py2f() == ref.py2f()
        assert type(obj).fromhandle(obj.handle) == obj
        assert type(type(obj).fromint(obj.toint())) is ours
        obj.free()
        assert not obj
    with pytest.raises(TypeError):
        hash(ours())
    with pytest.raises(TypeError):
        ours(1234)
    with pytest.raises(TypeError):
        ours(MPI.Status())


def null_name(cls):
    return "MESSAGE_NULL" if cls == "Message" else "REQUEST_NULL"


def test_request_null_and_message_null_differ():
    assert MPI.REQUEST_NULL != MPI.MESSAGE_NULL
    assert MPI.MESSAGE_NULL != MPI.MESSAGE_NO_PROC
    assert MPI.MESSAGE_NO_PROC == MPI.Message(MPI.MESSAGE_NO_PROC) and MPI.MESSAGE_NO_PROC


def test_pickling_of_predefined_handles():
    for obj in (MPI.REQUEST_NULL, MPI.MESSAGE_NULL, MPI.MESSAGE_NO_PROC):
        assert pickle.loads(pickle.dumps(obj)) is obj
        assert copy.copy(obj) is obj and copy.deepcopy(obj) is obj
        dup = pickle.loads(pickle.dumps(type(obj)(obj)))
        assert type(dup) is type(obj) and dup is not obj and dup == obj


def test_free_and_cancel_of_null_request_are_errors():
    for call in (MPI.Request().Free, MPI.Request().Cancel, MPI.REQUEST_NULL.Free):
        with pytest.raises(MPI.Exception) as info:
            call()
        assert info.value.Get_error_class() == MPI.ERR_REQUEST


def test_null_request_completion():
    req = MPI.Request()
    s = status()
    assert req.Wait(s) is True and (s.source, s.tag, s.error) == (MPI.ANY_SOURCE, MPI.ANY_TAG, 0)
    assert req.Test() is True and req.test() == (True, None) and req.wait() is None
    assert req.Get_status() is True and req.get_status(status()) is True


def test_many_null_requests():
    reqs = [MPI.Request() for _ in range(4)]
    assert MPI.Request.Waitany(reqs) == MPI.UNDEFINED
    assert MPI.Request.waitany(reqs) == (MPI.UNDEFINED, None)
    assert MPI.Request.Testany(reqs) == (MPI.UNDEFINED, True)
    assert MPI.Request.testany(reqs) == (MPI.UNDEFINED, True, None)
    assert MPI.Request.Get_status_any(reqs) == (MPI.UNDEFINED, True)
    assert MPI.Request.Waitsome(reqs) is None and MPI.Request.Testsome(reqs) is None
    assert MPI.Request.waitsome(reqs) == (None, None) and MPI.Request.testsome(reqs) == (None, None)
    assert MPI.Request.Get_status_some(reqs) is None
    assert MPI.Request.waitall(reqs) == [None] * 4 and MPI.Request.testall(reqs) == (True, [None] * 4)
    statuses = []
    assert MPI.Request.Waitall(reqs, statuses) is True and len(statuses) == 4
    assert MPI.Request.Testall(reqs, (status(),)) is True     # a tuple: filled, never grown
    assert MPI.Request.Get_status_all(reqs, [status()]) is True


def test_proc_null_requests_stay_active_until_completed(comm):
    s = status()
    for req in (comm.isend("x", MPI.PROC_NULL), comm.irecv(None, MPI.PROC_NULL),
                comm.Isend(b"", MPI.PROC_NULL), comm.Irecv(bytearray(1), MPI.PROC_NULL)):
        assert req and req != MPI.REQUEST_NULL
        assert req.test(s) == (True, None)
        assert not req and req == MPI.REQUEST_NULL
        assert (s.source, s.tag, s.Get_count()) == (MPI.PROC_NULL, MPI.ANY_TAG, 0)


def test_completed_and_freed_requests_are_null(comm):
    me = comm.rank
    req = comm.irecv(source=me, tag=3)
    assert req and req.test() == (False, None) and req
    comm.send({"a": 1}, dest=me, tag=3)
    assert req.wait() == {"a": 1}
    assert not req and req == MPI.REQUEST_NULL
    req = comm.Irecv(bytearray(4), source=me, tag=4)
    req.Free()
    assert not req and req == MPI.REQUEST_NULL
    comm.Send(b"abcd", dest=me, tag=4)     # the freed receive still takes it
    assert not comm.iprobe(source=me, tag=4)


def test_cancelled_receive(comm):
    req = comm.Irecv(bytearray(4), source=comm.rank, tag=9)
    req.Cancel()
    s = MPI.Status()
    assert req.Get_status(s) and s.Is_cancelled() and req
    req.Wait()
    assert not req


def test_persistent_request_is_inactive_between_rounds(comm):
    me = comm.rank
    buf = bytearray(3)
    req = comm.Recv_init(buf, source=me, tag=5)
    assert isinstance(req, MPI.Prequest) and req and req != MPI.REQUEST_NULL
    s = status()
    assert req.Wait(s) is True and req and s.source == MPI.ANY_SOURCE     # inactive: at once
    for round_ in range(3):
        req.Start()
        comm.Send(bytes([round_] * 3), dest=me, tag=5)
        req.Wait(s)
        assert req and buf == bytes([round_] * 3) and (s.source, s.tag) == (me, 5)
    MPI.Prequest.Startall([req])
    comm.Send(b"end", dest=me, tag=5)
    assert MPI.Request.Waitall([req]) and req
    req.Free()
    assert not req and req == MPI.REQUEST_NULL
    with pytest.raises(MPI.Exception):
        req.Start()
    assert MPI.Prequest(MPI.REQUEST_NULL) == MPI.REQUEST_NULL


def test_persistent_request_handle_round_trip(comm):
    req = comm.Recv_init(bytearray(0), source=comm.rank, tag=0)
    assert MPI.Prequest.fromhandle(req.handle) == req
    assert MPI.Prequest.fromint(req.toint()) == req and MPI.Prequest.f2py(req.py2f()) == req
    req.Free()


def test_waitsome_statuses_and_tuples(comm):
    me = comm.rank
    reqs = [comm.irecv(source=me, tag=i) for i in range(4)]
    assert MPI.Request.testsome(reqs) == ([], [])
    assert MPI.Request.Get_status_some(reqs) == []
    comm.send("b", dest=me, tag=1)
    comm.send("c", dest=me, tag=2)
    while MPI.Request.Get_status_any(reqs)[0] == MPI.UNDEFINED:
        pass
    statuses = []
    idxs, objs = MPI.Request.waitsome(reqs, statuses)
    assert sorted(idxs) == [1, 2] and sorted(objs) == ["b", "c"]
    assert sorted(s.tag for s in statuses) == [1, 2]
    comm.send("d", dest=me, tag=3)
    comm.send("a", dest=me, tag=0)
    only = status()
    assert MPI.Request.waitall(reqs, (only,)) == ["a", None, None, "d"]
    assert (only.source, only.tag) == (me, 0)


def test_uppercase_waits_do_not_unpickle(comm):
    me = comm.rank
    req = comm.irecv(source=me, tag=2)
    comm.send("x", dest=me, tag=2)
    assert MPI.Request.Waitany([req]) == 0 and not req


def test_messages(comm):
    me = comm.rank
    s = MPI.Status()
    assert MPI.Message.iprobe(comm, me, 6) is None and MPI.Message.Iprobe(comm, me, 6) is None
    comm.send([1, 2], dest=me, tag=6)
    msg = MPI.Message.probe(comm, me, 6, s)
    assert type(msg) is MPI.Message and msg and msg != MPI.MESSAGE_NULL and s.tag == 6
    assert MPI.Message.fromhandle(msg.handle) == msg
    assert msg.recv() == [1, 2]
    assert not msg and msg == MPI.MESSAGE_NULL
    with pytest.raises(MPI.Exception):
        msg.recv()
    comm.Send(b"xyz", dest=me, tag=7)
    msg = MPI.Message.Probe(comm, me, 7)
    buf = bytearray(3)
    req = msg.Irecv(buf)
    req.Wait(s)
    assert buf == b"xyz" and not msg and s.Get_count() == 3


def test_message_no_proc(comm):
    s = status()
    msg = MPI.Message.probe(comm, MPI.PROC_NULL)
    assert msg == MPI.MESSAGE_NO_PROC and msg is not MPI.MESSAGE_NO_PROC and msg
    assert msg.recv(s) is None and (s.source, s.tag) == (MPI.PROC_NULL, MPI.ANY_TAG)
    assert not msg and msg == MPI.MESSAGE_NULL
    assert MPI.MESSAGE_NO_PROC.recv() is None and MPI.MESSAGE_NO_PROC     # the constant stays
    req = MPI.Message.Iprobe(comm, MPI.PROC_NULL).Irecv(bytearray(0))
    assert req and req.Test() and not req
    copy_ = MPI.Message(MPI.MESSAGE_NO_PROC)
    copy_.free()
    assert not copy_ and MPI.MESSAGE_NO_PROC


def test_recv_with_buffer_argument_warns(comm):
    me = comm.rank
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            comm.recv(bytearray(0), MPI.PROC_NULL)
        assert comm.irecv(bytearray(8), MPI.PROC_NULL).wait() is None   # irecv: no warning
    comm.send("42", dest=me, tag=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert comm.recv(128, me, 1) == "42"


def test_empty_message_is_none(comm):
    me = comm.rank
    comm.Isend([None, 0, MPI.BYTE], me, 3).Wait()
    assert comm.recv(None, me, 3) is None
    comm.Isend([None, 0, MPI.BYTE], me, 3).Wait()
    assert comm.irecv(None, me, 3).wait() is None
