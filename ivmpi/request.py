"""Requests, persistent requests and matched-probe messages, as mpi4py has them.

A Request wraps one engine operation.  Completing it fills an mpi4py
``MPI.Status`` (so user code keeps using mpi4py's Status class) and turns an
engine error into the MPI exception mpi4py would raise.

Null handles behave as mpi4py's: ``Request()``, a completed or freed request
and ``REQUEST_NULL`` are false and equal to each other; a persistent request
is inactive (true, not null) between rounds until it is freed.
"""
import weakref

from .lib import MPI as _MPI

from . import _fastcopy
from ._fastcopy import scan_requests
from .engine import ERR_TRUNCATE, RecvOp
from .errors import IvmpiError

UNDEFINED = _MPI.UNDEFINED

# The default of the second constructor argument: tells mpi4py's public
# form Request(request=None) from ivmpi's own Request(comm, op, ...).
_PUBLIC = object()

# What every handle equal to MESSAGE_NO_PROC stands for.
_NO_PROC = object()


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
    if error == _MPI.SUCCESS and not cancelled and _fill_status_fast(status, source, tag, count):
        return
    _set_status(status, source, tag, count, error, cancelled)


def _set_status(status, source, tag, count, error=_MPI.SUCCESS, cancelled=False):
    """fill_status through mpi4py's setters (the C fill learns from them)."""
    status.source = source
    status.tag = tag
    status.error = error
    status.Set_elements(_MPI.BYTE, count)
    status.Set_cancelled(cancelled)


# A status filled in C when mpi4py's Status layout could be learned
# (ivmpi/_status.pxi); through the setters otherwise.
_fastcopy.learn_status_layout(_MPI.Status, _set_status, _MPI.__pyx_capi__)
_fill_status_fast = _fastcopy.fill_status_fast


def _empty_status(status):
    """MPI's empty status: what a null or inactive request reports."""
    if status is not None:
        fill_status(status, _MPI.ANY_SOURCE, _MPI.ANY_TAG, 0)


def _proc_null_op():
    """A receive that completed at once as one from PROC_NULL: MPI gives
    sends to and receives from PROC_NULL the status (PROC_NULL, ANY_TAG, 0)."""
    op = RecvOp(-1, -1, 0, None)
    op.status_source = _MPI.PROC_NULL
    op.status_tag = _MPI.ANY_TAG
    op.done = True
    return op


_PROC_NULL_OP = _proc_null_op()   # read only, so one serves every such request


# --- handles ------------------------------------------------------------------
# A live request or message gets a handle (its id) when one is asked for; the
# registry maps it back while the object lives.  Null handles are the MPI
# library's own values, so they agree with mpi4py's.

_by_handle = weakref.WeakValueDictionary()


def _handle(obj):
    key = id(obj)
    _by_handle[key] = obj
    return key


def _from_handle(cls, value, constants):
    """The object of `value`: a predefined one (from `constants`, pairs of
    value and prototype) as a new object of cls, else the live object."""
    for known, prototype in constants:
        if value == known:
            return cls(prototype)
    obj = _by_handle.get(value)
    if obj is None or not isinstance(obj, cls):
        raise MPIError(_MPI.ERR_ARG, f"{value} is not the handle of a live ivmpi {cls.__name__}")
    return obj


def _cannot_serialize(obj):
    cls = type(obj)
    return ValueError(f"cannot serialize '{cls.__module__}.{cls.__name__}' instance")


class SendrecvOp:
    """Isendrecv's two operations as one: done when both are, reporting the
    receive's status (and its error, else the send's)."""
    __slots__ = ("send", "recv")

    def __init__(self, send, recv):
        self.send = send
        self.recv = recv

    @property
    def done(self):
        return self.send.done and self.recv.done

    @property
    def error(self):
        return self.recv.error if self.recv.error is not None else self.send.error

    @property
    def peer(self):
        return self.send.peer if self.recv.done else self.recv.peer

    def __getattr__(self, name):
        # Status fields, state and data: the receive's.
        return getattr(self.recv, name)


