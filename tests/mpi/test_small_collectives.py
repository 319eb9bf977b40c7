"""The one-call Barrier and small Allreduce of the communicator, against Open MPI.

Small numpy reductions with SUM/PROD/MAX/MIN on float64/float32/int64/int32
take a Cython path on power-of-two communicators; everything else takes the
general algorithm.  Both must give mpi4py's answers, and every rank must get
bit-identical results.
"""
import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=1)

NATIVE = _native.COMM_WORLD
OPS = ["SUM", "PROD", "MAX", "MIN"]
DTYPES = ["f8", "f4", "i8", "i4", "u4", "i2"]      # the last two take the general path


def values(dtype, n, rank):
    rng = np.random.default_rng(1234 + rank)
    if np.dtype(dtype).kind == "f":
        return (rng.random(n) * 4 - 2).astype(dtype)
    return rng.integers(-3 if np.dtype(dtype).kind == "i" else 0, 4, n).astype(dtype)


def assert_same_reduction(ours, theirs, dtype, opname):
    if np.dtype(dtype).kind == "f" and opname in ("SUM", "PROD"):
        # Another association order: float32 sums that cancel differ in
        # their last bits, so an absolute tolerance too.
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(ours, theirs)


every_reduction = pytest.mark.parametrize("dtype, opname, n", [
    (dtype, opname, n) for dtype in DTYPES for opname in OPS for n in (1, 8, 1000)])


@every_reduction
def test_allreduce_matches_open_mpi(comm, dtype, opname, n):
    op = getattr(MPI, opname)
    send = values(dtype, n, comm.rank)
    ours = np.empty_like(send)
    comm.Allreduce(send, ours, op=op)
    theirs = np.empty_like(send)
    NATIVE.Allreduce(send, theirs, op=getattr(_native, opname))
    assert_same_reduction(ours, theirs, dtype, opname)
    # Every rank holds exactly the same bits.
    everyone = NATIVE.allgather(ours.tobytes())
    assert all(b == everyone[0] for b in everyone)


@pytest.mark.parametrize("opname", OPS)
def test_allreduce_in_place(comm, opname):
    buf = values("f8", 16, comm.rank)
    expected = np.empty_like(buf)
    NATIVE.Allreduce(buf, expected, op=getattr(_native, opname))
    comm.Allreduce(MPI.IN_PLACE, buf, op=getattr(MPI, opname))
    np.testing.assert_allclose(buf, expected, rtol=1e-12)


def test_signed_zeros_and_nans_give_identical_bits_everywhere(comm):
    buf = np.array([0.0 if comm.rank % 2 else -0.0, np.nan if comm.rank == 0 else 1.0, 3.0])
    for op in (MPI.MAX, MPI.MIN, MPI.SUM):
        out = np.empty_like(buf)
        comm.Allreduce(buf, out, op=op)
        everyone = NATIVE.allgather(out.tobytes())
        assert all(b == everyone[0] for b in everyone)


def test_integer_sums_wrap_like_open_mpi(comm):
    send = np.array([2**62, -(2**62), 2**31 - 1], dtype="i8")
    ours, theirs = np.empty_like(send), np.empty_like(send)
    comm.Allreduce(send, ours, op=MPI.SUM)
    NATIVE.Allreduce(send, theirs, op=_native.SUM)
    np.testing.assert_array_equal(ours, theirs)


def test_mismatched_buffers_still_get_mpi4pys_errors(comm):
    with pytest.raises(Exception):
        comm.Allreduce(np.zeros(4, "f8"), np.zeros(5, "f8"), op=MPI.SUM)
    comm.Barrier()
    out = np.zeros(2)
    comm.Allreduce(np.ones(2), out, op=MPI.SUM)
    assert (out == comm.size).all()


