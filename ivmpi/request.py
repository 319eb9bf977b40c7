"""Requests, persistent requests and matched-probe messages, as mpi4py has them.

A Request wraps one engine operation.  Completing it fills an mpi4py
``MPI.Status`` (so user code keeps using mpi4py's Status class) and turns an
engine error into the MPI exception mpi4py would raise.
"""
from .lib import MPI as _MPI

from .engine import ERR_TRUNCATE, RecvOp
from .errors import IvmpiError

UNDEFINED = _MPI.UNDEFINED


class MPIError(IvmpiError, _MPI.Exception):
    """An MPI error class (truncation, bad rank, ...) raised by ivmpi.

    Both an ``ivmpi.IvmpiError`` and an ``mpi4py.MPI.Exception``, so code
    written for mpi4py catches it unchanged.
    """

    def __init__(self, error_class, detail=""):
        _MPI.Exception.__init__(self, error_class)
        self.detail = detail

    def __str__(self):
        base = _MPI.Exception.__str__(self)
        return f"{base}: {self.detail}" if self.detail else base


def fill_status(status, source, tag, count, error=_MPI.SUCCESS, cancelled=False):
    if status is None:
        return
    status.source = source
    status.tag = tag
    status.error = error
    status.Set_elements(_MPI.BYTE, count)
    status.Set_cancelled(cancelled)


