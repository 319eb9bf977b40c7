"""Two-level collectives on communicators spanning node groups
(ivmpi.hierarchy, docs/routing.md): every result is compared with plain
mpi4py's on the same processes and data, and the counters of
ivmpi.hierarchy.stats and ivmpi.stats show which way each call went.

Meant for several simulated hosts:

    mpirun -n 4 scripts/simulate-hosts 2+2 python -m pytest --with-mpi tests/mpi/test_hierarchy.py

(layouts 2+2, 3+1, 1+1+1+1, 4; at -n 3 2+1), and also without the
wrapper (one region: no communicator spans groups, nothing is two-level).
"""
import contextlib

import numpy as np
import pytest
from mpi4py import MPI as _native

import ivmpi
from ivmpi import MPI, stats
from ivmpi import hierarchy

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("engine_timeout")]



@pytest.fixture(autouse=True, scope="module")
def _two_levels():
    """The two levels are on by default only where the groups run on
    several kernels (IVMPI_HIERARCHY unset; simulated hosts share one): on
    for the communicators this module's tests make (each test's Dup
    included), and back to the default for the test files that run after
    it in the same process."""
    before = hierarchy.ENABLED
    hierarchy.ENABLED = True
    yield
    hierarchy.ENABLED = before

# 8 bytes to 1 MiB: one small frame, one ring chunk, past the eager limit,
# and past the region collectives' staging threshold.
SIZES = (8, 1000, 70_000, 1 << 20)

P = 65_521


def _affine(inbuf, inoutbuf, datatype):
    """Composition of affine maps x -> a*x + b mod P, each one int64
    a * 2**32 + b: associative, not commutative, and element by element
    (a library may split a reduction anywhere between elements).
    inout = in o inout (in from lower ranks)."""
    x = np.frombuffer(inbuf, np.int64)
    y = np.frombuffer(inoutbuf, np.int64)
    xa, xb, ya, yb = x >> 32, x & 0xFFFFFFFF, y >> 32, y & 0xFFFFFFFF
    y[:] = (((xa * ya) % P) << 32) | ((xb * ya + yb) % P)


AFFINE = MPI.Op.Create(_affine, commute=False)


def _affine_data(rank, n):
    """n affine maps for rank, different from rank to rank."""
    a = (np.arange(n, dtype=np.int64) * 7 + rank * 13 + 2) % 997 + 1
    b = (np.arange(n, dtype=np.int64) * 3 + rank * 101) % 991
    return (a << 32) | b


def _plain(comm):
    """The same communicator as plain mpi4py (the library on its handle)."""
    return _native.Intracomm.fromhandle(comm.handle)


def _layout(comm):
    """(two levels expected, this rank leads its group) for comm."""
    world_of = comm._ranks       # world rank by communicator rank (no collective here)
    groups = []
    for g in ivmpi.node_groups():
        members = [r for r, w in enumerate(world_of) if w in g]
        if members:
            groups.append(members)
    mine = next(m for m in groups if comm.rank in m)
    return 1 < len(groups) < comm.size, comm.rank == mine[0]


@contextlib.contextmanager
def way(comm, name, two_level=None):
    """Checks that the calls inside took the expected way: two levels when
    the layout makes them pay (or as two_level says), only a group's leader
    calling the library; else flat (or, inside one region, neither)."""
    pays, leads = _layout(comm)
    before = hierarchy.stats(comm)
    yield
    after = hierarchy.stats(comm)
    if before is None:      # every member in this process's region
        assert after is None and not comm._routed
        return
    expect = pays if two_level is None else (pays and two_level)
    two = after["two_level"].get(name, 0) - before["two_level"].get(name, 0)
    flat = after["flat"].get(name, 0) - before["flat"].get(name, 0)
    assert (two > 0, flat > 0) == (expect, not expect), (name, before, after)
    if expect:
        assert after["leader"] == leads
        called = after["leader_calls"] - before["leader_calls"]
        assert (called > 0) if leads else (called == 0)


