"""Process topologies and neighbourhood collectives through the region (-n 2,
3, 4): every query of ivmpi's Cartcomm, Graphcomm and Distgraphcomm is
compared with the MPI library's own communicator of the same topology made
from mpi4py's COMM_WORLD, and every neighbourhood collective (blocking,
nonblocking, persistent, objects) with the library's on the same data;
traffic is shown to go through the region."""
import itertools

import numpy as np
import pytest
from mpi4py import MPI as _native

import ivmpi.stats
import ivmpi.topocomm
from ivmpi import MPI

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("engine_timeout")]

NATIVE = _native.COMM_WORLD


def both(make):
    """make(c) on an ivmpi communicator and on mpi4py's COMM_WORLD."""
    return make(MPI.COMM_WORLD), make(NATIVE)


def free(*comms):
    for c in comms:
        if c != MPI.COMM_NULL:
            c.Free()


def cart_configs(size):
    """(dims, periods) worth checking at this size: full and partial grids,
    periodic dimensions of size 1 and 2, mixed periodicity."""
    configs = [([size], [True]), ([size], [False]), ([1, size], [True, False]),
               ([size, 1], [False, True]), ([size - 1], [False]), ([1], [True]), ([], [])]
    for ndim in (2, 3):
        dims = MPI.Compute_dims(size, ndim)
        configs.append((dims, [True] * ndim))
        configs.append((dims, [i % 2 == 0 for i in range(ndim)]))
    if size >= 2:
        configs.append(([2], [True]))
        configs.append(([2, 1], [True, True]))
    if size == 4:
        configs.append(([2, 2], [True, False]))
    return configs


# --- queries -----------------------------------------------------------------------------

def check_cart(cart, ref):
    assert isinstance(cart, ivmpi.topocomm.Cartcomm) and isinstance(cart, _native.Cartcomm)
    assert (cart.rank, cart.size) == (ref.rank, ref.size)
    assert cart.Get_topology() == cart.topology == ref.Get_topology() == MPI.CART
    assert cart.is_topo and ref.is_topo
    assert cart.Get_dim() == cart.dim == cart.ndim == ref.Get_dim()
    assert cart.Get_topo() == cart.topo == ref.Get_topo()
    assert (cart.dims, cart.periods, cart.coords) == (ref.dims, ref.periods, ref.coords)
    dims, periods = ref.dims, ref.periods
    for r in range(cart.size):
        assert cart.Get_coords(r) == ref.Get_coords(r)
    for coords in itertools.product(*[range(-1, d + 1) for d in dims]):
        inside = all(p or 0 <= c < d for c, d, p in zip(coords, dims, periods))
        if inside:
            assert cart.Get_cart_rank(list(coords)) == ref.Get_cart_rank(list(coords))
        else:
            with pytest.raises(MPI.Exception):
                cart.Get_cart_rank(list(coords))
    for direction in range(len(dims)):
        for disp in range(-3, 4):
            assert cart.Shift(direction, disp) == ref.Shift(direction, disp)
    assert cart.degrees == ref.degrees
    assert (cart.indegree, cart.outdegree) == (ref.indegree, ref.outdegree)
    assert cart.inoutedges == ref.inoutedges
    assert (cart.inedges, cart.outedges) == (ref.inedges, ref.outedges)


@pytest.mark.parametrize("config", range(14))
def test_cart_queries_match_the_library(comm, config):
    configs = cart_configs(comm.size)
    if config >= len(configs):
        pytest.skip("no such configuration at this size")
    dims, periods = configs[config]
    cart, ref = both(lambda c: c.Create_cart(dims, periods))
    assert (cart == MPI.COMM_NULL) == (ref == _native.COMM_NULL)
    # Outside the grid MPI says UNDEFINED (Open MPI gives the rank itself).
    expected_map = NATIVE.Cart_map(dims, periods) if ref != _native.COMM_NULL else MPI.UNDEFINED
    assert comm.Cart_map(dims, periods) == expected_map
    if cart != MPI.COMM_NULL:
        check_cart(cart, ref)
        # A duplicate keeps the topology, and stays ivmpi's.
        dup = cart.Dup()
        check_cart(dup, ref)
        dup.Free()
        # Every way of keeping dimensions.
        for remain in itertools.product([False, True], repeat=len(dims)):
            sub, subref = cart.Sub(list(remain)), ref.Sub(list(remain))
            check_cart(sub, subref)
            assert sub.allgather(comm.rank) == subref.allgather(comm.rank)
            free(sub, subref)
    free(cart, ref)