class Request:
    """A nonblocking operation.  `decode` turns received bytes into the
    object returned by wait() (pickled receives)."""

    # Like mpi4py's Request (a C type): no per-instance dict, cheaper to make.
    __slots__ = ("_comm", "_op", "_decode", "_what", "_finished", "__weakref__")

    def __init__(self, comm=None, op=None, decode=None, what="request"):
        self._comm = comm
        self._op = op
        self._decode = decode
        self._what = what
        self._finished = op is None   # completed and reported: now a null request

    def _description(self):
        """What the request is, for error messages: `what` is a string, or
        (verb, preposition, rank) formatted only when an error needs it."""
        what = self._what
        if type(what) is tuple:
            peer = "any source" if what[2] == _MPI.ANY_SOURCE else f"rank {what[2]}"
            return f"{what[0]} {what[1]} {peer}"
        return what

    # MPI calls a completed-and-waited request "null".
    def __eq__(self, other):
        if other is _MPI.REQUEST_NULL or other is REQUEST_NULL:
            return self._finished
        return self is other

    def __hash__(self):
        return id(self)

    def __bool__(self):
        return not self._finished

    def _complete(self, status):
        """The op is done: report status/errors once, become null."""
        op = self._op
        self._finished = True
        self._op = None
        if status is None and op.error is None and self._decode is None:
            return None
        if isinstance(op, RecvOp):
            comm = self._comm
            source = comm._comm_rank(op.status_source) if op.status_source >= 0 else op.status_source
            error = _MPI.ERR_TRUNCATE if op.error == ERR_TRUNCATE else _MPI.SUCCESS
            fill_status(status, source, op.status_tag, op.count if not op.error else op.total,
                        error, op.cancelled)
            if op.error == ERR_TRUNCATE:
                raise MPIError(_MPI.ERR_TRUNCATE,
                               f"message of {op.total} bytes from rank {source} (tag {op.status_tag}) "
                               f"does not fit the receive buffer")
            if self._decode is not None and not op.cancelled:
                return self._decode(op)
            return None
        fill_status(status, _MPI.ANY_SOURCE, _MPI.ANY_TAG, 0)
        return None

    def _null_status(self, status):
        fill_status(status, _MPI.ANY_SOURCE, _MPI.ANY_TAG, 0)

    # --- uppercase (buffers) ---------------------------------------------------

    def Wait(self, status=None):
        self.wait(status)
        return True

    def Test(self, status=None):
        return self.test(status)[0]

    def Get_status(self, status=None):
        op = self._op
        if op is None:
            self._null_status(status)
            return True
        if not op.done:
            self._comm._engine.progress()
        if not op.done:
            return False
        if isinstance(op, RecvOp):
            source = self._comm._comm_rank(op.status_source) if op.status_source >= 0 else op.status_source
            fill_status(status, source, op.status_tag, op.count, _MPI.SUCCESS, op.cancelled)
        else:
            self._null_status(status)
        return True

    def Cancel(self):
        if self._op is not None:
            self._comm._engine.cancel(self._op)

    def Free(self):
        # The operation still completes in the engine; the request becomes
        # null at once, so waiting on it afterwards returns immediately.
        self._finished = True
        self._op = None

    def cancel(self):
        self.Cancel()

    free = Free
    get_status = Get_status

    # --- lowercase (objects) ---------------------------------------------------

    def wait(self, status=None):
        op = self._op
        if op is None:
            self._null_status(status)
            return None
        if not op.done:
            self._comm._engine.wait(op, self)
        return self._complete(status)

    def test(self, status=None):
        op = self._op
        if op is None:
            self._null_status(status)
            return True, None
        if not op.done:
            self._comm._engine.progress()
            if not op.done:
                return False, None
        return True, self._complete(status)

    # --- many requests ---------------------------------------------------------

    @classmethod
    def Waitall(cls, requests, statuses=None):
        if statuses is None:
            # The common case without lists of results: wait for every
            # request, then report them in order (the first error raises).
            for req in requests:
                op = req._op
                if op is not None and not op.done:
                    req._comm._engine.wait(op, req)
            for req in requests:
                op = req._op
                if op is None:
                    if not req._finished:
                        req.wait()
                elif op.error is None and req._decode is None:
                    # _complete's own shortcut, without the call.
                    req._finished = True
                    req._op = None
                else:
                    req._complete(None)
            return True
        cls.waitall(requests, statuses)
        return True

    @classmethod
    def waitall(cls, requests, statuses=None):
        _progress_until(requests, all_of=True)
        results = []
        for i, req in enumerate(requests):
            results.append(req.wait(_nth(statuses, i)))
        return results

    @classmethod
    def Testall(cls, requests, statuses=None):
        return cls.testall(requests, statuses)[0]

    @classmethod
    def testall(cls, requests, statuses=None):
        engine = _engine_of(requests)
        if engine is not None:
            engine.progress()
        if not all(r._op is None or r._op.done for r in requests):
            return False, None
        return True, [req.wait(_nth(statuses, i)) for i, req in enumerate(requests)]

    @classmethod
    def Waitany(cls, requests, status=None):
        return cls.waitany(requests, status)[0]

    @classmethod
    def waitany(cls, requests, status=None):
        active = [i for i, r in enumerate(requests) if r._op is not None]
        if not active:
            fill_status(status, _MPI.ANY_SOURCE, _MPI.ANY_TAG, 0)
            return UNDEFINED, None
        _progress_until([requests[i] for i in active], all_of=False)
        for i in active:
            if requests[i]._op.done:
                return i, requests[i].wait(status)
        raise AssertionError("waitany returned without a completed request")

    @classmethod
    def Testany(cls, requests, status=None):
        index, flag, _ = cls.testany(requests, status)
        return index, flag

    @classmethod
    def testany(cls, requests, status=None):
        active = [i for i, r in enumerate(requests) if r._op is not None]
        if not active:
            fill_status(status, _MPI.ANY_SOURCE, _MPI.ANY_TAG, 0)
            return UNDEFINED, True, None
        engine = _engine_of(requests)
        engine.progress()
        for i in active:
            if requests[i]._op.done:
                return i, True, requests[i].wait(status)
        return UNDEFINED, False, None

    @classmethod
    def Waitsome(cls, requests, statuses=None):
        active = [i for i, r in enumerate(requests) if r._op is not None]
        if not active:
            return None
        _progress_until([requests[i] for i in active], all_of=False)
        return cls._collect_done(requests, active, statuses)

    @classmethod
    def Testsome(cls, requests, statuses=None):
        active = [i for i, r in enumerate(requests) if r._op is not None]
        if not active:
            return None
        _engine_of(requests).progress()
        return cls._collect_done(requests, active, statuses)

    @staticmethod
    def _collect_done(requests, active, statuses):
        done = [i for i in active if requests[i]._op.done]
        for k, i in enumerate(done):
            requests[i].Wait(_nth(statuses, k))
        return done

    @classmethod
    def waitsome(cls, requests, statuses=None):
        active = [i for i, r in enumerate(requests) if r._op is not None]
        if not active:
            return None, None
        _progress_until([requests[i] for i in active], all_of=False)
        done = [i for i in active if requests[i]._op.done]
        return done, [requests[i].wait(_nth(statuses, k)) for k, i in enumerate(done)]


