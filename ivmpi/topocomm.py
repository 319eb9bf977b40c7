"""Cartesian, graph and distributed-graph communicators through the region.

``Cartcomm``, ``Graphcomm`` and ``Distgraphcomm`` are ivmpi communicators
(``ivmpi.Intracomm``) and mpi4py's classes of the same names.  Each keeps
its topology itself, so the queries (``Get_topo``, ``Shift``,
``Get_dist_neighbors``, ...) are answered without the MPI library and work
in standalone mode too.  A neighbourhood collective of buffers is a fixed
set of receives from the in-neighbours and sends to the out-neighbours,
one round of a Schedule (ivmpi.nbcoll) on the communicator's hidden twin:
one C loop moves every block, by the fast path when it fits the ring.
Like the nonblocking collectives, each call takes new tags of its own, so
it never matches user messages nor another collective.  The object forms
(neighbor_allgather, neighbor_alltoall) send pickles instead, whose
sizes are not known in advance: small ones by the fast path, large ones
out of this rank's heap.  Under a launcher each
communicator also carries the library's communicator of the same topology
as its handle.
"""
import operator
import weakref

from .lib import MPI as _MPI

from . import comm as _comm
from .buffers import packed_simple, packed_vector, parse_recv, parse_send, parse_vbuf
from .nbcoll import RECV, SEND, CollectivePrequest, channel_of, wblocks
from .request import MPIError, Request
from .staging import staged
from ._fastcopy import BoundCollective, exchange_objects

PROC_NULL = _MPI.PROC_NULL
UNDEFINED = _MPI.UNDEFINED

# A neighbourhood collective takes consecutive tags of its own (Channel.next_tag):
# graph neighbours all use the first, since messages between two ranks
# match in the order they were posted, which both sides take from the same
# edge lists.  A Cartesian exchange tags each message by dimension and
# direction instead (first + 2 * dimension + direction), so that where one
# rank is both neighbours (a periodic dimension of size 1 or 2) what was
# sent toward -1 still lands in the receiver's +1 block.  The object forms
# use the fixed tags TAG_NEIGHBOR + 1 + the same offsets.
TAG_NEIGHBOR = 1 << 24


def _ints(values, count=None):
    """A list of ints, as mpi4py reads an integer array (and its length check)."""
    values = [operator.index(v) for v in values]
    if count is not None and len(values) != count:
        raise ValueError(f"expecting {count} items, got {len(values)}")
    return values


def _product(values):
    result = 1
    for v in values:
        result *= v
    return result


# --- topologies ---------------------------------------------------------------------
# Immutable descriptions shared by every copy and duplicate of a communicator.
# neighbours(rank) gives (in-neighbours, out-neighbours, receive tag
# offsets, send tag offsets), in MPI's order for the neighbourhood
# collectives; `tags` is how many offsets there are.

class CartTopology:
    kind = _MPI.CART

    def __init__(self, dims, periods):
        self.dims = list(dims)
        self.periods = [int(bool(p)) for p in periods]
        self._neighbours = {}
        self.tags = 2 * len(self.dims)

    def coords(self, rank):
        coords = []
        for extent in reversed(self.dims):
            rank, c = divmod(rank, extent)
            coords.append(c)
        return coords[::-1]

    def rank_of(self, coords):
        rank = 0
        for dim, (c, extent, periodic) in enumerate(zip(coords, self.dims, self.periods)):
            if periodic:
                c %= extent
            elif not 0 <= c < extent:
                raise MPIError(_MPI.ERR_ARG, f"coordinate {c} of dimension {dim} is not in "
                                             f"0..{extent - 1} (not periodic)")
            rank = rank * extent + c
        return rank

    def shift(self, rank, direction, disp):
        """(source, dest) of a shift by disp along direction: PROC_NULL off a
        non-periodic edge."""
        if not 0 <= direction < len(self.dims):
            raise MPIError(_MPI.ERR_DIMS, f"direction {direction} is not in "
                                          f"0..{len(self.dims) - 1}")
        coords = self.coords(rank)
        extent, periodic = self.dims[direction], self.periods[direction]

        def moved(step):
            c = coords[direction] + step
            if periodic:
                c %= extent
            elif not 0 <= c < extent:
                return PROC_NULL
            return self.rank_of(coords[:direction] + [c] + coords[direction + 1:])
        return moved(-disp), moved(disp)

    def neighbours(self, rank):
        found = self._neighbours.get(rank)
        if found is None:
            ranks, recv_tags, send_tags = [], [], []
            for dim in range(len(self.dims)):
                ranks.extend(self.shift(rank, dim, 1))
                # From the -1 neighbour comes what it sent toward +1, and back.
                recv_tags += [2 * dim + 1, 2 * dim]
                send_tags += [2 * dim, 2 * dim + 1]
            found = self._neighbours[rank] = (ranks, ranks, recv_tags, send_tags)
        return found

    def send_order(self, rank):
        """The order in which to send to the out-neighbours: in each dimension
        toward +1 first.  A receiver takes first from its -1 neighbour what
        that one sent toward +1, so where both neighbours are one rank (a
        periodic dimension of size 2) its frames come in the order it
        receives them, and the fast path takes each at the head of the ring."""
        return [k ^ 1 for k in range(2 * len(self.dims))]