def test_cart_periods_forms_and_errors(comm):
    for periods in (None, True, False):
        cart, ref = both(lambda c: c.Create_cart([comm.size], periods))
        check_cart(cart, ref)
        free(cart, ref)
    with pytest.raises(ValueError):
        comm.Create_cart([comm.size], [])
    with pytest.raises(ValueError):
        comm.Create_cart([comm.size], [0, 0])
    with pytest.raises(MPI.Exception):
        comm.Create_cart([comm.size + 1])
    with pytest.raises(MPI.Exception):
        comm.Create_cart([0])
    cart = comm.Create_cart([comm.size])
    with pytest.raises(ValueError):
        cart.Get_cart_rank([0, 0])
    with pytest.raises(ValueError):
        cart.Sub([True, False])
    with pytest.raises(MPI.Exception):
        cart.Get_coords(comm.size)
    cart.Free()


def ring(size):
    index, edges = [0], []
    for i in range(size):
        index.append(index[-1] + 2)
        edges.extend(((i - 1) % size, (i + 1) % size))
    return index, edges


def graphs(size):
    index, edges = ring(size)
    # A graph over fewer nodes than ranks, with a self-loop and a repeated edge.
    small = ([3, 4], [1, 0, 1, 0]) if size >= 2 else ([1], [0])
    return [(index, edges), (index[1:], edges), small]


@pytest.mark.parametrize("which", range(3))
def test_graph_queries_match_the_library(comm, which):
    index, edges = graphs(comm.size)[which]
    graph, ref = both(lambda c: c.Create_graph(index, edges))
    assert (graph == MPI.COMM_NULL) == (ref == _native.COMM_NULL)
    expected_map = NATIVE.Graph_map(index, edges) if ref != _native.COMM_NULL else MPI.UNDEFINED
    assert comm.Graph_map(index, edges) == expected_map
    if graph == MPI.COMM_NULL:
        return
    assert isinstance(graph, ivmpi.topocomm.Graphcomm) and isinstance(graph, _native.Graphcomm)
    for g in (graph, graph.Dup()):
        assert g.Get_topology() == g.topology == ref.Get_topology() == MPI.GRAPH
        assert g.Get_dims() == g.dims == ref.Get_dims()
        assert (g.nnodes, g.nedges) == (ref.nnodes, ref.nedges)
        assert g.Get_topo() == g.topo == ref.Get_topo()
        assert (g.index, g.edges) == (ref.index, ref.edges)
        for r in range(ref.size):
            assert g.Get_neighbors(r) == ref.Get_neighbors(r)
            assert g.Get_neighbors_count(r) == ref.Get_neighbors_count(r)
        assert (g.neighbors, g.nneighbors) == (ref.neighbors, ref.nneighbors)
        assert g.degrees == ref.degrees and g.inoutedges == ref.inoutedges
        assert (g.inedges, g.outedges) == (ref.inedges, ref.outedges)
        g.Free()
    ref.Free()


def adjacent_args(rank, size):
    sources = [(rank - 1) % size, (rank - 2) % size]
    destinations = [(rank + 1) % size, (rank + 2) % size]
    return [
        (sources, destinations),
        (sources, destinations, [1, 2], [3, 4]),
        (sources, None, MPI.UNWEIGHTED, None),
        (None, destinations, None, MPI.UNWEIGHTED),
        ([], [], MPI.WEIGHTS_EMPTY, MPI.WEIGHTS_EMPTY),
    ]


@pytest.mark.parametrize("which", range(5))
def test_dist_graph_adjacent_queries_match_the_library(comm, which):
    args = adjacent_args(comm.rank, comm.size)[which]
    graph, ref = both(lambda c: c.Create_dist_graph_adjacent(*args))
    assert isinstance(graph, ivmpi.topocomm.Distgraphcomm)
    assert isinstance(graph, _native.Distgraphcomm)
    for g in (graph, graph.Dup()):
        assert g.Get_topology() == g.topology == ref.Get_topology() == MPI.DIST_GRAPH
        assert g.Get_dist_neighbors_count() == ref.Get_dist_neighbors_count()
        assert g.Get_dist_neighbors() == ref.Get_dist_neighbors()
        assert g.degrees == ref.degrees and g.inoutedges == ref.inoutedges
        assert (g.inedges, g.outedges) == (ref.inedges, ref.outedges)
        g.Free()
    ref.Free()


