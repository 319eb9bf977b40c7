"""Derived datatypes with holes in point-to-point calls (blocking,
nonblocking, persistent, matched) and collectives: the same program over
ivmpi and over mpi4py (the MPI library underneath) must give the same
arrays."""
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
    nested = col.Create_hvector(2, 1, 8).Commit()          # two interleaved columns
    darray = native.DOUBLE.Create_darray(4, 1, [4, 4], [native.DISTRIBUTE_BLOCK,
                                                         native.DISTRIBUTE_CYCLIC],
                                         [native.DISTRIBUTE_DFLT_DARG, 2], [2, 2]).Commit()
    return {"column": col, "indexed": every_other, "subarray": sub, "resized": wide,
            "struct": pair, "nested": nested, "darray": darray}


KINDS = ["column", "indexed", "subarray", "resized", "struct", "nested", "darray"]


def _program(comm, MPI_, kind):
    types = _types()
    datatype = types[kind]
    rank, size = comm.rank, comm.size
    right, left = (rank + 1) % size, (rank - 1) % size
    base = np.arange(48, dtype="f8") + 1000 * rank
    if kind == "resized":
        base = np.arange(48, dtype="i4") + 1000 * rank
    results = []
    # Sendrecv around the ring, holes on both sides.
    out = np.full_like(base, -1)
    comm.Sendrecv([base, 2, datatype], right, 3, [out, 2, datatype], left, 3)
    results.append(out.copy())
    # Bcast from the last rank.
    buf = base.copy() if rank == size - 1 else np.full_like(base, -1)
    comm.Bcast([buf, 1, datatype], root=size - 1)
    results.append(buf)
    # Send with holes, receive packed; send packed, receive with holes.
    n = datatype.Get_size() // base.itemsize
    packed = np.full(n, -1, dtype=base.dtype)
    status = MPI_.Status()
    if rank == 0:
        comm.Send([base, 1, datatype], 1, 4)
        comm.Send(np.arange(n, dtype=base.dtype) * 7, 1, 5)
    elif rank == 1:
        comm.Recv([packed, n, MPI_._typedict[base.dtype.char]], 0, 4)
        target = np.full_like(base, -1)
        comm.Recv([target, 1, datatype], 0, 5, status)
        results += [packed, target, np.array([status.Get_count(datatype),
                                              status.Get_count(MPI_._typedict[base.dtype.char])])]
    # Nonblocking receive, Isendrecv, Sendrecv_replace, persistent requests
    # whose data change between starts, a matched probe.
    out = np.full_like(base, -1)
    req = comm.Irecv([out, 1, datatype], left, 6)
    comm.Send([base, 1, datatype], right, 6)
    req.Wait(status)
    results += [out.copy(), np.array([status.Get_count(datatype)])]
    out = np.full_like(base, -1)
    comm.Isendrecv([base, 1, datatype], right, 7, [out, 1, datatype], left, 7).Wait()
    results.append(out.copy())
    swap = base.copy()
    comm.Sendrecv_replace([swap, 1, datatype], right, 8, left, 8)
    results.append(swap)
    out = np.full_like(base, -1)
    data = base.copy()
    sreq = comm.Send_init([data, 1, datatype], right, 9)
    rreq = comm.Recv_init([out, 1, datatype], left, 9)
    for round_ in range(3):
        data[:] = base + 100 * round_
        MPI_.Prequest.Startall([rreq, sreq])
        MPI_.Request.Waitall([rreq, sreq])
        results.append(out.copy())
    sreq.Free()
    rreq.Free()
    comm.Isend([base, 1, datatype], right, 10).Wait()
    out = np.full_like(base, -1)
    comm.Mprobe(left, 10).Irecv([out, 1, datatype]).Wait()
    results.append(out.copy())
    for t in types.values():
        t.Free()
    return results


