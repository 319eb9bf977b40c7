"""One-sided communication: MPI windows through the region.

``Win`` is an ``mpi4py.MPI.Win`` (so ``isinstance`` and ``mpi4py.util.sync``
work) that also carries a window of the MPI library over the same local
memory: names, info, error handlers, user attributes, ``memoryview(win)``
and ``tomemory()`` are the library's, on that handle; data movement and
synchronisation are ivmpi's, through the region (docs/layout.md, "Windows").

Where the memory is:
- ``Allocate``: in the owner's heap in the region;
- ``Allocate_shared``: one block in the heap of the window's rank 0, the
  ranks' segments back to back (MPI's contiguous layout), so
  ``Shared_query(r)`` gives every process, in any VM, a view of rank r's part;
- ``Create``: the user's memory (in the region when it came from Alloc_mem);
- ``Create_dynamic``: memory attached later, the user's.

Who moves the bytes:
- ``Put`` and ``Get`` to memory in the region are plain aligned copies by the
  origin through the copy core (the owner is not involved);
- accumulates to memory in the region (``Accumulate``, ``Get_accumulate``,
  ``Fetch_and_op``, ``Compare_and_swap``) are carried out by the origin too,
  inside the target's bakery lock (_Bakery: Lamport's algorithm over words
  each written by one rank only), reading the bytes into private memory,
  computing there and writing them back: no read-modify-write instruction
  touches the region, and the target process need not run;
- everything else is a *request* to the owner, a message on the window's own
  context: Put/Get/accumulates to memory outside the region, locks, flushes
  and the PSCW notices.  The owner applies requests in arrival order as soon
  as it reads them (any MPI call that polls), and a progress thread does so
  while windows exist, so a target busy in ``time.sleep`` or a computation
  still serves them.
"""
import struct
import threading
import time
from collections import deque

import numpy as np

from .lib import MPI as _MPI

from ._fastcopy import (_HELD_EXCLUSIVE, _HELD_SHARED, WinFast, buffer_span, memory_fence,
                        region_get_runs, region_memoryview, region_put_runs)
from .buffers import BufferSpecError, has_holes, parse_recv, parse_send
from .comm import Comm, Intracomm
from .datatypes import layout
from .errors import IvmpiError
from .request import MPIError, Request

# --- the wire format of requests (docs/layout.md, "Windows") -----------------

REQUEST_TAG = 1             # requests to the owner; replies carry the request id as tag
FIRST_REQUEST_ID = 2
PUT, GET, ACC, GET_ACC, CAS, FLUSH, LOCK, UNLOCK, POST, COMPLETE = range(1, 11)
KIND_NAMES = {PUT: "Put", GET: "Get", ACC: "Accumulate", GET_ACC: "Get_accumulate",
              CAS: "Compare_and_swap", FLUSH: "Flush", LOCK: "Lock", UNLOCK: "Unlock",
              POST: "Post", COMPLETE: "Complete"}
_REPLIED = frozenset((GET, GET_ACC, CAS, FLUSH, LOCK, UNLOCK))
# kind, request id, target displacement (bytes, or an address for dynamic
# windows), number of runs, op index, datatype index, payload bytes, lock type
_HEADER = struct.Struct("<8q")
_STATUS = struct.Struct("<q")

_OPS = ("SUM", "PROD", "MAX", "MIN", "LAND", "BAND", "LOR", "BOR", "LXOR", "BXOR",
        "MAXLOC", "MINLOC", "REPLACE", "NO_OP")
_OP_INDEX = {getattr(_MPI, name).handle: i for i, name in enumerate(_OPS)}
_OP_BY_INDEX = [getattr(_MPI, name) for name in _OPS]
_REPLACE, _NO_OP = _OPS.index("REPLACE"), _OPS.index("NO_OP")


def _predefined_types():
    """Every predefined datatype by a stable index: the table is the same in
    every process that runs the same mpi4py (names sorted)."""
    found = {}
    for name in dir(_MPI):
        value = getattr(_MPI, name, None)
        if (isinstance(value, _MPI.Datatype) and value != _MPI.DATATYPE_NULL
                and value.is_predefined and value.Get_size() > 0):
            found.setdefault(name, value)
    names = sorted(found)
    return [found[n] for n in names]


_TYPES = _predefined_types()
_TYPE_INDEX = {}
for _i, _t in enumerate(_TYPES):
    _TYPE_INDEX.setdefault(_t.handle, _i)

# Lock types on the wire.
_SHARED, _EXCLUSIVE = 1, 2
# Each rank's lock block, words per target: the bakery's choosing and ticket
# (all targets first), then its lock word (docs/layout.md, "Windows").
_LOCK_BLOCK_WORDS = 3

# Flavors, as the library names them.
FLAVOR_CREATE = _MPI.WIN_FLAVOR_CREATE
FLAVOR_ALLOCATE = _MPI.WIN_FLAVOR_ALLOCATE
FLAVOR_DYNAMIC = _MPI.WIN_FLAVOR_DYNAMIC
FLAVOR_SHARED = _MPI.WIN_FLAVOR_SHARED


def _rma_error(error_class, text):
    return MPIError(error_class, text)


# --- target memory, as its owner sees it ---------------------------------------

class _RegionMemory:
    """A segment of the region: [offset, offset + size)."""

    def __init__(self, mem, offset, size):
        self.mem, self.offset, self.size = mem, offset, size

    def read(self, start, n):
        out = bytearray(n)
        if n:
            self.mem.read(self.offset + start, out)
        return out

    def write(self, start, data):
        if len(data):
            self.mem.write(self.offset + start, data)

    def check(self, start, n):
        return 0 <= start and n >= 0 and start + n <= self.size


class _LocalMemory:
    """The user's own memory (Create with a buffer outside the region)."""

    def __init__(self, view):
        self.view = view
        self.size = len(view)

    def read(self, start, n):
        return bytearray(self.view[start:start + n])

    def write(self, start, data):
        self.view[start:start + len(data)] = data

    def check(self, start, n):
        return 0 <= start and n >= 0 and start + n <= self.size


class _DynamicMemory:
    """The blocks attached to a dynamic window, addressed by absolute address."""

    def __init__(self):
        self.blocks = []        # (address, memoryview)

    def _find(self, start, n):
        for address, view in self.blocks:
            if address <= start and start + n <= address + len(view):
                return view, start - address
        raise _rma_error(_MPI.ERR_RMA_RANGE,
                         f"bytes [{start:#x}, {start:#x}+{n}) are not inside memory attached "
                         f"to the dynamic window")

    def read(self, start, n):
        view, at = self._find(start, n)
        return bytearray(view[at:at + n])

    def write(self, start, data):
        view, at = self._find(start, len(data))
        view[at:at + len(data)] = data

    def check(self, start, n):
        try:
            self._find(start, n)
        except MPIError:
            return False
        return True


def _gather(memory, disp, runs):
    """The bytes of the runs (offset, length) after disp, packed."""
    if len(runs) == 1:
        return memory.read(disp + runs[0][0], runs[0][1])
    return bytearray().join(memory.read(disp + o, n) for o, n in runs)


def _scatter(memory, disp, runs, data):
    at = 0
    for o, n in runs:
        memory.write(disp + o, data[at:at + n])
        at += n


def _combine(op_index, type_index, origin, target):
    """target (op) origin, MPI's accumulate, on packed elements of one basic type."""
    if op_index == _REPLACE:
        return bytearray(origin)
    if op_index == _NO_OP:
        return target
    datatype = _TYPES[type_index]
    count = len(target) // datatype.Get_size()
    _OP_BY_INDEX[op_index].Reduce_local([origin, count, datatype], [target, count, datatype])
    return target


# --- the owner's side ------------------------------------------------------------

class _Later:
    """A request whose reply comes later (a lock that has to wait)."""


_LATER = _Later()


class _LockTable:
    """The owner's record of who holds its window locked, and who waits.
    Waiting requests are granted in arrival order; consecutive shared ones together."""

    def __init__(self):
        self.exclusive = None       # comm rank holding it exclusively
        self.shared = {}            # comm rank -> how many shared locks it holds
        self.queue = deque()        # (origin, lock type, request id)

    def request(self, origin, kind, reqid):
        if not self.queue and self._free_for(kind):
            self._take(origin, kind)
            return True
        self.queue.append((origin, kind, reqid))
        return False

    def _free_for(self, kind):
        if self.exclusive is not None:
            return False
        return kind == _SHARED or not self.shared

    def _take(self, origin, kind):
        if kind == _EXCLUSIVE:
            self.exclusive = origin
        else:
            self.shared[origin] = self.shared.get(origin, 0) + 1

    def release(self, origin):
        """Drop origin's lock; returns the waiting requests granted now."""
        if self.exclusive == origin:
            self.exclusive = None
        elif self.shared.get(origin):
            self.shared[origin] -= 1
            if not self.shared[origin]:
                del self.shared[origin]
        else:
            return None
        granted = []
        while self.queue and self._free_for(self.queue[0][1]):
            origin, kind, reqid = self.queue.popleft()
            self._take(origin, kind)
            granted.append((origin, reqid))
        return granted