def sorted_neighbours(g):
    sources, destinations, weights = g.Get_dist_neighbors()
    if weights is None:
        return sorted(sources), sorted(destinations), None
    return sorted(zip(sources, weights[0])), sorted(zip(destinations, weights[1])), True


@pytest.mark.parametrize("weighted", [False, True])
def test_dist_graph_matches_the_library(comm, weighted):
    # Each rank names edges of other nodes too; the library lists a node's
    # edges in the order messages arrived, so they are compared as sets.
    rank, size = comm.rank, comm.size
    sources, degrees = [(rank + 1) % size, rank], [2, 1]
    destinations = [rank, (rank + 2) % size, (rank + 1) % size]
    weights = [10 * rank + 1, 10 * rank + 2, 10 * rank + 3] if weighted else MPI.UNWEIGHTED
    graph, ref = both(lambda c: c.Create_dist_graph(sources, degrees, destinations, weights))
    assert graph.Get_dist_neighbors_count() == ref.Get_dist_neighbors_count()
    assert sorted_neighbours(graph) == sorted_neighbours(ref)
    # The neighbourhood collectives follow ivmpi's own order, on both sides.
    got = graph.neighbor_allgather(rank)
    assert got == graph.inedges
    free(graph, ref)


def test_topo_test_and_constructors(comm):
    assert comm.Get_topology() == comm.topology == NATIVE.Get_topology() == MPI.UNDEFINED
    assert not comm.is_topo
    cart = comm.Create_cart([comm.size])
    graph = comm.Create_graph(*ring(comm.size))
    dist = comm.Create_dist_graph_adjacent([], [])
    for topo, cls in ((cart, ivmpi.topocomm.Cartcomm), (graph, ivmpi.topocomm.Graphcomm),
                      (dist, ivmpi.topocomm.Distgraphcomm)):
        again = cls(topo)
        assert type(again) is cls and again == topo
        assert again.inoutedges == topo.inoutedges
        for other in {ivmpi.topocomm.Cartcomm, ivmpi.topocomm.Graphcomm,
                      ivmpi.topocomm.Distgraphcomm} - {cls}:
            with pytest.raises(TypeError):
                other(topo)
        with pytest.raises(TypeError):
            cls(comm)
        # Handles convert back to ivmpi's communicator, of its class.
        back = MPI.Comm.fromint(topo.toint())
        assert type(back) is cls and back == topo
        assert MPI.Comm.f2py(topo.py2f()) == topo
    with pytest.raises(TypeError):
        MPI.Graphcomm(cart)
    free(cart, graph, dist)


# --- traffic through the region ----------------------------------------------------------

def test_cart_traffic_goes_through_the_region(comm, streamed):
    # (streamed: the data cross the rings, as between VMs; ranks of one
    # kernel would copy the Sendrecv's 32 KiB from each other's memory.)
    cart = comm.Create_cart([comm.size], [True])
    left, right = cart.Shift(0, 1)
    n = 4096
    before = ivmpi.stats.traffic(cart)
    halo = np.full(n, cart.rank, "f8")
    ghost = np.zeros(n, "f8")
    cart.Sendrecv(halo, right, 0, ghost, left, 0)
    assert (ghost == left).all()
    got = np.zeros((2, n), "f8")
    cart.Neighbor_allgather(halo, got)
    assert (got[0] == left).all() and (got[1] == right).all()
    after = ivmpi.stats.traffic(cart)
    if right != cart.rank:
        assert after[right]["written"] - before[right]["written"] >= 2 * n * 8
    if left != cart.rank:
        assert after[left]["read"] - before[left]["read"] >= 2 * n * 8
    cart.Free()