def test_barrier_orders_the_ranks(comm):
    # Nobody leaves round k's barrier before everyone entered it: a value
    # written before the barrier is visible to everyone after it.
    for k in range(20):
        token = comm.bcast(k if comm.rank == 0 else None)
        comm.Barrier()
        assert token == k
    got = []
    for k in range(5):
        if comm.rank == k % comm.size:
            for dest in range(comm.size):
                if dest != comm.rank:
                    comm.send(k, dest, tag=50)
        comm.Barrier()
        flag = comm.Iprobe(MPI.ANY_SOURCE, 50)
        if comm.rank != k % comm.size and comm.size > 1:
            assert flag      # the message sent before the barrier is already here
            got.append(comm.recv(source=k % comm.size, tag=50))
        comm.Barrier()
    assert got == [k for k in range(5) if comm.rank != k % comm.size]


def test_allreduce_buffers_of_different_shapes_but_equal_counts(comm):
    send = values("f8", 8, comm.rank).reshape(2, 4)
    ours, theirs = np.empty(8), np.empty(8)
    comm.Allreduce(send, ours, op=MPI.MAX)
    NATIVE.Allreduce(send, theirs, op=_native.MAX)
    np.testing.assert_array_equal(ours, theirs)


def test_allreduce_list_specs_and_their_errors_as_in_mpi4py(comm):
    # A list spec takes the general path; it must agree with mpi4py, errors included.
    buf = values("i8", 6, comm.rank)
    recv, expected = np.empty(6, "i8"), np.empty(6, "i8")
    NATIVE.Allreduce(buf, expected, op=_native.SUM)
    comm.Allreduce([buf, MPI.LONG], recv, op=MPI.SUM)
    np.testing.assert_array_equal(recv, expected)
    with pytest.raises(ValueError, match="mismatch in send and receive MPI datatypes"):
        NATIVE.Allreduce([buf, _native.INT64_T], recv, op=_native.SUM)
    with pytest.raises(ValueError, match="mismatch in send and receive MPI datatypes"):
        comm.Allreduce([buf, MPI.INT64_T], recv, op=MPI.SUM)
    comm.Barrier()


def _bcast_buffer(kind, n, fill):
    data = np.full(n, fill, dtype="f8")
    if kind == "array":
        return data, data
    if kind == "count spec":
        big = np.concatenate([data, np.full(3, -7.0)])
        return [big, n, MPI.DOUBLE], big[:n]
    if kind == "memoryview":
        return memoryview(data), data
    raw = bytearray(data.tobytes())
    return raw, np.frombuffer(raw, dtype="f8")


KINDS = ["array", "count spec", "memoryview", "bytearray"]


@pytest.mark.parametrize("n", [0, 1, 8, 8191, 8192, 8193, 100000])
def test_bcast_every_root_mixing_buffer_kinds(comm, n):
    """Small broadcasts take one Cython call each, larger ones the general
    tree; ranks whose buffer specs differ may take different paths and
    must still agree (same tag, same tree)."""
    for root in range(comm.size):
        kind = KINDS[(comm.rank + root) % len(KINDS)]
        spec, view = _bcast_buffer(kind, n, root + 0.5 if comm.rank == root else -1.0)
        comm.Bcast(spec, root=root)
        assert (view == root + 0.5).all(), (root, kind)
        expected = np.full(n, root + 0.5)
        theirs = expected if NATIVE.rank == root else np.zeros(n)
        NATIVE.Bcast(theirs, root=root)
        assert np.array_equal(view, theirs)
    if kind == "count spec":
        assert (spec[0][n:] == -7.0).all()      # past the count: untouched


def test_bcast_errors_as_in_mpi4py(comm):
    buf = np.zeros(4)
    for bad_root in (comm.size, -1):
        with pytest.raises(MPI.Exception) as excinfo:
            comm.Bcast(buf, root=bad_root)
        assert excinfo.value.Get_error_class() == MPI.ERR_ROOT
    # Nothing was sent: the next broadcast is clean.
    buf[:] = comm.rank
    comm.Bcast(buf, root=0)
    assert (buf == 0).all()