def _collectives(comm, MPI_, kind):
    """The collectives that move data without reducing it (Open MPI refuses
    derived datatypes in reductions, so those are checked separately)."""
    types = _types()
    datatype = types[kind]
    rank, size = comm.rank, comm.size
    extent = datatype.Get_extent()[1]
    dtype = "i4" if kind == "resized" else "f8"
    itemsize = np.dtype(dtype).itemsize
    # Room for `size` elements of the type, plus its reach past one extent.
    length = (size * extent + datatype.Get_true_extent()[1]) // itemsize + 1
    mine = np.arange(length, dtype=dtype) + 1000 * (rank + 1)
    results = []

    def fresh():
        return np.full(length, -1, dtype=dtype)
    out = fresh()
    comm.Allgather([mine, 1, datatype], [out, 1, datatype])
    results.append(out)
    out = fresh()
    comm.Gather([mine, 1, datatype], [out, 1, datatype], root=size - 1)
    results.append(out)
    out = fresh()
    comm.Scatter([mine, 1, datatype], [out, 1, datatype], root=0)
    results.append(out)
    out = fresh()
    comm.Alltoall([mine, 1, datatype], [out, 1, datatype])
    results.append(out)
    counts, displs = [1] * size, list(range(size))[::-1]
    out = fresh()
    comm.Allgatherv([mine, 1, datatype], [out, (counts, displs), datatype])
    results.append(out)
    out = fresh()
    comm.Gatherv([mine, 1, datatype], [out, (counts, displs), datatype], root=0)
    results.append(out)
    out = fresh()
    comm.Scatterv([mine, (counts, displs), datatype], [out, 1, datatype], root=size - 1)
    results.append(out)
    out = fresh()
    comm.Alltoallv([mine, (counts, displs), datatype], [out, (counts, list(range(size))),
                                                          datatype])
    results.append(out)
    out = mine.copy()
    comm.Allgather(MPI_.IN_PLACE, [out, 1, datatype])
    results.append(out)
    for t in types.values():
        t.Free()
    return results