class _Owner:
    """Applies the requests that arrive for this rank's part of one window.

    Polled by the engine on every round of progress (Engine.services), under
    the engine lock; requests are taken in arrival order per origin (each
    ring is a FIFO, and so is the list of unexpected messages)."""

    def __init__(self, state):
        self.state = state
        self.memory = None
        self.locks = _LockTable()
        self.posts = {}             # comm rank -> Post notices not yet taken by Start
        self.completes = {}         # comm rank -> Complete notices not yet taken by Wait
        self.errors = {}            # comm rank -> first failure of a request without reply
        self.local_replies = {}     # request id -> reply, for requests to ourselves
        self.applied = 0            # requests handled (diagnostics and tests)

    tag = REQUEST_TAG

    def arrive(self, world_source, data):
        """A request read from a ring (the engine calls this under its lock)."""
        source = self.state.comm_rank_of.get(world_source)
        if source is None:
            from .errors import CorruptRegionError
            raise CorruptRegionError(f"peer {world_source}: a window request from a rank "
                                     f"outside the window")
        self.handle(source, data)

    def poll(self):
        engine = self.state.engine
        if not engine.unexpected:
            return False
        ctx, moved = self.state.ctx, False
        while True:
            incoming = engine._take_unexpected(-1, REQUEST_TAG, ctx)
            if incoming is None:
                return moved
            moved = True
            source = self.state.comm_rank_of.get(incoming.source)
            if incoming.data is None or source is None:
                # Requests are always eager-sized (see _Origin._split); anything
                # else is a peer that does not follow the protocol.
                from .errors import CorruptRegionError
                raise CorruptRegionError(
                    f"peer {incoming.source}: a window request of {incoming.size} bytes "
                    f"does not fit the window protocol")
            self.handle(source, incoming.data)

    def handle(self, source, data):
        """Apply one request from comm rank `source`; send or keep its reply."""
        self.applied += 1
        try:
            kind, reqid, disp, nruns, op_index, type_index, paylen, extra = \
                _HEADER.unpack_from(data, 0)
        except struct.error:
            self._fail(source, None, "a window request shorter than its header")
            return
        if kind not in KIND_NAMES or reqid < 0:
            self._fail(source, None, f"a window request of unknown kind {kind}")
            return
        try:
            reply = self._apply(source, kind, reqid, disp, nruns, op_index, type_index,
                                paylen, extra, data)
        except MPIError as exc:
            self._fail(source, reqid if kind in _REPLIED else None, str(exc),
                       exc.Get_error_class())
            return
        except Exception as exc:    # a bad request must not stop the owner
            self._fail(source, reqid if kind in _REPLIED else None,
                       f"{KIND_NAMES[kind]}: {type(exc).__name__}: {exc}")
            return
        if reply is _LATER or kind not in _REPLIED:
            return
        if kind in (FLUSH, UNLOCK):
            error = self.errors.pop(source, None)
            if error is not None:
                self.reply(source, reqid, error[1], error[0].encode())
                return
        self.reply(source, reqid, 0, reply)

    def _fail(self, source, reqid, text, error_class=_MPI.ERR_RMA_RANGE):
        if reqid is None:
            self.errors.setdefault(source, (text, error_class))
        else:
            self.reply(source, reqid, error_class, text.encode())

    def reply(self, source, reqid, status, payload=b""):
        data = _STATUS.pack(status) + bytes(payload)
        state = self.state
        if source == state.rank:
            self.local_replies[reqid] = data
        else:
            state.engine.isend(state.world[source], memoryview(data), reqid, state.ctx)

    def _apply(self, source, kind, reqid, disp, nruns, op_index, type_index, paylen, extra,
               data):
        at = _HEADER.size
        if nruns < 0 or paylen < 0 or at + 16 * nruns + paylen != len(data):
            raise _rma_error(_MPI.ERR_ARG, f"{KIND_NAMES[kind]}: malformed request "
                             f"({nruns} runs, {paylen} payload bytes in {len(data)})")
        if kind == LOCK:
            if extra not in (_SHARED, _EXCLUSIVE):
                raise _rma_error(_MPI.ERR_LOCKTYPE, f"lock type {extra}")
            return b"" if self.locks.request(source, extra, reqid) else _LATER
        if kind == UNLOCK:
            granted = self.locks.release(source)
            if granted is None:
                raise _rma_error(_MPI.ERR_RMA_SYNC, f"rank {source} unlocks a window it "
                                 f"has not locked at rank {self.state.rank}")
            for origin, waiting in granted:
                self.reply(origin, waiting, 0)
            return b""
        if kind == FLUSH:
            return b""
        if kind == POST:
            self.posts[source] = self.posts.get(source, 0) + 1
            return None
        if kind == COMPLETE:
            self.completes[source] = self.completes.get(source, 0) + 1
            return None
        runs = np.frombuffer(data, dtype="<i8", count=2 * nruns, offset=at).reshape(-1, 2)
        runs = [(int(o), int(n)) for o, n in runs]
        payload = memoryview(data)[at + 16 * nruns:]
        return _apply_to(self.memory, kind, disp, runs, payload, op_index, type_index,
                         f"from rank {source} to rank {self.state.rank}")


def _apply_to(memory, kind, disp, runs, payload, op_index, type_index, who):
    """Carry out one data request on memory (checked first); the old target
    bytes for GET, GET_ACC and CAS, else None.  The owner calls this for the
    requests it receives, an origin for accumulates to region memory (under
    the target's bakery lock)."""
    paylen = len(payload)
    total = sum(n for _, n in runs)
    for o, n in runs:
        if n < 0 or not memory.check(disp + o, n):
            raise _rma_error(_MPI.ERR_RMA_RANGE,
                             f"{KIND_NAMES[kind]} {who}: bytes [{disp + o}, {disp + o}+{n}) are "
                             f"outside the window ({memory.size} bytes)")
    if kind == PUT:
        if paylen != total:
            raise _rma_error(_MPI.ERR_ARG, "Put: payload and target sizes differ")
        _scatter(memory, disp, runs, payload)
        return None
    if kind == GET:
        return _gather(memory, disp, runs)
    if not (0 <= op_index < len(_OPS) and 0 <= type_index < len(_TYPES)):
        raise _rma_error(_MPI.ERR_OP, f"{KIND_NAMES[kind]}: op {op_index} or datatype "
                         f"{type_index} unknown")
    size = _TYPES[type_index].Get_size()
    if total % size:
        raise _rma_error(_MPI.ERR_TYPE, f"{KIND_NAMES[kind]}: {total} bytes are not whole "
                         f"elements of {_TYPES[type_index].Get_name()}")
    if kind == CAS:
        if paylen != 2 * total or len(runs) != 1:
            raise _rma_error(_MPI.ERR_ARG, "Compare_and_swap: malformed request")
        old = _gather(memory, disp, runs)
        if bytes(old) == bytes(payload[total:]):
            _scatter(memory, disp, runs, payload[:total])
        return old
    if paylen != (0 if op_index == _NO_OP else total):
        raise _rma_error(_MPI.ERR_ARG, f"{KIND_NAMES[kind]}: payload and target sizes "
                         f"differ")
    old = _gather(memory, disp, runs)
    if op_index != _NO_OP:
        new = _combine(op_index, type_index, payload, bytearray(old) if kind == GET_ACC
                       else old)
        _scatter(memory, disp, runs, new)
    return old if kind == GET_ACC else None


def _accumulate_tables():
    """WinFast's Accumulate: {numpy type number: (the library's datatype
    handle, class)} for numpy's numbers, and {op handle: (1: the library
    combines, 2: REPLACE; the classes MPI allows it on)}; classes 1 integer,
    2 floating, 4 complex, 8 bool (the LOC ops take pairs: not here)."""
    classes = {"b": 1, "B": 1, "h": 1, "H": 1, "i": 1, "I": 1, "l": 1, "L": 1, "q": 1,
               "Q": 1, "f": 2, "d": 2, "F": 4, "D": 4, "?": 8}
    types = {}
    for code, cls in classes.items():
        datatype = _MPI._typedict.get(code)
        if datatype is not None:
            types[np.dtype(code).num] = (datatype.handle, cls)
    allowed = {"SUM": 7, "PROD": 7, "MAX": 3, "MIN": 3, "LAND": 9, "LOR": 9, "LXOR": 9,
               "BAND": 1, "BOR": 1, "BXOR": 1}
    ops = {getattr(_MPI, name).handle: (1, cls) for name, cls in allowed.items()}
    ops[_MPI.REPLACE.handle] = (2, 15)
    return types, ops


_ACCUMULATE_TYPES, _ACCUMULATE_OPS = _accumulate_tables()


class _Bakery:
    """Mutual exclusion among a window's ranks for each target's part, from
    plain loads and stores (Lamport's bakery): no read-modify-write.

    Rank i owns a block of its heap holding, per target t, two words at
    ``block_i + 16 t``: `choosing` and `ticket`; only rank i writes them.
    To enter t's section rank i raises `choosing`, takes a ticket one above
    every ticket it sees, lowers `choosing`, then waits until no rank j is
    choosing and none holds a ticket (ticket_j, j) < (ticket_i, i); it leaves
    by clearing its ticket.  Full fences between the steps give the
    sequential consistency the algorithm needs on every architecture."""

    def __init__(self, mem, blocks, me):
        self.mem, self.blocks, self.me = mem, blocks, me

    def acquire(self, t, wait):
        mem, me, blocks = self.mem, self.me, self.blocks
        mine = blocks[me] + 16 * t
        mem.store(mine, 1)
        memory_fence()
        ticket = 1 + max(mem.load(b + 16 * t + 8) for b in blocks)
        mem.store(mine + 8, ticket)
        memory_fence()
        mem.store(mine, 0)
        memory_fence()
        for j, b in enumerate(blocks):
            if j == me:
                continue
            theirs = b + 16 * t

            def clear(theirs=theirs, j=j):
                if mem.load(theirs):
                    return False
                other = mem.load(theirs + 8)
                return other == 0 or (other, j) > (ticket, me)
            if not clear():
                wait(clear, f"the lock of rank {t}'s window memory, held by rank {j}")
        memory_fence()

    def release(self, t):
        memory_fence()
        self.mem.store(self.blocks[self.me] + 16 * t + 8, 0)


