"""The ivmpi communicator: mpi4py's Comm API over the region's rings.

Every public method is a thin wrapper: it checks ranks and tags, parses the
buffer (ivmpi.buffers) or pickles the object (MPI.pickle, as mpi4py does),
and calls the engine, which works in world ranks and bytes.  Collectives go
to ivmpi.collectives over a hidden twin of the communicator that has its own
context id, so collective traffic never matches user messages.
"""
import array
import weakref

from .lib import MPI as _MPI

from ._fastcopy import (PAIR_TYPES, SMALL_OPS, BoundCollective, Constant, FastPath,
                        PersistentStart, SmallCollectives, new_message, new_request,
                        set_typed_layout)

from .buffers import fast_plan, parse_recv, parse_send
from .collectives import COLLECTIVE_TAGS, Collectives
from .engine import ANY_SOURCE as _ENGINE_ANY_SOURCE
from .engine import Incoming, SendOp
from .errors import IvmpiError
from .nbcoll import (BLOCKING_SCHEDULED, NONBLOCKING_STARTERS, NonblockingCollectives,
                     channel_of)
from .topo import TopologyConstructors
from .request import (MESSAGE_NO_PROC, Message, MPIError, Prequest, Request, SendrecvOp,
                      UnpackingPrequest, UnpackingRequest, fill_status)
from . import routing

ANY_SOURCE = _MPI.ANY_SOURCE
ANY_TAG = _MPI.ANY_TAG
PROC_NULL = _MPI.PROC_NULL
UNDEFINED = _MPI.UNDEFINED
TAG_UB = (1 << 31) - 1
_pickle = _MPI.pickle


_EXTENTS = None


def _peer_name(source):
    return "any source" if source == ANY_SOURCE else f"rank {source}"


# Sends and receives with a derived datatype with holes copy its elements
# straight between the user's memory and the ring, by the type's RunPlan.
set_typed_layout(fast_plan)


def _predefined_extents():
    """Handle -> extent of the predefined datatypes ([buf, MPI.DOUBLE] specs)."""
    global _EXTENTS
    if _EXTENTS is None:
        types = list(_MPI._typedict.values()) + [_MPI.BYTE, _MPI.CHAR, _MPI.PACKED]
        # The pairs of MAXLOC/MINLOC, in whole extents as the general path
        # moves them: their reductions take the one-call paths.
        types += [getattr(_MPI, name) for name in PAIR_TYPES if hasattr(_MPI, name)]
        _EXTENTS = {t.handle: t.Get_extent()[1] for t in types if t.Get_extent()[1] > 0}
    return _EXTENTS


_SMALL_OP_CODES = None

# The blocking collectives SmallCollectives takes in one Cython call.
_SMALL_COLLECTIVES = (
    "Barrier", "barrier", "Bcast", "bcast", "Gather", "Gatherv", "Scatter", "Scatterv",
    "Allgather", "Allgatherv", "Alltoall", "Alltoallv", "Reduce", "Allreduce", "Scan", "Exscan",
    "Reduce_scatter", "Reduce_scatter_block", "gather", "scatter", "allgather", "alltoall")


def _small_op_codes():
    """Handle -> small-collective code of the predefined ops the C combine knows."""
    global _SMALL_OP_CODES
    if _SMALL_OP_CODES is None:
        _SMALL_OP_CODES = {getattr(_MPI, name).handle: code for name, code in SMALL_OPS.items()}
    return _SMALL_OP_CODES


class _StandaloneGroup:
    """A group of world ranks in standalone mode, where no MPI library knows
    the job's processes (under a launcher, groups are mpi4py's own)."""

    def __init__(self, world_ranks, my_world_rank):
        self._ranks = list(world_ranks)
        self._me = my_world_rank

    def Get_size(self):
        return len(self._ranks)

    def Get_rank(self):
        return self._ranks.index(self._me) if self._me in self._ranks else UNDEFINED

    size = property(Get_size)
    rank = property(Get_rank)

    def Incl(self, ranks):
        return _StandaloneGroup([self._ranks[r] for r in ranks], self._me)

    def Excl(self, ranks):
        drop = set(ranks)
        return _StandaloneGroup([w for i, w in enumerate(self._ranks) if i not in drop], self._me)

    def Translate_ranks(self, ranks=None, group=None):
        if ranks is None:
            ranks = range(len(self._ranks))
        if group is None:
            return list(ranks)
        return [group._ranks.index(self._ranks[r]) if self._ranks[r] in group._ranks else UNDEFINED
                for r in ranks]

    def Free(self):
        pass


Group = _MPI.Group


# The operation behind a send that the fast path published on the spot.
_SENT = SendOp(-1, b"", 0, 0, False)
_SENT.done = True


class _NoRegionState(MPIError):
    """A call on a communicator object without region state."""


class _NotIvmpi:
    """The region state of a communicator that has none: a null handle
    (``MPI.Comm()``) or a library communicator (``MPI.Intracomm(c)`` of an
    mpi4py one, an intercommunicator wrapped by ``mpi4py.util.pkl5``).  Any
    use raises; the methods then hand the call to mpi4py (see _library)."""

    def __getattr__(self, name):
        raise _NoRegionState(_MPI.ERR_COMM, "not an ivmpi communicator (a null handle, or "
                             "an mpi4py communicator: ivmpi.Comm.wrap(comm) makes one)")


_NO_STATE = _NotIvmpi()


class _Own:
    """A value the instance keeps in its own dict (rank, size: read on every
    call, so no Python-level property), else mpi4py's property over the handle."""

    def __init__(self, name):
        self.name = name

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        # mpi4py's property would call back into ivmpi's Get_rank/Get_size.
        return getattr(_MPI.Comm, "Get_" + self.name)(obj)


# The region state every copy of a communicator shares (see Comm.__new__).
_STATE = ("_engine", "_ranks", "_index", "_ctx", "_hidden", "_scope", "_coll", "_fast", "_locks",
          "_freed", "_shared", "_lazy", "_routed", "_route", "rank", "size")


# Library handle -> the live ivmpi communicator carrying it.
_BY_HANDLE = weakref.WeakValueDictionary()


def _ivmpi_comm_of(comm):
    mine = _BY_HANDLE.get(comm.handle)
    if mine is None or not comm or mine.handle != comm.handle:   # none, or freed since
        return comm
    return type(mine)(mine)


