"""Ranks that share no region talk through the MPI library underneath.

A job may span several regions (one per host, docs/routing.md): the ranks
that share a region form a node group and use its rings; every other pair
uses the library communicator that each ivmpi communicator carries over the
same processes (its handle).  Each pair of processes uses one path only, so
MPI's order between a pair holds.

The common calls between a pair of regions go straight to the library in
one Cython call (ivmpi/_route.pxi): a send is the library's MPI_Isend (or
MPI_Issend) from the caller's buffer; a receive from a known rank of
another region, when nothing can precede it in MPI order (no message it
matches already in the engine's unexpected queue, no receive posted to the
engine earlier that could take one of its messages), is the library's
MPI_Irecv, posted before its message comes, into room for DIRECT_MAX
bytes.  So that no message on a handle can overrun a posted receive (Open
MPI writes a truncated rendezvous message past the receive buffer),
messages larger than DIRECT_MAX bytes (and those of exactly MARKER_LEN)
travel as a marker on the handle (their size and a tag) and their data on
the job's bulk communicator under that tag, received knowing its size
(docs/routing.md).

Everything else joins the engine's matching: while a receive posted to the
engine could take a library message (ANY_SOURCE, or a known source whose
receive could not go straight), and whenever a probe looks, the engine
takes every message that has arrived on the handle and no posted receive
took (a matched probe, MPI_Improbe), in arrival order, into its matching as
an Incoming, exactly as a frame read from a ring.  Posted receives,
ANY_SOURCE, probes, matched probes and cancellation therefore behave as
they do for region messages, and a wait polls both paths in the same loop
(with the same backoff and IVMPI_TIMEOUT).  A receive that matches such a
message receives it from the library (MPI_Imrecv, or the data's MPI_Irecv
on the bulk communicator).  Every library request in flight is tested by
the progress rounds.

A communicator whose members all share this process's region (the common
case, and every communicator of a job in one region) has no route: none of
this runs for it.
"""
from .lib import MPI as _MPI

from ._fastcopy import (RoutedPath, poll_library, take_messages, marker, BulkData,
                        set_bulk_communicator, goes_bulk, FlatCollective)
from . import engine as _engine
from . import hierarchy as _hierarchy

_Isend = _MPI.Comm.Isend
_Issend = _MPI.Comm.Issend
_Test = _MPI.Request.Test
_BYTE = _MPI.BYTE

REGION, LIBRARY, SELF = "region", "mpi", "self"

_bulk = None    # the job's bulk communicator, when its ranks are in several regions


def start_bulk(world):
    """Make the bulk communicator (every rank of a job spanning regions, at
    start-up): a duplicate of the library's world, carrying the data of
    the messages between regions that go with a marker (goes_bulk)."""
    global _bulk
    _bulk = world.Dup()
    set_bulk_communicator(_bulk.handle, _bulk.Get_size(), _bulk.Get_attr(_MPI.TAG_UB))


class Route:
    """The library side of one communicator that spans groups: its handle
    (a plain mpi4py communicator, so that no ivmpi method is in the way)
    and its peers' world ranks by communicator rank (the remote group's for
    an intercommunicator)."""
    __slots__ = ("handle", "ranks", "rank_of")

    def __init__(self, handle, world_ranks):
        self.handle = handle
        self.ranks = list(world_ranks)
        self.rank_of = {w: i for i, w in enumerate(self.ranks)}


def add_route(engine, context, comm, world_ranks):
    """Register comm (an ivmpi communicator spanning groups) with the engine."""
    handle = (_MPI.Intercomm if _MPI.Comm.Is_inter(comm) else _MPI.Intracomm).fromhandle(
        comm.handle)
    with engine.lock:
        engine.routes[context] = Route(handle, world_ranks)


def routed_path(engine, comm):
    """The Cython calls that reach comm's ranks in other regions straight
    through the library (ivmpi/_route.pxi); the others go to comm's FastPath."""
    slot_of = engine.slot_of
    return RoutedPath(comm._fast, comm.handle, [w not in slot_of for w in comm._ranks],
                      engine.library_ops, engine.library_sent, engine.library_received,
                      engine.library_sent_direct, engine.library_received_direct)


def drop_route(engine, context):
    with engine.lock:
        engine.routes.pop(context, None)