def _same(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (mine, expected) in enumerate(zip(ours, theirs)):
        assert np.array_equal(mine, expected), (i, mine, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_holes_match_mpi4py(comm, kind):
    ours = _program(comm, MPI, kind)
    reference = native.COMM_WORLD.Dup()
    theirs = _program(reference, native, kind)
    reference.Free()
    _same(ours, theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_collectives_with_holes_match_mpi4py(comm, kind):
    ours = _collectives(comm, MPI, kind)
    reference = native.COMM_WORLD.Dup()
    theirs = _collectives(reference, native, kind)
    reference.Free()
    _same(ours, theirs)


def test_reductions_over_a_column(comm):
    """A column reduced element by element, in place too, and scanned: the
    library reduces a contiguous copy for the reference."""
    rank, size = comm.rank, comm.size
    col = native.DOUBLE.Create_vector(5, 1, 4).Create_resized(0, 8).Commit()
    a = np.arange(20.0).reshape(5, 4) * (rank + 1) + rank
    out = np.full((5, 4), -1.0)
    comm.Allreduce([a, (1, 1), col], [out, (1, 2), col], op=MPI.SUM)
    tmp = np.zeros(5)
    native.COMM_WORLD.Allreduce(a[:, 1].copy(), tmp, op=native.SUM)
    assert np.array_equal(out[:, 2], tmp)
    assert (out[:, [0, 1, 3]] == -1).all()      # the holes are left alone
    inplace = a.copy()
    comm.Allreduce(MPI.IN_PLACE, [inplace, (1, 3), col], op=MPI.MAX)
    native.COMM_WORLD.Allreduce(a[:, 3].copy(), tmp, op=native.MAX)
    assert np.array_equal(inplace[:, 3], tmp)
    assert np.array_equal(inplace[:, :3], a[:, :3])
    out[:] = -1
    comm.Scan([a, 1, col], [out, 1, col])
    native.COMM_WORLD.Scan(a[:, 0].copy(), tmp)
    assert np.array_equal(out[:, 0], tmp)
    out[:] = -1
    comm.Reduce([a, 1, col], [out, 1, col] if rank == 0 else None, root=0)
    native.COMM_WORLD.Reduce(a[:, 0].copy(), tmp, root=0)
    if rank == 0:
        assert np.array_equal(out[:, 0], tmp)
    col.Free()


def test_receive_too_small_for_the_type_is_refused(comm):
    """A receive whose datatype reaches past the buffer is refused before
    anything is posted, blocking or not."""
    col = native.DOUBLE.Create_vector(4, 1, 4).Commit()
    for call in (lambda: comm.Irecv([np.zeros(12), 1, col], comm.rank, 9),
                 lambda: comm.Recv_init([np.zeros(12), 1, col], comm.rank, 9)):
        with pytest.raises(ValueError, match="reach"):
            call()
    col.Free()


def test_blocking_alltoallw_with_holes_matches_the_library(comm):
    results = []
    for c in (comm, native.COMM_WORLD):
        n, r = c.Get_size(), c.Get_rank()
        send = np.arange(n * 4, dtype="f8") + 100 * r
        recv = np.full(n * 4, -1.0)
        every_other = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
        displs = [32 * i for i in range(n)]
        c.Alltoallw([send, [1] * n, displs, [every_other] * n],
                    [recv, [1] * n, displs, [every_other] * n])
        every_other.Free()
        results.append(recv)
    assert (results[0] == results[1]).all()
    assert (results[0][1::2] == -1.0).all()      # the holes stay untouched


def _short_messages(comm, MPI_):
    """Messages shorter than the receive: whole elements, and one and a
    half elements, by every receive path; the rest of the buffer keeps its
    values, and the counts are MPI's."""
    rank, results = comm.rank, []
    col = MPI_.DOUBLE.Create_vector(3, 1, 3).Commit()
    pair = MPI_.DOUBLE.Create_vector(2, 1, 2).Commit()      # 2 doubles, one hole
    if rank == 0:
        a = np.arange(18.0)
        for tag in (1, 2, 3, 4):
            comm.Send([a, 1, col], 1, tag)
        comm.Send([a, 3, MPI_.DOUBLE], 1, 5)                  # 1.5 elements of pair
        comm.Send([a, 3, MPI_.DOUBLE], 1, 6)
    elif rank == 1:
        outs = [np.full(18, -1.0) for _ in range(6)]
        statuses = [MPI_.Status() for _ in range(6)]
        pending = comm.Irecv([outs[0], 2, col], 0, 1)       # posted before it arrives
        partial = comm.Irecv([outs[5], 2, pair], 0, 6)
        comm.Barrier()
        pending.Wait(statuses[0])
        comm.Recv([outs[1], 2, col], 0, 2, statuses[1])
        comm.Probe(0, 3)                                     # already in the ring
        comm.Recv([outs[2], 2, col], 0, 3, statuses[2])
        comm.Sendrecv([np.zeros(0), 0, MPI_.DOUBLE], MPI_.PROC_NULL, 0,
                      [outs[3], 2, col], 0, 4, statuses[3])
        comm.Recv([outs[4], 2, pair], 0, 5, statuses[4])
        partial.Wait(statuses[5])
        results += outs
        results.append(np.array([s.Get_count(col) for s in statuses[:4]]))
        results.append(np.array([[s.Get_count(pair) == MPI_.UNDEFINED,
                                  s.Get_elements(MPI_.DOUBLE)] for s in statuses[4:]]))
    if rank != 1:
        comm.Barrier()
    col.Free()
    pair.Free()
    return results


def test_short_messages_leave_the_rest_of_the_buffer_alone(comm):
    _same(_short_messages(comm, MPI), _short_messages(native.COMM_WORLD, native))


def test_small_messages_with_holes_skip_the_staging_copy(comm, monkeypatch):
    """An eager message with a derived datatype is gathered straight into
    the ring and scattered straight out of it: the general path's packed
    staging buffer (buffers._packed) is never made."""
    from ivmpi import buffers

    def refuse(*args, **kwargs):
        raise AssertionError("a packed staging copy was made")
    monkeypatch.setattr(buffers, "_packed", refuse)
    rank, size = comm.rank, comm.size
    right, left = (rank + 1) % size, (rank - 1) % size
    column = MPI.DOUBLE.Create_vector(64, 1, 64).Create_resized(0, 8).Commit()
    face = MPI.DOUBLE.Create_subarray([8, 8, 8], [8, 8, 1], [0, 0, 7]).Commit()
    mixed = MPI.Datatype.Create_struct([1, 2], [0, 12], [MPI.INT32_T, MPI.INT32_T]).Commit()
    grid = np.arange(64 * 64, dtype="f8").reshape(64, 64) + 10000 * rank
    cube = np.arange(512, dtype="f8").reshape(8, 8, 8) + 10000 * rank
    ints = np.arange(40, dtype="i4") + 1000 * rank
    for spec_out, spec_in, check in (
            ([grid, (1, 3), column], None, lambda got: got[:, 5] == grid[:, 3] - 10000 * rank
             + 10000 * left),
            ([cube, 1, face], None, lambda got: got[..., 7] == cube[..., 7] - 10000 * rank
             + 10000 * left),
            ([ints, 2, mixed], None, lambda got: got[[0, 3, 4, 5, 8, 9]] ==
             ints[[0, 3, 4, 5, 8, 9]] - 1000 * rank + 1000 * left)):
        out = np.full_like(spec_out[0], -1)
        into = [out] + list(spec_out[1:])
        if spec_out[2] is column:
            into = [out, (1, 5), column]
        comm.Send(spec_out, right, 8)
        comm.Probe(left, 8)
        status = MPI.Status()
        comm.Recv(into, left, 8, status)
        # A nonblocking receive too, posted before the message comes.
        again = np.full_like(spec_out[0], -1)
        request = comm.Irecv([again] + into[1:], left, 10)
        comm.Barrier()
        comm.Send(spec_out, right, 10)
        request.Wait()
        assert np.array_equal(again, out)
        assert check(out).all()
        assert status.Get_count(spec_out[2]) == (spec_out[1] if type(spec_out[1]) is int else 1)
        # Everything outside the elements stays as it was.
        assert (out[out != -1].size == spec_out[2].Get_size() // out.itemsize
                * (spec_out[1] if type(spec_out[1]) is int else 1))
    for t in (column, face, mixed):
        t.Free()


def test_a_freed_datatype_handle_reused_by_a_new_type_gets_the_new_layout(comm):
    """The fast paths keep each type's copy plan; a new type that the
    library gives a freed type's handle must not be copied by the old plan."""
    rank, size = comm.rank, comm.size
    right, left = (rank + 1) % size, (rank - 1) % size
    data = np.arange(32.0) + 100 * rank
    for stride in (2, 3, 4, 5):
        t = MPI.DOUBLE.Create_vector(4, 1, stride).Commit()
        out = np.full(32, -1.0)
        comm.Sendrecv([data, 1, t], right, 9, [out, 1, t], left, 9)
        picked = np.arange(4) * stride
        assert np.array_equal(out[picked], data[picked] - 100 * rank + 100 * left)
        assert (np.delete(out, picked) == -1).all()
        t.Free()


def _large(comm, MPI_):
    """Messages with holes over the eager limit, by every pairing of
    blocking and nonblocking calls, around the ring of ranks."""
    rank, size = comm.rank, comm.size
    right, left = (rank + 1) % size, (rank - 1) % size
    every_third = MPI_.DOUBLE.Create_vector(12000, 1, 3).Commit()     # 96 kB of data
    face = MPI_.DOUBLE.Create_subarray([96, 96, 8], [96, 96, 1], [0, 0, 5]).Commit()
    grid = np.arange(36000.0) + 1e6 * rank
    cube = np.arange(96 * 96 * 8.0).reshape(96, 96, 8) + 1e6 * rank
    results = []
    for datatype, data in ((every_third, grid), (face, cube)):
        out = np.full_like(data, -1)
        comm.Sendrecv([data, 1, datatype], right, 1, [out, 1, datatype], left, 1)
        results.append(out)
        out = np.full_like(data, -1)
        if rank % 2 == 0:
            comm.Send([data, 1, datatype], right, 2)
            comm.Recv([out, 1, datatype], left, 2)
        else:
            request = comm.Irecv([out, 1, datatype], left, 2)
            comm.Send([data, 1, datatype], right, 2)
            request.Wait()
        results.append(out)
        out = np.full_like(data, -1)
        request = comm.Isend([data, 1, datatype], right, 3)
        status = MPI_.Status()
        comm.Recv([out, 1, datatype], left, 3, status)
        request.Wait()
        results += [out, np.array([status.Get_count(datatype), status.Get_source()])]
    every_third.Free()
    face.Free()
    return results


def test_large_messages_with_holes_match_mpi4py(comm):
    ours = _large(comm, MPI)
    reference = native.COMM_WORLD.Dup()
    theirs = _large(reference, native)
    reference.Free()
    _same(ours, theirs)


def test_large_blocking_sends_with_holes_skip_the_staging_copy(comm, monkeypatch):
    """A blocking send with holes over the eager limit is gathered into
    the region's heap, not into a private packed copy first."""
    from ivmpi import buffers
    rank, size = comm.rank, comm.size
    every_third = MPI.DOUBLE.Create_vector(12000, 1, 3).Commit()
    data = np.arange(36000.0) + 1e6 * rank
    out = np.full_like(data, -1)
    real_packed = buffers._packed

    def receive_side_only(buf, mem, origin, writable, *args, **kwargs):
        assert writable, "a send was packed into a private copy"
        return real_packed(buf, mem, origin, writable, *args, **kwargs)
    monkeypatch.setattr(buffers, "_packed", receive_side_only)
    comm.Sendrecv([data, 1, every_third], (rank + 1) % size, 4,
                  [out, 1, every_third], (rank - 1) % size, 4)
    assert np.array_equal(out[::3], data[::3] + 1e6 * ((rank - 1) % size - rank))
    assert (out[1::3] == -1).all()
    every_third.Free()