class Comm(_MPI.Comm):
    """A communicator whose messages travel through the region.

    It is an ``mpi4py.MPI.Comm`` carrying a real handle of the MPI library
    over the same processes (under a launcher: COMM_WORLD, COMM_SELF, and
    duplicates/splits made in step with ivmpi's own), so mpi4py functions
    that take a communicator (``Datatype.Pack``, ``File.Open``,
    ``Win.Create``, ``mpi4py.util``) accept it; the calls below move their
    messages through the region, and everything else (attributes, names,
    info, error handlers, topologies) is mpi4py's, on the handle.
    """

    _engine = _NO_STATE
    _fast = _NO_STATE
    _coll = None
    _hidden = False
    _freed = False
    # Collectives not made yet (see _create): made on first use.
    _lazy = False
    # Some peers share no region with this process (ivmpi.routing): their
    # messages and every collective go through the library's handle.
    _routed = False
    _route = None       # its RoutedPath (ivmpi/_route.pxi): those peers' point-to-point
    rank = _Own("rank")
    size = _Own("size")

    def __new__(cls, comm=None):
        # mpi4py's constructor: a new object for the same communicator
        # (mpi4py's Intracomm checks the kind; this base constructor does not).
        if (comm is not None and issubclass(cls, _MPI.Intracomm)
                and not isinstance(comm, _MPI.Intracomm) and comm and _MPI.Comm.Is_inter(comm)):
            raise TypeError("expecting an intracommunicator")
        if (comm is not None and issubclass(cls, _MPI.Intercomm)
                and not isinstance(comm, _MPI.Intercomm) and comm and _MPI.Comm.Is_intra(comm)):
            raise TypeError("expecting an intercommunicator")
        self = _MPI.Comm.__new__(cls, comm)
        if isinstance(comm, Comm) and "_engine" in comm.__dict__:
            if not comm._freed:
                comm._make_collectives()    # before copying: copies share them
            self.__dict__.update({k: comm.__dict__[k] for k in _STATE if k in comm.__dict__})
            self._bind_fast()
        return self

    def __init__(self, comm=None):
        pass

    @classmethod
    def _create(cls, engine, world_ranks, context, handle=None, hidden=False, local_ranks=None):
        """A communicator over world_ranks with its own context id; handle is
        the library's communicator over the same processes (None: a null one).
        For an intercommunicator world_ranks are the remote group's (the
        peers of point-to-point) and local_ranks this process's group."""
        self = _MPI.Comm.__new__(cls, handle)
        self._engine = engine
        self._ranks = list(world_ranks)
        self._index = {w: i for i, w in enumerate(self._ranks)}
        self._ctx = context
        self._hidden = hidden
        # The hidden twin carries collectives: any member's death ends its waits.
        self._scope = tuple(self._ranks) if hidden else None
        self._coll = None
        self._locks = {}
        self._freed = False
        local = self._ranks if local_ranks is None else list(local_ranks)
        self.rank = local.index(engine.rank)
        self.size = len(local)
        # Rings by communicator rank (None for ourselves) for the fast paths.
        self._fast = fast = FastPath(
            [engine.tx[w] for w in self._ranks], [engine.rx[w] for w in self._ranks],
            engine.posted, engine.unexpected, engine.backlog, context, engine.eager_limit,
            _predefined_extents())
        fast.spins = engine.fast_spins
        fast.copy_min = 0 if hidden else engine.copy_min
        fast.step_copy_min = engine.copy_min
        fast.lock = engine.lock
        fast.general_Send, fast.general_Recv = self._general_Send, self._general_Recv
        fast.general_send, fast.general_recv = self._general_send, self._general_recv
        fast.fill_status, fast.dumps, fast.loads = fill_status, _pickle.dumps, _pickle.loads
        fast.any_source, fast.any_tag = ANY_SOURCE, ANY_TAG
        fast.world_ranks, fast.scope, fast.comm = self._ranks, self._scope, self
        fast.comm_rank_of = self._index
        fast.general_Irecv, fast.new_request = self._general_Irecv, new_request
        fast.engine_irecv = engine.irecv
        fast.general_Isend, fast.sent_op = self._general_Isend, _SENT
        fast.general_irecv, fast.unpickle_op = self._general_irecv, self._unpickle_op
        fast.send_ids, fast.awaiting_ack = engine.next_send_id, engine.awaiting_ack
        fast.engine_post, fast.engine, fast.wait_op = engine._post, engine, engine.wait
        fast.core = engine.core
        fast.general_Ssend, fast.general_Issend = self._general_Ssend, self._general_Issend
        fast.general_ssend, fast.general_issend = self._general_ssend, self._general_issend
        fast.general_isend, fast.general_sendrecv = self._general_isend, self._general_sendrecv
        fast.general_Iprobe, fast.general_Probe = self._general_Iprobe, self._general_Probe
        fast.general_Improbe, fast.general_Mprobe = self._general_Improbe, self._general_Mprobe
        fast.new_message = new_message
        fast.general_Sendrecv = self._general_Sendrecv
        fast.general_Isendrecv = self._general_Isendrecv
        fast.general_Isendrecv_replace = self._general_Isendrecv_replace
        fast.new_unpacking = UnpackingRequest
        fast.take_stage, fast.give_stage = engine.take_stage, engine.give_stage
        fast.send_blocks = engine.send_blocks
        fast.rendezvous = engine.rendezvous
        # Heaps are by slot in the region; a rank reached through the
        # library has none here (0, 0): nothing it announces is in bounds.
        fast.heap_bounds = [engine.geo.heap(engine.slot_of[w]) if w in engine.slot_of
                            else (0, 0) for w in self._ranks]
        self._shared = None
        if handle:
            _BY_HANDLE[self.handle] = self
        if not hidden and _standalone():
            for name in _NEEDS_A_LAUNCHER:
                setattr(self, name, _refusal(name))
        self._routed = routed = bool(handle) and not engine.shares_region(self._ranks)
        if routed:
            # Peers outside the region: their messages through the handle
            # (the fast paths leave them to the general ones), collectives
            # are the library's on the handle.
            routing.add_route(engine, context, self, self._ranks)
            fast.routed = True
            self._route = routing.routed_path(engine, self)
            self._coll = routing.LibraryCollectives(self)
        elif not hidden and local_ranks is None:
            # The collectives (the hidden twin, its one-call forms and some
            # forty calls bound to the instance) are made on first use: a
            # communicator made and freed without one, as libraries Dup the
            # communicators they are given, costs a fraction as much.
            self._lazy = True
        self._bind_fast()
        return self

    def _make_collectives(self):
        """Make the collectives of a communicator that has none yet."""
        if self._lazy:
            self._check_live()          # (a freed one has none to make)
            self._lazy = False
            self._shared = self._small_collectives()
            self._bind_collectives()

    def _small_collectives(self):
        """The one-call collectives (SmallCollectives) over this
        communicator's collective twin: bound by every communicator that is
        not hidden; a window's hidden one uses their Barrier."""
        twin = self._collectives.p2p
        small = SmallCollectives(
            twin._fast, self.rank, self.size, COLLECTIVE_TAGS, _small_op_codes(),
            twin.Send, twin.Recv, self._collectives, _MPI.IN_PLACE, _MPI.SUM)
        # (Nor where one copy does not pay under the eager limit: copy_min.)
        engine = self._engine
        small.give_copies = not engine.oversubscribed and 0 < engine.copy_min <= engine.eager_limit
        return small

    def _bind_fast(self):
        """The hot calls go straight to Cython, no Python frame in between:
        the instance's own attributes shadow the methods below.  Only for
        ivmpi's classes: a subclass (mpi4py.util.pkl5, a user's) keeps its
        overrides and reaches the same paths through the methods."""
        if type(self) not in _FAST_CLASSES:
            return
        fast = self._fast
        self.Get_rank, self.Get_size = Constant(self.rank), Constant(self.size)
        self.Send, self.Recv, self.Isend, self.Irecv = fast.Send, fast.Recv, fast.Isend, fast.Irecv
        self.irecv = fast.irecv
        self.send, self.recv = fast.send_object, fast.recv_object
        self.Ssend, self.Issend = fast.Ssend, fast.Issend
        # Ready sends are standard ones here; buffered sends too, but eager
        # up to the eager limit whoever the receiver, so that they never
        # wait for it (see docs/api.md).
        self.Rsend, self.Irsend = fast.Send, fast.Isend
        self.Bsend, self.Ibsend = fast.Bsend, fast.Ibsend
        self.bsend = fast.send_object
        self.isend = self.ibsend = fast.isend_object
        self.ssend, self.issend = fast.ssend_object, fast.issend_object
        self.Iprobe = self.iprobe = fast.Iprobe
        self.Probe = self.probe = fast.Probe
        self.Improbe = self.improbe = fast.Improbe
        self.Mprobe = self.mprobe = fast.Mprobe
        self.Sendrecv = fast.Sendrecv
        route = self._route
        if route is None:
            self.sendrecv = fast.sendrecv_object
            self.Isendrecv, self.Isendrecv_replace = fast.Isendrecv, fast.Isendrecv_replace
        if route is not None:
            # Peers in other regions straight through the library, in one call.
            self.Send, self.Recv, self.Isend, self.Irecv = (route.Send, route.Recv, route.Isend,
                                                            route.Irecv)
            self.send, self.recv, self.isend = route.send, route.recv, route.isend
            self.Ssend, self.Issend, self.ssend, self.issend = (route.Ssend, route.Issend,
                                                                route.ssend, route.issend)
            self.Bsend, self.Ibsend, self.bsend, self.ibsend = (route.Bsend, route.Ibsend,
                                                                route.bsend, route.isend)
            self.Rsend, self.Irsend = route.Send, route.Isend
            self.Sendrecv = route.Sendrecv
            routing.bind_collectives(self)
        self._bind_collectives()

    def _bind_collectives(self):
        """The one-call collectives bound to the instance, as _bind_fast
        binds the point-to-point calls."""
        small = self._shared
        if small is not None and type(self) in _FAST_CLASSES:
            small.lock_of = self._lock
            for name in _SMALL_COLLECTIVES:
                setattr(self, name, getattr(small, name))
            if isinstance(self, NonblockingCollectives):
                ref = weakref.ref(self)
                for name, plan, names, defaults, extra in NONBLOCKING_STARTERS:
                    setattr(self, name, BoundCollective(ref, channel_of, name, plan, names,
                                                        defaults, extra, False))
                for name, plan, names, defaults, extra in BLOCKING_SCHEDULED:
                    setattr(self, name, BoundCollective(ref, channel_of, name, plan, names,
                                                        defaults, extra, True))

    # mpi4py's handle conversions give ivmpi's communicator over a handle
    # that has one (a new object for it, of its class), else mpi4py's.

    @classmethod
    def fromhandle(cls, handle):
        return _ivmpi_comm_of(_MPI.Comm.fromhandle(handle))

    @classmethod
    def fromint(cls, arg, /):
        return _ivmpi_comm_of(_MPI.Comm.fromint(arg))

    @classmethod
    def f2py(cls, arg):
        return _ivmpi_comm_of(_MPI.Comm.f2py(arg))

    @classmethod
    def Get_parent(cls):
        # The parent of a spawned process is the library's (no region joins
        # the two jobs), as ivmpi's class: null when there is none.
        from .intercomm import Intercomm
        return Intercomm(_MPI.Comm.Get_parent())

    @classmethod
    def wrap(cls, mpi_comm=None, region=None):
        """An ivmpi communicator over an mpi4py communicator's processes.

        The world is started on first use (every process of COMM_WORLD takes
        part); the result is a communicator with mpi_comm's group, collective
        over mpi_comm.
        """
        from . import world
        wcomm = world.get_world(region=region)
        if mpi_comm is None or mpi_comm == _MPI.COMM_WORLD:
            return wcomm
        group = mpi_comm.Get_group()
        ranks = _MPI.Group.Translate_ranks(group, list(range(group.Get_size())),
                                           _MPI.COMM_WORLD.Get_group())
        group.Free()
        # The new context must be agreed by the new members only.
        return wcomm._new_comm_among(ranks, _MPI.Comm.Dup(mpi_comm))

    # --- ranks and checks --------------------------------------------------------

    # (On ivmpi's own classes the instance's Constant attributes, _bind_fast,
    # answer until Free.)
    def Get_rank(self):
        if self._freed:
            raise MPIError(_MPI.ERR_COMM, "Get_rank: the communicator is freed")
        return self.rank

    def Get_size(self):
        if self._freed:
            raise MPIError(_MPI.ERR_COMM, "Get_size: the communicator is freed")
        return self.size

    def Get_group(self):
        if _standalone():
            return _StandaloneGroup(self._ranks, self._engine.rank)
        return _MPI.Comm.Get_group(self)

    group = property(Get_group)

    def _world(self, rank, what):
        # Peers are self._ranks: the remote group of an intercommunicator.
        if 0 <= rank < len(self._ranks):
            return self._ranks[rank]
        raise MPIError(_MPI.ERR_RANK, f"{what}: rank {rank} is not in 0..{len(self._ranks) - 1}")

    def _comm_rank(self, world_rank):
        return self._index.get(world_rank, UNDEFINED)

    def _source(self, source, what):
        if source == ANY_SOURCE:
            return _ENGINE_ANY_SOURCE
        return self._world(source, what)

    @staticmethod
    def _send_tag(tag, what):
        if not 0 <= tag <= TAG_UB:
            raise MPIError(_MPI.ERR_TAG, f"{what}: tag {tag} is not in 0..{TAG_UB}")
        return tag

    @staticmethod
    def _recv_tag(tag, what):
        if tag == ANY_TAG:
            return -1
        if not 0 <= tag <= TAG_UB:
            raise MPIError(_MPI.ERR_TAG, f"{what}: tag {tag} is not in 0..{TAG_UB} or ANY_TAG")
        return tag

    def _check_live(self):
        if self._freed:
            raise MPIError(_MPI.ERR_COMM, "the communicator has been freed")
        self._engine          # a communicator without region state raises here

    # --- point-to-point, buffers --------------------------------------------------

    def _isend_bytes(self, mem, dest, tag, sync, what):
        self._check_live()
        if dest == PROC_NULL:
            return Request(self, None, what=what)
        op = self._engine.isend(self._world(dest, what), mem, self._send_tag(tag, what),
                                self._ctx, sync)
        op.scope = self._scope
        return Request(self, op, what=(what, "to", dest))

    def _irecv_bytes(self, mem, source, tag, decode, what):
        self._check_live()
        if source == PROC_NULL:
            return Request(self, None, decode, what)
        op = self._engine.irecv(self._source(source, what), self._recv_tag(tag, what), self._ctx, mem)
        op.scope = self._scope
        return Request(self, op, decode=decode, what=(what, "from", source))

    def Isend(self, buf, dest, tag=0):
        return self._fast.Isend(buf, dest, tag)

    def _general_Isend(self, buf, dest, tag):
        b = parse_send(buf, rank=dest, holes=True)
        if b.pack is not None:
            # Packed from a datatype with holes: the packed bytes may go at once.
            return self._fast.Isend(b.mem, dest, tag)
        return self._isend_bytes(b.mem, dest, tag, False, "Isend")

    def Issend(self, buf, dest, tag=0):
        return self._fast.Issend(buf, dest, tag)

    def _general_Issend(self, buf, dest, tag):
        return self._isend_bytes(parse_send(buf, rank=dest, holes=True).mem, dest, tag, True,
                                 "Issend")

    def Ibsend(self, buf, dest, tag=0):
        return self._fast.Ibsend(buf, dest, tag)

    def Irsend(self, buf, dest, tag=0):
        return self.Isend(buf, dest, tag)

    # Send/Recv/send/recv: each instance binds FastPath's versions of these
    # (see __init__), which try the one-call fast path and fall back to the
    # _general_* methods; the methods below do the same for unbound calls.

    def Send(self, buf, dest, tag=0):
        if not self._fast.send(buf, dest, tag):
            self._general_Send(buf, dest, tag)

    def _general_Send(self, buf, dest, tag):
        b = parse_send(buf, rank=dest, holes=True)
        # A datatype with holes is packed now: the packed bytes may take the fast path.
        if b.pack is not None and self._fast.send(b.mem, dest, tag):
            return
        self._isend_bytes(b.mem, dest, tag, False, "Send").Wait()

    def Ssend(self, buf, dest, tag=0):
        self._fast.Ssend(buf, dest, tag)

    def _general_Ssend(self, buf, dest, tag):
        self._isend_bytes(parse_send(buf, rank=dest, holes=True).mem, dest, tag, True,
                          "Ssend").Wait()

    def Bsend(self, buf, dest, tag=0):
        self._fast.Bsend(buf, dest, tag)

    Rsend = Send

    def Irecv(self, buf, source=ANY_SOURCE, tag=ANY_TAG):
        return self._fast.Irecv(buf, source, tag)

    def _general_Irecv(self, buf, source, tag):
        b = parse_recv(buf, rank=source, holes=True)
        if b.unpack is None:
            return self._irecv_bytes(b.mem, source, tag, None, "Irecv")
        # Into a staging buffer, posted in one call; unpacked on completion.
        return _unpacking(self._fast.Irecv(b.mem, source, tag), b.unpack)

    def Recv(self, buf, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        self._fast.Recv(buf, source, tag, status)

    def _general_Recv(self, buf, source, tag, status):
        # A derived datatype with holes arrives packed and is unpacked here.
        b = parse_recv(buf, rank=source, holes=True)
        if b.unpack is None:
            self._irecv_bytes(b.mem, source, tag, None, "Recv").Wait(status)
            return
        if status is None:
            status = _MPI.Status()
        self._fast.Recv(b.mem, source, tag, status)      # into the staging buffer
        b.unpack(status.Get_count(_MPI.BYTE))

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                 recvtag=ANY_TAG, status=None):
        self._fast.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def _general_Sendrecv(self, sendbuf, dest, sendtag, recvbuf, source, recvtag, status):
        # The send half is checked whole before the receive is posted: a bad
        # one must leave no receive behind to swallow a later message.
        self._check_send_args(dest, sendtag, "Sendrecv")
        sent = parse_send(sendbuf, rank=dest, holes=True)
        sendmem = sent.mem
        if sent.pack is not None and self._fast.send(sendmem, dest, sendtag):
            # Packed from a datatype with holes, and sent eagerly.
            self.Recv(recvbuf, source, recvtag, status)
            return
        received = parse_recv(recvbuf, rank=source, holes=True)
        rreq = self._irecv_bytes(received.mem, source, recvtag, None, "Sendrecv")
        sreq = self._isend_bytes(sendmem, dest, sendtag, False, "Sendrecv")
        if status is None:
            status = _MPI.Status()
        Request.Waitall([sreq, rreq], [_MPI.Status(), status])
        if received.unpack is not None:
            received.unpack(status.Get_count(_MPI.BYTE))

    # Isendrecv and Isendrecv_replace: each instance binds FastPath's (see
    # _bind_fast), which take eager messages in one call and hand the rest
    # to the _general_* methods.

    def Isendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                  recvtag=ANY_TAG):
        return self._general_Isendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag)

    def _general_Isendrecv(self, sendbuf, dest, sendtag, recvbuf, source, recvtag):
        self._check_send_args(dest, sendtag, "Isendrecv")
        sendmem = parse_send(sendbuf, rank=dest, holes=True).mem
        received = parse_recv(recvbuf, rank=source, holes=True)
        return self._isendrecv(sendmem, dest, sendtag, received.mem, source, recvtag,
                               "Isendrecv", received.unpack)

    def Isendrecv_replace(self, buf, dest, sendtag=0, source=ANY_SOURCE, recvtag=ANY_TAG):
        return self._general_Isendrecv_replace(buf, dest, sendtag, source, recvtag)

    def _general_Isendrecv_replace(self, buf, dest, sendtag, source, recvtag):
        self._check_send_args(dest, sendtag, "Isendrecv_replace")
        b = parse_recv(buf, rank=source if source != PROC_NULL else dest, holes=True, fill=True)
        # The outgoing bytes are taken now: the incoming ones land in buf.
        return self._isendrecv(memoryview(bytes(b.mem)), dest, sendtag, b.mem, source,
                               recvtag, "Isendrecv_replace", b.unpack)

    def _isendrecv(self, sendmem, dest, sendtag, recvmem, source, recvtag, what, unpack=None):
        rreq = self._irecv_bytes(recvmem, source, recvtag, None, what)
        sreq = self._isend_bytes(sendmem, dest, sendtag, False, what)
        op = SendrecvOp(sreq._op, rreq._op)
        if unpack is not None:
            return UnpackingRequest(self, op, unpack, what=(what, "from", source))
        return Request(self, op, what=(what, "from", source))

    def _check_send_args(self, dest, tag, what):
        # Checked before a receive is posted, so a bad send half leaves nothing behind.
        if dest != PROC_NULL:
            self._world(dest, what)
            self._send_tag(tag, what)

    def Sendrecv_replace(self, buf, dest, sendtag=0, source=ANY_SOURCE, recvtag=ANY_TAG,
                         status=None):
        # An eager send takes its bytes from buf at once: the reply may then
        # land in it (as Sendrecv, sending first cannot deadlock).
        if self._fast.send(buf, dest, sendtag):
            self.Recv(buf, source, recvtag, status)
            return
        self._check_send_args(dest, sendtag, "Sendrecv_replace")
        # mpi4py's rule: the buffer is read for the receiving peer, or for
        # the sending one when that is PROC_NULL.
        b = parse_recv(buf, rank=source if source != PROC_NULL else dest, holes=True, fill=True)
        outgoing = bytes(b.mem)
        rreq = self._irecv_bytes(b.mem, source, recvtag, None, "Sendrecv_replace")
        sreq = self._isend_bytes(memoryview(outgoing), dest, sendtag, False, "Sendrecv_replace")
        Request.Waitall([sreq, rreq], None if status is None else [_MPI.Status(), status])
        if b.unpack is not None:
            b.unpack()

    def Send_init(self, buf, dest, tag=0):
        return self._send_init(buf, dest, tag, False, "Send_init", "persistent send")

    def Ssend_init(self, buf, dest, tag=0):
        return self._send_init(buf, dest, tag, True, "Ssend_init", "persistent synchronous send")

    def Bsend_init(self, buf, dest, tag=0):
        return self._send_init(buf, dest, tag, False, "Bsend_init", "persistent buffered send",
                               buffered=True)

    def _send_init(self, buf, dest, tag, sync, what, description, buffered=False):
        b = parse_send(buf, rank=dest, holes=True)

        def start():
            if b.pack is not None:
                b.pack()    # the data as they are now, at each start
            return self._isend_bytes(b.mem, dest, tag, sync, what)._op, None
        if b.pack is None and "_fast" in self.__dict__:
            # Parsed once: each Start is one call that publishes the frame.
            # Modes: 0 standard, 1 synchronous, 3 buffered (eager up to the eager limit).
            mode = 3 if buffered else int(sync)
            return Prequest(self, PersistentStart(self._fast, b.mem, dest, tag, mode, start),
                            description)
        return Prequest(self, start, description)

    Rsend_init = Send_init

    def Recv_init(self, buf, source=ANY_SOURCE, tag=ANY_TAG):
        b = parse_recv(buf, rank=source, holes=True)

        def start():
            req = self._irecv_bytes(b.mem, source, tag, None, "Recv_init")
            return req._op, None
        if b.unpack is not None:
            return UnpackingPrequest(self, start, b.unpack, "persistent receive")
        if "_fast" in self.__dict__:
            # Each Start posts the receive in one call.
            return Prequest(self, PersistentStart(self._fast, b.mem, source, tag, 2, start),
                            "persistent receive")
        return Prequest(self, start, "persistent receive")

    # --- probes ---------------------------------------------------------------

    # Iprobe/Probe/Improbe/Mprobe: each instance binds FastPath's versions
    # (see _bind_fast), which peek at the rings in one call and fall back
    # to the _general_* methods; the methods below do the same unbound.

    def Iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._fast.Iprobe(source, tag, status)

    def _general_Iprobe(self, source, tag, status):
        self._check_live()
        if source == PROC_NULL:
            fill_status(status, PROC_NULL, ANY_TAG, 0)
            return True
        msg = self._engine.iprobe(self._source(source, "Iprobe"), self._recv_tag(tag, "Iprobe"),
                                  self._ctx)
        if msg is None:
            return False
        fill_status(status, self._comm_rank(msg.source), msg.tag, msg.size)
        return True

    def Probe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._fast.Probe(source, tag, status)

    def _general_Probe(self, source, tag, status):
        fast = self._fast
        self._wait_for(lambda: fast.iprobe_once(source, tag, status),
                       f"Probe from {_peer_name(source)}")
        return True

    iprobe = Iprobe
    probe = Probe

    def Improbe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._fast.Improbe(source, tag, status)

    def _general_Improbe(self, source, tag, status):
        self._check_live()
        if source == PROC_NULL:
            fill_status(status, PROC_NULL, ANY_TAG, 0)
            # A copy, as mpi4py returns: it becomes MESSAGE_NULL once received.
            return Message(MESSAGE_NO_PROC)
        msg = self._engine.improbe(self._source(source, "Improbe"), self._recv_tag(tag, "Improbe"),
                                   self._ctx)
        if msg is None:
            return None
        fill_status(status, self._comm_rank(msg.source), msg.tag, msg.size)
        return Message(self, msg)

    def Mprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._fast.Mprobe(source, tag, status)

    def _general_Mprobe(self, source, tag, status):
        found = []

        def attempt():
            message = self._fast.improbe_once(source, tag, status)
            if message is not None:
                found.append(message)
                return True
            return False
        self._wait_for(attempt, f"Mprobe from {_peer_name(source)}")
        return found[0]

    improbe = Improbe
    mprobe = Mprobe

    def _wait_for(self, attempt, what):
        """Progress until attempt() is true, with the engine's backoff and timeout."""
        engine = self._engine
        waiter = _Condition(attempt)
        if not waiter.done:
            engine.wait(waiter, what)

    # --- point-to-point, objects --------------------------------------------------

    def _unpickle_op(self, op):
        return _pickle.loads(op.data)

    def isend(self, obj, dest, tag=0):
        return self._fast.isend_object(obj, dest, tag)

    def _general_isend(self, data, dest, tag):
        return self._isend_bytes(memoryview(data), dest, tag, False, "isend")

    def issend(self, obj, dest, tag=0):
        return self._fast.issend_object(obj, dest, tag)

    def _general_issend(self, data, dest, tag):
        return self._isend_bytes(memoryview(data), dest, tag, True, "issend")

    ibsend = isend

    def send(self, obj, dest, tag=0):
        self._fast.send_object(obj, dest, tag)

    def _general_send(self, data, dest, tag):
        self._isend_bytes(memoryview(data), dest, tag, False, "send").wait()

    def ssend(self, obj, dest, tag=0):
        self._fast.ssend_object(obj, dest, tag)

    def _general_ssend(self, data, dest, tag):
        self._general_issend(data, dest, tag).wait()

    bsend = send

    def irecv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG):
        return self._fast.irecv(buf, source, tag)

    def _general_irecv(self, buf, source, tag):
        # mpi4py accepts a buffer hint for irecv; the size comes from the message here.
        return self._irecv_bytes(None, source, tag, self._unpickle_op, "irecv")

    def recv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._fast.recv_object(buf, source, tag, status)

    def _general_recv(self, buf, source, tag, status):
        return self.irecv(buf, source, tag).wait(status)

    def sendrecv(self, sendobj, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                 recvtag=ANY_TAG, status=None):
        # FastPath.sendrecv_object does the same in one call (bound by
        # _bind_fast when every peer is in the region).
        data = _pickle.dumps(sendobj)
        if self._fast.send(data, dest, sendtag):
            return self.recv(recvbuf, source, recvtag, status)
        op = self._fast.send_bytes_staged(data, dest, sendtag)
        if op is not None:
            # A little over the eager limit, announced from our heap: the
            # peer copies it out whenever it receives, so receiving first
            # cannot deadlock.
            obj = self.recv(recvbuf, source, recvtag, status)
            self._fast.finish_staged(op, "sendrecv")
            return obj
        return self._general_sendrecv(data, dest, sendtag, recvbuf, source, recvtag, status)

    def _general_sendrecv(self, data, dest, sendtag, recvbuf, source, recvtag, status):
        self._check_send_args(dest, sendtag, "sendrecv")
        rreq = self.irecv(recvbuf, source, recvtag)
        sreq = self._isend_bytes(memoryview(data), dest, sendtag, False, "sendrecv")
        sreq.wait()
        return rreq.wait(status)

    # --- collectives -----------------------------------------------------------

    @property
    def _collectives(self):
        if self._coll is None:
            self._check_live()      # (a freed communicator's are gone)
            twin = Intracomm._create(self._engine, self._ranks, self._ctx + 1, hidden=True)
            self._coll = Collectives(twin)
        return self._coll

    def _lock(self, name):
        """mpi4py's lock for the object collective `name` on this communicator
        (MPI._comm_lock: kept with the handle, so copies share it), looked up
        once: the object collectives hold it, as mpi4py's do, so that threads
        of MPI_THREAD_MULTIPLE programs cannot interleave their steps."""
        locks = self._locks
        lock = locks.get(name)
        if lock is None:
            lock = locks[name] = _MPI._comm_lock(self, name)
        return lock

    # The blocking collectives of _SMALL_COLLECTIVES: each instance binds
    # SmallCollectives' versions (see __init__), which take the common
    # cases in one Cython call; the
    # methods here serve hidden communicators and unbound calls.

    def Barrier(self):
        self._collectives.Barrier()

    def barrier(self):
        self._collectives.barrier()

    def Bcast(self, buf, root=0):
        self._collectives.Bcast(buf, root)

    def bcast(self, obj, root=0):
        with self._lock('bcast'):
            return self._collectives.bcast(obj, root)

    def Scatter(self, sendbuf, recvbuf, root=0):
        self._collectives.Scatter(sendbuf, recvbuf, root)

    def Scatterv(self, sendbuf, recvbuf, root=0):
        self._collectives.Scatterv(sendbuf, recvbuf, root)

    def scatter(self, sendobj, root=0):
        with self._lock('scatter'):
            return self._collectives.scatter(sendobj, root)

    def Gather(self, sendbuf, recvbuf, root=0):
        self._collectives.Gather(sendbuf, recvbuf, root)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        self._collectives.Gatherv(sendbuf, recvbuf, root)

    def gather(self, sendobj, root=0):
        with self._lock('gather'):
            return self._collectives.gather(sendobj, root)

    def Allgather(self, sendbuf, recvbuf):
        self._collectives.Allgather(sendbuf, recvbuf)

    def Allgatherv(self, sendbuf, recvbuf):
        self._collectives.Allgatherv(sendbuf, recvbuf)

    def allgather(self, sendobj):
        with self._lock('allgather'):
            return self._collectives.allgather(sendobj)

    def Alltoall(self, sendbuf, recvbuf):
        self._collectives.Alltoall(sendbuf, recvbuf)

    def Alltoallv(self, sendbuf, recvbuf):
        self._collectives.Alltoallv(sendbuf, recvbuf)

    def alltoall(self, sendobj):
        with self._lock('alltoall'):
            return self._collectives.alltoall(sendobj)

    def Reduce(self, sendbuf, recvbuf, op=_MPI.SUM, root=0):
        self._collectives.Reduce(sendbuf, recvbuf, op, root)

    def reduce(self, sendobj, op=_MPI.SUM, root=0):
        return self._collectives.reduce(sendobj, op, root)

    def Allreduce(self, sendbuf, recvbuf, op=_MPI.SUM):
        self._collectives.Allreduce(sendbuf, recvbuf, op)

    def allreduce(self, sendobj, op=_MPI.SUM):
        return self._collectives.allreduce(sendobj, op)

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=_MPI.SUM):
        self._collectives.Reduce_scatter_block(sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=_MPI.SUM):
        self._collectives.Reduce_scatter(sendbuf, recvbuf, recvcounts, op)

    def Scan(self, sendbuf, recvbuf, op=_MPI.SUM):
        self._collectives.Scan(sendbuf, recvbuf, op)

    def scan(self, sendobj, op=_MPI.SUM):
        return self._collectives.scan(sendobj, op)

    def Exscan(self, sendbuf, recvbuf, op=_MPI.SUM):
        self._collectives.Exscan(sendbuf, recvbuf, op)

    def exscan(self, sendobj, op=_MPI.SUM):
        return self._collectives.exscan(sendobj, op)

    # --- memory in the region ------------------------------------------------------

    def Alloc_mem(self, size, info=None):
        """A buffer inside the region (this rank's heap): large sends from it
        skip the sender's copy.  Use it like mpi4py's, e.g. np.frombuffer(buf, 'f8')."""
        engine = self._engine
        with engine.lock:
            # An MPI.buffer, as mpi4py's Alloc_mem gives (with .address, and
            # item assignment); sends recognise the region by address.
            return _MPI.buffer(engine.heap.alloc(size))

    def Free_mem(self, mem):
        engine = self._engine
        with engine.lock:
            engine.heap.release(mem)
        if isinstance(mem, _MPI.buffer):
            mem.release()      # as mpi4py's Free_mem leaves it: address 0, no bytes

    # --- communicator management ---------------------------------------------------

    def _agree_context(self):
        """A context id unused by every member (collective over this communicator)."""
        engine = self._engine
        self._make_collectives()
        small = self._shared
        if small is None:
            ctx = self._collectives.allreduce(engine.next_context, op=_MPI.MAX)
        else:
            # One Cython call (the object form pickles: 4-30 us a Dup).
            mine, agreed = array.array("q", [engine.next_context]), array.array("q", [0])
            small.Allreduce(mine, agreed, _MPI.MAX)
            ctx = agreed[0]
        engine.next_context = ctx + 2
        return ctx

    def _handle_of(self, make):
        """The library's communicator for a new ivmpi one, made by
        make(self) in step with it (every member calls this in the same
        order); None for the hidden communicators, which need none.  In
        standalone mode no library spans the job: a private duplicate of
        COMM_SELF serves local uses (attributes, names, Pack)."""
        if self._hidden:
            return None
        if _standalone():
            return _MPI.COMM_SELF.Dup()
        return make(self)

    def Dup(self, info=None):
        self._check_live()
        ctx = self._agree_context()
        handle = self._handle_of(lambda c: _MPI.Comm.Dup(c, info))
        # As in mpi4py, a duplicate has the type of the original (Split and
        # Create give plain intracommunicators).
        return type(self)._create(self._engine, self._ranks, ctx, handle)

    Clone = Dup

    def Dup_with_info(self, info):
        return self.Dup(info)

    def Idup(self, info=None):
        # Completes at once: the agreement is a blocking collective.
        return self.Dup(info), Request(self, None, what="Idup")

    def Idup_with_info(self, info):
        return self.Idup(info)

    def Split(self, color=0, key=0):
        self._check_live()
        entries = self._collectives.allgather((color, key, self.rank))
        ctx = self._agree_context()
        # The library orders members as ivmpi does: by key, then by rank.
        handle = self._handle_of(lambda c: _MPI.Comm.Split(c, color, key))
        if color == UNDEFINED:
            return _MPI.COMM_NULL
        members = sorted((k, r) for c, k, r in entries if c == color)
        return Intracomm._create(self._engine, [self._ranks[r] for _, r in members], ctx, handle)

    def Split_type(self, split_type, key=0, info=None):
        # A node is a group of ranks sharing a region (docs/routing.md): the
        # color is the lowest world rank of this process's group.
        if split_type == UNDEFINED:
            return self.Split(UNDEFINED, key)
        return self.Split(self._engine.members[0], key)

    def Create(self, group):
        self._check_live()
        members = _world_ranks_of(group)
        ctx = self._agree_context()
        handle = self._handle_of(lambda c: _MPI.Intracomm.Create(c, group))
        if self._engine.rank not in members:
            return _MPI.COMM_NULL
        return Intracomm._create(self._engine, members, ctx, handle)

    def Create_group(self, group, tag=0):
        # Collective over the group's members only: they agree among themselves.
        members = _world_ranks_of(group)
        if self._engine.rank not in members:
            return _MPI.COMM_NULL
        return self._new_comm_among(
            members, self._handle_of(lambda c: _MPI.Intracomm.Create_group(c, group, tag)))

    @classmethod
    def Create_from_group(cls, group, stringtag="org.mpi4py", info=None, errhandler=None):
        from . import world
        members = _world_ranks_of(group)
        handle = None
        if not _standalone():
            handle = _MPI.Intracomm.Create_from_group(group, stringtag,
                                                      _MPI.INFO_NULL if info is None else info,
                                                      errhandler)
        return world.get_world()._new_comm_among(members, handle)

    def _new_comm_among(self, world_ranks, handle):
        engine = self._engine
        if handle and not engine.shares_region(world_ranks):
            # Members in several regions agree through the new handle.
            ctx = _MPI.Intracomm.allreduce(handle, engine.next_context, op=_MPI.MAX)
            engine.next_context = ctx + 2
            return Intracomm._create(engine, world_ranks, ctx, handle)
        # A temporary communicator over the members, with a context that
        # cannot collide: members agree on the largest next_context.
        members = Intracomm._create(self._engine, world_ranks, self._reserved_context(world_ranks),
                                    hidden=True)
        ctx = members._agree_context()
        members.Free()
        if handle is None and _standalone():
            handle = _MPI.COMM_SELF.Dup()
        return Intracomm._create(self._engine, world_ranks, ctx, handle)

    def _reserved_context(self, world_ranks):
        # Deterministic per member set and distinct from agreed contexts
        # (those are even and grow from 4; these live above 2^31).
        h = 0
        for w in world_ranks:
            h = (h * 1000003 + w + 1) & 0x3FFFFFFF
        return (1 << 31) + (h << 1)

    def Free(self):
        if not self._hidden:
            if self._routed and _MPI.Comm.__bool__(self) and self.handle not in _PREDEFINED:
                routing.drop_route(self._engine, self._ctx)
            # The library's handle first: it refuses COMM_NULL and the predefined ones.
            _MPI.Comm.Free(self)
        self._freed = True
        self.__dict__.pop("Get_rank", None)     # (the methods raise from now on)
        self.__dict__.pop("Get_size", None)
        if "_fast" in self.__dict__:    # a communicator with region state
            self._fast.enabled = False
        if self._coll is not None:      # its collectives are gone with it
            self._coll.free()

    def Disconnect(self):
        self.Free()

    def Abort(self, errorcode=0):
        from . import world
        world.abort(errorcode)

    def __reduce__(self):
        # COMM_WORLD and COMM_SELF pickle by name, as in mpi4py, and come
        # back as this process's ivmpi communicators.
        from . import world
        for name, comm in (("COMM_WORLD", world._world), ("COMM_SELF", world._self)):
            if comm is not None and _MPI.Comm.__eq__(self, comm):
                return (_predefined, (name, None if self is comm else type(self)))
        return _MPI.Comm.__reduce__(self)

    def __repr__(self):
        if "_engine" not in self.__dict__:
            return f"<ivmpi.{type(self).__name__} without region state>"
        return f"<ivmpi.{type(self).__name__} rank {self.rank} of {self.size}, context {self._ctx}>"