def _values(rank, nbytes, dtype, root_bias=0):
    n = max(1, nbytes // np.dtype(dtype).itemsize)
    # Small integers: every sum is exact in floating point too.
    return ((np.arange(n) * 5 + rank * 11 + root_bias) % 251).astype(dtype)


# --- Barrier and Bcast ------------------------------------------------------------------

def test_barrier_orders_everyone(comm, tmp_path_factory):
    """No rank leaves before every rank entered: the last to enter makes a
    file (in a directory every rank of this machine sees) only after a
    pause, just before its Barrier; everyone finds it after theirs."""
    import os
    import time
    plain = _plain(comm)
    where = plain.bcast(str(tmp_path_factory.mktemp("barrier")) if comm.rank == 0 else None)
    for last in range(comm.size):
        marker = os.path.join(where, f"entered-{last}")
        if comm.rank == last:
            time.sleep(0.05)
            open(marker, "w").close()
        with way(comm, "Barrier", two_level=False):
            comm.Barrier()
        assert os.path.exists(marker)
        with way(comm, "barrier", two_level=False):
            comm.barrier()


def test_a_message_sent_before_a_barrier_is_there_after_it(comm):
    """Each rank in turn sends to every other rank, through the region or
    the library, then all meet in a Barrier: right after it, a probe finds
    the message on every receiver (the barrier is the library's, whose
    messages follow the ones sent before it)."""
    for sender in range(comm.size):
        if comm.rank == sender:
            for dest in range(comm.size):
                if dest != sender:
                    comm.send(("before", sender), dest, tag=77)
        comm.Barrier()
        if comm.rank != sender:
            assert comm.Iprobe(sender, 77)
            assert comm.recv(source=sender, tag=77) == ("before", sender)
        comm.Barrier()


@pytest.mark.parametrize("nbytes", SIZES)
def test_bcast_every_root(comm, nbytes):
    plain = _plain(comm)
    for root in range(comm.size):
        for dtype in ("u1", "f8"):
            data = _values(root, nbytes, dtype)
            mine = data.copy() if comm.rank == root else np.zeros_like(data)
            ref = data.copy() if comm.rank == root else np.zeros_like(data)
            with way(comm, "Bcast"):
                comm.Bcast(mine, root)
            plain.Bcast(ref, root)
            assert np.array_equal(mine, ref) and np.array_equal(mine, data)


def test_bcast_derived_datatypes(comm):
    plain = _plain(comm)
    column = MPI.INT.Create_vector(8, 1, 4).Commit()       # holes
    block = MPI.INT.Create_contiguous(4).Commit()
    try:
        for root in range(comm.size):
            full = np.arange(32, dtype=np.int32) * (root + 3)
            for spec in (lambda b: [b, 1, column], lambda b: [b, 8, block],
                         lambda b: [b, (3, 2), block]):
                mine = full.copy() if comm.rank == root else np.full(32, -1, np.int32)
                ref = mine.copy()
                with way(comm, "Bcast"):
                    comm.Bcast(spec(mine), root)
                plain.Bcast(spec(ref), root)
                assert np.array_equal(mine, ref)
    finally:
        column.Free()
        block.Free()


def test_bcast_objects_every_root(comm):
    plain = _plain(comm)
    for root in range(comm.size):
        obj = {"root": root, "data": list(range(root * 1000))} if comm.rank == root else None
        with way(comm, "bcast"):
            got = comm.bcast(obj, root)
        assert got == plain.bcast(obj, root)


# --- reductions ----------------------------------------------------------------------

OPS = [("sum i4", "i4", MPI.SUM), ("sum f8", "f8", MPI.SUM), ("max f4", "f4", MPI.MAX),
       ("prod i8", "i8", MPI.PROD), ("bxor u2", "u2", MPI.BXOR), ("min f8", "f8", MPI.MIN)]


@pytest.mark.parametrize("nbytes", SIZES)
@pytest.mark.parametrize("name,dtype,op", OPS, ids=[o[0] for o in OPS])
def test_allreduce(comm, nbytes, name, dtype, op):
    plain = _plain(comm)
    data = _values(comm.rank, nbytes, dtype)
    if op == MPI.PROD:
        data = data % 3 + 1
    out, ref = np.zeros_like(data), np.zeros_like(data)
    with way(comm, "Allreduce"):
        comm.Allreduce(data, out, op)
    plain.Allreduce(data, ref, op)
    assert np.array_equal(out, ref)
    inplace = data.copy()
    with way(comm, "Allreduce"):
        comm.Allreduce(MPI.IN_PLACE, inplace, op)
    assert np.array_equal(inplace, ref)


@pytest.mark.parametrize("nbytes", SIZES)
def test_allreduce_non_commutative_user_op(comm, nbytes):
    plain = _plain(comm)
    data = _affine_data(comm.rank, max(1, nbytes // 8))
    out, ref = np.zeros_like(data), np.zeros_like(data)
    with way(comm, "Allreduce"):
        comm.Allreduce(data, out, AFFINE)
    plain.Allreduce(data, ref, AFFINE)
    assert np.array_equal(out, ref)
    inplace = data.copy()
    with way(comm, "Allreduce"):
        comm.Allreduce(MPI.IN_PLACE, inplace, AFFINE)
    assert np.array_equal(inplace, ref)


@pytest.mark.parametrize("nbytes", SIZES)
def test_reduce_every_root(comm, nbytes):
    plain = _plain(comm)
    for op, data in ((MPI.SUM, _values(comm.rank, nbytes, "f8")),
                     (AFFINE, _affine_data(comm.rank, max(1, nbytes // 8)))):
        for root in range(comm.size):
            out = np.zeros_like(data) if comm.rank == root else None
            ref = np.zeros_like(data) if comm.rank == root else None
            with way(comm, "Reduce"):
                comm.Reduce(data, out, op, root)
            plain.Reduce(data, ref, op, root)
            if comm.rank == root:
                assert np.array_equal(out, ref)
            inplace = data.copy()
            with way(comm, "Reduce"):
                if comm.rank == root:
                    comm.Reduce(MPI.IN_PLACE, inplace, op, root)
                else:
                    comm.Reduce(inplace, None, op, root)
            if comm.rank == root:
                assert np.array_equal(inplace, ref)


def test_reduce_list_specs_and_maxloc(comm):
    plain = _plain(comm)
    pair = np.dtype([("v", "f8"), ("i", "i4")], align=True)
    assert pair.itemsize == MPI.DOUBLE_INT.Get_extent()[1]
    data = np.zeros(100, pair)
    data["v"] = (np.arange(100) * (comm.rank + 1)) % 7
    data["i"] = comm.rank
    for root in range(comm.size):
        out, ref = np.zeros_like(data), np.zeros_like(data)
        with way(comm, "Reduce"):
            comm.Reduce([data, MPI.DOUBLE_INT], [out, MPI.DOUBLE_INT], MPI.MAXLOC, root)
        plain.Reduce([data, MPI.DOUBLE_INT], [ref, MPI.DOUBLE_INT], MPI.MAXLOC, root)
        if comm.rank == root:
            # (The padding between the pair's members is no one's data.)
            assert np.array_equal(out["v"], ref["v"]) and np.array_equal(out["i"], ref["i"])
    ints = np.arange(40, dtype=np.int32) + comm.rank
    out, ref = np.zeros(40, np.int32), np.zeros(40, np.int32)
    with way(comm, "Allreduce"):
        comm.Allreduce([ints, 10, MPI.INT], [out, 10, MPI.INT], MPI.MAX)
    plain.Allreduce([ints, 10, MPI.INT], [ref, 10, MPI.INT], MPI.MAX)
    assert np.array_equal(out, ref)


def test_reduction_over_a_datatype_with_holes_stays_flat(comm):
    column = MPI.INT.Create_vector(4, 1, 2).Commit()
    try:
        data = np.arange(8, dtype=np.int32) + comm.rank
        out = np.zeros(8, np.int32)
        try:
            with way(comm, "Allreduce", two_level=False):
                comm.Allreduce([data, 1, column], [out, 1, column], MPI.SUM)
        except MPI.Exception:
            pass        # the library may refuse it: the same as without two levels
    finally:
        column.Free()


# --- Allgather --------------------------------------------------------------------------

@pytest.mark.parametrize("nbytes", SIZES)
def test_allgather(comm, nbytes):
    plain = _plain(comm)
    block = _values(comm.rank, nbytes, "u1")
    out = np.zeros(block.size * comm.size, np.uint8)
    ref = np.zeros_like(out)
    with way(comm, "Allgather"):
        comm.Allgather(block, out)
    plain.Allgather(block, ref)
    assert np.array_equal(out, ref)
    inplace = np.zeros_like(out)
    inplace[comm.rank * block.size:(comm.rank + 1) * block.size] = block
    with way(comm, "Allgather"):
        comm.Allgather(MPI.IN_PLACE, inplace)
    assert np.array_equal(inplace, ref)


def test_allgather_list_specs(comm):
    plain = _plain(comm)
    pair = MPI.INT.Create_contiguous(2).Commit()
    try:
        block = np.arange(6, dtype=np.int32) + 100 * comm.rank
        out = np.full(2 + 6 * comm.size, -1, np.int32)
        ref = out.copy()
        with way(comm, "Allgather"):
            comm.Allgather([block, 3, pair], [out, (3, 1), pair])
        plain.Allgather([block, 3, pair], [ref, (3, 1), pair])
        assert np.array_equal(out, ref)
        out, ref = np.zeros(6 * comm.size, np.int32), np.zeros(6 * comm.size, np.int32)
        with way(comm, "Allgather"):
            comm.Allgather([block, MPI.INT], [out, MPI.INT])
        plain.Allgather([block, MPI.INT], [ref, MPI.INT])
        assert np.array_equal(out, ref)
    finally:
        pair.Free()


# --- object forms -------------------------------------------------------------------------

def test_object_collectives(comm):
    plain = _plain(comm)
    concat = lambda a, b: a + b       # noqa: E731  (not commutative)
    with way(comm, "allgather"):
        assert comm.allgather(("r", comm.rank)) == plain.allgather(("r", comm.rank))
    with way(comm, "allreduce"):
        assert comm.allreduce(str(comm.rank), concat) == plain.allreduce(str(comm.rank), concat)
    with way(comm, "allreduce"):
        assert comm.allreduce(comm.rank + 1, MPI.PROD) == plain.allreduce(comm.rank + 1, MPI.PROD)
    for root in range(comm.size):
        with way(comm, "gather"):
            got = comm.gather([comm.rank] * 3, root)
        assert got == plain.gather([comm.rank] * 3, root)
        with way(comm, "reduce"):
            got = comm.reduce([comm.rank], concat, root=root)
        assert got == plain.reduce([comm.rank], concat, root=root)
        with way(comm, "reduce"):
            got = comm.reduce(comm.rank, MPI.MAX, root)
        assert got == plain.reduce(comm.rank, MPI.MAX, root)


# --- groups whose ranks are not consecutive ---------------------------------------------

def test_interleaved_groups_keep_rank_order(comm):
    """A communicator that orders the ranks across the groups (0, 2, 1, 3
    for 2+2): commutative reductions and Bcast still take two
    levels; a non-commutative op and Allgather stay flat, and every result
    is still plain mpi4py's."""
    key = (comm.rank % 2) * comm.size + comm.rank     # even ranks first
    mixed = comm.Split(0, key)
    try:
        consecutive = all(m == list(range(m[0], m[0] + len(m)))
                          for m in hierarchy.groups_of(mixed)) if mixed._routed else True
        plain = _plain(mixed)
        data = _affine_data(mixed.rank, 64)
        out, ref = np.zeros_like(data), np.zeros_like(data)
        with way(mixed, "Allreduce", two_level=consecutive):
            mixed.Allreduce(data, out, AFFINE)
        plain.Allreduce(data, ref, AFFINE)
        assert np.array_equal(out, ref)
        with way(mixed, "Allreduce"):
            mixed.Allreduce(data, out, MPI.SUM)
        plain.Allreduce(data, ref, MPI.SUM)
        assert np.array_equal(out, ref)
        block = np.full(3, mixed.rank, np.int64)
        got, want = np.zeros(3 * mixed.size, np.int64), np.zeros(3 * mixed.size, np.int64)
        with way(mixed, "Allgather", two_level=consecutive):
            mixed.Allgather(block, got)
        plain.Allgather(block, want)
        assert np.array_equal(got, want)
        for root in range(mixed.size):
            buf = np.arange(10.0) * root if mixed.rank == root else np.zeros(10)
            with way(mixed, "Bcast"):
                mixed.Bcast(buf, root)
            assert np.array_equal(buf, np.arange(10.0) * root)
            with way(mixed, "reduce", two_level=consecutive):
                got = mixed.reduce(str(mixed.rank), lambda a, b: a + b, root=root)
            assert got == plain.reduce(str(mixed.rank), lambda a, b: a + b, root=root)
        with way(mixed, "allgather"):
            assert mixed.allgather(mixed.rank) == list(range(mixed.size))
    finally:
        mixed.Free()


# --- the region and the library ------------------------------------------------------

def test_inside_a_group_the_data_go_through_the_region(comm):
    """ivmpi.stats.paths shows the two levels at work: in a Bcast from a
    group's leader, every leader writes into the rings to its group's
    members and every member reads from its leader's ring, while no
    point-to-point message goes through the library; the same Bcast flat
    (two levels off) moves no ring at all."""
    pays, leads = _layout(comm)
    if not pays:
        pytest.skip("no communicator here has two levels")
    nbytes = 200_000
    # The same root on every rank: the leader of the last group.
    groups = hierarchy.groups_of(comm)
    root = groups[-1][0]
    mine = next(m for m in groups if comm.rank in m)
    leader = mine[0]

    def moved(before, after):
        """Ring bytes written to / read from each peer of this rank's group,
        and library messages to or from anyone, between two snapshots."""
        rings, library = {}, 0
        for peer, entry in after.items():
            was = before[peer]
            if entry["path"] == "region":
                rings[peer] = (entry["region"]["written"] - was["region"]["written"],
                               entry["region"]["read"] - was["region"]["read"])
            library += (entry["mpi"]["sent"][0] - was["mpi"]["sent"][0]
                        + entry["mpi"]["received"][0] - was["mpi"]["received"][0])
        return rings, library

    for two_level in (True, False):
        hierarchy.enable(comm, two_level)
        buf = np.full(nbytes, 7, np.uint8) if comm.rank == root else np.zeros(nbytes, np.uint8)
        before = stats.paths(comm)
        with way(comm, "Bcast", two_level=two_level):
            comm.Bcast(buf, root)
        rings, library = moved(before, stats.paths(comm))
        assert np.all(buf == 7)
        assert library == 0
        assert sorted(rings) == sorted(r for r in mine if r != comm.rank)
        if not two_level or len(mine) == 1:
            assert all(w == r == 0 for w, r in rings.values()), rings
        elif leads:
            # (In groups of up to 3 the leader sends to each member itself;
            # the data may sit in its heap, the rings carry the frames.)
            assert all(w > 0 for w, r in rings.values()) or len(mine) > 3, rings
            assert sum(w for w, r in rings.values()) > 0, rings
        else:
            assert rings[leader][1] > 0 or len(mine) > 3, rings
            assert sum(r for w, r in rings.values()) > 0, rings
    hierarchy.enable(comm, True)


def test_sub_communicators_are_made_once_and_freed_with_the_communicator(comm):
    dup = comm.Dup()
    dup.Bcast(np.zeros(4), 0)
    first = dup._coll.built if dup._routed else None
    dup.Allreduce(np.ones(4), np.zeros(4))
    dup.Bcast(np.zeros(4), 0)
    if dup._routed:
        assert dup._coll.built is first
    if first:
        node = first.node
        assert node.Get_size() == len(first.groups[first.mine])
        assert not node._routed
    dup.Free()
    if first:
        assert first.node is None and first.leaders is None


def test_only_some_ranks_calling_collectives_elsewhere_do_not_block(comm):
    """Communicators made but used by a subset only: the two levels are
    made in the first collective, which all members of that communicator
    call; a communicator no one uses makes none."""
    unused = comm.Dup()
    evens = comm.Split(comm.rank % 2, comm.rank)
    try:
        got = evens.allreduce(comm.rank)
        assert got == sum(r for r in range(comm.size) if r % 2 == comm.rank % 2)
        if unused._routed:
            assert unused._coll.built is None
    finally:
        unused.Free()
        evens.Free()


def test_disabled_is_flat_and_equal(comm):
    dup = comm.Dup()
    try:
        hierarchy.enable(dup, False)
        data = _values(dup.rank, 1000, "i4")
        out, ref = np.zeros_like(data), np.zeros_like(data)
        with way(dup, "Allreduce", two_level=False):
            dup.Allreduce(data, out)
        _plain(dup).Allreduce(data, ref)
        assert np.array_equal(out, ref)
        hierarchy.enable(dup, True)
        with way(dup, "Allreduce"):
            dup.Allreduce(data, out)
        assert np.array_equal(out, ref)
    finally:
        dup.Free()


def test_arguments_the_library_refuses_go_flat_on_every_rank(comm):
    """Specs that do not agree are checked before any level: every rank
    goes flat and gets the library's error, none is left waiting."""
    with way(comm, "Allreduce", two_level=False):
        with pytest.raises(ValueError):
            comm.Allreduce(np.zeros(4), np.zeros(5), MPI.SUM)
    with way(comm, "Allreduce", two_level=False):
        with pytest.raises(ValueError, match="datatypes"):
            comm.Allreduce([np.zeros(4, np.int64), MPI.INT64_T], np.zeros(4, np.int64), MPI.SUM)
    with way(comm, "Allgather", two_level=False):
        with pytest.raises(Exception):
            comm.Allgather(np.zeros(8), np.zeros(comm.size * 2))
    out = np.zeros(3)
    with way(comm, "Allreduce"):
        comm.Allreduce(np.ones(3), out, MPI.SUM)
    assert (out == comm.size).all()


def test_default_two_levels_only_where_the_groups_run_on_several_kernels(comm, monkeypatch):
    """IVMPI_HIERARCHY unset: flat where every rank runs on one kernel (the
    library's shared memory joins the groups), two levels where the groups
    run on different kernels (other machines, VMs: the library's path
    between them is a network).  Every member decides alike, from the
    kernels exchanged at start-up."""
    from ivmpi import world
    monkeypatch.setattr(hierarchy, "ENABLED", None)
    pays, _ = _layout(comm)
    data = _values(comm.rank, 1000, "i4")
    ref = np.zeros_like(data)
    _plain(comm).Allreduce(data, ref)
    one_kernel = len(set(world._kernels) - {None}) == 1
    for kernels in (None, "per group"):
        if kernels == "per group":
            # As if each group ran on a machine of its own.
            group_of = {w: g for g, members in enumerate(ivmpi.node_groups()) for w in members}
            monkeypatch.setattr(world, "_kernels",
                                [f"kernel-{group_of[w]}" for w in range(len(world._kernels))])
        dup = comm.Dup()
        try:
            out = np.zeros_like(data)
            expect = kernels == "per group" or not one_kernel
            with way(dup, "Allreduce", two_level=expect):
                dup.Allreduce(data, out)
            assert np.array_equal(out, ref)
            if hierarchy.stats(dup) is not None:
                assert hierarchy.stats(dup)["two_level"].get("Allreduce", 0) == int(pays and expect)
        finally:
            dup.Free()


def test_bare_arrays_and_other_specs_agree_with_the_library(comm):
    """C-contiguous numpy arrays are read off their dtype, every other
    argument parsed: the results are the library's either way, and what
    the library refuses goes flat on every rank."""
    plain = _plain(comm)
    rank, size = comm.rank, comm.size
    grid = _values(rank, 6 * 8 * 8, "f8").reshape(6, 8)
    out, ref = np.zeros_like(grid), np.zeros_like(grid)
    with way(comm, "Allreduce"):
        comm.Allreduce(grid, out)
    plain.Allreduce(grid, ref)
    assert np.array_equal(out, ref)
    fortran = np.asfortranarray(grid)
    out = np.asfortranarray(np.zeros_like(grid))
    with way(comm, "Allreduce"):
        comm.Allreduce(fortran, out)
    assert np.array_equal(out, ref)
    blocks = np.full((size, 3), -1, np.int64)
    with way(comm, "Allgather"):
        comm.Allgather(np.arange(3, dtype=np.int64) + 10 * rank, blocks)
    assert blocks.tolist() == [[10 * r, 10 * r + 1, 10 * r + 2] for r in range(size)]
    if comm.rank == 0:
        root_buf = np.arange(8.0)
    else:
        root_buf = np.zeros(8)
    with way(comm, "Bcast"):
        comm.Bcast(root_buf, root=0)
    assert root_buf.tolist() == list(range(8))
    # Refused alike on every rank: a strided array, two datatypes.
    with way(comm, "Bcast", two_level=False):
        with pytest.raises(Exception):
            comm.Bcast(np.zeros(8)[::2], root=0)
    with way(comm, "Allreduce", two_level=False):
        with pytest.raises(ValueError):
            comm.Allreduce(np.zeros(4), np.zeros(4, np.int64), MPI.SUM)
