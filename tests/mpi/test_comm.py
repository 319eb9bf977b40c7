"""Communicator management under a real launcher (-n 2, 3, 4): ranks, Dup,
Split, Split_type, Create, groups, names and Free, checked against what
mpi4py's own COMM_WORLD reports and by sending messages on the new
communicators."""
import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=2)

NATIVE = _native.COMM_WORLD


def test_rank_and_size(world):
    assert world.Get_rank() == world.rank == NATIVE.Get_rank()
    assert world.Get_size() == world.size == NATIVE.Get_size()
    assert world.Is_intra() and not world.Is_inter()
    # Every rank sees every other one.
    assert world.allgather(world.rank) == list(range(world.size))


def test_rank_and_size_of_a_freed_communicator_are_errors_as_in_mpi4py(comm):
    """Get_rank and Get_size answer from the instance (as fast as mpi4py's C
    calls) until Free; then, as in mpi4py, they raise ERR_COMM (they kept
    answering)."""
    ours, theirs = comm.Dup(), NATIVE.Dup()
    assert (ours.Get_rank(), ours.Get_size()) == (theirs.Get_rank(), theirs.Get_size())
    ours.Free()
    theirs.Free()
    for call in ("Get_rank", "Get_size"):
        with pytest.raises(_native.Exception) as native_error:
            getattr(theirs, call)()
        with pytest.raises(_native.Exception) as error:
            getattr(ours, call)()
        assert error.value.Get_error_class() == native_error.value.Get_error_class()


def test_comm_self(world):
    me = MPI.COMM_SELF
    assert (me.Get_rank(), me.Get_size()) == (0, 1)
    assert me.sendrecv(("self", world.rank), 0, source=0) == ("self", world.rank)
    assert me.allreduce(world.rank + 1) == world.rank + 1


def test_names(world):
    assert world.Get_name() == "MPI_COMM_WORLD"
    dup = world.Dup()
    dup.Set_name("halo")
    assert dup.Get_name() == "halo" and dup.name == "halo"
    assert world.Get_name() == "MPI_COMM_WORLD"
    dup.Free()


def test_dup(comm):
    dup = comm.Dup()
    assert (dup.rank, dup.size) == (comm.rank, comm.size)
    assert dup != comm
    got = np.zeros(comm.size, "i8")
    dup.Allgather(np.array([comm.rank * 3], "i8"), got)
    np.testing.assert_array_equal(got, np.arange(comm.size) * 3)
    dup2 = dup.Dup()
    assert dup2.bcast("from the root" if comm.rank == 0 else None, root=0) == "from the root"
    dup2.Free()
    dup.Free()


def test_split_colors_and_keys(comm):
    color = comm.rank % 2
    # A key that reverses the order of the ranks within each color.
    sub = comm.Split(color, key=-comm.rank)
    members = [r for r in range(comm.size) if r % 2 == color][::-1]
    assert sub.Get_size() == len(members)
    assert sub.Get_rank() == members.index(comm.rank)
    # Rank i of sub is world rank members[i], checked by a message round.
    assert sub.allgather(comm.rank) == members
    if sub.size > 1:
        nxt, prv = (sub.rank + 1) % sub.size, (sub.rank - 1) % sub.size
        assert sub.sendrecv(comm.rank, nxt, source=prv) == members[prv]
    sub.Free()


def test_split_undefined_gives_comm_null(comm):
    color = MPI.UNDEFINED if comm.rank == 0 else 1
    sub = comm.Split(color, key=0)
    if comm.rank == 0:
        assert sub == MPI.COMM_NULL
    else:
        assert sub != MPI.COMM_NULL
        assert sub.Get_size() == comm.size - 1 and sub.Get_rank() == comm.rank - 1
        assert sub.allreduce(1) == comm.size - 1
        sub.Free()


def test_split_of_a_split(comm):
    half = comm.Split(comm.rank % 2, comm.rank)
    single = half.Split(half.rank, 0)
    assert single.Get_size() == 1 and single.Get_rank() == 0
    assert single.sendrecv(comm.rank, 0, source=0) == comm.rank
    assert half.allreduce(comm.rank) == sum(r for r in range(comm.size) if r % 2 == comm.rank % 2)
    single.Free()
    half.Free()