class GraphTopology:
    kind = _MPI.GRAPH
    tags = 1

    def __init__(self, index, edges):
        self.index = list(index)        # MPI's form: index[i] = end of node i's edges
        self.edges = list(edges)

    def adjacent(self, rank):
        start = self.index[rank - 1] if rank > 0 else 0
        return self.edges[start:self.index[rank]]

    def neighbours(self, rank):
        ranks = self.adjacent(rank)
        tags = [0] * len(ranks)
        return ranks, ranks, tags, tags

    def send_order(self, rank):
        return range(len(self.adjacent(rank)))


class DistGraphTopology:
    kind = _MPI.DIST_GRAPH
    tags = 1

    def __init__(self, sources, destinations, sourceweights, destweights, weighted):
        self.sources = list(sources)
        self.destinations = list(destinations)
        self.sourceweights = sourceweights
        self.destweights = destweights
        self.weighted = weighted

    def neighbours(self, rank):
        return (self.sources, self.destinations, [0] * len(self.sources),
                [0] * len(self.destinations))

    def send_order(self, rank):
        return range(len(self.destinations))


# --- buffers --------------------------------------------------------------------------

# Without neighbours a buffer is not looked at (an empty one may even be of a
# shape that memoryview cannot flatten).

def _blocks(spec, n, recv):
    """The n equal blocks of a buffer spec."""
    if n == 0:
        return []
    mem = (parse_recv if recv else parse_send)(spec, blocks=n).mem
    size = len(mem) // n
    return [mem[i * size:(i + 1) * size] for i in range(n)]


def _vblocks(spec, n, recv):
    """The n blocks of a vector spec, [buf, counts, displs, datatype]."""
    if n == 0:
        return []
    parsed = parse_vbuf(spec, n, recv)
    return [parsed.block(i) for i in range(n)]


def _holes(spec, role, n, writable):
    """(spec, pack, unpack) of a spec whose datatype may have holes (see
    ivmpi.buffers.packed_simple); without neighbours it is not looked at."""
    if n == 0:
        return spec, None, None
    if role == "vector":
        return packed_vector(spec, n, writable)
    return packed_simple(spec, writable, n if role == "blocks" else 1)


def _plan(sent, received):
    """(spec, list of packs, list of unpacks) of a send and a receive spec
    from _holes, as the prologue and epilogue of a schedule."""
    return [sent[1]] if sent[1] is not None else [], \
        [received[2]] if received[2] is not None else []


# --- the communicators ----------------------------------------------------------------