def test_blocking_neighbour_calls_take_keywords_and_refuse_a_freed_communicator(comm):
    """The blocking and nonblocking forms are bound to the instance
    (ivmpi.topocomm _NEIGHBOUR): same keywords, same error on a freed one,
    and a Dup binds its own."""
    carts = both(lambda c: c.Create_cart([c.size], [True]))
    results = []
    for cart in carts:
        left, right = cart.Shift(0, 1)
        send, got = np.array([cart.rank, -cart.rank], "f8"), np.zeros(2)
        cart.Neighbor_alltoall(sendbuf=send, recvbuf=got)
        gathered = np.zeros(2, "i8")
        dup = cart.Dup()
        dup.Neighbor_allgather(recvbuf=gathered, sendbuf=np.array([cart.rank], "i8"))
        started = np.zeros(2, "i8")
        dup.Ineighbor_allgather(recvbuf=started, sendbuf=np.array([cart.rank], "i8")).Wait()
        late = np.zeros(2)
        dup.Ineighbor_alltoall(send, late).Wait()
        dup.Free()
        results.append((got.tolist(), gathered.tolist(), [left, right], started.tolist(),
                        late.tolist()))
        cart.Free()
        # The library's Neighbor_allgather(v) on a freed communicator
        # returns without error in mpi4py 4.1.2 over Open MPI 5.0.11; ivmpi
        # refuses all of them as its Neighbor_alltoall does (across regions
        # they are the library's).
        calls = (("Neighbor_alltoall", (send, got)),
                 ("Neighbor_alltoallv", ([send, [1, 1], [0, 1], MPI.DOUBLE], got)),
                 ("Neighbor_allgather", (send[:1], got)),
                 ("Neighbor_allgatherv", (send[:1], [got, [1, 1], [0, 1], MPI.DOUBLE])),
                 ("Neighbor_alltoallw", ([send, [1, 1], [0, 8], [MPI.DOUBLE] * 2],
                                         [got, [1, 1], [0, 8], [MPI.DOUBLE] * 2])))
        ours = cart.__class__.__module__.startswith("ivmpi") and not cart._routed
        if ours:
            assert all(type(cart.__dict__[name]).__name__ == "BoundCollective"
                       for name in ("Neighbor_alltoall", "Ineighbor_alltoall",
                                    "Ineighbor_alltoallw"))
            calls += tuple(("I" + name[0].lower() + name[1:], args) for name, args in calls)
        for name, args in calls if ours else calls[:1]:
            with pytest.raises(_native.Exception) as error:
                getattr(cart, name)(*args)
            assert error.value.Get_error_class() == MPI.ERR_COMM, name
    assert results[0][:4] == results[1][:4]
    assert results[0][1] == results[0][2] == results[0][3]
    # Ineighbor_alltoall as Neighbor_alltoall (on 2 periodic ranks, where
    # both neighbours are the same rank, Open MPI 5.0.11's Ineighbor_alltoall
    # swaps the two blocks its Neighbor_alltoall does not: not compared).
    assert results[0][4] == results[0][0]


def test_neighbour_traffic_never_matches_user_messages(comm):
    cart = comm.Create_cart([comm.size], [True])
    left, right = cart.Shift(0, 1)
    pending = cart.Irecv(bytearray(8), MPI.ANY_SOURCE, MPI.ANY_TAG)
    got = np.zeros(2, "i8")
    cart.Neighbor_allgather(np.array([cart.rank], "i8"), got)
    assert got.tolist() == [left, right]
    assert cart.neighbor_alltoall(["-", "+"]) == ["+", "-"]
    assert not pending.Test()
    cart.Barrier()          # every rank has looked before any sends
    cart.Send(b"12345678", right, tag=3)
    status = MPI.Status()
    pending.Wait(status)
    assert (status.source, status.tag) == (left, 3)
    cart.Free()


# --- neighbourhood collectives against the library ------------------------------------------

