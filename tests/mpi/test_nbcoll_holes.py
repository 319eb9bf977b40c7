"""Derived datatypes with holes in the nonblocking, persistent and
neighbourhood collectives, and the all-to-all-w forms: the same program
over ivmpi and over mpi4py (the MPI library underneath) must give the same
arrays (run under mpirun -n 2, 3, 4 with --with-mpi).  Persistent requests
start twice, with new data in between, so a stale packed copy would show."""
import numpy as np
import pytest
from mpi4py import MPI as native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=2)


def _types():
    col = native.DOUBLE.Create_vector(4, 1, 4).Commit()
    every_other = native.DOUBLE.Create_indexed_block(1, [0, 2, 4, 6, 8]).Commit()
    sub = native.DOUBLE.Create_subarray([4, 4], [2, 2], [1, 1]).Commit()
    wide = native.INT32_T.Create_resized(0, 12).Commit()
    pair = native.Datatype.Create_struct([1, 1], [0, 16], [native.DOUBLE, native.DOUBLE]).Commit()
    nested = col.Create_hvector(2, 1, 8).Commit()
    return {"column": col, "indexed": every_other, "subarray": sub, "resized": wide,
            "struct": pair, "nested": nested}


KINDS = ["column", "indexed", "subarray", "resized", "struct", "nested"]


def _setup(comm, kind):
    types = _types()
    datatype = types[kind]
    size = comm.size
    extent = datatype.Get_extent()[1]
    dtype = "i4" if kind == "resized" else "f8"
    itemsize = np.dtype(dtype).itemsize
    length = (size * extent + datatype.Get_true_extent()[1]) // itemsize + 1
    return types, datatype, dtype, length


def _call(comm, form, name, args, refill=None):
    """Run collective `name` in nonblocking ("I") or persistent ("init")
    form; the persistent one starts twice, refill() changing the data
    before the second start.  Returns how many rounds ran."""
    if form == "I":
        getattr(comm, "I" + name[0].lower() + name[1:])(*args).Wait()
        return 1
    req = getattr(comm, name + "_init")(*args)
    for round_ in range(2):
        if round_ and refill is not None:
            refill()
        req.Start()
        req.Wait()
    req.Free()
    return 2


def _collectives(comm, MPI_, kind, form):
    types, datatype, dtype, length = _setup(comm, kind)
    rank, size = comm.rank, comm.size
    mine = np.arange(length, dtype=dtype) + 1000 * (rank + 1)

    def refill():
        mine[:] += 7

    def fresh():
        return np.full(length, -1, dtype=dtype)
    results = []
    counts, displs = [1] * size, list(range(size))[::-1]
    cases = [
        ("Bcast", lambda out: ([out, 1, datatype], size - 1)),
        ("Allgather", lambda out: ([mine, 1, datatype], [out, 1, datatype])),
        ("Gather", lambda out: ([mine, 1, datatype], [out, 1, datatype], size - 1)),
        ("Scatter", lambda out: ([mine, 1, datatype], [out, 1, datatype], 0)),
        ("Alltoall", lambda out: ([mine, 1, datatype], [out, 1, datatype])),
        ("Allgatherv", lambda out: ([mine, 1, datatype], [out, (counts, displs), datatype])),
        ("Gatherv", lambda out: ([mine, 1, datatype], [out, (counts, displs), datatype], 0)),
        ("Scatterv", lambda out: ([mine, (counts, displs), datatype], [out, 1, datatype],
                                  size - 1)),
        ("Alltoallv", lambda out: ([mine, (counts, displs), datatype],
                                   [out, (counts, list(range(size))), datatype])),
    ]
    for name, make in cases:
        out = mine.copy() if name == "Bcast" and rank == size - 1 else fresh()
        before = mine.copy()
        if name == "Bcast":
            # The root's buffer is the data: refill it, not `mine`.
            _call(comm, form, name, make(out), lambda: out.__iadd__(5) if rank == size - 1
                  else None)
        else:
            _call(comm, form, name, make(out), refill)
        mine[:] = before
        results.append(out)
    out = mine.copy()
    _call(comm, form, "Allgather", (MPI_.IN_PLACE, [out, 1, datatype]))
    results.append(out)
    for t in types.values():
        t.Free()
    return results


def _alltoallw(comm, MPI_, form):
    """Every block of its own type: a column, contiguous doubles, a resized
    pair, a subarray; displacements in bytes."""
    size, rank = comm.size, comm.rank
    col = native.DOUBLE.Create_vector(3, 1, 4).Commit()
    pair = native.DOUBLE.Create_contiguous(2).Create_resized(0, 24).Commit()
    sub = native.DOUBLE.Create_subarray([3, 3], [2, 2], [1, 0]).Commit()
    palette = [(col, 1, 12), (native.DOUBLE, 3, 3), (pair, 1, 3), (sub, 1, 9)]
    send = np.arange(40.0 * size) + 1000 * (rank + 1)
    recv = np.full(40 * size, -1.0)
    stypes, scounts, sdispls, rtypes, rcounts, rdispls = [], [], [], [], [], []
    for peer in range(size):
        # What rank r sends to rank p uses palette[(r + p) % 4], so both
        # sides agree on the type signature.
        datatype, count, span = palette[(rank + peer) % len(palette)]
        stypes.append(datatype)
        scounts.append(count)
        sdispls.append(40 * 8 * peer)
        rtypes.append(datatype)
        rcounts.append(count)
        rdispls.append(40 * 8 * peer + 8)
    args = ([send, (scounts, sdispls), stypes], [recv, (rcounts, rdispls), rtypes])
    if form == "I":
        comm.Ialltoallw(*args).Wait()
    else:
        req = comm.Alltoallw_init(*args)
        for round_ in range(2):
            if round_:
                send[:] += 11
            req.Start()
            req.Wait()
        req.Free()
    for t in (col, pair, sub):
        t.Free()
    return [recv]