def send(engine, op):
    """A send to a rank outside the group (engine lock held): the library's
    Isend/Issend from the caller's buffer."""
    route = engine.routes.get(op.context)
    if route is None:
        raise _engine.IvmpiError(
            f"rank {engine.rank}: no path to rank {op.peer} on context {op.context}: it shares "
            f"no region with this rank and the communicator has no library handle")
    mem = op.mem
    size = len(mem)
    engine.library_sent.count(op.peer, size)
    dest = route.rank_of[op.peer]
    comm, data_dest, data_tag, announce = route.handle, dest, op.tag, None
    if goes_bulk(size):
        # The data on the bulk communicator, then its marker on the handle.
        announce, data_tag = marker(op.peer, size)
        comm, data_dest = _bulk, op.peer
    if not op.sync and size <= engine.eager_limit:
        # As on the region path, a send up to the eager limit never waits
        # for the receiver: a private copy goes out and the send is done.
        data = bytes(mem)
        request = _Isend(comm, [data, size, _BYTE], data_dest, data_tag)
        if not _Test(request):
            engine.library_pending.append((request, None, data))
        _announce(engine, route, dest, op.tag, announce)
        _finish(op)
        return op
    # Larger (or synchronous): straight from the caller's buffer.
    request = (_Issend if op.sync else _Isend)(comm, [mem, size, _BYTE], data_dest, data_tag)
    _announce(engine, route, dest, op.tag, announce)
    if _Test(request):
        _finish(op)
        return op
    op.state = "sending through the MPI library"
    engine.library_pending.append((request, op, None))
    return op


def _announce(engine, route, dest, tag, announce):
    """Send a large message's marker (after its data: ivmpi/_route.pxi)."""
    if announce is None:
        return
    request = _Isend(route.handle, [announce, len(announce), _BYTE], dest, tag)
    if not _Test(request):
        engine.library_pending.append((request, None, announce))


def receive(engine, incoming, op):
    """Deliver a library message to a matched receive (engine lock held):
    MPI_Imrecv into the receive's buffer, or a new one for an object."""
    size = incoming.size
    if op.mem is None:
        op.data = engine._object_buffer(incoming)
        target = op.data
    elif size > len(op.mem):
        # Received and dropped, so the sender completes; the receive reports truncation.
        op.error = _engine.ERR_TRUNCATE
        target = bytearray(size)
    else:
        target = op.mem
    data = incoming.data
    if type(data) is BulkData:
        # Its marker was taken: the data waits on the bulk communicator.
        request = _bulk.Irecv([target, size, _BYTE], data.source, data.tag)
    else:
        request = data.Irecv([target, size, _BYTE])
    if _Test(request):
        _finish(op)     # a small message is there already
        return
    # The library does not hold the buffer: the pending entry does.
    engine.library_pending.append((request, op, target))


def take(engine, context):
    """Hand every message that arrived on context's route to the engine's
    matching, in arrival order (engine lock held).  True when any came."""
    route = engine.routes[context]
    arrive = engine._arrive
    return take_messages(route.handle.handle, route.ranks, context, arrive, _engine.Incoming,
                         _engine.LIBRARY, engine.library_received)


def progress(engine):
    """One round of the library path (engine lock held): take the messages
    that arrived on every route a posted receive could want, complete the
    library requests that are done.  True when anything moved.

    Messages nobody asks for stay in the library (its matching is MPI's),
    where a receive that comes later can take them straight."""
    moved = False
    routes = engine.routes
    if routes and engine.posted:
        slot_of = engine.slot_of
        wanted = {op.context for op in engine.posted
                  if op.context in routes and (op.source < 0 or op.source not in slot_of)}
        for context in wanted:
            moved = take(engine, context) or moved
    if engine.library_ops:
        moved = poll_library(engine.library_ops) or moved
    pending = engine.library_pending
    if pending:
        still = []
        for entry in pending:
            if _Test(entry[0]):
                if entry[1] is not None:     # None: an eager send, done already
                    _finish(entry[1])
                moved = True
            else:
                still.append(entry)
        engine.library_pending = still
    return moved


def _finish(op):
    if type(op) is _engine.RecvOp:
        op.count = op.total if op.error is None else 0
    else:
        op.state = "done"
    op.done = True


def path_to(comm, rank):
    """How this process reaches `rank` of comm: "self", "region" (the shared
    memory region of its node group) or "mpi" (the MPI library underneath).
    For an intercommunicator, rank is in the remote group."""
    engine = comm._engine
    ranks = comm._ranks
    if not 0 <= rank < len(ranks):
        raise ValueError(f"rank {rank} is not in 0..{len(ranks) - 1}")
    world = ranks[rank]
    if world == engine.rank:
        return SELF
    return REGION if world in engine.slot_of else LIBRARY