def test_split_type_shared(comm):
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.size - comm.rank)
    # All ranks share the region: one node, ordered by key (here reversed).
    assert node.Get_size() == comm.size
    assert node.Get_rank() == comm.size - 1 - comm.rank
    assert node.allgather(comm.rank) == list(reversed(range(comm.size)))
    node.Free()
    none = comm.Split_type(MPI.UNDEFINED)
    assert none == MPI.COMM_NULL


def test_group_and_create(comm):
    group = comm.Get_group()
    assert group.Get_size() == comm.size and group.Get_rank() == comm.rank
    evens = list(range(0, comm.size, 2))[::-1]      # reversed: ranks follow the group order
    sub_group = group.Incl(evens)
    assert sub_group.Get_size() == len(evens)
    assert group.Translate_ranks(evens, sub_group) == list(range(len(evens)))
    sub = comm.Create(sub_group)
    if comm.rank in evens:
        assert sub.Get_rank() == evens.index(comm.rank) == sub_group.Get_rank()
        assert sub.Get_size() == len(evens)
        assert sub.allgather(comm.rank) == evens
        sub.Free()
    else:
        assert sub == MPI.COMM_NULL
        assert sub_group.Get_rank() == MPI.UNDEFINED
    odd_group = group.Excl(range(0, comm.size, 2))
    assert odd_group.Get_size() == comm.size // 2


def test_create_group_collective_over_members_only(comm):
    members = [0, comm.size - 1]
    sub = comm.Create_group(comm.Get_group().Incl(members))
    if comm.rank in members:
        assert sub.Get_size() == 2
        assert sub.sendrecv(comm.rank, 1 - sub.rank, source=1 - sub.rank) == members[1 - sub.rank]
        sub.Free()
    else:
        assert sub == MPI.COMM_NULL


def test_free(comm):
    dup = comm.Dup()
    dup.Free()
    assert dup == MPI.COMM_NULL
    with pytest.raises(MPI.Exception) as excinfo:
        dup.Send(np.zeros(1), 0)
    assert excinfo.value.Get_error_class() == MPI.ERR_COMM
    # The parent is unaffected.
    assert comm.allreduce(1) == comm.size


def test_messages_do_not_cross_split_communicators(comm):
    """Two Splits with the same members and the same tags: each message stays on its communicator."""
    a = comm.Split(0, comm.rank)
    b = comm.Split(0, comm.rank)
    nxt, prv = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    reqs = [a.Isend(np.array([1, comm.rank], "i4"), nxt, 3), b.Isend(np.array([2, comm.rank], "i4"), nxt, 3)]
    got_b, got_a = np.zeros(2, "i4"), np.zeros(2, "i4")
    b.Recv(got_b, MPI.ANY_SOURCE, MPI.ANY_TAG)
    a.Recv(got_a, MPI.ANY_SOURCE, MPI.ANY_TAG)
    MPI.Request.Waitall(reqs)
    np.testing.assert_array_equal(got_a, [1, prv])
    np.testing.assert_array_equal(got_b, [2, prv])
    a.Free()
    b.Free()


@pytest.mark.parametrize("which", ["ivmpi", "mpi4py"])
def test_compare(comm, which):
    """Comm.Compare gives what Open MPI gives for the same communicators."""
    base = comm if which == "ivmpi" else NATIVE.Dup()
    dup = base.Dup()
    reordered = base.Split(0, key=-base.rank)
    halves = base.Split(base.rank % 2, 0)
    assert base.Compare(base) == MPI.IDENT
    assert base.Compare(dup) == MPI.CONGRUENT
    assert base.Compare(reordered) == MPI.SIMILAR
    assert base.Compare(halves) == MPI.UNEQUAL
    for c in (dup, reordered, halves):
        c.Free()
    if which == "mpi4py":
        base.Free()


@pytest.mark.parametrize("used", [False, True])
def test_a_freed_communicator_refuses_every_call(world, used):
    """Freed before or after its collectives were made (on first use)."""
    dup = world.Dup()
    if used:
        dup.Barrier()
    dup.Free()
    for call in (dup.Barrier, lambda: dup.Allreduce(np.ones(2), np.empty(2)),
                 lambda: dup.Send(np.ones(2), 0), lambda: dup.send(1, 0),
                 lambda: dup.bcast(1), lambda: dup.allreduce(1), lambda: dup.Ibarrier(),
                 lambda: dup.allgather(1)):
        with pytest.raises(MPI.Exception) as info:
            call()
        assert info.value.Get_error_class() == MPI.ERR_COMM
    world.Barrier()