@every_reduction
def test_reduce_matches_open_mpi_at_every_root(comm, dtype, opname, n):
    op = getattr(MPI, opname)
    send = values(dtype, n, comm.rank)
    for root in range(comm.size):
        ours = np.full_like(send, 99) if comm.rank == root else None
        comm.Reduce(send, ours, op=op, root=root)
        theirs = np.empty_like(send) if comm.rank == root else None
        NATIVE.Reduce(send, theirs, op=getattr(_native, opname), root=root)
        if comm.rank == root:
            assert_same_reduction(ours, theirs, dtype, opname)


def test_reduce_in_place_and_mixed_paths(comm):
    """IN_PLACE at the root; ranks passing [buf, datatype] specs take the
    general path while the others take the one-call path, and they agree."""
    n = 16
    for root in range(comm.size):
        mine = np.arange(n, dtype="f8") * (comm.rank + 1)
        if comm.rank == root:
            result = mine.copy()
            comm.Reduce(MPI.IN_PLACE, result, op=MPI.SUM, root=root)
        else:
            spec = [mine, MPI.DOUBLE] if comm.rank % 2 else mine
            comm.Reduce(spec, None, op=MPI.SUM, root=root)
        if comm.rank == root:
            factor = comm.size * (comm.size + 1) / 2
            np.testing.assert_array_equal(result, np.arange(n) * factor)
    with pytest.raises(MPI.Exception) as excinfo:
        comm.Reduce(np.zeros(2), np.zeros(2), op=MPI.SUM, root=comm.size)
    assert excinfo.value.Get_error_class() == MPI.ERR_ROOT


@pytest.mark.parametrize("n", [7, 8191, 8192])     # 8192 doubles: the eager limit, 64 KiB
def test_reduce_up_to_the_eager_limit_combines_as_the_general_path(comm, n):
    """The one-call Reduce combines each message straight out of the ring:
    the same bits as the general algorithm at the root, IN_PLACE or not,
    with some ranks on the general path, and Open MPI's sums."""
    for root in range(comm.size):
        at_root = comm.rank == root
        send = values("f8", n, comm.rank + root)
        ours = np.full(n, 99.0) if at_root else None
        comm.Reduce(send, ours, op=MPI.SUM, root=root)
        general = np.full(n, 98.0) if at_root else None
        comm._collectives.Reduce(send, general, MPI.SUM, root)
        mixed = send.copy() if at_root else None
        if at_root:
            comm.Reduce(MPI.IN_PLACE, mixed, op=MPI.SUM, root=root)
        else:
            comm.Reduce([send, MPI.DOUBLE] if comm.rank % 2 else send, None, op=MPI.SUM,
                        root=root)
        theirs = np.empty(n) if at_root else None
        NATIVE.Reduce(send, theirs, op=_native.SUM, root=root)
        maxed = np.empty(n) if at_root else None
        comm.Reduce(send, maxed, op=MPI.MAX, root=root)
        if at_root:
            assert ours.view("u8").tolist() == general.view("u8").tolist()
            assert mixed.view("u8").tolist() == general.view("u8").tolist()
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
            expect = np.max([values("f8", n, r + root) for r in range(comm.size)], axis=0)
            np.testing.assert_array_equal(maxed, expect)
        assert send.tolist() == values("f8", n, comm.rank + root).tolist()   # input untouched