# --- the origin's side: replies and waiting ------------------------------------

class _Reply:
    """A request's reply on its way back (an engine operation for waits)."""
    __slots__ = ("ws", "recv", "reqid", "peer", "scope", "error", "cancelled", "finish",
                 "data", "what", "_done")

    def __init__(self, ws, target, reqid, what):
        self.ws, self.reqid, self.what = ws, reqid, what
        self.peer = ws.world[target]
        self.scope = None
        self.error = None
        self.cancelled = False
        self.finish = None          # called with the reply's data once it is there
        self.data = None
        self._done = False
        if target == ws.rank:
            self.recv = None
        else:
            self.recv = ws.engine.irecv(self.peer, reqid, ws.ctx, None)

    @property
    def state(self):
        return f"waiting for the answer to {self.what}"

    @property
    def done(self):
        if self._done:
            return True
        if self.recv is None:
            replies = self.ws.owner.local_replies
            if self.reqid not in replies:
                return False
            raw = replies.pop(self.reqid)
        else:
            if not self.recv.done:
                return False
            raw = self.recv.data or b""
        self._done = True
        status = _STATUS.unpack_from(raw, 0)[0] if len(raw) >= 8 else _MPI.ERR_INTERN
        if status:
            self.error = _rma_error(status, f"{self.what} at rank "
                                    f"{self.ws.comm_rank_of.get(self.peer, self.peer)}: "
                                    f"{bytes(raw[8:]).decode(errors='replace')}")
        else:
            self.data = memoryview(raw)[8:]
            if self.finish is not None:
                self.finish(self.data)
        return True

    def wait(self):
        recv = self.recv
        if recv is not None and not recv.done:
            # The engine's receive wait: its quickest, polling that peer's ring.
            recv.scope = None
            self.ws.engine.wait(recv, self.what)
        if not self.done:
            self.ws.engine.wait(self, self.what)
        if self.error is not None:
            raise self.error
        return self.data


class _WinState:
    """Everything a window and its copies share."""

    def __init__(self, comm, flavor, disp_unit):
        self.comm = comm
        self.engine = engine = comm._engine
        self.flavor = flavor
        self.disp_unit = disp_unit
        self.world = list(comm._ranks)
        self.comm_rank_of = {w: i for i, w in enumerate(self.world)}
        self.rank = comm.rank
        self.size = comm.size
        self.ctx = comm._agree_context()
        # Barriers and allgathers of the window: a hidden communicator over
        # the same ranks (its collectives use ctx + 1, requests ctx).
        self.coll = Intracomm._create(engine, self.world, self.ctx, hidden=True)
        self.owner = _Owner(self)
        self.next_reqid = FIRST_REQUEST_ID
        self.targets = []           # per comm rank: (region offset or -1, size, disp unit)
        self.dirty = set()          # targets with requests not yet known to be applied
        self.pending = {}           # target -> [_Reply] outstanding
        self.region_block = None    # our heap memory, released by Free
        self.lock_block = None      # our bakery words (see _Bakery)
        self.bakery = None
        self.bakery_guard = threading.Lock()
        self.shared_block = None    # Allocate_shared: rank 0's whole block
        self.freed = False
        # Epochs (MPI's synchronisation rules).
        self.fence_open = False
        self.locked = {}            # target -> lock type
        self.lock_all = False
        self.access = None          # Start's group (comm ranks) until Complete
        self.exposure = None        # Post's group until Wait/Test
        self.fast = None            # the WinFast of the one-call paths
        self.served = False         # this rank's part has the progress thread (_finish)

    def sync_fast(self):
        """Tell the one-call paths which targets an epoch opens (WinFast)."""
        fast = self.fast
        if fast is None:
            return
        everyone = self.fence_open or bool(self.lock_all)
        fast.other_epochs = everyone or self.access is not None
        fast.all_held = self.lock_all == "held" and not self.fence_open and self.access is None
        for t in range(self.size):
            passive = bool(self.lock_all) or t in self.locked
            fast.passive[t] = passive
            fast.allowed[t] = everyone or passive or (self.access is not None
                                                     and t in self.access)

    def new_reqid(self):
        reqid = self.next_reqid
        self.next_reqid = reqid + 1 if reqid < (1 << 31) - 2 else FIRST_REQUEST_ID
        return reqid


_NULL_ARG = object()


def _index(value, what):
    try:
        import operator
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None


class _AnyWindow(type):
    """isinstance(w, ivmpi.MPI.Win) holds for the library's own window objects
    too, as it does for mpi4py's class: mpi4py hands such objects (made from
    a handle) to attribute callbacks and error handlers written against
    MPI.Win.  Subclasses of Win keep the usual rule."""

    def __instancecheck__(cls, obj):
        return type.__instancecheck__(cls, obj) or (cls is Win and isinstance(obj, _MPI.Win))