def topologies(comm):
    """(name, ivmpi's, library's) topology communicators for the collectives:
    periodic and non-periodic grids (PROC_NULL edges), periodic dimensions
    of size 1 and 2, a graph, distributed graphs."""
    size, rank = comm.size, comm.rank
    makers = [
        ("ring", lambda c: c.Create_cart([size], [True])),
        ("line", lambda c: c.Create_cart([size], [False])),
        ("size-1 periodic", lambda c: c.Create_cart([1, size], [True, False])),
        ("size-2 periodic", lambda c: c.Create_cart([2], [True])),
        ("grid", lambda c: c.Create_cart(MPI.Compute_dims(size, 2), [True, False])),
        ("graph", lambda c: c.Create_graph(*ring(size))),
        ("dist graph", lambda c: c.Create_dist_graph_adjacent(
            [(rank - 1) % size, (rank - 2) % size], [(rank + 1) % size, (rank + 2) % size])),
        ("out only", lambda c: c.Create_dist_graph_adjacent([], [])),
    ]
    for name, make in makers:
        mine, ref = both(make)
        assert (mine == MPI.COMM_NULL) == (ref == _native.COMM_NULL)
        if mine != MPI.COMM_NULL:
            yield name, mine, ref
            free(mine, ref)
        comm.Barrier()


def send_data(topo, blocks, n):
    """Distinct values per (rank, block, element)."""
    values = [1000 * topo.rank + 10 * b + e for b in range(blocks) for e in range(n)]
    return np.array(values, "i4").reshape(blocks, n) if blocks else np.zeros((0, n), "i4")


def specs(kind, c, s, r):
    """The (send, receive) arguments of Neighbor_<kind> for data s into r
    (see width): for the v/w forms 1 or 2 ints sent per block, received
    into blocks of 4 (the rest stays -1)."""
    indegree, outdegree = c.degrees
    counts = [1 + k % 2 for k in range(outdegree)]
    if kind in ("allgather", "alltoall"):
        return s, r
    if kind == "allgatherv":
        return s, [r, [3] * indegree, [4 * k for k in range(indegree)], MPI.INT]
    if kind == "alltoallv":
        return ([s, counts, [3 * k for k in range(outdegree)], MPI.INT],
                [r, [3] * indegree, [4 * k for k in range(indegree)], MPI.INT])
    return ([s, counts, [12 * k for k in range(outdegree)], [MPI.INT] * outdegree],
            [r, [3] * indegree, [16 * k for k in range(indegree)], [MPI.INT] * indegree])


KINDS = ["allgather", "allgatherv", "alltoall", "alltoallv", "alltoallw"]


def width(kind):
    return 3 if kind in ("allgather", "alltoall") else 4


def fresh(kind, topo):
    return np.full((topo.degrees[0], width(kind)), -1, "i4")


def data_for(kind, topo):
    blocks = 1 if kind.startswith("allgather") else topo.degrees[1]
    return send_data(topo, blocks, 3)


def expected(kind, ref, send):
    """The library's result, in a fresh receive buffer of -1."""
    theirs = fresh(kind, ref)
    getattr(ref, "Neighbor_" + kind)(*specs(kind, ref, send, theirs))
    return theirs


def test_neighbour_collectives_match_the_library(comm):
    for name, topo, ref in topologies(comm):
        assert topo.degrees == ref.degrees, name
        for kind in KINDS:
            send = data_for(kind, topo)
            mine = fresh(kind, topo)
            getattr(topo, "Neighbor_" + kind)(*specs(kind, topo, send, mine))
            np.testing.assert_array_equal(mine, expected(kind, ref, send), err_msg=name)
            # PROC_NULL neighbours leave their block untouched.
            for k, source in enumerate(topo.inedges):
                assert (mine[k] == -1).all() == (source == MPI.PROC_NULL), name
        assert topo.neighbor_allgather((name, topo.rank)) == ref.neighbor_allgather(
            (name, topo.rank))
        items = [(topo.rank, k) for k in range(topo.degrees[1])]
        assert topo.neighbor_alltoall(items) == ref.neighbor_alltoall(items)
        assert topo.neighbor_alltoall(None) == ref.neighbor_alltoall(None)


def test_large_object_neighbour_collectives(comm):
    # Pickles over the eager limit, mixed with small ones and repeated:
    # the library's results, twice in a row (the sender's staging buffer
    # is reused), PROC_NULL neighbours giving None.
    big = 300000
    for name, topo, ref in topologies(comm):
        for round in range(2):
            obj = (name, topo.rank, round, bytes([topo.rank + round]) * big)
            assert topo.neighbor_allgather(obj) == ref.neighbor_allgather(obj), name
            items = [(topo.rank, k, round, bytes([k]) * (big + k if k % 2 == 0 else 10))
                     for k in range(topo.degrees[1])]
            assert topo.neighbor_alltoall(items) == ref.neighbor_alltoall(items), name