def test_collectives_are_made_on_first_use_and_shared_by_copies(world):
    """A new communicator makes its collectives (the hidden twin, the
    one-call forms, the calls bound to the instance) on its first
    collective: a Dup + Free without one costs a fraction as much.  A
    method taken before that still takes the bound call afterwards, and a
    copy made before it shares them with the original."""
    if world._routed:
        pytest.skip("across regions the collectives are the library's")
    dup = world.Dup()
    assert dup._coll is None and "Allreduce" not in dup.__dict__
    allreduce = dup.Allreduce                   # taken before the first collective
    out = np.zeros(2)
    allreduce(np.ones(2), out)
    assert out.tolist() == [world.size] * 2
    assert dup.__dict__["Allreduce"] == dup._shared.Allreduce        # bound: one call
    assert type(dup.__dict__["Ibarrier"]).__name__ == "BoundCollective"
    twin = dup._coll
    allreduce(np.ones(2), out)
    assert dup._coll is twin
    dup.Free()
    fresh = world.Dup()
    copy = MPI.Intracomm(fresh)
    assert fresh._coll is not None and copy._coll is fresh._coll
    requests = [fresh.Ibarrier(), copy.Ibarrier(), fresh.Iallreduce(np.ones(1), out[:1])]
    MPI.Request.Waitall(requests)
    assert out[0] == world.size
    copy.Free()
    unused = [world.Dup() for _ in range(3)]
    for c in unused:
        assert c._coll is None
        c.Free()
    world.Barrier()


# --- ivmpi communicators are mpi4py communicators ---------------------------------

def test_communicators_are_mpi4py_intracomms_with_a_handle_in_step(comm):
    assert isinstance(comm, _native.Intracomm)
    # The handle is the library's communicator over the same processes:
    # mpi4py's own calls on it agree with ivmpi's view.
    assert _native.Comm.Get_size(comm) == comm.size
    assert _native.Comm.Get_rank(comm) == comm.rank
    assert comm.Compare(NATIVE) == _native.CONGRUENT
    half = comm.Split(comm.rank % 2, key=-comm.rank)
    assert _native.Comm.Get_rank(half) == half.rank
    assert _native.Comm.Get_size(half) == half.size
    assert half.allgather(comm.rank) == sorted(
        [r for r in range(comm.size) if r % 2 == comm.rank % 2], reverse=True)
    half.Free()
    assert half == _native.COMM_NULL


def test_mpi4py_functions_take_ivmpi_communicators(comm):
    assert _native.DOUBLE.Pack_size(3, comm) == 24
    packed = bytearray(_native.DOUBLE.Pack_size(2, comm))
    _native.DOUBLE.Pack(np.array([1.5, 2.5]), packed, 0, comm)
    out = np.zeros(2)
    _native.DOUBLE.Unpack(packed, 0, out, comm)
    assert out.tolist() == [1.5, 2.5]


def test_constructor_copies_share_the_region_state(comm):
    copy = MPI.Intracomm(comm)
    assert copy == comm and copy is not comm
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    assert copy.sendrecv(comm.rank, right, source=left) == left
    assert MPI.Comm() == _native.COMM_NULL
    with pytest.raises(_native.Exception):
        MPI.Comm().send(1, 0)


def test_pkl5_over_ivmpi_uses_the_region(comm):
    from mpi4py.util import pkl5
    big = pkl5.Intracomm(comm)
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    data = np.arange(10000.0) + comm.rank
    got = big.sendrecv(data, right, source=left)
    assert np.array_equal(got, np.arange(10000.0) + left)
    assert big.allgather(comm.rank) == list(range(comm.size))


def test_sendrecv_with_a_bad_send_buffer_leaves_no_receive_behind(comm):
    me = comm.rank
    with pytest.raises(ValueError):
        comm.Sendrecv([object(), "B"], me, 0, bytearray(4), me, 0)
    got = bytearray(3)
    comm.Sendrecv(b"abc", me, 0, got, me, 0)
    assert got == b"abc"