@pytest.mark.parametrize("n", [32768, 131075])     # 256 KiB; 1 MiB and uneven blocks
def test_large_reduce_combines_in_rank_order_on_either_path(comm, n):
    """From 256 KiB Reduce reduce-scatters in streamed segments, each rank
    combining its block in rank order, x0 + (x1 + (... + xp-1)), then
    gathers at the root: those bits at every root, IN_PLACE or not, with
    odd ranks on the general path (the same messages), and Open MPI's sums."""
    p = comm.size
    for root in range(p):
        at_root = comm.rank == root
        xs = [values("f8", n, r + 7 * root) for r in range(p)]
        expect = xs[p - 1].copy()
        for j in range(p - 2, -1, -1):
            expect = xs[j] + expect
        send = xs[comm.rank].copy()
        general = comm._collectives if comm.rank % 2 else comm
        ours = np.full(n, 99.0) if at_root else None
        comm.Reduce(send, ours, op=MPI.SUM, root=root)
        mixed = send.copy() if at_root else None
        general.Reduce(MPI.IN_PLACE if at_root else send, mixed, op=MPI.SUM, root=root)
        ints = values("i8", n, comm.rank) * (root + 1)
        int_max = np.empty_like(ints) if at_root else None
        general.Reduce(ints, int_max, op=MPI.MAX, root=root)
        theirs = np.empty(n) if at_root else None
        NATIVE.Reduce(send, theirs, op=_native.SUM, root=root)
        if at_root:
            assert ours.view("u8").tolist() == expect.view("u8").tolist()
            assert mixed.view("u8").tolist() == expect.view("u8").tolist()
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
            every = [values("i8", n, r) * (root + 1) for r in range(p)]
            np.testing.assert_array_equal(int_max, np.max(every, axis=0))
        assert send.tolist() == xs[comm.rank].tolist()       # the input is untouched


@pytest.mark.parametrize("per_rank", [1, 3, 8192, 8193])
@pytest.mark.parametrize("in_place", [False, True])
def test_allgather_and_alltoall_mixing_paths(comm, per_rank, in_place):
    """numpy arrays take the one-call path up to the eager limit per block;
    odd ranks call the general one; both agree with Open MPI."""
    size, rank = comm.size, comm.rank
    general = rank % 2 == 1

    def spec(arr):
        return [arr, "d"] if general else arr  # a type character

    def check(name, outgoing, got):
        """Run collective `name` with our spec (IN_PLACE: `got` holds the
        input), odd ranks through the general algorithm."""
        getattr(comm._collectives if general else comm, name)(
            MPI.IN_PLACE if in_place else spec(outgoing), spec(got))
        theirs = np.empty_like(got)
        getattr(NATIVE, name)(outgoing, theirs)
        assert np.array_equal(got, theirs), name

    mine = np.arange(per_rank, dtype="f8") + 1000 * rank
    got = np.full(size * per_rank, -1.0)
    if in_place:
        got[rank * per_rank:(rank + 1) * per_rank] = mine
    check("Allgather", mine, got)
    outgoing = np.arange(size * per_rank, dtype="f8") + 1000 * rank
    check("Alltoall", outgoing, outgoing.copy() if in_place else np.full(size * per_rank, -1.0))


@pytest.mark.parametrize("per_rank", [1, 8192, 8193])
@pytest.mark.parametrize("in_place", [False, True])
def test_gather_and_scatter_mixing_paths(comm, per_rank, in_place):
    """Every root; odd ranks call the general algorithm with [buf, typechar]
    specs, the others numpy arrays (one call up to the eager limit per
    block)."""
    size, rank = comm.size, comm.rank

    def spec(arr):
        return [arr, "d"] if rank % 2 else arr  # a type character

    # Odd ranks call the general algorithm.
    coll = comm._collectives if rank % 2 else comm

    for root in range(size):
        mine = np.arange(per_rank, dtype="f8") + 1000 * rank + root
        whole = np.full(size * per_rank, -1.0) if rank == root else None
        if rank == root and in_place:
            whole[root * per_rank:(root + 1) * per_rank] = mine
            coll.Gather(MPI.IN_PLACE, spec(whole), root=root)
        else:
            coll.Gather(spec(mine), None if whole is None else spec(whole), root=root)
        theirs = np.empty(size * per_rank) if rank == root else None
        NATIVE.Gather(mine, theirs, root=root)
        if rank == root:
            assert np.array_equal(whole, theirs), root

        outgoing = np.arange(size * per_rank, dtype="f8") * (root + 1) if rank == root else None
        got = np.full(per_rank, -1.0)
        if rank == root and in_place:
            coll.Scatter(spec(outgoing), MPI.IN_PLACE, root=root)
            got = outgoing[root * per_rank:(root + 1) * per_rank]
        else:
            coll.Scatter(None if outgoing is None else spec(outgoing), spec(got), root=root)
        theirs = np.empty(per_rank)
        NATIVE.Scatter(outgoing, theirs, root=root)
        assert np.array_equal(got, theirs), root