def _neighbours(cart, MPI_, kind, form, refilled=False):
    """Neighbourhood collectives on a ring, holes on both sides (refilled:
    the blocking form runs on the data of a persistent form's second round)."""
    types, datatype, dtype, length = _setup(cart, kind)
    rank = cart.rank
    mine = np.arange(length, dtype=dtype) + 1000 * (rank + 1)
    results = []
    counts, displs = [1, 1], [1, 0]
    cases = [
        ("Neighbor_allgather", lambda out: ([mine, 1, datatype], [out, 1, datatype])),
        ("Neighbor_allgatherv", lambda out: ([mine, 1, datatype],
                                             [out, (counts, displs), datatype])),
        ("Neighbor_alltoall", lambda out: ([mine, 1, datatype], [out, 1, datatype])),
        ("Neighbor_alltoallv", lambda out: ([mine, (counts, displs), datatype],
                                            [out, (counts, [0, 1]), datatype])),
    ]
    extent = datatype.Get_extent()[1]
    wtypes = [datatype, MPI_.BYTE]
    nbytes = datatype.Get_size()
    cases.append(("Neighbor_alltoallw", lambda out: (
        [mine, ([1, nbytes], [0, extent]), wtypes], [out, ([nbytes, 1], [0, extent]),
                                                     wtypes[::-1]])))

    def refill():
        mine[:] += 3
    for name, make in cases:
        out = np.full(length, -1, dtype=dtype)
        before = mine.copy()
        args = make(out)
        if form == "blocking":
            if refilled:
                refill()
            getattr(cart, name)(*args)
        elif form == "I":
            getattr(cart, "I" + name[0].lower() + name[1:])(*args).Wait()
        else:
            _call(cart, "init", name, args, refill)
        mine[:] = before
        results.append(out)
    for t in types.values():
        t.Free()
    return results


def _same(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (mine, expected) in enumerate(zip(ours, theirs)):
        assert np.array_equal(mine, expected), (i, mine, expected)


def _reference():
    return native.COMM_WORLD.Dup()


@pytest.mark.parametrize("form", ["I", "init"])
@pytest.mark.parametrize("kind", KINDS)
def test_collectives_with_holes_match_mpi4py(comm, kind, form):
    ours = _collectives(comm, MPI, kind, form)
    reference = _reference()
    theirs = _collectives(reference, native, kind, form)
    reference.Free()
    _same(ours, theirs)


@pytest.mark.parametrize("form", ["I", "init"])
def test_alltoallw_matches_mpi4py(comm, form):
    ours = _alltoallw(comm, MPI, form)
    reference = _reference()
    theirs = _alltoallw(reference, native, form)
    reference.Free()
    _same(ours, theirs)


@pytest.mark.parametrize("form", ["blocking", "I", "init"])
@pytest.mark.parametrize("kind", KINDS)
def test_neighbour_collectives_with_holes_match_mpi4py(comm, kind, form):
    cart = comm.Create_cart([comm.size], [True])
    ours = _neighbours(cart, MPI, kind, form)
    cart.Free()
    # The library's blocking forms are the reference: on a periodic ring of
    # two its nonblocking ones hand the message sent toward -1 to the -1
    # block (post order), where its blocking ones (and ivmpi) put it in +1.
    reference = _reference()
    ref_cart = reference.Create_cart([comm.size], [True])
    theirs = _neighbours(ref_cart, native, kind, "blocking", refilled=form == "init")
    ref_cart.Free()
    reference.Free()
    _same(ours, theirs)


@pytest.mark.parametrize("form", ["I", "init"])
def test_reductions_over_a_column(comm, form):
    """Reductions of a column, in place too: the library reduces a
    contiguous copy for the reference (Open MPI refuses derived datatypes
    in its reductions)."""
    rank = comm.rank
    col = native.DOUBLE.Create_vector(5, 1, 4).Create_resized(0, 8).Commit()
    a = np.arange(20.0).reshape(5, 4) * (rank + 1) + rank
    ref = native.COMM_WORLD

    def check(name, args, expect, column, out, untouched=None):
        _call(comm, form, name, args, lambda: a.__iadd__(1.0))
        expect = expect(a)      # the data of the last round
        if out is not None:
            assert np.array_equal(out[:, column], expect), (name, out[:, column], expect)
            if untouched is not None:
                assert (out[:, untouched] == -1).all()

    def reduced(op):
        def run(data):
            tmp = np.zeros(5)
            ref.Allreduce(data[:, 1].copy(), tmp, op=op)
            return tmp
        return run
    out = np.full((5, 4), -1.0)
    check("Allreduce", ([a, (1, 1), col], [out, (1, 2), col], MPI.SUM), reduced(native.SUM), 2,
          out, [0, 1, 3])
    out = np.full((5, 4), -1.0)
    check("Allreduce", ([a, (1, 1), col], [out, (1, 2), col], MPI.MAX), reduced(native.MAX), 2,
          out, [0, 1, 3])

    def scanned(data):
        tmp = np.zeros(5)
        ref.Scan(data[:, 0].copy(), tmp)
        return tmp
    out = np.full((5, 4), -1.0)
    check("Scan", ([a, 1, col], [out, 1, col]), scanned, 0, out, [1, 2, 3])

    def at_root(data):
        tmp = np.zeros(5)
        ref.Reduce(data[:, 0].copy(), tmp, root=0)
        return tmp
    out = np.full((5, 4), -1.0)
    check("Reduce", ([a, 1, col], [out, 1, col] if rank == 0 else None, MPI.SUM, 0), at_root,
          0, out if rank == 0 else None, [1, 2, 3])
    col.Free()