class Intracomm(Comm, NonblockingCollectives, TopologyConstructors, _MPI.Intracomm):
    """An intracommunicator: mpi4py's Intracomm, with Comm's region-backed
    calls (ivmpi.intercomm has the intercommunicators)."""

    def Create_intercomm(self, local_leader, peer_comm, remote_leader, tag=0):
        from .intercomm import create_intercomm
        return create_intercomm(self, local_leader, peer_comm, remote_leader, tag)


# The classes whose instances take the fast paths (see _bind_fast); the
# topology communicators of ivmpi.topocomm join them.
_FAST_CLASSES = {Comm, Intracomm}

# The classes whose methods are ivmpi's own (region-backed) calls.
_OWN_CLASSES = (Comm, Intracomm, NonblockingCollectives, TopologyConstructors)

# mpi4py's calls that ivmpi leaves to the library on the handle and that span
# the communicator's processes (nonblocking and persistent collectives,
# topologies, intercommunicators, dynamic processes).  In standalone mode the
# handle spans this process only, so they would give wrong results silently.
_NEEDS_A_LAUNCHER = tuple(
    name for name in dir(_MPI.Intracomm)
    if all(name not in k.__dict__ for k in _OWN_CLASSES) and (
        (name[:1] == "I" and name[1:2].islower() and not name.startswith("Is_")
         and name != "Iflush_buffer")
        or name.endswith("_init")
        or name in ("Alltoallw", "Accept", "Connect", "Join", "Spawn", "Spawn_multiple",
                    "Agree", "Shrink", "Cart_map", "Graph_map")
        or name.startswith(("Create_cart", "Create_graph", "Create_dist_graph",
                            "Create_intercomm"))))