@pytest.mark.parametrize("nbytes", [1, 1000, 70000, 1 << 20])
def test_object_collectives_mixing_paths(comm, nbytes):
    """gather, scatter, allgather and alltoall of objects take one Cython
    call each (bound to the communicator); odd ranks call the class's
    methods (the general algorithm) instead: the same messages, so the
    ranks agree, and with Open MPI.  Pickles over the eager limit go
    out of the sender's heap on either path."""
    size, rank = comm.size, comm.rank
    general = rank % 2 == 1

    def call(name, *args, **kwargs):
        if general:
            return getattr(type(comm), name)(comm, *args, **kwargs)
        return getattr(comm, name)(*args, **kwargs)

    def payload(*key):
        return (key, bytes([sum(key) % 256]) * (nbytes if sum(key) % 3 else 3))

    for round in range(2):      # the heap's staging buffer is reused
        mine = payload(rank, round)
        got = call("allgather", mine)
        assert got == NATIVE.allgather(mine)
        assert got[rank] == mine and got[rank] is not mine
        items = [payload(rank, i, round) for i in range(size)]
        assert call("alltoall", items) == NATIVE.alltoall(items)
        assert call("alltoall", None) == NATIVE.alltoall(None)
        for root in range(size):
            assert call("gather", mine, root=root) == NATIVE.gather(mine, root=root)
            sent = [payload(root, i, round) for i in range(size)] if rank == root else None
            assert call("scatter", sent, root=root) == NATIVE.scatter(sent, root=root)
            assert call("scatter", None, root=root) == NATIVE.scatter(None, root=root)


def test_object_collectives_errors_as_in_mpi4py(comm):
    for name, args in (("gather", ("x",)), ("scatter", (None,))):
        for bad_root in (comm.size, -1):
            with pytest.raises(MPI.Exception) as excinfo:
                getattr(comm, name)(*args, root=bad_root)
            assert excinfo.value.Get_error_class() == MPI.ERR_ROOT
    for name in ("alltoall", "scatter"):
        # A list of the wrong length: mpi4py's ValueError, before anything is sent.
        with pytest.raises(ValueError):
            if name == "alltoall":
                comm.alltoall([0] * (comm.size + 1))
            else:
                comm.scatter([0] * (comm.size + 1), root=comm.rank)
    assert comm.allgather(comm.rank) == list(range(comm.size))


# --- displaced spec forms ---------------------------------------------------------------

def _displaced(form, buf, count, displ, datatype):
    """mpi4py's two spellings of a spec with a displacement."""
    if form == "tuple":
        return [buf, (count, displ), datatype]
    return [buf, count, displ, datatype]


@pytest.fixture
def general_calls(comm, monkeypatch):
    """Names of the collectives the one-call paths handed to the general
    algorithm, on a communicator that has them (not one spanning groups,
    whose collectives are the library's)."""
    calls = []
    if comm._shared is None:
        return None
    general = comm._collectives
    for name in ("Bcast", "Allgather", "Allreduce", "Reduce", "Gather", "Scatter",
                 "Reduce_scatter_block", "Reduce_scatter", "Gatherv", "Scatterv", "Allgatherv",
                 "Alltoallv"):
        def counted(*args, _method=getattr(general, name), _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)
        monkeypatch.setattr(general, name, counted)
    return calls