class Topocomm(_comm.Intracomm, _MPI.Topocomm):
    """An ivmpi communicator with a process topology: queries answered by
    ivmpi, neighbourhood collectives through the region."""

    _topo = None
    _kinds = (_MPI.CART, _MPI.GRAPH, _MPI.DIST_GRAPH)
    _expecting = "expecting a topology communicator"

    def __new__(cls, comm=None):
        # mpi4py's constructor: the same communicator, if it has the topology.
        self = _comm.Intracomm.__new__(cls, comm)
        if comm is None or not comm:
            return self
        state = getattr(comm, "__dict__", {})
        if "_engine" in state:
            topo = state.get("_topo")
            kind = UNDEFINED if topo is None else topo.kind
        else:
            topo, kind = None, _MPI.Comm.Get_topology(comm)
        if kind not in cls._kinds:
            raise TypeError(cls._expecting)
        if topo is not None:
            self._topo = topo
        return self

    @classmethod
    def _build(cls, engine, world_ranks, context, handle, topo):
        self = cls._create(engine, world_ranks, context, handle)
        self._topo = topo
        return self

    def _bind_fast(self):
        _comm.Intracomm._bind_fast(self)
        if type(self) not in _comm._FAST_CLASSES or self._route is not None:
            return
        ref = weakref.ref(self)
        for name, plan, extra, blocking in _NEIGHBOUR:
            setattr(self, name, BoundCollective(ref, channel_of, name, plan,
                                                ("sendbuf", "recvbuf"), (), extra, blocking, True))

    def Dup(self, info=None):
        dup = _comm.Intracomm.Dup(self, info)
        if self._topo is not None:
            dup._topo = self._topo
        return dup

    Clone = Dup

    def Get_topology(self):
        return self._topo.kind

    topology = property(Get_topology)

    @property
    def is_topo(self):
        return True

    # --- neighbours -----------------------------------------------------------------

    @property
    def degrees(self):
        sources, dests, _, _ = self._topo.neighbours(self.rank)
        return len(sources), len(dests)

    @property
    def indegree(self):
        return self.degrees[0]

    @property
    def outdegree(self):
        return self.degrees[1]

    @property
    def inoutedges(self):
        sources, dests, _, _ = self._topo.neighbours(self.rank)
        return list(sources), list(dests)

    @property
    def inedges(self):
        return self.inoutedges[0]

    @property
    def outedges(self):
        return self.inoutedges[1]

    # --- neighbourhood collectives ----------------------------------------------------

    def _steps(self, sends, recvs):
        """A receive into recvs[k] from the k-th in-neighbour and a send of
        sends[k] to the k-th out-neighbour; PROC_NULL neighbours are
        skipped, leaving their block untouched."""
        sources, dests, recv_tags, send_tags = self._topo.neighbours(self.rank)
        steps = []
        # Large blocks go out of this rank's heap (ivmpi.staging).
        sends = staged(channel_of(self), sends,
                       [None if dest == PROC_NULL else dest for dest in dests], steps)
        steps += [(RECV, source, mem, tag) for source, tag, mem in zip(sources, recv_tags, recvs)
                  if source != PROC_NULL]
        steps += [(SEND, dests[k], sends[k], send_tags[k])
                  for k in self._topo.send_order(self.rank) if dests[k] != PROC_NULL]
        return steps

    def _allgather_plan(self, sendbuf, recvbuf, vector):
        indegree, outdegree = self.degrees
        sent = _holes(sendbuf, "plain", outdegree, False)
        received = _holes(recvbuf, "vector" if vector else "blocks", indegree, True)
        sendmem = parse_send(sent[0]).mem if outdegree else None
        recvs = (_vblocks if vector else _blocks)(received[0], indegree, True)
        return (self._steps([sendmem] * outdegree, recvs),) + _plan(sent, received)

    def _alltoall_plan(self, sendbuf, recvbuf, vector):
        indegree, outdegree = self.degrees
        role = "vector" if vector else "blocks"
        sent = _holes(sendbuf, role, outdegree, False)
        received = _holes(recvbuf, role, indegree, True)
        split = _vblocks if vector else _blocks
        return (self._steps(split(sent[0], outdegree, False),
                            split(received[0], indegree, True)),) + _plan(sent, received)

    def _alltoallw_plan(self, sendbuf, recvbuf):
        indegree, outdegree = self.degrees
        sends, packs, _ = wblocks(sendbuf, outdegree, False)
        recvs, _, unpacks = wblocks(recvbuf, indegree, True)
        return self._steps(sends, recvs), packs, unpacks

    def _neighbour(self, what, form, make_plan, *args):
        """Start a neighbourhood collective: form "nonblocking" (a Request)
        or "persistent" (a Prequest).  The blocking forms call Channel.run."""
        ch = channel_of(self)
        tags = self._topo.tags
        if form == "nonblocking":
            return ch.request(self, what, make_plan, args, tags)
        steps, prologue, epilogue = make_plan(*args)
        return CollectivePrequest(self, ch.schedule(ch.next_tag(tags), steps, what, prologue,
                                                    epilogue), what)

    # The blocking forms go straight to the channel (Channel.run); on
    # ivmpi's own classes the instance's BoundCollective attributes
    # (_bind_fast, _NEIGHBOUR) shadow these methods and the nonblocking ones.
    def Neighbor_allgather(self, sendbuf, recvbuf):
        channel_of(self).run("Neighbor_allgather", self._allgather_plan,
                             (sendbuf, recvbuf, False), self._topo.tags)

    def Neighbor_allgatherv(self, sendbuf, recvbuf):
        channel_of(self).run("Neighbor_allgatherv", self._allgather_plan,
                             (sendbuf, recvbuf, True), self._topo.tags)

    def Neighbor_alltoall(self, sendbuf, recvbuf):
        channel_of(self).run("Neighbor_alltoall", self._alltoall_plan,
                             (sendbuf, recvbuf, False), self._topo.tags)

    def Neighbor_alltoallv(self, sendbuf, recvbuf):
        channel_of(self).run("Neighbor_alltoallv", self._alltoall_plan,
                             (sendbuf, recvbuf, True), self._topo.tags)

    def Neighbor_alltoallw(self, sendbuf, recvbuf):
        channel_of(self).run("Neighbor_alltoallw", self._alltoallw_plan, (sendbuf, recvbuf),
                             self._topo.tags)

    def Ineighbor_allgather(self, sendbuf, recvbuf):
        return self._neighbour("Ineighbor_allgather", "nonblocking", self._allgather_plan,
                               sendbuf, recvbuf, False)

    def Ineighbor_allgatherv(self, sendbuf, recvbuf):
        return self._neighbour("Ineighbor_allgatherv", "nonblocking", self._allgather_plan,
                               sendbuf, recvbuf, True)

    def Ineighbor_alltoall(self, sendbuf, recvbuf):
        return self._neighbour("Ineighbor_alltoall", "nonblocking", self._alltoall_plan,
                               sendbuf, recvbuf, False)

    def Ineighbor_alltoallv(self, sendbuf, recvbuf):
        return self._neighbour("Ineighbor_alltoallv", "nonblocking", self._alltoall_plan,
                               sendbuf, recvbuf, True)

    def Ineighbor_alltoallw(self, sendbuf, recvbuf):
        return self._neighbour("Ineighbor_alltoallw", "nonblocking", self._alltoallw_plan,
                               sendbuf, recvbuf)

    def Neighbor_allgather_init(self, sendbuf, recvbuf, info=_MPI.INFO_NULL):
        return self._neighbour("Neighbor_allgather_init", "persistent", self._allgather_plan,
                               sendbuf, recvbuf, False)

    def Neighbor_allgatherv_init(self, sendbuf, recvbuf, info=_MPI.INFO_NULL):
        return self._neighbour("Neighbor_allgatherv_init", "persistent", self._allgather_plan,
                               sendbuf, recvbuf, True)

    def Neighbor_alltoall_init(self, sendbuf, recvbuf, info=_MPI.INFO_NULL):
        return self._neighbour("Neighbor_alltoall_init", "persistent", self._alltoall_plan,
                               sendbuf, recvbuf, False)

    def Neighbor_alltoallv_init(self, sendbuf, recvbuf, info=_MPI.INFO_NULL):
        return self._neighbour("Neighbor_alltoallv_init", "persistent", self._alltoall_plan,
                               sendbuf, recvbuf, True)

    def Neighbor_alltoallw_init(self, sendbuf, recvbuf, info=_MPI.INFO_NULL):
        return self._neighbour("Neighbor_alltoallw_init", "persistent", self._alltoallw_plan,
                               sendbuf, recvbuf)

    def _objects(self, items, what):
        """Exchange pickled items with the neighbours; a PROC_NULL neighbour's
        entry is None, as in mpi4py.  Every item goes out first: by the
        fast path when it fits the ring, else a large one from this rank's
        heap, which its receiver copies out at once (no rendezvous round
        trip, no stream that both ranks must serve in step).  Then each
        receive in order takes its message straight from the ring when it
        is an eager one, else through the engine; messages between two
        ranks keep their order, and both sides take it from the same edge
        lists."""
        self._check_live()
        plan = self.__dict__.get("_object_plan")
        if plan is None:
            plan = self._object_plan = self._plan_objects()
        sends, dests, tags, waiting, indegree = plan
        coll = self._collectives
        with self._lock(what):
            results, sending = exchange_objects(coll.p2p._fast, coll, coll._recv_pickle, items,
                                                sends, dests, tags, waiting, indegree, what)
            if sending:
                Request.Waitall(sending)
        return results

    def _plan_objects(self):
        """What the object forms do on this rank, worked out once: the sends
        (block, out-neighbour, tag) in the order the receivers take them,
        their out-neighbours and tags as lists,
        the receives (block, in-neighbour, tag) in MPI's order, PROC_NULL
        neighbours left out, and the in-degree."""
        sources, dests, recv_tags, send_tags = self._topo.neighbours(self.rank)
        sends = [(k, dests[k], send_tags[k] + TAG_NEIGHBOR + 1)
                 for k in self._topo.send_order(self.rank) if dests[k] != PROC_NULL]
        receives = [(k, source, tag + TAG_NEIGHBOR + 1)
                    for k, (source, tag) in enumerate(zip(sources, recv_tags))
                    if source != PROC_NULL]
        return (sends, [dest for _, dest, _ in sends], [tag for _, _, tag in sends], receives,
                len(sources))

    def neighbor_allgather(self, sendobj):
        return self._objects([sendobj] * self.degrees[1], "neighbor_allgather")

    def neighbor_alltoall(self, sendobj):
        outdegree = self.degrees[1]
        items = [None] * outdegree if sendobj is None else list(sendobj)
        if len(items) != outdegree:
            raise ValueError(f"expecting {outdegree} items, got {len(items)}")
        return self._objects(items, "neighbor_alltoall")