class Request:
    """A nonblocking operation.

    ``Request()`` or ``Request(request)`` as in mpi4py; ivmpi's communicators
    build active ones as ``Request(comm, op, decode, what)``, where `decode`
    turns received bytes into the object wait() returns (pickled receives)
    and op None means an operation on PROC_NULL, complete at once.
    """

    # Like mpi4py's Request (a C type): no per-instance dict, cheaper to make.
    # _origin is set on copies only (see __eq__), so making one costs nothing.
    __slots__ = ("_comm", "_op", "_decode", "_what", "_origin", "__weakref__")
    _unpacks = False        # completion has work to do (UnpackingRequest)

    def __init__(self, request=None, op=_PUBLIC, decode=None, what="request"):
        if op is _PUBLIC:
            self._copy(request)
            return
        self._comm = request
        self._op = _PROC_NULL_OP if op is None else op
        self._decode = decode
        self._what = what

    def _copy(self, request):
        """mpi4py's Request(request): the same request (or a null one)."""
        if request is None:
            self._comm = self._op = self._decode = None
            self._what = "request"
            return
        if not isinstance(request, Request):
            raise TypeError(f"expected a Request, got {type(request).__name__}")
        self._comm, self._op = request._comm, request._op
        self._decode, self._what = request._decode, request._what
        self._origin = getattr(request, "_origin", request)

    def _description(self):
        """What the request is, for error messages: `what` is a string, or
        (verb, preposition, rank) formatted only when an error needs it."""
        what = self._what
        if type(what) is tuple:
            peer = "any source" if what[2] == _MPI.ANY_SOURCE else f"rank {what[2]}"
            return f"{what[0]} {what[1]} {peer}"
        return what

    # --- handle semantics ------------------------------------------------------

    def __bool__(self):
        if self._op is not None:
            return True
        # Request(prequest) holds the persistent request's handle while it lives.
        origin = getattr(self, "_origin", None)
        return isinstance(origin, Prequest) and bool(origin)

    def __eq__(self, other):
        # Equal handles: both null, or the same request (a copy made by
        # Request(request) has the original as _origin).
        if isinstance(other, Request):
            if not self or not other:
                return not self and not other
            return getattr(self, "_origin", self) is getattr(other, "_origin", other)
        if isinstance(other, _MPI.Request):     # mpi4py's own: equal when both are null
            return not self and not other
        return NotImplemented

    __hash__ = None     # as mpi4py's: equality is by handle, which changes

    @property
    def _finished(self):
        # Older spelling of "null", kept for subclasses that set it.
        return not self

    @_finished.setter
    def _finished(self, value):
        if value:
            self._op = None

    @property
    def handle(self):
        """MPI handle."""
        return _handle(self) if self else _MPI.REQUEST_NULL.handle

    def toint(self):
        return _handle(self) if self else _MPI.REQUEST_NULL.toint()

    def py2f(self):
        return _handle(self) if self else _MPI.REQUEST_NULL.py2f()

    @classmethod
    def fromhandle(cls, handle):
        return _from_handle(cls, handle, [(_MPI.REQUEST_NULL.handle, None)])

    @classmethod
    def fromint(cls, arg, /):
        return _from_handle(cls, arg, [(_MPI.REQUEST_NULL.toint(), None)])

    @classmethod
    def f2py(cls, arg):
        return _from_handle(cls, arg, [(_MPI.REQUEST_NULL.py2f(), None)])

    def __reduce__(self):
        if self is REQUEST_NULL:
            return "REQUEST_NULL"
        if not self:
            return (type(self), (REQUEST_NULL,))
        raise _cannot_serialize(self)

    # --- completing one request --------------------------------------------------

    def _fill(self, op, status):
        """Status of a completed operation (a send reports the empty status)."""
        if type(op) is SendrecvOp:
            op = op.recv
        if isinstance(op, RecvOp):
            source = op.status_source
            if source >= 0:
                source = self._comm._comm_rank(source)
            error = _MPI.ERR_TRUNCATE if op.error == ERR_TRUNCATE else _MPI.SUCCESS
            fill_status(status, source, op.status_tag, op.count if not op.error else op.total,
                        error, op.cancelled)
        else:
            _empty_status(status)

    def _complete(self, status, decode=True):
        """The op is done: report its status and error once, become null
        (a persistent request: inactive)."""
        op = self._op
        self._op = None
        if status is None and op.error is None and (self._decode is None or not decode):
            return None
        if status is not None:
            self._fill(op, status)
        if op.error == ERR_TRUNCATE:
            source = op.status_source
            source = self._comm._comm_rank(source) if source >= 0 else source
            raise MPIError(_MPI.ERR_TRUNCATE,
                           f"message of {op.total} bytes from rank {source} (tag {op.status_tag}) "
                           f"does not fit the receive buffer")
        if isinstance(op.error, Exception):    # a nonblocking collective's failure
            raise op.error
        # An empty message is None, as mpi4py unpickles it.
        if decode and self._decode is not None and not op.cancelled and op.data:
            return self._decode(op)
        return None

    def _finish(self, status, decode=True):
        """Complete a request known to be done, or report a null one."""
        if self._op is None:
            _empty_status(status)
            return None
        return self._complete(status, decode)

    def _ready(self):
        """Done, after one round of progress if not yet (null: False)."""
        op = self._op
        if op is None:
            return False
        if not op.done:
            self._comm._engine.test_progress()
        return op.done

    def Wait(self, status=None):
        op = self._op
        if op is not None and not op.done:
            self._comm._engine.wait(op, self)
        self._finish(status, decode=False)
        return True

    def Test(self, status=None):
        if self._op is None:
            _empty_status(status)
            return True
        if not self._ready():
            return False
        self._complete(status, decode=False)
        return True

    def Get_status(self, status=None):
        """Whether the request is done, without completing it."""
        op = self._op
        if op is None:
            _empty_status(status)
            return True
        if not self._ready():
            return False
        if status is not None:
            self._fill(op, status)
        return True

    def Cancel(self):
        op = self._op
        if op is not None:
            self._comm._engine.cancel(op)
        elif not self:
            raise MPIError(_MPI.ERR_REQUEST, "a null request cannot be cancelled")

    def Free(self):
        # The operation still completes in the engine; the request becomes
        # null at once, so waiting on it afterwards returns immediately.
        if not self:
            raise MPIError(_MPI.ERR_REQUEST, "a null request cannot be freed")
        self._op = None

    def free(self):
        """Call Free if not null."""
        if self and self is not REQUEST_NULL:
            self.Free()

    def cancel(self):
        self.Cancel()

    get_status = Get_status

    def wait(self, status=None):
        op = self._op
        if op is None:
            _empty_status(status)
            return None
        if not op.done:
            self._comm._engine.wait(op, self)
        return self._complete(status)

    def test(self, status=None):
        if self._op is None:
            _empty_status(status)
            return True, None
        if not self._ready():
            return False, None
        return True, self._complete(status)

    # --- many requests -----------------------------------------------------------
    # MPI's rules: null and inactive requests are skipped; with no active one,
    # the "any" forms give UNDEFINED and the "some" forms None.

    @classmethod
    def Waitall(cls, requests, statuses=None):
        try:
            for req in requests:
                op = req._op
                if op is not None and not op.done:
                    req._comm._engine.wait(op, req)
        except AttributeError:
            if not _library(requests):
                raise
            return _by_library("Waitall", requests, statuses)
        _complete_all(requests, statuses)
        return True

    @classmethod
    def waitall(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("waitall", requests, statuses)
        for req in requests:
            op = req._op
            if op is not None and not op.done:
                req._comm._engine.wait(op, req)
        return _finish_all(requests, range(len(requests)), statuses, True)

    @classmethod
    def Testall(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("Testall", requests, statuses)
        if not _all_ready(requests):
            return False
        _complete_all(requests, statuses)
        return True

    @classmethod
    def testall(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("testall", requests, statuses)
        if not _all_ready(requests):
            return False, None
        return True, _finish_all(requests, range(len(requests)), statuses, True)

    @classmethod
    def Get_status_all(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("Get_status_all", requests, statuses)
        if not _all_ready(requests):
            return False
        for i, req in enumerate(requests):
            req.Get_status(_nth(statuses, i))
        return True

    @classmethod
    def Waitany(cls, requests, status=None):
        if _library(requests):
            return _by_library("Waitany", requests, status)
        return _waitany(requests, status, False)[0]

    @classmethod
    def waitany(cls, requests, status=None):
        if _library(requests):
            return _by_library("waitany", requests, status)
        return _waitany(requests, status, True)

    @classmethod
    def Testany(cls, requests, status=None):
        if _library(requests):
            return _by_library("Testany", requests, status)
        return _testany(requests, status, False)[:2]

    @classmethod
    def testany(cls, requests, status=None):
        if _library(requests):
            return _by_library("testany", requests, status)
        return _testany(requests, status, True)

    @classmethod
    def Get_status_any(cls, requests, status=None):
        if _library(requests):
            return _by_library("Get_status_any", requests, status)
        done = _test_some(requests)
        if done is None:
            _empty_status(status)
            return UNDEFINED, True
        if not done:
            return UNDEFINED, False
        requests[done[0]].Get_status(status)
        return done[0], True

    @classmethod
    def Waitsome(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("Waitsome", requests, statuses)
        return _some(requests, _wait_some(requests, "Waitsome"), statuses, False)

    @classmethod
    def waitsome(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("waitsome", requests, statuses)
        return _some(requests, _wait_some(requests, "Waitsome"), statuses, True)

    @classmethod
    def Testsome(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("Testsome", requests, statuses)
        return _some(requests, _test_some(requests), statuses, False)

    @classmethod
    def testsome(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("testsome", requests, statuses)
        return _some(requests, _test_some(requests), statuses, True)

    @classmethod
    def Get_status_some(cls, requests, statuses=None):
        if _library(requests):
            return _by_library("Get_status_some", requests, statuses)
        done = _test_some(requests)
        for k, i in enumerate(done or ()):
            requests[i].Get_status(_nth(statuses, k))
        return done

    @classmethod
    def get_status_all(cls, requests, statuses=None):
        return Request.Get_status_all(requests, statuses)

    @classmethod
    def get_status_any(cls, requests, status=None):
        return Request.Get_status_any(requests, status)

    @classmethod
    def get_status_some(cls, requests, statuses=None):
        return Request.Get_status_some(requests, statuses)


def _some(requests, done, statuses, decode):
    """Complete the requests a "some" call found done (indices, or None when
    none was active) and answer in mpi4py's form: the indices (uppercase),
    or (indices, objects) with (None, None) for no active request."""
    if not decode:
        if done:
            _finish_all(requests, done, statuses, False)
        return done
    if done is None:
        return None, None
    return done, _finish_all(requests, done, statuses, True)


def _library(requests):
    """Does the list hold mpi4py's own requests (of calls the MPI library
    serves, such as those on intercommunicators)?"""
    return not all(isinstance(req, Request) for req in requests)


def _by_library(name, requests, statuses):
    """A call on mpi4py's own requests is mpi4py's; with ivmpi's among them,
    the "all" forms complete each in turn, the others cannot be served."""
    if not any(isinstance(req, Request) for req in requests):
        return getattr(_MPI.Request, name)(requests, statuses)
    if name == "Waitall":
        for i, req in enumerate(requests):
            req.Wait(_nth(statuses, i))
        return True
    if name == "waitall":
        return [req.wait(_nth(statuses, i)) for i, req in enumerate(requests)]
    raise TypeError(f"Request.{name}: requests of ivmpi and of the MPI library (mpi4py's own) "
                    f"cannot be mixed in one call; complete them in separate calls")


def _waitany(requests, status, decode):
    done = _wait_some(requests, "Waitany")
    if done is None:
        _empty_status(status)
        return UNDEFINED, None
    return done[0], requests[done[0]]._complete(status, decode)


def _testany(requests, status, decode):
    done = _test_some(requests)
    if done is None:
        _empty_status(status)
        return UNDEFINED, True, None
    if not done:
        return UNDEFINED, False, None
    return done[0], True, requests[done[0]]._complete(status, decode)


def _nth(statuses, i):
    """The status for the i-th result: a list grows to hold it (as mpi4py's
    does), a tuple gives None once it runs out."""
    if statuses is None:
        return None
    if i < len(statuses):
        return statuses[i]
    if isinstance(statuses, list):
        statuses.extend(_MPI.Status() for _ in range(len(statuses), i + 1))
        return statuses[i]
    return None


def _finish_all(requests, indices, statuses, decode):
    """Complete requests[i] for each i (the k-th gets statuses[k]); every one
    is completed before the first error is raised."""
    results = []
    error = None
    for k, i in enumerate(indices):
        try:
            results.append(requests[i]._finish(_nth(statuses, k), decode))
        except MPIError as exc:
            results.append(None)
            error = error or exc
    if error is not None:
        raise error
    return results


def _complete_all(requests, statuses):
    """Complete requests all done (Waitall, Testall)."""
    if statuses is None:
        # The common case, without statuses or objects: just null them.
        failed = False
        for req in requests:
            op = req._op
            if op is not None:
                if op.error is None and not req._unpacks:
                    req._op = None
                else:
                    failed = True
        if not failed:
            return
    _finish_all(requests, range(len(requests)), statuses, False)


def _all_ready(requests):
    """Are all active requests done (after one round of progress if not)?"""
    pending = scan_requests(requests)[2]
    if pending is None:
        return True
    pending._comm._engine.test_progress()
    return scan_requests(requests)[2] is None


def _test_some(requests):
    """Indices of the active requests that are done (after one round of
    progress if none is yet); None if no request is active."""
    active, done, pending, _ = scan_requests(requests)
    if not active:
        return None
    if not done:
        pending._comm._engine.test_progress()
        done = scan_requests(requests)[1]
    return done


def _wait_some(requests, what):
    """Indices of the active requests that are done, waiting until there is
    at least one; None if no request is active."""
    active, done, pending, waiting = scan_requests(requests)
    if not active:
        return None
    if not done:
        engine = pending._comm._engine
        if waiting == 1:
            # One to wait for: the single request's wait, with its fast polls.
            engine.wait(pending._op, _fastcopy.OneOf(what, len(requests), pending))
        else:
            ops = [req._op for req in requests if req._op is not None]
            engine.wait_any(ops, f"{what} of {len(ops)} requests")
        done = scan_requests(requests)[1]
    return done


class Prequest(Request):
    """A persistent request (Send_init, Recv_init, ...): Start() begins a round.

    ``Prequest()`` / ``Prequest(request)`` as in mpi4py; communicators build
    them as ``Prequest(comm, start, what)``, where start() begins a round and
    returns (op, decode).
    """

    __slots__ = ("_start",)

    def __init__(self, request=None, start=_PUBLIC, what="persistent request"):
        if start is _PUBLIC:
            if request is not None and not isinstance(request, Prequest):
                # mpi4py takes a null Request here, and refuses an active one.
                if not isinstance(request, Request) or request:
                    raise TypeError(f"expected a Prequest, got {type(request).__name__}")
                request = None
            self._copy(request)
            self._start = request._start if request is not None else None
            return
        self._comm = request
        self._op = None             # inactive until Start()
        self._decode = None
        self._what = what
        self._start = start

    def __bool__(self):
        # Between rounds a persistent request is inactive, not null.
        return self._start is not None

    def Free(self):
        if not self:
            raise MPIError(_MPI.ERR_REQUEST, "a null request cannot be freed")
        self._op = None
        self._start = None

    def Start(self):
        if self._start is None:
            raise MPIError(_MPI.ERR_REQUEST, "Start of a null persistent request")
        if self._op is not None:
            raise MPIError(_MPI.ERR_REQUEST, f"Start of {self._description()} that is "
                                             f"still active (complete it first)")
        self._op, self._decode = self._start()

    @classmethod
    def Startall(cls, requests):
        for req in requests:
            req.Start()


class UnpackingRequest(Request):
    """A receive into a derived datatype with holes: the message lands in
    a packed staging buffer, scattered into the user's memory on completion."""
    __slots__ = ("_unpack",)
    _unpacks = True

    def __init__(self, comm, op, unpack, what="request"):
        Request.__init__(self, comm, op, None, what)
        self._unpack = unpack

    def _copy(self, request):
        Request._copy(self, request)
        self._unpack = getattr(request, "_unpack", None)

    def _complete(self, status, decode=True):
        op = self._op
        result = Request._complete(self, status, decode)     # raises on truncation
        if not op.cancelled and self._unpack is not None:
            count = getattr(op, "count", None)
            self._unpack(count if type(count) is int else None)
        return result


class UnpackingPrequest(Prequest):
    """A persistent receive into a derived datatype with holes (see
    UnpackingRequest); each completion unpacks."""
    __slots__ = ("_unpack",)
    _unpacks = True

    def __init__(self, comm, start, unpack, what="persistent request"):
        Prequest.__init__(self, comm, start, what)
        self._unpack = unpack

    def _copy(self, request):
        Prequest._copy(self, request)
        self._unpack = getattr(request, "_unpack", None)

    _complete = UnpackingRequest._complete


class Message:
    """A message taken by a matched probe, received with Recv/Irecv/recv/irecv.

    ``Message()`` / ``Message(message)`` as in mpi4py; communicators build
    them as ``Message(comm, incoming)``.  Once received a message is null
    (MESSAGE_NULL); MESSAGE_NO_PROC, what a probe of PROC_NULL finds, stays
    itself, while a copy of it becomes null when received.
    """

    __slots__ = ("_comm", "_incoming", "_no_proc", "__weakref__")

    def __init__(self, message=None, incoming=_PUBLIC, no_proc=False):
        if incoming is _PUBLIC:
            if message is None:
                self._comm = self._incoming = None
                self._no_proc = False
                return
            if not isinstance(message, Message):
                raise TypeError(f"expected a Message, got {type(message).__name__}")
            self._comm, self._incoming = message._comm, message._incoming
            self._no_proc = message._no_proc
            return
        self._comm = message
        self._incoming = incoming
        self._no_proc = no_proc

    def _key(self):
        """What the handle stands for: the message, NO_PROC, or None (null)."""
        if self._incoming is not None:
            return self._incoming
        return _NO_PROC if self._no_proc else None

    def __bool__(self):
        return self._incoming is not None or self._no_proc

    def __eq__(self, other):
        if isinstance(other, Message):
            return self._key() is other._key()
        if isinstance(other, _MPI.Message):     # mpi4py's own: only its predefined ones match
            key = self._key()
            return ((key is None and other == _MPI.MESSAGE_NULL)
                    or (key is _NO_PROC and other == _MPI.MESSAGE_NO_PROC))
        return NotImplemented

    __hash__ = None

    @property
    def handle(self):
        """MPI handle."""
        if self._incoming is not None:
            return _handle(self)
        return (_MPI.MESSAGE_NO_PROC if self._no_proc else _MPI.MESSAGE_NULL).handle

    def toint(self):
        if self._incoming is not None:
            return _handle(self)
        return (_MPI.MESSAGE_NO_PROC if self._no_proc else _MPI.MESSAGE_NULL).toint()

    def py2f(self):
        if self._incoming is not None:
            return _handle(self)
        return (_MPI.MESSAGE_NO_PROC if self._no_proc else _MPI.MESSAGE_NULL).py2f()

    @classmethod
    def fromhandle(cls, handle):
        return _from_handle(cls, handle, [(_MPI.MESSAGE_NULL.handle, None),
                                          (_MPI.MESSAGE_NO_PROC.handle, MESSAGE_NO_PROC)])

    @classmethod
    def fromint(cls, arg, /):
        return _from_handle(cls, arg, [(_MPI.MESSAGE_NULL.toint(), None),
                                       (_MPI.MESSAGE_NO_PROC.toint(), MESSAGE_NO_PROC)])

    @classmethod
    def f2py(cls, arg):
        return _from_handle(cls, arg, [(_MPI.MESSAGE_NULL.py2f(), None),
                                       (_MPI.MESSAGE_NO_PROC.py2f(), MESSAGE_NO_PROC)])

    def __reduce__(self):
        if self is MESSAGE_NULL:
            return "MESSAGE_NULL"
        if self is MESSAGE_NO_PROC:
            return "MESSAGE_NO_PROC"
        if self._incoming is None:
            return (type(self), (MESSAGE_NO_PROC if self._no_proc else MESSAGE_NULL,))
        raise _cannot_serialize(self)

    def free(self):
        """As mpi4py: a copy of MESSAGE_NO_PROC becomes null; nothing else changes."""
        if self._no_proc and self is not MESSAGE_NO_PROC:
            self._no_proc = False

    # --- matched probes ----------------------------------------------------------

    @classmethod
    def _of(cls, message):
        """The communicator's message as a new object of cls (MESSAGE_NO_PROC
        itself is never handed out: receiving must null only the copy)."""
        if message is None or (type(message) is cls and message is not MESSAGE_NO_PROC):
            return message
        return cls(message)

    @classmethod
    def Probe(cls, comm, source=_MPI.ANY_SOURCE, tag=_MPI.ANY_TAG, status=None):
        """Blocking test for a matched message."""
        return cls._of(comm.Mprobe(source, tag, status))

    @classmethod
    def Iprobe(cls, comm, source=_MPI.ANY_SOURCE, tag=_MPI.ANY_TAG, status=None):
        """Nonblocking test for a matched message (None if there is none)."""
        return cls._of(comm.Improbe(source, tag, status))

    @classmethod
    def probe(cls, comm, source=_MPI.ANY_SOURCE, tag=_MPI.ANY_TAG, status=None):
        return cls._of(comm.mprobe(source, tag, status))

    @classmethod
    def iprobe(cls, comm, source=_MPI.ANY_SOURCE, tag=_MPI.ANY_TAG, status=None):
        return cls._of(comm.improbe(source, tag, status))

    # --- matched receives --------------------------------------------------------

    def _take(self):
        """The message to receive (None for NO_PROC); the handle becomes null."""
        if self._no_proc:
            if self is not MESSAGE_NO_PROC:
                self._no_proc = False
            return None
        incoming = self._incoming
        # A copy of this message may have received it already.
        if incoming is None or incoming.taken:
            raise MPIError(_MPI.ERR_REQUEST, "receive of a null message (MESSAGE_NULL, or "
                                             "one already received)")
        self._incoming = None
        incoming.taken = True
        return incoming

    def Irecv(self, buf):
        return self._irecv(self._take(), buf)

    def _irecv(self, incoming, buf):
        from .buffers import parse_recv
        if incoming is None:
            return Request(self._comm, None, what="Message.Irecv")
        b = parse_recv(buf, holes=True)
        op = self._comm._engine.recv_matched(incoming, b.mem)
        if b.unpack is not None:
            return UnpackingRequest(self._comm, op, b.unpack, what="Message.Irecv")
        return Request(self._comm, op, what="Message.Irecv")

    def Recv(self, buf, status=None):
        incoming = self._take()
        # An eager message goes straight into buf in one call.
        if incoming is None or not self._comm._fast.recv_message(buf, incoming, status):
            self._irecv(incoming, buf).Wait(status)

    def irecv(self):
        return self._irecv_object(self._take())

    def _irecv_object(self, incoming):
        if incoming is None:
            return Request(self._comm, None, what="Message.irecv")
        op = self._comm._engine.recv_matched(incoming, None)
        return Request(self._comm, op, decode=self._comm._unpickle_op, what="Message.irecv")

    def recv(self, status=None):
        incoming = self._take()
        if incoming is not None and self._comm._fast.take_message(incoming, status):
            # An empty message is None, as mpi4py unpickles it.
            return self._comm._unpickle_op(incoming) if incoming.data else None
        return self._irecv_object(incoming).wait(status)


# The common completions in one Cython call each (ivmpi/_fastpath.pxi);
# the methods above stay in charge of everything else.
_fastcopy.set_request_types(Request, Prequest, Request.Wait, Request.wait,
                            Request.Waitall.__func__, Prequest.Start, SendrecvOp)
Request.Wait = _fastcopy.request_Wait
Request.wait = _fastcopy.request_wait
Request.Waitall = classmethod(_fastcopy.request_Waitall)
_fastcopy.set_request_completions(Request.Test, Request.Testall.__func__,
                                  Request.Waitany.__func__, Request.Testany.__func__,
                                  Request.Waitsome.__func__, Request.Testsome.__func__,
                                  UNDEFINED)
Request.Test = _fastcopy.request_Test
_fastcopy.set_object_completions(Request.waitall.__func__, Request.test)
Request.waitall = classmethod(_fastcopy.request_waitall)
Request.test = _fastcopy.request_test
for _name in ("Testall", "Waitany", "Testany", "Waitsome", "Testsome"):
    setattr(Request, _name, classmethod(getattr(_fastcopy, f"request_{_name}")))
Prequest.Start = _fastcopy.prequest_Start
Prequest.Startall = classmethod(_fastcopy.prequest_Startall)
_fastcopy.set_message_type(Message, Message.Recv, Message.recv)
Message.Recv = _fastcopy.message_Recv
Message.recv = _fastcopy.message_recv

REQUEST_NULL = Request()
MESSAGE_NULL = Message(None, None)
MESSAGE_NO_PROC = Message(None, None, no_proc=True)