@pytest.mark.parametrize("form", ["tuple", "four"])
def test_displaced_specs_take_the_one_call_paths(comm, form, general_calls):
    """[buf, (count, displ), datatype] and [buf, count, displ, datatype]
    name count elements from element displ: the small collectives take
    them in one call, as they take the other forms, touch nothing outside
    them, and give Open MPI's results."""
    size, rank = comm.size, comm.rank

    def ours(buf, count, displ, datatype):
        return _displaced(form, buf, count, displ, datatype)

    def both(make, call):
        """The call on ivmpi and on Open MPI with the same spec shapes."""
        mine = make(MPI.DOUBLE)
        ref = make(_native.DOUBLE)
        call(comm, mine, MPI)
        call(NATIVE, ref, _native)
        return mine, ref

    for root in range(size):
        def bcast_bufs(dt):
            buf = np.full(10, -1.0)
            if rank == root:
                buf[3:7] = np.arange(4) + root
            return buf, dt
        (mine, _), (ref, _) = both(
            bcast_bufs, lambda c, b, lib: c.Bcast(ours(b[0], 4, 3, b[1]), root=root))
        assert np.array_equal(mine, ref)
        assert (mine[:3] == -1).all() and (mine[7:] == -1).all()

        def reduce_bufs(dt):
            return np.arange(6.0) * (rank + 1), np.full(8, -1.0), dt
        (s, out, _), (_, ref, _) = both(
            reduce_bufs, lambda c, b, lib: c.Reduce(ours(b[0], 3, 2, b[2]),
                                                    ours(b[1], 3, 4, b[2]), lib.SUM, root))
        if rank == root:
            assert np.array_equal(out, ref)
            assert (out[:4] == -1).all() and out[7] == -1

    def allreduce_bufs(dt):
        return np.arange(6.0) + rank, np.full(8, -1.0), dt
    (_, out, _), (_, ref, _) = both(
        allreduce_bufs, lambda c, b, lib: c.Allreduce(ours(b[0], 3, 1, b[2]),
                                                      ours(b[1], 3, 5, b[2]), lib.SUM))
    assert np.array_equal(out, ref)
    assert (out[:5] == -1).all()

    def allgather_bufs(dt):
        return np.array([rank + 0.5, rank + 0.25, 9.0]), np.full(2 * size + 3, -1.0), dt
    (_, out, _), (_, ref, _) = both(
        allgather_bufs, lambda c, b, lib: c.Allgather(ours(b[0], 2, 0, b[2]),
                                                      ours(b[1], 2, 3, b[2])))
    assert np.array_equal(out, ref)
    assert (out[:3] == -1).all()
    assert out[3::2].tolist() == [r + 0.5 for r in range(size)]
    if general_calls is not None and size > 1:     # (one rank: the general calls' own shortcuts)
        assert general_calls == []


def test_a_displacement_past_the_buffer_is_mpi4pys_error(comm):
    """Past the end: the one-call path leaves it to the general one, which
    reports what mpi4py reports."""
    buf = np.zeros(4)
    with pytest.raises(Exception) as ours:
        comm.Bcast([buf, (1, 5), MPI.DOUBLE], root=0)
    with pytest.raises(Exception) as theirs:
        NATIVE.Bcast([buf, (1, 5), _native.DOUBLE], root=0)
    assert isinstance(ours.value, type(theirs.value))


@pytest.mark.parametrize("n", [1, 3, 5000, 40000])     # elements per rank's block
@pytest.mark.parametrize("call", ["Reduce_scatter_block", "Reduce_scatter"])
def test_reduce_scatter_in_place_takes_the_one_call_path(comm, call, n, general_calls):
    """IN_PLACE: the input is the receive buffer whole and each rank's
    block lands at its start, in one call as the other forms (it took the
    general algorithm, 10 against 0.9 us for 8 doubles on 2 ranks), with
    Open MPI's results and the rest of the buffer as MPI leaves it."""
    size, rank = comm.size, comm.rank
    counts = [n + (i % 2) for i in range(size)] if call == "Reduce_scatter" else [n] * size
    data = values("i8", sum(counts), rank)
    extra = (counts,) if call == "Reduce_scatter" else ()
    ours = data.copy()
    getattr(comm, call)(MPI.IN_PLACE, ours, *extra, op=MPI.SUM)
    theirs = data.copy()
    getattr(NATIVE, call)(_native.IN_PLACE, theirs, *extra, op=_native.SUM)
    assert np.array_equal(ours[:counts[rank]], theirs[:counts[rank]])
    if general_calls is not None and size > 1:
        assert general_calls == []