def test_predefined_communicators_pickle_by_name(world):
    import pickle
    assert pickle.loads(pickle.dumps(world)) is world
    copy = pickle.loads(pickle.dumps(MPI.Intracomm(world)))
    assert copy is not world and copy == world
    assert copy.allreduce(1) == world.size


def test_objects_without_region_state_hand_calls_to_mpi4py(comm):
    # A communicator the library made (here an intercommunicator), seen
    # through ivmpi's classes as mpi4py.util.pkl5 sees it: mpi4py's own calls.
    local = comm.Split(comm.rank % 2)
    if comm.size < 2:
        return
    inter = local.Create_intercomm(0, comm, 1 - comm.rank % 2)
    assert isinstance(inter, _native.Intercomm)
    if local.rank == 0:     # the two groups' first ranks: world ranks 0 and 1
        got = MPI.Comm.sendrecv(inter, comm.rank, dest=0, source=0)
        assert got == 1 - comm.rank
    assert MPI.Comm.Get_size(inter) == local.size
    inter.Free()
    local.Free()


@pytest.mark.parametrize("count", [8, 1 << 20])
def test_isendrecv_and_replace_match_mpi4py(comm, count):
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    reference = NATIVE.Dup()
    results = []
    for c in (comm, reference):
        send = np.arange(count, dtype="i4") * (c.rank + 1)
        got = np.empty(count, dtype="i4")
        status = _native.Status()
        c.Isendrecv(send, right, 1, got, left, 1).Wait(status)
        replaced = send.copy()
        req = c.Isendrecv_replace(replaced, right, 2, left, 2)
        req.Wait()
        results.append((got, replaced, status.Get_source(), status.Get_count(_native.INT32_T)))
    reference.Free()
    (g1, r1, s1, n1), (g2, r2, s2, n2) = results
    assert np.array_equal(g1, g2) and np.array_equal(r1, r2) and (s1, n1) == (s2, n2) == (left, count)


def test_mprobe_of_proc_null_returns_a_message_that_becomes_null(comm):
    message = comm.Mprobe(_native.PROC_NULL)
    assert message == MPI.MESSAGE_NO_PROC and message is not MPI.MESSAGE_NO_PROC
    message.Recv(None)
    assert message == MPI.MESSAGE_NULL
    assert MPI.MESSAGE_NO_PROC != MPI.MESSAGE_NULL


def test_collectives_taken_before_first_use(comm):
    """A collective method taken from a communicator before its collectives
    are made (`allreduce = comm.Allreduce`, as libraries keep them), or
    called on the class (`MPI.Comm.Allreduce(comm, ...)`): the first call
    makes them, later ones go to the bound one; results are Open MPI's, and
    a KeyError raised inside the bound call reaches the caller (it is not
    taken for a missing binding)."""
    c = comm.Dup()
    allreduce, barrier = c.Allreduce, c.Barrier
    send = np.arange(4.0) + comm.rank
    got, want = np.zeros(4), np.zeros(4)
    allreduce(send, got, op=MPI.SUM)        # the first collective
    NATIVE.Allreduce(send, want, op=_native.SUM)
    np.testing.assert_array_equal(got, want)
    taken = []
    bound = c.__dict__["Allreduce"]
    c.__dict__["Allreduce"] = lambda *args, **kwargs: (taken.append(1), bound(*args, **kwargs))[1]
    got[:] = 0
    allreduce(send, got, op=MPI.SUM)
    MPI.Intracomm.Allreduce(c, send, got, op=MPI.SUM)
    np.testing.assert_array_equal(got, want)
    # (Spanning regions, the collectives are bound when the communicator
    # is made: what was taken is the binding itself.)
    assert taken == ([1] if c._routed else [1, 1])
    barrier()

    def fails(*args, **kwargs):
        raise KeyError("from the call")
    c.__dict__["Allreduce"] = fails
    with pytest.raises(KeyError, match="from the call"):
        MPI.Intracomm.Allreduce(c, send, got, op=MPI.SUM)
    c.__dict__["Allreduce"] = bound
    c.Free()