class Cartcomm(Topocomm, _MPI.Cartcomm):
    """A Cartesian ivmpi communicator (mpi4py's Cartcomm)."""

    _kinds = (_MPI.CART,)
    _expecting = "expecting a Cartesian communicator"

    def Get_dim(self):
        return len(self._topo.dims)

    dim = property(Get_dim)
    ndim = property(Get_dim)

    def Get_topo(self):
        topo = self._topo
        return list(topo.dims), list(topo.periods), topo.coords(self.rank)

    topo = property(Get_topo)

    @property
    def dims(self):
        return list(self._topo.dims)

    @property
    def periods(self):
        return list(self._topo.periods)

    @property
    def coords(self):
        return self._topo.coords(self.rank)

    def Get_cart_rank(self, coords):
        return self._topo.rank_of(_ints(coords, len(self._topo.dims)))

    def Get_coords(self, rank):
        rank = operator.index(rank)
        self._world(rank, "Get_coords")
        return self._topo.coords(rank)

    def Shift(self, direction, disp):
        return self._topo.shift(self.rank, operator.index(direction), operator.index(disp))

    def Sub(self, remain_dims):
        """The Cartesian communicator of the ranks that share this one's
        coordinates in the dimensions not kept (collective)."""
        self._check_live()
        topo = self._topo
        remain = _ints(remain_dims, len(topo.dims))
        ctx = self._agree_context()
        handle = self._handle_of(lambda c: _MPI.Cartcomm.Sub(c, remain))
        mine = topo.coords(self.rank)
        members = [r for r in range(self.size)
                   if all(keep or c == m for keep, c, m in zip(remain, topo.coords(r), mine))]
        sub = CartTopology([d for d, keep in zip(topo.dims, remain) if keep],
                           [p for p, keep in zip(topo.periods, remain) if keep])
        return Cartcomm._build(self._engine, [self._ranks[r] for r in members], ctx, handle, sub)