def test_reduce_scatter_with_an_op_the_type_lacks_raises_on_every_rank(comm):
    """MAX on complex numbers: Open MPI's error on every rank (the one-call
    path used to return one rank's block unreduced, silently)."""
    data = np.arange(4.0 * comm.size) + 1j
    with pytest.raises(_native.Exception) as native_error:
        NATIVE.Reduce_scatter_block(data, np.zeros(4, complex), op=_native.MAX)
    for call in ("Reduce_scatter_block", "Reduce_scatter"):
        extra = ([4] * comm.size,) if call == "Reduce_scatter" else ()
        with pytest.raises(_native.Exception) as ours:
            getattr(comm, call)(data, np.zeros(4, complex), *extra, op=MPI.MAX)
        assert ours.value.Get_error_class() == native_error.value.Get_error_class()
    comm.Barrier()


def _matrix_product(a, b, datatype):
    # b = a @ b for 2x2 int64 matrices: associative, not commutative.
    x = np.frombuffer(a, dtype="i8").reshape(-1, 2, 2)
    y = np.frombuffer(b, dtype="i8").reshape(-1, 2, 2)
    y[:] = x @ y


def _not_associative(a, b, datatype):
    # b = 3a + 5b: neither associative nor commutative, so every operand
    # order and grouping gives other bits.
    x = np.frombuffer(a, dtype="f8")
    y = np.frombuffer(b, dtype="f8")
    y[:] = x * 3 + y * 5


def matrices(rank, n):
    rng = np.random.default_rng(77 + rank)
    return rng.integers(-2, 3, 4 * n).astype("i8")


@pytest.mark.parametrize("n", [1, 64, 2048])      # 2x2 matrices per rank: 32 B to 64 KiB
def test_user_op_reductions_take_the_one_call_path_in_rank_order(comm, n, general_calls):
    """Allreduce and Reduce with a user-defined op (Op.Create) up to the
    eager limit go in one call (the op applied through the library, as
    mpi4py's Reduce_local does; they took the general algorithm, 5.8
    against 2.7 us on 2 ranks), with the rank order a non-commutative op
    needs: Open MPI's products, IN_PLACE or not, at every root."""
    native_op = _native.Op.Create(_matrix_product, commute=False)
    op = MPI.Op.Create(_matrix_product, commute=False)
    try:
        data = matrices(comm.rank, n)
        theirs = np.zeros_like(data)
        NATIVE.Allreduce(data, theirs, op=native_op)
        ours = np.full_like(data, -9)
        comm.Allreduce(data, ours, op=op)
        assert ours.tolist() == theirs.tolist()
        inplace = data.copy()
        comm.Allreduce(MPI.IN_PLACE, inplace, op=op)
        assert inplace.tolist() == theirs.tolist()
        for root in range(comm.size):
            at_root = comm.rank == root
            got = np.full_like(data, -9) if at_root else None
            comm.Reduce(data, got, op=op, root=root)
            inplace = data.copy()
            comm.Reduce(MPI.IN_PLACE if at_root else inplace, inplace if at_root else None,
                        op=op, root=root)
            if at_root:
                assert got.tolist() == theirs.tolist()
                assert inplace.tolist() == theirs.tolist()
    finally:
        op.Free()
        native_op.Free()
    if general_calls is not None and comm.size > 1:
        assert general_calls == []