# --- collectives on a communicator spanning regions ---------------------------------
# The library's call on the handle: equal to plain mpi4py by construction.

_BASES = ("Barrier", "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather",
          "Allgatherv", "Alltoall", "Alltoallv", "Alltoallw", "Reduce", "Allreduce",
          "Reduce_scatter", "Reduce_scatter_block", "Scan", "Exscan", "Neighbor_allgather",
          "Neighbor_allgatherv", "Neighbor_alltoall", "Neighbor_alltoallv", "Neighbor_alltoallw")
_OBJECTS = ("barrier", "bcast", "gather", "scatter", "allgather", "alltoall", "reduce",
            "allreduce", "scan", "exscan", "neighbor_allgather", "neighbor_alltoall")
COLLECTIVES = frozenset(
    list(_BASES) + list(_OBJECTS) + ["I" + b[0].lower() + b[1:] for b in _BASES]
    + [b + "_init" for b in _BASES])

_methods = {}


def _mpi4py_method(cls, name):
    """mpi4py's own method `name` along cls's classes (past ivmpi's)."""
    key = (cls, name)
    method = _methods.get(key)
    if method is None:
        for klass in cls.__mro__:
            if klass.__module__ == "mpi4py.MPI" and name in klass.__dict__:
                method = _methods[key] = klass.__dict__[name]
                break
        else:
            raise AttributeError(f"{cls.__name__} has no collective {name}")
    return method


def collective(comm, name, args, kwargs):
    """Collective `name` on comm: in two levels (ivmpi.hierarchy: inside
    each node group through the region, between groups through the
    library among one leader per group) where that form exists and
    applies, else the library's call on comm's handle (flat); the
    library's requests become ivmpi requests, so that they mix with
    point-to-point ones."""
    comm._check_live()
    coll = comm._coll
    if type(coll) is LibraryCollectives:
        run = _hierarchy.RUNS.get(name)
        if run is not None and coll.enabled:
            levels = coll.levels(comm)
            if levels is not None:
                try:
                    result = run(coll, levels, *args, **kwargs)
                except TypeError:
                    if _binds(run, args, kwargs):
                        raise
                    result = _hierarchy.FLAT     # the library reports the wrong call
                if result is not _hierarchy.FLAT:
                    coll.two_level[name] = coll.two_level.get(name, 0) + 1
                    return result
        coll.flat[name] = coll.flat.get(name, 0) + 1
    return _wrap(comm, _mpi4py_method(type(comm), name)(comm, *args, **kwargs), name, args,
                 kwargs)


def bind_collectives(comm):
    """comm's collectives (a communicator spanning regions, of ivmpi's own
    classes) as attributes of the instance, each the library's call on the
    handle in one C call (FlatCollective), counted as collective() counts
    it; the ones with two levels go through collective() while those are
    enabled.  (Each holds comm, as a bound method does.)"""
    coll = comm._coll
    cls = type(comm)
    for name in COLLECTIVES:
        try:
            method = _mpi4py_method(cls, name)
        except AttributeError:
            continue        # not one of this class's calls (Scan on a Comm)
        setattr(comm, name, FlatCollective(comm, coll, method, name, name in _hierarchy.RUNS,
                                           collective, _wrap))


def _binds(function, args, kwargs):
    """Do the arguments fit function's signature (past its first two)?"""
    import inspect
    try:
        inspect.signature(function).bind(None, None, *args, **kwargs)
    except TypeError:
        return False
    return True


def _wrap(comm, result, name, args, kwargs):
    """An ivmpi request for the library's; it keeps the call's arguments
    (the buffers) alive until the operation is done, as ivmpi's own
    collectives do (the library does not hold them)."""
    if isinstance(result, _MPI.Prequest):
        return LibraryPrequest(comm, result, name, (args, kwargs))
    if isinstance(result, _MPI.Request):
        from .request import Request
        return Request(comm, LibraryOp(result, (args, kwargs)), what=name)
    return result