class Graphcomm(Topocomm, _MPI.Graphcomm):
    """A general-graph ivmpi communicator (mpi4py's Graphcomm)."""

    _kinds = (_MPI.GRAPH,)
    _expecting = "expecting a general graph communicator"

    def Get_dims(self):
        return len(self._topo.index), len(self._topo.edges)

    dims = property(Get_dims)

    @property
    def nnodes(self):
        return self.Get_dims()[0]

    @property
    def nedges(self):
        return self.Get_dims()[1]

    def Get_topo(self):
        return list(self._topo.index), list(self._topo.edges)

    topo = property(Get_topo)

    @property
    def index(self):
        return list(self._topo.index)

    @property
    def edges(self):
        return list(self._topo.edges)

    def Get_neighbors_count(self, rank):
        return len(self.Get_neighbors(rank))

    def Get_neighbors(self, rank):
        rank = operator.index(rank)
        self._world(rank, "Get_neighbors")
        return list(self._topo.adjacent(rank))

    @property
    def nneighbors(self):
        return self.Get_neighbors_count(self.rank)

    @property
    def neighbors(self):
        return self.Get_neighbors(self.rank)


class Distgraphcomm(Topocomm, _MPI.Distgraphcomm):
    """A distributed-graph ivmpi communicator (mpi4py's Distgraphcomm)."""

    _kinds = (_MPI.DIST_GRAPH,)
    _expecting = "expecting a distributed graph communicator"

    def Get_dist_neighbors_count(self):
        topo = self._topo
        return len(topo.sources), len(topo.destinations), topo.weighted

    def Get_dist_neighbors(self):
        topo = self._topo
        weights = (list(topo.sourceweights), list(topo.destweights)) if topo.weighted else None
        return list(topo.sources), list(topo.destinations), weights