@pytest.mark.parametrize("commute", [False, True])
def test_user_op_reductions_give_the_general_paths_bits_when_ranks_mix_paths(comm, commute):
    """An op that is not even associative: the one-call path combines in the
    general algorithm's order, grouping included, so ranks whose buffers
    send them down either path (odd ranks pass a derived datatype, which
    only the general path takes) exchange the same messages and every rank
    holds the general path's bits."""
    op = MPI.Op.Create(_not_associative, commute=commute)
    general_type = MPI.DOUBLE.Create_contiguous(1).Commit()
    try:
        data = np.arange(8.0) + 1 + 10 * comm.rank
        mixed_type = general_type if comm.rank % 2 else MPI.DOUBLE
        everywhere = np.zeros(8)
        comm.Allreduce([data, general_type], [everywhere, general_type], op=op)
        fast, mixed = np.zeros(8), np.zeros(8)
        comm.Allreduce(data, fast, op=op)
        comm.Allreduce([data, mixed_type], [mixed, mixed_type], op=op)
        assert fast.tobytes() == everywhere.tobytes()
        assert mixed.tobytes() == everywhere.tobytes()
        assert len(set(NATIVE.allgather(fast.tobytes()))) == 1
        for root in range(comm.size):
            at_root = comm.rank == root
            results = []
            for datatype in (general_type, MPI.DOUBLE, mixed_type):
                out = np.zeros(8)
                comm.Reduce([data, datatype], [out, datatype] if at_root else None, op=op,
                            root=root)
                results.append(out.tobytes())
            if at_root:
                assert results[1] == results[0] and results[2] == results[0]
    finally:
        general_type.Free()
        op.Free()


@pytest.mark.parametrize("dtype", ["f8", "i4", "u1"])
@pytest.mark.parametrize("form", ["counts", "numpy counts", "counts and displs"])
def test_vector_specs_of_buffer_and_counts_take_the_one_call_paths(comm, dtype, form,
                                                                  general_calls):
    """mpi4py's short vector specs, [buf, counts] and [buf, (counts, displs)],
    the datatype read from the buffer (they took the general algorithm: a
    Gatherv of 8 doubles on 2 ranks 7.4 against Open MPI's 1.0 us): Open
    MPI's results, uneven blocks, displacements with gaps left untouched."""
    size, rank = comm.size, comm.rank
    counts = [1 + (i % 3) for i in range(size)]
    displs = [sum(counts[:i]) + 2 * i for i in range(size)]     # a gap of 2 after each block
    length = displs[-1] + counts[-1] + 2

    def spec(lib, buf):
        if form == "counts":
            return [buf, counts]
        if form == "numpy counts":
            return [buf, np.array(counts)]
        return [buf, (counts, displs)]

    def run(lib, comm_):
        mine = (np.arange(counts[rank]) + 10 * rank + 1).astype(dtype)
        out = {}
        for root in range(size):
            got = np.full(length, 99, dtype)
            comm_.Gatherv(mine, spec(lib, got) if rank == root else None, root)
            out[("Gatherv", root)] = got
            whole = (np.arange(length) + 100 * root).astype(dtype)
            part = np.full(counts[rank], 99, dtype)
            comm_.Scatterv(spec(lib, whole) if rank == root else None, part, root)
            out[("Scatterv", root)] = part
        got = np.full(length, 99, dtype)
        comm_.Allgatherv(mine, spec(lib, got))
        out["Allgatherv"] = got
        # Alltoallv: rank i sends rank j (and j expects from i) 1 + (i + j) % 3.
        pair = [1 + (rank + j) % 3 for j in range(size)]
        pair_displs = [sum(pair[:j]) + j for j in range(size)]
        send = (np.arange(sum(pair) + size) + 1000 * rank).astype(dtype)
        got = np.full(sum(pair) + size, 99, dtype)
        if form == "counts and displs":
            comm_.Alltoallv([send, (pair, pair_displs)], [got, (pair, pair_displs)])
        else:
            comm_.Alltoallv(spec(lib, send)[:1] + [pair], spec(lib, got)[:1] + [pair])
        out["Alltoallv"] = got
        return out

    ours = run(MPI, comm)
    theirs = run(_native, NATIVE)
    for key, got in ours.items():
        assert got.tolist() == theirs[key].tolist(), key
    if general_calls is not None and size > 1:
        assert general_calls == []