class LibraryCollectives:
    """What ivmpi's own code asks of a communicator's collectives (context
    agreement, Split's allgather, ...), on a communicator spanning regions:
    the library's calls on its handle."""

    def __init__(self, comm):
        self._comm = comm
        # The two levels of ivmpi.hierarchy: None until the first
        # collective that has them, then a Hierarchy, or False where they
        # do not apply (an intercommunicator, groups of one rank each).
        self.built = None
        self.enabled = _hierarchy.default_for(comm)
        # Calls by collective name, either way, and the sub-collectives
        # of the two levels this process made (ivmpi.hierarchy.stats).
        self.two_level, self.flat = {}, {}
        self.leader_calls = self.node_calls = 0

    def levels(self, comm):
        """comm's Hierarchy, made now if this is its first collective with
        two levels (every member is in the same call); None if they do
        not apply."""
        built = self.built
        if built is None:
            built = False
            if not _MPI.Comm.Is_inter(comm):
                groups = _hierarchy.groups_of(comm)
                if _hierarchy.worth_it(groups):
                    built = _hierarchy.Hierarchy(comm, groups)
            self.built = built
        return built or None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        comm = self._comm
        method = _mpi4py_method(type(comm), name)
        return lambda *args, **kwargs: _wrap(comm, method(comm, *args, **kwargs), name, args,
                                             kwargs)

    def free(self):
        if self.built:
            self.built.free()
        self.built = False


class LibraryOp:
    """A library request as an engine operation: done once the library
    says so (tested on each look, so the engine's waits poll it)."""
    __slots__ = ("request", "finished", "error", "cancelled", "data", "scope", "state", "keep")
    peer = None

    def __init__(self, request, keep=None):
        self.request = request
        self.keep = keep
        self.finished = False
        self.error = None
        self.cancelled = False
        self.data = None
        self.scope = None
        self.state = "in the MPI library"

    @property
    def done(self):
        if not self.finished and _Test(self.request):
            self.finished = True
            self.keep = None
        return self.finished


def _library_prequest_class():
    from .request import Prequest

    class _LibraryPrequest(Prequest):
        """A persistent collective of the library: each Start starts it."""
        __slots__ = ("_library", "_keep")

        def __init__(self, comm, library, what, keep):
            Prequest.__init__(self, comm, self._start_round, what)
            self._library = library
            self._keep = keep

        def _start_round(self):
            self._library.Start()
            return LibraryOp(self._library, self._keep), None

        def Free(self):
            Prequest.Free(self)
            if self._library:
                self._library.Free()
            self._keep = None
    return _LibraryPrequest


class _Lazy:
    cls = None


def LibraryPrequest(comm, library, what, keep):
    if _Lazy.cls is None:
        _Lazy.cls = _library_prequest_class()
    return _Lazy.cls(comm, library, what, keep)


def node_groups():
    """The job's node groups: lists of world ranks that share a region, each
    in world order, ordered by their lowest rank (starts the job)."""
    from . import world
    world.get_world()
    return [list(g) for g in world._groups]


def describe_job(comm):
    """Lines for `ivmpi info --job` (collective over comm, COMM_WORLD):
    the node groups, the path to each rank, the region each rank mapped."""
    engine = comm._engine
    region = engine.region
    seen = comm.allgather((region.path, engine.slot))
    lines = [f"ranks: {comm.Get_size()}, node groups: {len(node_groups())}"]
    for g, members in enumerate(node_groups()):
        lines.append(f"  group {g}: ranks {', '.join(map(str, members))}")
        for w in members:
            path, slot = seen[w]
            lines.append(f"    rank {w}: slot {slot} of {path}")
    lines.append("paths from rank %d: %s" % (comm.Get_rank(), ", ".join(
        f"{r}:{path_to(comm, r)}" for r in range(comm.Get_size()))))
    lines.append("one copy into rank %d from: %s" % (comm.Get_rank(), ", ".join(
        map(str, single_copy_sources(comm))) or "none"))
    lines.append("copies shared with: %s" % (", ".join(
        map(str, shared_copy_peers(comm))) or "none"))
    return lines


def single_copy_sources(comm):
    """The ranks of comm, reached through the region, whose large messages
    this rank copies straight from their memory (ranks of one kernel,
    docs/layout.md "Single copy"); the others' stream through the ring."""
    from . import _fastcopy
    readable = set(_fastcopy.single_copy_peers())
    ranks = comm._ranks
    return [r for r in range(comm.Get_size())
            if ranks[r] in readable and path_to(comm, r) == "region"]


def shared_copy_peers(comm):
    """The ranks of comm, reached through the region, with which this rank
    shares the copies of large messages (a waiting sender writes half of
    the receiver's copy, docs/layout.md "Single copy"): ranks of one
    kernel, not where ranks outnumber cores."""
    from . import _fastcopy
    ranks = comm._ranks
    return [r for r in range(comm.Get_size())
            if r != comm.Get_rank() and _fastcopy.shares_copies_with(ranks[r])
            and path_to(comm, r) == "region"]