def _nth(statuses, i):
    if statuses is None:
        return None
    while len(statuses) <= i:
        statuses.append(_MPI.Status())
    return statuses[i]


def _engine_of(requests):
    for req in requests:
        if req._comm is not None:
            return req._comm._engine
    return None


def _progress_until(requests, all_of):
    ops = [r._op for r in requests if r._op is not None and not r._op.done]
    if not ops:
        return
    engine = _engine_of(requests)
    if all_of:
        for r in requests:
            if r._op is not None and not r._op.done:
                engine.wait(r._op, r)
    else:
        engine.wait_any(ops, "Waitany")


class Prequest(Request):
    """A persistent request (Send_init / Recv_init): Start() begins one round."""

    def __init__(self, comm, start, what):
        super().__init__(comm, None, what=what)
        self._start = start
        self._finished = True

    def Start(self):
        self._op, self._decode = self._start()
        self._finished = False

    def start(self):
        self.Start()

    @classmethod
    def Startall(cls, requests):
        for req in requests:
            req.Start()

    def __bool__(self):
        # A persistent request stays valid between rounds.
        return True


class Message:
    """A message taken by Mprobe/Improbe, received with Recv/Irecv/recv/irecv."""

    def __init__(self, comm, incoming, no_proc=False):
        self._comm = comm
        self._incoming = incoming
        self._no_proc = no_proc   # MESSAGE_NO_PROC: a probe of PROC_NULL

    def __bool__(self):
        return self._incoming is not None or self._no_proc

    def _take(self):
        if self._no_proc:
            return None
        incoming = self._incoming
        if incoming is None:
            raise MPIError(_MPI.ERR_REQUEST, "this message has already been received")
        self._incoming = None
        return incoming

    def Irecv(self, buf):
        from .buffers import parse_recv
        incoming = self._take()
        b = parse_recv(buf)
        if incoming is None:
            return _ProcNullRequest()
        op = self._comm._engine.recv_matched(incoming, b.mem)
        return Request(self._comm, op, what="Message.Irecv")

    def Recv(self, buf, status=None):
        self.Irecv(buf).Wait(status)

    def irecv(self):
        incoming = self._take()
        if incoming is None:
            return _ProcNullRequest()
        op = self._comm._engine.recv_matched(incoming, None)
        return Request(self._comm, op, decode=self._comm._unpickle_op, what="Message.irecv")

    def recv(self, status=None):
        return self.irecv().wait(status)


class _ProcNullRequest(Request):
    """The receive of MESSAGE_NO_PROC: complete at once, with PROC_NULL's empty status."""

    def wait(self, status=None):
        self._finished = True
        fill_status(status, _MPI.PROC_NULL, _MPI.ANY_TAG, 0)
        return None

    def test(self, status=None):
        return True, self.wait(status)


REQUEST_NULL = Request()
MESSAGE_NULL = Message(None, None)
MESSAGE_NO_PROC = Message(None, None, no_proc=True)