class Win(_MPI.Win, metaclass=_AnyWindow):
    """An MPI window whose data move through the region (see the module's doc)."""

    def __new__(cls, win=None):
        self = _MPI.Win.__new__(cls, win)
        if isinstance(win, Win) and "_st" in win.__dict__:
            self._st = win._st
            self._bind_fast()
        return self

    def _bind_fast(self):
        """Put, Get, Flush, Fence, Accumulate, Fetch_and_op and the locks
        straight to Cython (ivmpi._fastcopy.WinFast), for ivmpi's own class
        only: a subclass keeps its overrides."""
        if type(self) is Win:
            fast = self._st.fast
            self.Put, self.Get, self.Flush = fast.Put, fast.Get, fast.Flush
            self.Fetch_and_op, self.Accumulate = fast.Fetch_and_op, fast.Accumulate
            self.Fence = fast.Fence
            self.Lock, self.Unlock = fast.Lock, fast.Unlock
            self.Lock_all, self.Unlock_all = fast.Lock_all, fast.Unlock_all

    def __init__(self, win=None):
        pass

    # --- construction ------------------------------------------------------------

    @staticmethod
    def _ivmpi_comm(comm):
        if comm is None:
            from . import world
            return world.get_self()
        if isinstance(comm, Comm) and "_engine" in comm.__dict__:
            comm._check_live()
            # Members in several regions: the library's window on the handle.
            return None if comm._routed else comm
        return None

    @classmethod
    def Create(cls, memory, disp_unit=1, info=_MPI.INFO_NULL, comm=None):
        ours = cls._ivmpi_comm(comm)
        if ours is None:
            return _MPI.Win.Create(memory, disp_unit, info, comm)
        disp_unit = _check_disp_unit(disp_unit)
        if memory is None or memory is _MPI.BOTTOM:
            view = memoryview(bytearray(0))
        else:
            view = memoryview(memory)
            if view.readonly:
                raise BufferSpecError("Win.Create: the window memory must be writable")
            view = view.cast("B") if view.c_contiguous else None
            if view is None:
                raise BufferSpecError("Win.Create: the window memory must be contiguous")
        state = _WinState(ours, FLAVOR_CREATE, disp_unit)
        engine = state.engine
        offset = -1
        if len(view):
            found = engine.heap.contains(*buffer_span(view))
            offset = -1 if found is None else found
        if offset >= 0:
            state.owner.memory = _RegionMemory(engine.mem, offset, len(view))
        else:
            state.owner.memory = _LocalMemory(view)
        lib = _MPI.Win.Create(memory if len(view) else _MPI.BOTTOM, disp_unit, info, ours)
        return cls._finish(state, lib, offset, len(view))

    @classmethod
    def Allocate(cls, size, disp_unit=1, info=_MPI.INFO_NULL, comm=None):
        ours = cls._ivmpi_comm(comm)
        if ours is None:
            return _MPI.Win.Allocate(size, disp_unit, info, comm)
        size = _check_size(size)
        disp_unit = _check_disp_unit(disp_unit)
        state = _WinState(ours, FLAVOR_ALLOCATE, disp_unit)
        engine = state.engine
        offset = -1
        error = None
        if size:
            try:
                with engine.lock:
                    block = engine.heap.alloc(size, device_ok=True)
                state.region_block = block
                offset = buffer_span(block)[0] - engine.mem.address
                engine.mem.fill(offset, size)
            except IvmpiError as exc:
                error = str(exc)
        _agree_or_raise(state, error, "Win.Allocate")
        state.owner.memory = _RegionMemory(engine.mem, max(offset, 0), size)
        lib = _library_window(state, offset, size, disp_unit, info, ours)
        return cls._finish(state, lib, offset, size)

    @classmethod
    def Allocate_shared(cls, size, disp_unit=1, info=_MPI.INFO_NULL, comm=None):
        ours = cls._ivmpi_comm(comm)
        if ours is None:
            return _MPI.Win.Allocate_shared(size, disp_unit, info, comm)
        size = _check_size(size)
        disp_unit = _check_disp_unit(disp_unit)
        state = _WinState(ours, FLAVOR_SHARED, disp_unit)
        engine = state.engine
        noncontig = _info_flag(info, "alloc_shared_noncontig")
        sizes = state.coll._collectives.allgather(size)
        # Back to back (MPI's default), or each part on its own 64-byte line.
        starts, total = [], 0
        for s in sizes:
            starts.append(total)
            total += -(-s // 64) * 64 if noncontig else s
        base = None
        error = None
        if state.rank == 0 and total:
            try:
                with engine.lock:
                    block = engine.heap.alloc(total, device_ok=True)
                state.shared_block = block
                base = buffer_span(block)[0] - engine.mem.address
                engine.mem.fill(base, total)
            except IvmpiError as exc:
                error = str(exc)
        base, error = state.coll._collectives.bcast((base, error), 0)
        if error:
            raise MPIError(_MPI.ERR_NO_MEM, f"Win.Allocate_shared: {error}")
        offset = base + starts[state.rank] if base is not None and size else -1
        state.owner.memory = _RegionMemory(engine.mem, max(offset, 0), size)
        lib = _library_window(state, offset, size, disp_unit, info, ours)
        return cls._finish(state, lib, offset, size)

    @classmethod
    def Create_dynamic(cls, info=_MPI.INFO_NULL, comm=None):
        ours = cls._ivmpi_comm(comm)
        if ours is None:
            return _MPI.Win.Create_dynamic(info, comm)
        state = _WinState(ours, FLAVOR_DYNAMIC, 1)
        state.owner.memory = _DynamicMemory()
        lib = _MPI.Win.Create_dynamic(info, ours)
        return cls._finish(state, lib, -1, 0)

    @classmethod
    def _finish(cls, state, lib, offset, size):
        """Exchange where every rank's part is, then start serving requests."""
        engine = state.engine
        # This rank's bakery words (a choosing and a ticket word per target),
        # then its lock words (one per target).
        lock_offset = -1
        error = None
        lock_bytes = _LOCK_BLOCK_WORDS * 8 * state.size
        if state.flavor != FLAVOR_DYNAMIC:
            try:
                with engine.lock:
                    block = engine.heap.alloc(lock_bytes, device_ok=True)
                state.lock_block = block
                lock_offset = buffer_span(block)[0] - engine.mem.address
                engine.mem.fill(lock_offset, lock_bytes)
            except IvmpiError as exc:
                error = str(exc)
        _agree_or_raise(state, error, "window creation")
        table = state.coll._collectives.allgather((offset, size, state.disp_unit, lock_offset))
        first, _ = engine.geo.heap(0)
        last, heap_bytes = engine.geo.heap(engine.geo.nranks - 1)
        for r, (off, n, unit, lock) in enumerate(table):
            # What a peer announces is checked before it is ever used as an offset.
            if off >= 0 and not (first <= off and off + n <= last + heap_bytes):
                raise MPIError(_MPI.ERR_WIN, f"rank {r} announced window memory "
                               f"[{off}, {off}+{n}) outside the region's heaps")
            if lock >= 0 and not (first <= lock and lock % 8 == 0
                                  and lock + lock_bytes <= last + heap_bytes):
                raise MPIError(_MPI.ERR_WIN, f"rank {r} announced lock words at {lock}, "
                               f"outside the region's heaps")
        state.targets = [(off, n, unit) for off, n, unit, _ in table]
        if all(lock >= 0 for *_, lock in table):
            state.bakery = _Bakery(engine.mem, [lock for *_, lock in table], state.rank)
        fast = state.fast = WinFast(engine.mem, [t[0] if state.flavor != FLAVOR_DYNAMIC else -1
                                                 for t in table],
                                    [t[1] for t in table], [t[2] for t in table], state.rank)
        fast.dirty, fast.pending = state.dirty, state.pending
        self = _MPI.Win.__new__(cls, lib)
        self._st = state
        fast.general_put = self._general_put
        fast.general_get = self._general_get
        fast.general_flush = self._general_flush
        fast.general_fetch_and_op = self._general_fetch_and_op
        fast.general_accumulate = self._general_accumulate
        fast.general_fence, fast.mode_nosucceed = self._general_fence, _MPI.MODE_NOSUCCEED
        small = state.coll._small_collectives()
        small.lock_of = state.coll._lock
        fast.barrier = small.Barrier
        fast.general_lock, fast.general_unlock = self._general_lock, self._general_unlock
        fast.general_lock_all = self._general_lock_all
        fast.general_unlock_all = self._general_unlock_all
        fast.state = state
        fast.lock_exclusive, fast.lock_shared = _MPI.LOCK_EXCLUSIVE, _MPI.LOCK_SHARED
        fast.sum_op = _MPI.SUM
        fast.op_codes = {_MPI.SUM.handle: 0, _MPI.NO_OP.handle: 1, _MPI.REPLACE.handle: 2,
                         _MPI.MAX.handle: 3, _MPI.MIN.handle: 4}
        if state.bakery is not None:
            fast.lock_blocks = list(state.bakery.blocks)
            fast.acc_types, fast.acc_ops = _ACCUMULATE_TYPES, _ACCUMULATE_OPS
            fast.region_locks = bytearray(1 if self._origin_applies(state, t) else 0
                                          for t in range(state.size))
            fast.all_region_locks = all(fast.region_locks)
        fast.locked = state.locked
        self._bind_fast()
        with engine.lock:
            engine.services.append(state.owner)
            engine.service_contexts[state.ctx] = state.owner
        # Requests come only to a part outside the region (or to a rank with
        # no bakery words): only then must this process serve them while it
        # computes.  A thread with nothing to serve would still run the
        # engine's progress whenever a long copy lets go of the GIL, taking
        # messages off the rings that the one-call paths would have read
        # themselves (a 64 KiB Put + Fence took 5.2 us instead of 3.5).
        state.served = not (fast.region_locks is not None and fast.region_locks[state.rank])
        if state.served:
            _progress_thread(engine).add()
        _BY_HANDLE[self.handle] = state
        _keep_serving_at_exit(state)
        return self

    # mpi4py's handle conversions give ivmpi's window over a handle that has one.

    @classmethod
    def _of(cls, win):
        state = _BY_HANDLE.get(win.handle) if win else None
        if state is None or state.freed:
            return win
        ours = _MPI.Win.__new__(Win, win)
        ours._st = state
        ours._bind_fast()
        return ours

    @classmethod
    def fromhandle(cls, handle):
        return cls._of(_MPI.Win.fromhandle(handle))

    @classmethod
    def fromint(cls, arg, /):
        return cls._of(_MPI.Win.fromint(arg))

    @classmethod
    def f2py(cls, arg):
        return cls._of(_MPI.Win.f2py(arg))

    # --- attributes and queries -------------------------------------------------

    def _state(self):
        state = self.__dict__.get("_st")
        if state is None or state.freed or not self:
            raise MPIError(_MPI.ERR_WIN, "the window has been freed or is null")
        return state

    def Get_attr(self, keyval):
        state = self.__dict__.get("_st")
        if state is not None and not state.freed and self:
            if keyval == _MPI.WIN_CREATE_FLAVOR:
                return state.flavor
            if keyval == _MPI.WIN_MODEL:
                return _MPI.WIN_UNIFIED
        return _MPI.Win.Get_attr(self, keyval)

    @property
    def flavor(self):
        return self.Get_attr(_MPI.WIN_CREATE_FLAVOR)

    @property
    def model(self):
        return self.Get_attr(_MPI.WIN_MODEL)

    def Get_group(self):
        state = self.__dict__.get("_st")
        if state is None or state.freed:
            return _MPI.Win.Get_group(self)
        return state.comm.Get_group()

    @property
    def group(self):
        return self.Get_group()

    @property
    def group_size(self):
        state = self.__dict__.get("_st")
        return state.size if state is not None else _MPI.Win.group_size.__get__(self)

    @property
    def group_rank(self):
        state = self.__dict__.get("_st")
        return state.rank if state is not None else _MPI.Win.group_rank.__get__(self)

    def Shared_query(self, rank):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Shared_query(self, rank)
        state = self._state()
        if rank == _MPI.PROC_NULL:
            # MPI: the lowest rank with a non-empty part.
            rank = next((r for r, t in enumerate(state.targets) if t[1] > 0), 0)
        elif not 0 <= rank < state.size:
            raise MPIError(_MPI.ERR_RANK, f"Shared_query: rank {rank} is not in "
                           f"0..{state.size - 1}")
        offset, size, unit = state.targets[rank]
        if offset < 0 or state.flavor == FLAVOR_DYNAMIC:
            return _MPI.buffer(bytearray(0)) if rank != state.rank else self.tomemory(), unit
        return _MPI.buffer(region_memoryview(state.engine.mem, offset, size)), unit

    # --- memory of dynamic windows --------------------------------------------------

    def Attach(self, memory):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Attach(self, memory)
        state = self._state()
        if state.flavor != FLAVOR_DYNAMIC:
            raise MPIError(_MPI.ERR_RMA_FLAVOR, "Attach: not a dynamic window")
        view = memoryview(memory).cast("B")
        _MPI.Win.Attach(self, memory)
        with state.engine.lock:
            state.owner.memory.blocks.append((buffer_span(view)[0], view))

    def Detach(self, memory):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Detach(self, memory)
        state = self._state()
        address = buffer_span(memoryview(memory))[0]
        _MPI.Win.Detach(self, memory)
        with state.engine.lock:
            blocks = state.owner.memory.blocks
            for i, (a, _) in enumerate(blocks):
                if a == address:
                    del blocks[i]
                    break

    # --- freeing -------------------------------------------------------------------

    def Free(self):
        state = self.__dict__.get("_st")
        if state is None or state.freed:
            return _MPI.Win.Free(self)
        if state.locked or state.lock_all or state.access is not None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Win.Free: an access epoch is still open")
        # An operation's failure is raised once the window is gone: the
        # others must not be left waiting in the barrier for this rank.
        error = None
        try:
            self._complete_all()
        except MPIError as exc:
            error = exc
        # Nobody sends requests any more once every rank is here.
        state.coll.Barrier()
        engine = state.engine
        with engine.lock:
            state.owner.poll()
            if state.owner in engine.services:
                engine.services.remove(state.owner)
            engine.service_contexts.pop(state.ctx, None)
        state.freed = True
        state.fast.enabled = False
        if state in _LIVE:
            _LIVE.remove(state)
        _BY_HANDLE.pop(self.handle, None)
        _MPI.Win.Free(self)
        # The shared block belongs to rank 0; nobody uses it after the barrier.
        state.coll.Barrier()
        with engine.lock:
            for block in (state.region_block, state.shared_block, state.lock_block):
                if block is not None:
                    engine.heap.release(block)
        state.coll.Free()
        if state.served:
            _progress_thread(engine).remove()
        if error is not None:
            raise error

    def free(self):
        if self:
            self.Free()

    # --- argument parsing -------------------------------------------------------------

    def _check_target(self, state, rank, what):
        if not 0 <= rank < state.size:
            raise MPIError(_MPI.ERR_RANK, f"{what}: rank {rank} is not in 0..{state.size - 1}")
        if not (state.fence_open or state.lock_all or rank in state.locked
                or (state.access is not None and rank in state.access)):
            raise MPIError(_MPI.ERR_RMA_SYNC, f"{what} to rank {rank} outside an access "
                           f"epoch (Fence, Lock, Lock_all or Start first)")

    def _target_layout(self, state, rank, target, count, datatype, what, spec=None):
        """(disp in bytes, runs [(offset, length)], bytes, basic type) of a target spec;
        by default the origin's count and datatype (as the user gave them in
        `spec`: a type with holes was packed into its basic elements)."""
        if spec is not None:
            count, datatype = _origin_type(spec, count, datatype)
        disp, tcount, ttype = 0, count, datatype
        if target is None:
            pass
        elif isinstance(target, (list, tuple)):
            if len(target) > 3:
                raise ValueError("target: expecting 3 items at most")
            if len(target) >= 1:
                disp = _index(target[0], "target displacement")
            if len(target) >= 2:
                tcount = _index(target[1], "target count")
            if len(target) >= 3:
                ttype = target[2]
                if not isinstance(ttype, _MPI.Datatype):
                    raise TypeError("target: expecting a Datatype as third item")
        else:
            try:
                disp = _index(target, "target displacement")
            except TypeError:
                raise ValueError("target: expecting integral or list/tuple") from None
        unit = state.targets[rank][2]
        start = disp * unit
        if tcount < 0:
            raise MPIError(_MPI.ERR_COUNT, f"{what}: negative target count {tcount}")
        if ttype.is_predefined or not has_holes(ttype):
            extent = ttype.Get_extent()[1] if ttype.is_predefined else layout(ttype).extent
            nbytes = tcount * extent
            runs = [(0, nbytes)] if nbytes else []
        else:
            lay = layout(ttype)
            if lay.offsets is None:
                raise MPIError(_MPI.ERR_TYPE, f"{what}: the target datatype has too many "
                               f"pieces for one-sided operations")
            runs, nbytes = _expanded_runs(lay, tcount)
        # The target's part of the window, known from creation (dynamic: the owner checks).
        if state.flavor != FLAVOR_DYNAMIC and len(runs):
            size = state.targets[rank][1]
            table = _as_array(runs)
            low, high = _span_of(table)
            if start + low < 0 or start + high > size:
                ends = start + table[:, 0]
                bad = np.nonzero((ends < 0) | (ends + table[:, 1] > size))[0][0]
                o, n = table[bad]
                raise MPIError(_MPI.ERR_RMA_RANGE,
                               f"{what}: bytes [{start + o}, {start + o}+{n}) are outside "
                               f"the window of rank {rank} ({size} bytes)")
        basic = layout(ttype).basic if not ttype.is_predefined else ttype
        return start, runs, nbytes, basic

    # --- moving data ---------------------------------------------------------------------

    def _send(self, state, target, kind, start, runs, payload=b"", op_index=0, type_index=0,
              extra=0, reply=False, what=None):
        """One request to the owner of `target` (comm rank); its _Reply if asked for."""
        reqid = state.new_reqid() if reply else 0
        header = _HEADER.pack(kind, reqid, start, len(runs), op_index, type_index,
                              len(payload), extra)
        pieces = [header]
        if runs:
            pieces.append(np.asarray(runs, dtype="<i8").tobytes())
        if len(payload):
            pieces.append(payload)
        data = b"".join(pieces)
        pending = _Reply(state, target, reqid, what or KIND_NAMES[kind]) if reply else None
        if target == state.rank:
            with state.engine.lock:
                state.owner.handle(target, data)
        else:
            state.engine.isend(state.world[target], memoryview(data), REQUEST_TAG, state.ctx)
            if kind == PUT or kind == ACC:
                state.dirty.add(target)
        if pending is not None:
            state.pending.setdefault(target, []).append(pending)
        return pending

    def _limit(self, state):
        """Largest request payload: requests travel as eager messages."""
        return (state.engine.eager_limit - _HEADER.size - 64) // 16 * 16

    def _split(self, state, runs, nbytes, elem):
        """runs cut into groups whose bytes fit one request (at element boundaries)."""
        limit = max(elem, self._limit(state) // max(elem, 1) * max(elem, 1))
        if nbytes <= limit and 16 * len(runs) + nbytes <= self._limit(state):
            return [(runs, 0, nbytes)]
        groups, group, size, start = [], [], 0, 0
        for o, n in runs:
            while n > 0:
                room = limit - size - 16 * (len(group) + 1)
                room = room // elem * elem
                if room <= 0:
                    groups.append((group, start, size))
                    start += size
                    group, size = [], 0
                    continue
                take = min(n, room)
                group.append((o, take))
                size += take
                o += take
                n -= take
        if group:
            groups.append((group, start, size))
        return groups

    def _put(self, state, origin, target_rank, target, what):
        if target_rank == _MPI.PROC_NULL:
            return
        self._check_target(state, target_rank, what)
        buf = parse_send(origin, holes=True)
        start, runs, nbytes, _ = self._target_layout(state, target_rank, target, buf.count,
                                                     buf.datatype, what, origin)
        if nbytes != buf.nbytes:
            raise MPIError(_MPI.ERR_TYPE, f"{what}: the origin has {buf.nbytes} bytes, the "
                           f"target {nbytes}")
        if not nbytes:
            return
        offset = state.targets[target_rank][0]
        if offset >= 0:
            # Region memory: the origin stores the bytes itself.
            region_put_runs(state.engine.mem, offset + start, _as_array(runs), buf.mem)
            return
        runs = _as_list(runs)
        for group, at, size in self._split(state, runs, nbytes, 1):
            self._send(state, target_rank, PUT, start, group, buf.mem[at:at + size])

    def _get(self, state, origin, target_rank, target, what, request=False):
        if target_rank == _MPI.PROC_NULL:
            return None
        self._check_target(state, target_rank, what)
        buf = parse_recv(origin, holes=True)
        start, runs, nbytes, _ = self._target_layout(state, target_rank, target, buf.count,
                                                     buf.datatype, what, origin)
        if nbytes != buf.nbytes:
            raise MPIError(_MPI.ERR_TYPE, f"{what}: the origin has room for {buf.nbytes} "
                           f"bytes, the target gives {nbytes}")
        offset = state.targets[target_rank][0]
        if offset >= 0 or not nbytes:
            if nbytes:
                region_get_runs(state.engine.mem, offset + start, _as_array(runs), buf.mem)
            if buf.unpack is not None:
                buf.unpack()
            return None
        runs = _as_list(runs)
        # Requests are eager-sized: a target type of many pieces takes several.
        replies, at = [], 0
        per = max(1, self._limit(state) // 16)
        for i in range(0, len(runs), per):
            group = runs[i:i + per]
            size = sum(n for _, n in group)
            pending = self._send(state, target_rank, GET, start, group, reply=True, what=what)
            pending.finish = _copier(buf.mem, at, size)
            replies.append(pending)
            at += size
        if buf.unpack is not None:
            replies[-1].finish = _then(replies[-1].finish, buf.unpack)
        return replies

    def _accumulate(self, state, origin, target_rank, target, op, what, result=None,
                    kind=ACC):
        """Accumulate (kind ACC) or Get_accumulate (GET_ACC, result spec); the replies."""
        if target_rank == _MPI.PROC_NULL:
            return None
        self._check_target(state, target_rank, what)
        op_index = _OP_INDEX.get(op.handle) if isinstance(op, _MPI.Op) else None
        if op_index is None:
            raise MPIError(_MPI.ERR_OP, f"{what}: only predefined operations are allowed")
        res = parse_recv(result, holes=True) if kind == GET_ACC else None
        if op_index == _NO_OP and (origin is None or kind == GET_ACC and _empty_origin(origin)):
            # NO_OP reads only: the result buffer describes the data.
            count, datatype, data, spec = (res.count, res.datatype, memoryview(b""), result) \
                if res else (0, _MPI.BYTE, memoryview(b""), None)
            obytes = None
        else:
            buf = parse_send(origin, holes=True)
            count, datatype, data, obytes = buf.count, buf.datatype, buf.mem, buf.nbytes
            spec = origin
        start, runs, nbytes, basic = self._target_layout(state, target_rank, target, count,
                                                         datatype, what, spec)
        runs = _as_list(runs)
        if obytes is not None and obytes != nbytes:
            raise MPIError(_MPI.ERR_TYPE, f"{what}: the origin has {obytes} bytes, the "
                           f"target {nbytes}")
        if res is not None and res.nbytes != nbytes:
            raise MPIError(_MPI.ERR_TYPE, f"{what}: the result buffer has room for "
                           f"{res.nbytes} bytes, the target gives {nbytes}")
        if obytes is not None and basic is not None and nbytes:
            obasic = datatype if datatype.is_predefined else layout(datatype).basic
            if obasic is None or obasic.handle != basic.handle:
                raise MPIError(_MPI.ERR_TYPE, f"{what}: origin and target are not made of "
                               f"the same predefined datatype")
        type_index = _TYPE_INDEX.get(basic.handle) if basic is not None else None
        if type_index is None:
            if op_index not in (_REPLACE, _NO_OP):
                raise MPIError(_MPI.ERR_TYPE, f"{what}: the datatype is not made of one "
                               f"predefined type")
            type_index, elem = _TYPE_INDEX[_MPI.BYTE.handle], 1
        else:
            elem = _TYPES[type_index].Get_size()
        if not nbytes:
            return None
        if self._origin_applies(state, target_rank):
            payload = b"" if op_index == _NO_OP else data
            old = self._locked_apply(state, target_rank, kind, start, runs, payload, op_index,
                                     type_index, what)
            if res is not None:
                res.mem[:nbytes] = old
                if res.unpack is not None:
                    res.unpack()
            return None
        replies = []
        for group, at, size in self._split(state, runs, nbytes, elem):
            payload = b"" if op_index == _NO_OP else data[at:at + size]
            pending = self._send(state, target_rank, kind, start, group, payload, op_index,
                                 type_index, reply=kind == GET_ACC, what=what)
            if pending is not None:
                pending.finish = _copier(res.mem, at, size)
                replies.append(pending)
        if res is not None and res.unpack is not None and replies:
            replies[-1].finish = _then(replies[-1].finish, res.unpack)
        return replies

    @staticmethod
    def _origin_applies(state, target_rank):
        """Accumulates to region memory are carried out by the origin itself,
        under the target's bakery lock, and its locks are taken in the region
        (WinFast._lock_attempt): no round trip, whatever the target process
        is doing.  Every rank decides alike from the window table."""
        return state.bakery is not None and state.targets[target_rank][0] >= 0

    def _locked_apply(self, state, target_rank, kind, start, runs, payload, op_index,
                      type_index, what):
        offset, size, _ = state.targets[target_rank]
        memory = _RegionMemory(state.engine.mem, offset, size)
        bakery = state.bakery
        # The bakery words are one set per process: one thread at a time.
        with state.bakery_guard:
            state.fast.bakery_busy = True
            try:
                bakery.acquire(target_rank,
                               lambda ready, why: self._wait_until(state, ready, why))
                try:
                    return _apply_to(memory, kind, start, runs, payload, op_index, type_index,
                                     f"to rank {target_rank}")
                finally:
                    bakery.release(target_rank)
            finally:
                state.fast.bakery_busy = False

    # Put, Get and Flush: each instance of Win binds WinFast's versions,
    # which copy straight to or from the region in the common case and
    # call the _general_* methods otherwise.

    def Put(self, origin, target_rank, target=None):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Put(self, origin, target_rank, target)
        self._general_put(origin, target_rank, target)

    def _general_put(self, origin, target_rank, target):
        self._put(self._state(), origin, target_rank, target, "Put")

    def Get(self, origin, target_rank, target=None):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Get(self, origin, target_rank, target)
        self._general_get(origin, target_rank, target)

    def _general_get(self, origin, target_rank, target):
        self._get(self._state(), origin, target_rank, target, "Get")

    def Accumulate(self, origin, target_rank, target=None, op=_MPI.SUM):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Accumulate(self, origin, target_rank, target, op)
        self._general_accumulate(origin, target_rank, target, op)

    def _general_accumulate(self, origin, target_rank, target=None, op=_MPI.SUM):
        self._accumulate(self._state(), origin, target_rank, target, op, "Accumulate")

    def Get_accumulate(self, origin, result, target_rank, target=None, op=_MPI.SUM):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Get_accumulate(self, origin, result, target_rank, target, op)
        self._accumulate(self._state(), origin, target_rank, target, op, "Get_accumulate",
                         result, GET_ACC)

    def Fetch_and_op(self, origin, result, target_rank, target_disp=0, op=_MPI.SUM):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Fetch_and_op(self, origin, result, target_rank, target_disp, op)
        self._general_fetch_and_op(origin, result, target_rank, target_disp, op)

    def _general_fetch_and_op(self, origin, result, target_rank, target_disp, op):
        state = self._state()
        if target_rank == _MPI.PROC_NULL:
            return
        res = _one_element(result, True, "result")
        ori = None
        if origin is not None:
            ori = _one_element(origin, False, "origin")
            if ori.datatype != res.datatype:
                raise ValueError("Fetch_and_op: origin and result datatypes differ")
        self._accumulate(state, None if ori is None else [ori.mem, 1, ori.datatype],
                         target_rank, (target_disp, 1, res.datatype), op, "Fetch_and_op",
                         [res.mem, 1, res.datatype], GET_ACC)

    def Compare_and_swap(self, origin, compare, result, target_rank, target_disp=0):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Compare_and_swap(self, origin, compare, result, target_rank,
                                             target_disp)
        state = self._state()
        if target_rank == _MPI.PROC_NULL:
            return
        ori = _one_element(origin, False, "origin")
        cmp = _one_element(compare, False, "compare")
        res = _one_element(result, True, "result")
        if not (ori.datatype == cmp.datatype == res.datatype):
            raise ValueError("Compare_and_swap: origin, compare and result datatypes differ")
        what = "Compare_and_swap"
        self._check_target(state, target_rank, what)
        start, runs, nbytes, basic = self._target_layout(
            state, target_rank, target_disp, 1, res.datatype, what)
        runs = _as_list(runs)
        type_index = _TYPE_INDEX.get(basic.handle) if basic is not None else None
        if type_index is None:
            raise MPIError(_MPI.ERR_TYPE, f"{what}: needs a predefined datatype")
        payload = bytes(ori.mem) + bytes(cmp.mem)
        if self._origin_applies(state, target_rank):
            res.mem[:nbytes] = self._locked_apply(state, target_rank, CAS, start, runs, payload,
                                                  0, type_index, what)
            return
        pending = self._send(state, target_rank, CAS, start, runs, payload, 0, type_index,
                             reply=True, what=what)
        pending.finish = _copier(res.mem, 0, nbytes)

    # --- request forms --------------------------------------------------------------------

    def _request(self, state, replies, what):
        if not replies:
            return Request(state.coll, None, what=what)
        op = _Replies(replies) if len(replies) > 1 else replies[0]
        return Request(state.coll, op, what=what)

    def Rput(self, origin, target_rank, target=None):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Rput(self, origin, target_rank, target)
        state = self._state()
        self._put(state, origin, target_rank, target, "Rput")
        # The bytes are out of the origin buffer when Put returns (copied to
        # the region or into a request): locally complete.
        return Request(state.coll, None, what="Rput")

    def Rget(self, origin, target_rank, target=None):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Rget(self, origin, target_rank, target)
        state = self._state()
        return self._request(state, self._get(state, origin, target_rank, target, "Rget"),
                             "Rget")

    def Raccumulate(self, origin, target_rank, target=None, op=_MPI.SUM):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Raccumulate(self, origin, target_rank, target, op)
        state = self._state()
        self._accumulate(state, origin, target_rank, target, op, "Raccumulate")
        return Request(state.coll, None, what="Raccumulate")

    def Rget_accumulate(self, origin, result, target_rank, target=None, op=_MPI.SUM):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Rget_accumulate(self, origin, result, target_rank, target, op)
        state = self._state()
        return self._request(state, self._accumulate(state, origin, target_rank, target, op,
                                                     "Rget_accumulate", result, GET_ACC),
                             "Rget_accumulate")

    # --- completion -------------------------------------------------------------------------

    def _complete_targets(self, state, targets, what):
        """Every operation to these targets applied at the target: wait for the
        outstanding replies, and ask each target with unanswered requests to
        confirm (its answer follows them in its queue)."""
        flushes = []
        for t in targets:
            if t in state.dirty:
                state.dirty.discard(t)
                flushes.append(self._send(state, t, FLUSH, 0, [], reply=True, what=what))
        error = None
        for t in targets:
            replies = state.pending.pop(t, None)
            if replies:
                for r in replies:
                    try:
                        r.wait()
                    except MPIError as exc:
                        error = error or exc
        if error is not None:
            raise error
        memory_fence()

    def _complete_all(self):
        state = self._st
        self._complete_targets(state, sorted(set(state.pending) | state.dirty), "Flush_all")

    def Flush(self, rank):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Flush(self, rank)
        self._general_flush(rank)

    def _general_flush(self, rank):
        state = self._state()
        self._check_passive(state, rank, "Flush")
        self._complete_targets(state, [rank], "Flush")
        # A flush is also a chance for requests to us to be served (a rank
        # spinning on its own window with Flush, as mpi4py.util.sync does).
        state.engine.progress()

    def Flush_all(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Flush_all(self)
        state = self._state()
        self._complete_all()
        state.engine.progress()

    def Flush_local(self, rank):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Flush_local(self, rank)
        self.Flush(rank)

    def Flush_local_all(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Flush_local_all(self)
        self.Flush_all()

    def Sync(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Sync(self)
        state = self._state()
        # The unified model: a full fence orders this process's loads and
        # stores on the window against the other processes' accesses.
        memory_fence()
        state.engine.progress()

    def _check_passive(self, state, rank, what):
        if not 0 <= rank < state.size:
            raise MPIError(_MPI.ERR_RANK, f"{what}: rank {rank} is not in 0..{state.size - 1}")
        if not (state.lock_all or rank in state.locked):
            raise MPIError(_MPI.ERR_RMA_SYNC, f"{what}: rank {rank} is not locked")

    # --- synchronisation: fence -------------------------------------------------------------

    def Fence(self, assertion=0):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Fence(self, assertion)
        self._general_fence(assertion)

    def _general_fence(self, assertion=0):
        state = self._state()
        if state.locked or state.lock_all or state.access is not None \
                or state.exposure is not None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Fence inside a lock or PSCW epoch")
        error = None
        try:
            self._complete_all()
        except MPIError as exc:     # raised after the barrier: nobody is left waiting
            error = exc
        state.fast.barrier()        # the one WinFast.Fence calls: ranks may take either path
        # Requests to us from ranks that passed their flush are applied by now;
        # take any left in the queue so direct loads see them.
        state.engine.progress()
        state.fence_open = not (assertion & _MPI.MODE_NOSUCCEED)
        state.sync_fast()
        if error is not None:
            raise error

    # --- synchronisation: locks ----------------------------------------------------------------

    def Lock(self, rank, lock_type=_MPI.LOCK_EXCLUSIVE, assertion=0):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Lock(self, rank, lock_type, assertion)
        self._general_lock(rank, lock_type, assertion)

    def _general_lock(self, rank, lock_type=_MPI.LOCK_EXCLUSIVE, assertion=0):
        state = self._state()
        if rank == _MPI.PROC_NULL:
            return
        if not 0 <= rank < state.size:
            raise MPIError(_MPI.ERR_RANK, f"Lock: rank {rank} is not in 0..{state.size - 1}")
        if lock_type not in (_MPI.LOCK_EXCLUSIVE, _MPI.LOCK_SHARED):
            raise MPIError(_MPI.ERR_LOCKTYPE, f"Lock: lock type {lock_type}")
        if rank in state.locked or state.lock_all:
            raise MPIError(_MPI.ERR_RMA_SYNC, f"Lock: rank {rank} is already locked")
        kind = _EXCLUSIVE if lock_type == _MPI.LOCK_EXCLUSIVE else _SHARED
        if not assertion & _MPI.MODE_NOCHECK:
            if self._origin_applies(state, rank):
                self._region_lock(state, rank, kind, "Lock")
            else:
                self._call(state, rank, LOCK, kind, "Lock")
        held = not assertion & _MPI.MODE_NOCHECK
        state.locked[rank] = (_HELD_EXCLUSIVE if kind == _EXCLUSIVE else _HELD_SHARED) \
            if held else (kind, False)
        state.sync_fast()

    def _region_lock(self, state, target, kind, what):
        """Take target's lock in the region (WinFast._lock_attempt), waiting
        with the engine's progress, liveness checks and IVMPI_TIMEOUT while
        others hold it; a wait that fails withdraws our word."""
        fast = state.fast

        def why():
            holders = fast.lock_holders(target)
            return (f"{what}: rank {target}'s window lock, held by "
                    + (", ".join(f"rank {j}" + ("" if w in (_SHARED, _EXCLUSIVE) else
                                                f" (a lock word of {w}, not a lock type)")
                                 for j, w in sorted(holders.items())) or "nobody now"))
        if fast.lock_attempt(target, kind):
            return
        try:
            self._wait_until(state, lambda: fast.lock_attempt(target, kind), _Lazy(why))
        except BaseException:
            fast.lock_withdraw(target)
            raise

    def Unlock(self, rank):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Unlock(self, rank)
        self._general_unlock(rank)

    def _general_unlock(self, rank):
        state = self._state()
        if rank == _MPI.PROC_NULL:
            return
        if rank not in state.locked:
            raise MPIError(_MPI.ERR_RMA_SYNC, f"Unlock: rank {rank} is not locked")
        _, held = state.locked.pop(rank)
        state.sync_fast()
        self._unlock(state, [rank] if held else [], [rank], "Unlock")

    def _call(self, state, target, kind, extra, what):
        """A request whose answer is waited for at once (not an operation of the epoch)."""
        reply = self._send(state, target, kind, 0, [], extra=extra, reply=True, what=what)
        state.pending[target].remove(reply)
        return reply.wait()

    def _unlock(self, state, held, targets, what):
        error = None
        try:
            self._complete_targets(state, [t for t in targets if t not in held], what)
        except MPIError as exc:
            error = exc
        # Locks taken in the region: the epoch's accesses to the target
        # complete, then the release (a fence, then our word cleared), even
        # after an error: a word left set would block every other rank.
        in_region = [t for t in held if self._origin_applies(state, t)]
        for t in in_region:
            try:
                self._complete_targets(state, [t], what)
            except MPIError as exc:
                error = error or exc
            state.fast.lock_release(t)
        held = [t for t in held if t not in in_region]
        # The unlock request follows every earlier request in the owner's
        # queue: its answer says they are all applied.
        replies = []
        for t in held:
            state.dirty.discard(t)
            replies.append(self._send(state, t, UNLOCK, 0, [], reply=True, what=what))
        for t in held:
            for r in state.pending.pop(t, []):
                try:
                    r.wait()
                except MPIError as exc:
                    error = error or exc
        memory_fence()
        if error is not None:
            raise error

    def Lock_all(self, assertion=0):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Lock_all(self, assertion)
        self._general_lock_all(assertion)

    def _general_lock_all(self, assertion=0):
        state = self._state()
        if state.lock_all or state.locked:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Lock_all: the window is already locked")
        if not assertion & _MPI.MODE_NOCHECK:
            by_owner = [r for r in range(state.size) if not self._origin_applies(state, r)]
            replies = [self._send(state, r, LOCK, 0, [], extra=_SHARED, reply=True,
                                  what="Lock_all") for r in by_owner]
            for r, reply in zip(by_owner, replies):
                state.pending[r].remove(reply)
            taken = []
            try:
                for r in range(state.size):
                    if self._origin_applies(state, r):
                        self._region_lock(state, r, _SHARED, "Lock_all")
                        taken.append(r)
            except BaseException:
                for r in taken:             # a word left set would block the others
                    state.fast.lock_release(r)
                raise
            for r in replies:
                r.wait()
        state.lock_all = "held" if not assertion & _MPI.MODE_NOCHECK else "nocheck"
        state.sync_fast()

    def Unlock_all(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Unlock_all(self)
        self._general_unlock_all()

    def _general_unlock_all(self):
        state = self._state()
        if not state.lock_all:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Unlock_all: the window is not locked")
        held = state.lock_all == "held"
        state.lock_all = False
        state.sync_fast()
        everyone = list(range(state.size))
        self._unlock(state, everyone if held else [], everyone, "Unlock_all")

    # --- synchronisation: post, start, complete, wait ---------------------------------------------

    def _group_ranks(self, state, group):
        if group.Get_size() == 0:
            return []
        mine = state.comm.Get_group()
        try:
            ranks = type(group).Translate_ranks(group, list(range(group.Get_size())), mine) \
                if not isinstance(group, _MPI.Group) else \
                _MPI.Group.Translate_ranks(group, list(range(group.Get_size())), mine)
        finally:
            if isinstance(mine, _MPI.Group):
                mine.Free()
        if any(r == _MPI.UNDEFINED for r in ranks):
            raise MPIError(_MPI.ERR_GROUP, "the group has ranks outside the window")
        return ranks

    def Post(self, group, assertion=0):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Post(self, group, assertion)
        state = self._state()
        if state.exposure is not None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Post: an exposure epoch is already open")
        ranks = self._group_ranks(state, group)
        state.exposure = ranks
        for r in ranks:
            self._send(state, r, POST, 0, [])

    def _posted_by_all(self, state, ranks, table):
        return all(table.get(r, 0) > 0 for r in ranks)

    def _take(self, ranks, table):
        for r in ranks:
            table[r] -= 1

    def Start(self, group, assertion=0):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Start(self, group, assertion)
        state = self._state()
        if state.access is not None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Start: an access epoch is already open")
        ranks = self._group_ranks(state, group)
        owner = state.owner
        self._wait_until(state, lambda: self._posted_by_all(state, ranks, owner.posts),
                         "Start (waiting for the targets' Post)")
        with state.engine.lock:
            self._take(ranks, owner.posts)
        state.access = ranks
        state.sync_fast()

    def Complete(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Complete(self)
        state = self._state()
        if state.access is None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Complete without Start")
        ranks, state.access = state.access, None
        state.sync_fast()
        # Replies first; the Complete notice then follows every request in
        # each target's queue, so the target's Wait sees them applied.
        for t in ranks:
            for r in state.pending.pop(t, []):
                r.wait()
        for t in ranks:
            self._send(state, t, COMPLETE, 0, [])
            state.dirty.discard(t)   # the notice follows them: Wait sees them applied
        memory_fence()

    def Wait(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Wait(self)
        state = self._state()
        if state.exposure is None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Wait without Post")
        ranks, owner = state.exposure, state.owner
        self._wait_until(state, lambda: self._posted_by_all(state, ranks, owner.completes),
                         "Wait (for the origins' Complete)")
        with state.engine.lock:
            self._take(ranks, owner.completes)
        state.exposure = None
        memory_fence()

    def Test(self):
        state = self.__dict__.get("_st")
        if state is None:
            return _MPI.Win.Test(self)
        state = self._state()
        if state.exposure is None:
            raise MPIError(_MPI.ERR_RMA_SYNC, "Test without Post")
        state.engine.progress()
        ranks, owner = state.exposure, state.owner
        with state.engine.lock:
            if not self._posted_by_all(state, ranks, owner.completes):
                return False
            self._take(ranks, owner.completes)
        state.exposure = None
        memory_fence()
        return True

    def _wait_until(self, state, predicate, what):
        state.engine.progress()
        if predicate():
            return
        state.engine.wait(_Condition(predicate), what)

    def __repr__(self):
        state = self.__dict__.get("_st")
        if state is None or state.freed:
            return f"<ivmpi.Win {'freed' if state else 'without region state'}>"
        return (f"<ivmpi.Win rank {state.rank} of {state.size}, flavor {state.flavor}, "
                f"context {state.ctx}>")


# --- helpers --------------------------------------------------------------------------------

class _Lazy:
    """A wait's description, written when it is needed (the engine's errors)."""
    __slots__ = ("describe",)

    def __init__(self, describe):
        self.describe = describe

    def _description(self):
        return self.describe()


class _Condition:
    """A polling predicate as an engine operation."""
    __slots__ = ("predicate", "peer", "state", "scope")

    def __init__(self, predicate):
        self.predicate = predicate
        self.peer = None
        self.state = "waiting"
        self.scope = None

    @property
    def done(self):
        return self.predicate()


class _Replies:
    """Several replies as one request (an Rget cut into pieces)."""
    __slots__ = ("replies", "peer", "scope", "cancelled")

    def __init__(self, replies):
        self.replies = replies
        self.peer = replies[0].peer
        self.scope = None
        self.cancelled = False

    @property
    def done(self):
        return all(r.done for r in self.replies)

    @property
    def error(self):
        return next((r.error for r in self.replies if r.error is not None), None)


_RUNS_CACHE = {}     # (Layout, count) -> (runs, bytes), the most recent few
_RUNS_CACHE_SIZE = 64
_SPANS = {}          # id of a cached runs array -> (lowest, highest byte)


def _expanded_runs(lay, count):
    """The runs of `count` elements of a datatype with holes, as an (n, 2)
    int64 array (empty runs dropped), and their bytes; kept for the few most
    recent types (the key holds the Layout, so its identity cannot be reused)."""
    key = (lay, count)
    found = _RUNS_CACHE.get(key)
    if found is None:
        offs = (np.arange(count, dtype=np.int64)[:, None] * lay.extent
                + lay.offsets[None, :]).ravel()
        lens = np.tile(lay.lengths, count)
        keep = lens > 0
        runs = np.ascontiguousarray(np.stack((offs[keep], lens[keep]), axis=1))
        runs.setflags(write=False)
        found = (runs, int(lens.sum()))
        if len(_RUNS_CACHE) >= _RUNS_CACHE_SIZE:
            old = _RUNS_CACHE.pop(next(iter(_RUNS_CACHE)))
            _SPANS.pop(id(old[0]), None)
        _RUNS_CACHE[key] = found
        if len(runs):
            _SPANS[id(runs)] = (int(runs[:, 0].min()), int((runs[:, 0] + runs[:, 1]).max()))
    return found


def _span_of(table):
    """(lowest, highest) byte the runs touch, relative to their origin."""
    span = _SPANS.get(id(table))
    if span is None:
        span = (int(table[:, 0].min()), int((table[:, 0] + table[:, 1]).max()))
    return span


def _as_array(runs):
    """Runs as the (n, 2) int64 array the region copies take."""
    if isinstance(runs, np.ndarray):
        return runs
    return np.asarray(runs, dtype=np.int64).reshape(-1, 2)


def _as_list(runs):
    """Runs as a list of (offset, length), for requests and the owner."""
    return runs.tolist() if isinstance(runs, np.ndarray) else runs


def _copier(dst, at, size):
    def copy(data):
        dst[at:at + size] = data[:size]
    return copy


def _then(first, second):
    def both(data):
        if first is not None:
            first(data)
        second()
    return both


def _origin_type(spec, count, datatype):
    """The (count, datatype) the user gave in a buffer spec whose datatype
    has holes (parsing packed it into `count` basic elements), else as parsed."""
    if isinstance(spec, (list, tuple)) and len(spec) >= 2:
        given = spec[-1]
        if isinstance(given, _MPI.Datatype) and not given.is_predefined and has_holes(given):
            lay = layout(given)
            per = lay.nbasic if lay.basic is not None else lay.size
            return (count // per if per else 0), given
    return count, datatype


def _empty_origin(origin):
    return origin is None or origin is _MPI.BOTTOM or (
        isinstance(origin, (list, tuple)) and len(origin) > 0
        and (origin[0] is None or origin[0] is _MPI.BOTTOM))   # identity: origin[0] may be an array


def _one_element(spec, writable, what):
    """A Fetch_and_op/Compare_and_swap buffer: exactly one predefined element."""
    buf = parse_recv(spec) if writable else parse_send(spec)
    if buf.count != 1:
        raise ValueError(f"{what}: expecting one element, got {buf.count}")
    return buf


def _agree_or_raise(state, error, what):
    """A failure on any rank (no room in its heap) is raised on every rank,
    rather than leaving the others in the next collective step."""
    errors = [e for e in state.coll._collectives.allgather(error) if e]
    if errors:
        with state.engine.lock:
            for block in (state.region_block, state.lock_block):
                if block is not None:
                    state.engine.heap.release(block)
        state.region_block = state.lock_block = None
        raise MPIError(_MPI.ERR_NO_MEM, f"{what}: {errors[0]}")


def _check_size(size):
    size = _index(size, "size")
    if size < 0:
        raise MPIError(_MPI.ERR_SIZE, f"negative window size {size}")
    return size


def _check_disp_unit(unit):
    unit = _index(unit, "disp_unit")
    if unit <= 0:
        raise MPIError(_MPI.ERR_DISP, f"disp_unit must be positive, got {unit}")
    return unit


def _info_flag(info, key):
    if info is None or info == _MPI.INFO_NULL:
        return False
    try:
        value = info.Get(key)
    except Exception:
        return False
    return value is not None and str(value).lower() == "true"


def _library_window(state, offset, size, disp_unit, info, comm):
    """The library's window over our region part (so memoryview(win),
    tomemory() and WIN_BASE/WIN_SIZE give it)."""
    if offset >= 0 and size:
        memory = region_memoryview(state.engine.mem, offset, size)
    else:
        memory = _MPI.BOTTOM
    return _MPI.Win.Create(memory, disp_unit, info, comm)


_BY_HANDLE = {}

# Windows not freed yet, in creation order (the same on every member).
_LIVE = []
_EXIT_HOOK = []


def _keep_serving_at_exit(state):
    """At exit, a window still alive is served until every member gets
    there: MPI_Finalize is collective, and a peer may still be waiting for
    this rank to answer its passive-target requests.  Registered after the
    job started, so it runs before ivmpi marks this rank finalized."""
    _LIVE.append(state)
    if not _EXIT_HOOK:
        import atexit
        atexit.register(_serve_until_everyone_exits)
        _EXIT_HOOK.append(True)


def _serve_until_everyone_exits():
    for state in list(_LIVE):
        try:
            state.coll.Barrier()
        except Exception:   # a peer that died or left: nothing more to serve
            pass


# --- the progress thread -----------------------------------------------------------------------

class _ProgressThread:
    """Serves window requests while the program computes outside MPI.

    It runs while windows exist: one round of the engine's progress, then a
    sleep that grows from 20 us to 1 ms while nothing arrives (a passive
    target that sleeps answers within about a millisecond, and an idle one
    costs a small fraction of a core)."""

    MAX_SLEEP = 0.001

    def __init__(self, engine):
        self.engine = engine
        self.users = 0
        self.thread = None
        self.stop = False
        self.guard = threading.Lock()

    def add(self):
        with self.guard:
            self.users += 1
            if self.thread is None:
                self.stop = False
                self.thread = threading.Thread(target=self._run, name="ivmpi-window-progress",
                                               daemon=True)
                self.thread.start()

    def remove(self):
        with self.guard:
            self.users -= 1
            if self.users > 0 or self.thread is None:
                return
            self.stop = True
            thread, self.thread = self.thread, None
        thread.join()

    def _run(self):
        engine, idle = self.engine, 0
        while not self.stop:
            try:
                moved = engine.progress()
            except Exception:
                # A failure (a dead peer, a corrupt ring) is for the program's own
                # calls to report; this thread only slows down.
                moved = False
                idle = 1000
            idle = 0 if moved else idle + 1
            time.sleep(min(self.MAX_SLEEP, 0.00002 * idle) if idle else 0)


_THREADS = {}


def _progress_thread(engine):
    thread = _THREADS.get(id(engine))
    if thread is None or thread.engine is not engine:
        thread = _THREADS[id(engine)] = _ProgressThread(engine)
    return thread


__all__ = ["Win"]