def test_large_pickle_traffic_skips_the_rings(comm):
    # The rings carry only the announcements; each receiver copies the
    # pickle straight out of the sender's heap.
    cart = comm.Create_cart([comm.size], [True])
    big = 1 << 20
    if cart._engine.heap is None or cart._engine.heap.mem.strict:
        pytest.skip("no region heap")
    before = ivmpi.stats.traffic(cart)
    got = cart.neighbor_allgather(bytes([cart.rank]) * big)
    assert got == [bytes([r]) * big for r in cart.Shift(0, 1)]
    got = cart.neighbor_alltoall([b"-" * big, b"+" * big])
    assert got == [b"+" * big, b"-" * big]
    after = ivmpi.stats.traffic(cart)
    for peer in after:
        assert after[peer]["written"] - before[peer]["written"] < big // 8
    cart.Free()


def test_nonblocking_neighbour_collectives(comm):
    for name, topo, ref in topologies(comm):
        sends = [data_for(kind, topo) for kind in KINDS]
        got = [fresh(kind, topo) for kind in KINDS]
        requests = [getattr(topo, "Ineighbor_" + kind)(*specs(kind, topo, send, mine))
                    for kind, send, mine in zip(KINDS, sends, got)]
        assert all(isinstance(r, MPI.Request) for r in requests)
        # Completed by Test and by Waitall, all in flight at once.
        while not requests[0].Test():
            pass
        MPI.Request.Waitall(requests)
        assert all(r == MPI.REQUEST_NULL for r in requests)
        for kind, send, mine in zip(KINDS, sends, got):
            np.testing.assert_array_equal(mine, expected(kind, ref, send), err_msg=name)


def test_persistent_neighbour_collectives(comm):
    for name, topo, ref in topologies(comm):
        sends = [data_for(kind, topo) for kind in KINDS]
        got = [fresh(kind, topo) for kind in KINDS]
        requests = [getattr(topo, "Neighbor_%s_init" % kind)(*specs(kind, topo, send, mine))
                    for kind, send, mine in zip(KINDS, sends, got)]
        assert all(isinstance(r, MPI.Prequest) for r in requests)
        for _ in range(3):
            for send in sends:
                send += 1          # each round sends the buffer's current contents
            MPI.Prequest.Startall(requests)
            MPI.Request.Waitall(requests)
            for kind, send, mine in zip(KINDS, sends, got):
                np.testing.assert_array_equal(mine, expected(kind, ref, send), err_msg=name)
        requests[0].Start()
        requests[0].Wait()
        for request in requests:
            request.Free()


def test_periodic_size_one_and_two_dimensions_match_in_order(comm):
    # One rank is both neighbours: what goes toward -1 must land in the +1
    # block of the receiver, however many messages pass between the two.
    configs = [([1], [True]), ([2], [True]), ([1, 2], [True, True]), ([2, 1], [True, True])]
    if comm.size == 4:
        configs.append(([2, 2], [True, True]))
    for dims, periods in configs:
        topo, ref = both(lambda c: c.Create_cart(dims, periods))
        if topo != MPI.COMM_NULL:
            deg = 2 * len(dims)
            for n in (1, 20000):        # eager and streamed through the ring
                send = np.arange(deg * n, dtype="i4").reshape(deg, n) + 100000 * topo.rank
                mine, theirs = np.full((deg, n), -1, "i4"), np.full((deg, n), -1, "i4")
                topo.Neighbor_alltoall(send, mine)
                ref.Neighbor_alltoall(send, theirs)
                np.testing.assert_array_equal(mine, theirs)
            items = [(topo.rank, k) for k in range(deg)]
            assert topo.neighbor_alltoall(items) == ref.neighbor_alltoall(items)
        free(topo, ref)
        comm.Barrier()


def test_truncation_is_an_error(comm):
    cart = comm.Create_cart([comm.size], [True])
    with pytest.raises(MPI.Exception) as info:
        cart.Neighbor_allgather(np.zeros(4, "i4"), np.zeros((2, 2), "i4"))
    assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
    cart.Free()