# The neighbourhood collectives bound to ivmpi's own instances (_bind_fast):
# name, plan method, its arguments after the buffers, blocking (Channel.run)
# or not (Channel.request).
_NEIGHBOUR = tuple((name if blocking else "Ineighbor" + name[len("Neighbor"):], plan, extra,
                    blocking)
                   for blocking in (True, False)
                   for name, plan, extra in (("Neighbor_allgather", "_allgather_plan", (False,)),
                                             ("Neighbor_allgatherv", "_allgather_plan", (True,)),
                                             ("Neighbor_alltoall", "_alltoall_plan", (False,)),
                                             ("Neighbor_alltoallv", "_alltoall_plan", (True,)),
                                             ("Neighbor_alltoallw", "_alltoallw_plan", ())))


# As for ivmpi's own classes (ivmpi.comm): a method called on an object
# without region state is mpi4py's call on the handle; and the hot calls
# take the one-call fast paths.
for _klass, _theirs in ((Topocomm, _MPI.Topocomm), (Cartcomm, _MPI.Cartcomm),
                        (Graphcomm, _MPI.Graphcomm), (Distgraphcomm, _MPI.Distgraphcomm)):
    for _name, _method in list(vars(_klass).items()):
        if (callable(_method) and not _name.startswith("_") and not isinstance(_method, type)
                and hasattr(_theirs, _name)):
            setattr(_klass, _name, _comm._library(_name, _method))
    _comm._FAST_CLASSES.add(_klass)


# --- constructors (the methods of ivmpi.topo.TopologyConstructors) ---------------------

def _cart_args(comm, dims, periods):
    dims = _ints(dims)
    if periods is None:
        periods = False
    if isinstance(periods, bool):
        periods = [periods] * len(dims)
    periods = _ints(periods, len(dims))
    if any(d <= 0 for d in dims):
        raise MPIError(_MPI.ERR_DIMS, f"dimensions {dims} must be positive")
    if _product(dims) > comm.size:
        raise MPIError(_MPI.ERR_ARG, f"a grid of {_product(dims)} processes does not fit "
                                     f"a communicator of {comm.size}")
    return dims, periods


def _graph_args(comm, index, edges):
    index, edges = _ints(index), _ints(edges)
    # mpi4py's extension: an index with a leading 0 (the usual adjacency form).
    if index and index[0] == 0 and index[-1] == len(edges):
        index = index[1:]
    nnodes = len(index)
    if nnodes > comm.size:
        raise MPIError(_MPI.ERR_ARG, f"a graph of {nnodes} nodes does not fit a "
                                     f"communicator of {comm.size}")
    if any(b < a for a, b in zip([0] + index, index)) or (index and index[-1] > len(edges)):
        raise MPIError(_MPI.ERR_ARG, f"index {index} is not a running count of the edges")
    if any(not 0 <= e < nnodes for e in edges):
        raise MPIError(_MPI.ERR_ARG, f"edges {edges} name nodes outside 0..{nnodes - 1}")
    return index, edges


def _members(comm, count, handle):
    """The first count ranks make the new communicator: None for the others
    (whose standalone handle is freed)."""
    if comm.rank < count:
        return [comm._ranks[r] for r in range(count)]
    if handle:
        _MPI.Comm.Free(handle)
    return None


def create_cart(comm, dims, periods=None, reorder=False):
    comm._check_live()
    dims, periods = _cart_args(comm, dims, periods)
    ctx = comm._agree_context()
    # The library keeps the ranks too (reorder=False), so handle and region agree.
    handle = comm._handle_of(lambda c: _MPI.Intracomm.Create_cart(c, dims, periods, False))
    members = _members(comm, _product(dims), handle)
    if members is None:
        return _MPI.COMM_NULL
    return Cartcomm._build(comm._engine, members, ctx, handle, CartTopology(dims, periods))