def _unpacking(request, unpack):
    """request as an UnpackingRequest that calls unpack on completion."""
    return UnpackingRequest(request._comm, request._op, unpack, request._what)


def _refusal(name):
    def refuse(*args, **kwargs):
        raise MPIError(_MPI.ERR_UNSUPPORTED_OPERATION,
                       f"{name} is not available in standalone mode (IVMPI_RANK/IVMPI_SIZE, "
                       f"no MPI launcher): ivmpi leaves it to the MPI library, which does "
                       f"not span this job; start the job with mpirun to use it")
    refuse.__name__ = name
    return refuse


def _predefined(name, cls=None):
    """COMM_WORLD or COMM_SELF (unpickling), or a new cls object for it."""
    from . import world
    comm = world.get_world() if name == "COMM_WORLD" else world.get_self()
    return comm if cls is None else cls(comm)


_PREDEFINED = (_MPI.COMM_WORLD.handle, _MPI.COMM_SELF.handle, _MPI.COMM_NULL.handle)


def _library(name, method):
    """method, or for an object without region state, mpi4py's own method of
    that name (the library's call on the handle), found along the object's
    classes past ivmpi's.  Class-level calls need this: mpi4py.util.pkl5
    calls ``MPI.Comm.Send(comm, ...)`` whatever comm is.  A collective on a
    communicator spanning regions is the library's on the handle
    (ivmpi.routing)."""
    collective = name in routing.COLLECTIVES
    made_on_use = name in _MADE_ON_USE

    def call(self, *args, **kwargs):
        if made_on_use:
            # Taken from an instance before its collectives were made
            # (`allreduce = comm.Allreduce`), then called: the bound call,
            # with as little as possible on the way (on a communicator
            # spanning regions, the library's: routing.bind_collectives).
            try:
                bound = self.__dict__[name]
            except (KeyError, AttributeError):
                pass
            else:
                return bound(*args, **kwargs)
        if collective and getattr(self, "_routed", False):
            return routing.collective(self, name, args, kwargs)
        if made_on_use and getattr(self, "_lazy", False):
            # The first collective makes them, then the bound call.
            self._make_collectives()
            bound = self.__dict__.get(name)
            if bound is not None:
                return bound(*args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except (_NoRegionState, AttributeError):
            # (An AttributeError too: the object may be a plain mpi4py one.)
            if isinstance(self, Comm) and "_engine" in self.__dict__:
                raise
            for klass in type(self).__mro__:
                if klass.__module__ == "mpi4py.MPI" and name in klass.__dict__:
                    return klass.__dict__[name](self, *args, **kwargs)
            raise
    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


# The calls _bind_collectives binds: on a communicator whose collectives are
# not made yet, the first of them makes them.
_MADE_ON_USE = frozenset(_SMALL_COLLECTIVES) | {
    entry[0] for entry in NONBLOCKING_STARTERS + BLOCKING_SCHEDULED}

for _klass in _OWN_CLASSES:
    for _name, _method in list(vars(_klass).items()):
        if (callable(_method) and not _name.startswith("_") and not isinstance(_method, type)
                and hasattr(_MPI.Intracomm, _name) and not isinstance(_method, classmethod)):
            setattr(_klass, _name, _library(_name, _method))


_WORLD_GROUP = None


def _world_ranks_of(group):
    """World ranks of a group's members, in group order."""
    global _WORLD_GROUP
    if isinstance(group, _StandaloneGroup):
        return list(group._ranks)
    if _WORLD_GROUP is None:
        _WORLD_GROUP = _MPI.COMM_WORLD.Get_group()
    return _MPI.Group.Translate_ranks(group, list(range(group.Get_size())), _WORLD_GROUP)


def _standalone():
    from . import world
    return not world._under_mpi


class _Condition:
    """Adapts a polling predicate to the engine's wait loop."""
    __slots__ = ("attempt", "peer", "state")

    def __init__(self, attempt):
        self.attempt = attempt
        self.peer = None
        self.state = "waiting for a matching message"

    @property
    def done(self):
        return self.attempt()


__all__ = ["Comm", "Intracomm", "Group", "IvmpiError"]