def create_graph(comm, index, edges, reorder=False):
    comm._check_live()
    mpi_index, mpi_edges = _graph_args(comm, index, edges)
    ctx = comm._agree_context()
    handle = comm._handle_of(lambda c: _MPI.Intracomm.Create_graph(c, index, edges, False))
    members = _members(comm, len(mpi_index), handle)
    if members is None:
        return _MPI.COMM_NULL
    return Graphcomm._build(comm._engine, members, ctx, handle,
                            GraphTopology(mpi_index, mpi_edges))


def _weights(weights, count):
    """(weights, given): mpi4py's reading of a weights argument."""
    if weights is None or weights is _MPI.UNWEIGHTED:
        return [1] * count, False
    if weights is _MPI.WEIGHTS_EMPTY:
        if count > 0:
            raise ValueError("empty weights but nonzero degree")
        return [], True
    return _ints(weights, count), True


def _check_ranks(comm, ranks, what):
    for r in ranks:
        if not 0 <= r < comm.size:
            raise MPIError(_MPI.ERR_ARG, f"{what}: rank {r} is not in 0..{comm.size - 1}")


def create_dist_graph_adjacent(comm, sources, destinations, sourceweights=None,
                               destweights=None, info=_MPI.INFO_NULL, reorder=False):
    comm._check_live()
    srcs = [] if sources is None else _ints(sources)
    dsts = [] if destinations is None else _ints(destinations)
    sw, sw_given = _weights(sourceweights, len(srcs))
    dw, dw_given = _weights(destweights, len(dsts))
    _check_ranks(comm, srcs + dsts, "Create_dist_graph_adjacent")
    ctx = comm._agree_context()
    handle = comm._handle_of(lambda c: _MPI.Intracomm.Create_dist_graph_adjacent(
        c, sources, destinations, sourceweights, destweights, info, False))
    topo = DistGraphTopology(srcs, dsts, sw, dw, sw_given or dw_given)
    return Distgraphcomm._build(comm._engine, comm._ranks, ctx, handle, topo)


def create_dist_graph(comm, sources, degrees, destinations, weights=None,
                      info=_MPI.INFO_NULL, reorder=False):
    """Each rank names edges of any nodes; every rank learns its own in- and
    out-edges from all of them (an allgather), listed by the naming rank,
    then in its order."""
    comm._check_live()
    srcs = _ints(sources)
    degs = _ints(degrees, len(srcs))
    dsts = _ints(destinations, sum(degs))
    wts, weighted = _weights(weights, len(dsts))
    _check_ranks(comm, srcs + dsts, "Create_dist_graph")
    heads = [s for s, d in zip(srcs, degs) for _ in range(d)]
    everyone = comm._collectives.allgather(list(zip(heads, dsts, wts)))
    ctx = comm._agree_context()
    handle = comm._handle_of(lambda c: _MPI.Intracomm.Create_dist_graph(
        c, sources, degrees, destinations, weights, info, False))
    me = comm.rank
    incoming = [(s, w) for edges in everyone for s, d, w in edges if d == me]
    outgoing = [(d, w) for edges in everyone for s, d, w in edges if s == me]
    if comm._routed:
        # Spanning regions, the neighbourhood collectives are the library's
        # (docs/routing.md): the neighbours are listed in its order.
        ins, outs, given = _MPI.Distgraphcomm.Get_dist_neighbors(handle)
        if given is None:
            given = ([1] * len(ins), [1] * len(outs))
        incoming, outgoing = list(zip(ins, given[0])), list(zip(outs, given[1]))
    topo = DistGraphTopology([s for s, _ in incoming], [d for d, _ in outgoing],
                             [w for _, w in incoming], [w for _, w in outgoing], weighted)
    return Distgraphcomm._build(comm._engine, comm._ranks, ctx, handle, topo)


def cart_map(comm, dims, periods=None):
    """The rank this process would have in Create_cart (ranks are kept)."""
    dims, _ = _cart_args(comm, dims, periods)
    return comm.rank if comm.rank < _product(dims) else UNDEFINED


def graph_map(comm, index, edges):
    """The rank this process would have in Create_graph (ranks are kept)."""
    index, _ = _graph_args(comm, index, edges)
    return comm.rank if comm.rank < len(index) else UNDEFINED
