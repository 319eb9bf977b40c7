"""One-sided communication through the region (-n 2, 3): windows of every
flavor, every operation and synchronisation, compared with the MPI
library's own windows (mpi4py on COMM_WORLD) running the same program;
memory shown to lie in the region, requests shown to be applied by the
owner, and a passive target served while it sleeps outside MPI."""
import time

import numpy as np
import pytest
from mpi4py import MPI as _native

from ivmpi import MPI

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("engine_timeout")]

NATIVE = _native.COMM_WORLD
OPS = ("SUM", "PROD", "MAX", "MIN", "BAND", "BOR", "BXOR", "LAND", "LOR", "LXOR", "REPLACE")
DTYPES = ("i4", "i8", "u2", "f8")


def in_region(comm, buf):
    mem = comm._engine.mem
    address = _native.Get_address(buf)
    return mem.address <= address and address + len(buf) <= mem.address + len(mem)


def one_window(mod, kind, nbytes, comm, disp_unit=1):
    """(window, its local memory, zeroed) of one flavor, made by mod: ivmpi's
    MPI or the library's."""
    if kind == "create":        # user memory: outside the region, the owner moves it
        mem = bytearray(nbytes)
        return mod.Win.Create(mem, disp_unit, comm=comm), mem
    if kind == "create_region":
        mem = mod.Alloc_mem(nbytes)
        mem[:] = bytes(nbytes)
        return mod.Win.Create(mem, disp_unit, comm=comm), mem
    make = mod.Win.Allocate if kind == "allocate" else mod.Win.Allocate_shared
    win = make(nbytes, disp_unit, comm=comm)
    mem = win.tomemory()
    mem[:] = bytes(nbytes)
    return win, mem


def make_windows(kind, nbytes, comm):
    """(ivmpi window, library window, their local memories) of one flavor."""
    made = [one_window(mod, kind, nbytes, c) for mod, c in ((MPI, comm), (_native, NATIVE))]
    NATIVE.Barrier()
    comm.Barrier()
    return made


def free_windows(made, kind):
    for win, mem in made:
        win.Free()
    if kind == "create_region":
        for (win, mem), mod in zip(made, (MPI, _native)):
            mod.Free_mem(mem)


KINDS = ("create", "create_region", "allocate", "shared")


def test_window_is_an_mpi4py_window_with_region_memory(comm):
    win = MPI.Win.Allocate(64, 8, comm=comm)
    assert isinstance(win, _native.Win) and isinstance(win, MPI.Win)
    assert win.Get_attr(MPI.WIN_CREATE_FLAVOR) == MPI.WIN_FLAVOR_ALLOCATE
    assert win.Get_attr(MPI.WIN_MODEL) == MPI.WIN_UNIFIED
    assert win.attrs[1:] == (64, 8)
    assert in_region(comm, win.tomemory())
    assert win.group_size == comm.size and win.group_rank == comm.rank
    again = MPI.Win.fromhandle(win.handle)
    assert type(again) is MPI.Win and again == win and again._st is win._st
    assert MPI.Win.f2py(win.py2f())._st is win._st
    win.Free()
    assert win == MPI.WIN_NULL


def test_library_window_for_a_library_communicator():
    # A communicator without region state keeps the library's own window.
    win = MPI.Win.Allocate(8, 1, comm=NATIVE)
    assert type(win) is _native.Win
    win.Free()


def test_allocate_shared_is_contiguous_and_directly_addressable(comm):
    rank, size = comm.rank, comm.size
    n = 16 + 8 * rank
    win = MPI.Win.Allocate_shared(n * 8, 8, comm=comm)
    parts = [win.Shared_query(r) for r in range(size)]
    for r, (buf, unit) in enumerate(parts):
        assert unit == 8 and len(buf) == (16 + 8 * r) * 8
        assert in_region(comm, buf)
        if r:
            assert _native.Get_address(buf) == _native.Get_address(parts[r - 1][0]) + len(
                parts[r - 1][0])
    assert _native.Get_address(parts[rank][0]) == _native.Get_address(win.tomemory())
    win.Fence()
    # Plain numpy stores into our own part, loads of everybody's.
    np.frombuffer(parts[rank][0], "f8")[:] = np.arange(n) * (rank + 1)
    win.Fence()
    for r, (buf, _) in enumerate(parts):
        assert (np.frombuffer(buf, "f8") == np.arange(16 + 8 * r) * (r + 1)).all()
    win.Fence()
    # Passive target with Sync: the unified model.
    win.Lock_all()
    np.frombuffer(parts[rank][0], "f8")[0] = -1 - rank
    win.Sync()
    comm.Barrier()
    win.Sync()
    assert [np.frombuffer(b, "f8")[0] for b, _ in parts] == [-1 - r for r in range(size)]
    win.Unlock_all()
    win.Free()


@pytest.mark.parametrize("kind", KINDS)
def test_put_get_accumulate_against_the_library(comm, kind):
    rank, size = comm.rank, comm.size
    nbytes = 8 * 32
    made = make_windows(kind, nbytes, comm)
    results = []
    for win, mem in made:
        win.Fence()
        right, left = (rank + 1) % size, (rank - 1) % size
        win.Put(np.arange(8, dtype="i8") * (rank + 2), right, 1)
        win.Fence()
        got = np.zeros(8, "i8")
        win.Get(got, left, 1)
        win.Fence()
        # (Not BXOR: the library's Create-flavor windows get it wrong here.)
        for i, op in enumerate(("SUM", "MAX", "MIN")):
            win.Accumulate(np.full(4, rank + 3 + i, "i8"), right, (80 + 32 * i, 4, MPI.LONG),
                           op=getattr(MPI, op))
        win.Fence()
        results.append((bytes(mem), got.tobytes()))
        win.Fence()
    free_windows(made, kind)
    assert results[0] == results[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_from_every_rank_against_the_library(comm, dtype):
    rank, size = comm.rank, comm.size
    n = 6
    item = np.dtype(dtype).itemsize
    made = make_windows("allocate", n * item * len(OPS), comm)
    outs = []
    for (win, mem), mod in zip(made, (MPI, _native)):
        win.Fence()
        base = np.frombuffer(mem, dtype)
        base[:] = (np.arange(len(base)) % 5 + 1).astype(dtype)
        win.Fence()
        fetched = []
        for k, name in enumerate(OPS):
            if dtype == "f8" and name[1:] in ("AND", "OR", "XOR"):
                continue
            op = getattr(mod, name)
            origin = (np.arange(n) + rank + 1).astype(dtype)
            for target in range(size):
                win.Lock(target, MPI.LOCK_SHARED)
                res = np.zeros(n, dtype)
                win.Get_accumulate(origin, res, target, (k * n * item, n), op=op)
                win.Unlock(target)
                fetched.append(res)
        win.Fence()
        outs.append((bytes(mem), b"".join(f.tobytes() for f in fetched[-1:])))
        win.Fence()
    free_windows(made, "allocate")
    # Get_accumulate's fetched values depend on the order ranks reach the
    # target; the final memory is the same whatever that order (commutative ops),
    # except REPLACE, whose winner is whichever rank came last: compare the rest.
    keep = slice(0, (len(OPS) - 1) * n * item)
    assert outs[0][0][keep] == outs[1][0][keep]


ACC_TYPES = ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8", "c8", "c16", "?")


def _ops_for(dtype):
    kind = np.dtype(dtype).kind
    if kind == "b":
        return ("LAND", "LOR", "LXOR")
    if kind == "c":
        return ("SUM", "PROD")
    if kind == "f":
        return ("SUM", "PROD", "MAX", "MIN")
    return ("SUM", "PROD", "MAX", "MIN", "BAND", "BOR", "BXOR", "LAND", "LOR", "LXOR")


@pytest.mark.parametrize("dtype", ACC_TYPES)
def test_accumulate_of_plain_arrays_in_one_call_against_the_library(comm, dtype):
    """Accumulate of a numpy array at an integer displacement of region
    memory, every predefined op its type takes, every rank into every
    target at once: the same memory as the library's window.  Then rank 0
    alone (no contention for the bakery, where the one-call path may leave
    the wait to the general one): none of it through the general path (the
    one-call path combines with the library's MPI_Reduce_local inside the
    target's bakery lock)."""
    rank, size = comm.rank, comm.size
    n, item = 5, np.dtype(dtype).itemsize
    ops = _ops_for(dtype)
    made = make_windows("allocate", n * item * len(ops), comm)
    general = []
    fast = made[0][0]._st.fast
    fast.general_accumulate = lambda *args, _g=fast.general_accumulate: (general.append(args),
                                                                         _g(*args))
    memories = []
    for (win, mem), mod in zip(made, (MPI, _native)):
        base = np.frombuffer(mem, dtype)
        base[:] = (np.arange(len(base)) % 3 + 1).astype(dtype)
        comm.Barrier()
        win.Lock_all()
        for k, name in enumerate(ops):
            origin = ((np.arange(n) + rank) % 4).astype(dtype)
            for target in range(size):
                win.Accumulate(origin, target, k * n * item, op=getattr(mod, name))
        win.Unlock_all()
        comm.Barrier()
        memories.append(bytes(mem))
    assert memories[0] == memories[1]
    win = made[0][0]
    del general[:]
    if rank == 0:
        win.Lock_all()
        for k, name in enumerate(ops):
            for target in range(size):
                win.Accumulate(np.ones(n, dtype), target, k * n * item, op=getattr(MPI, name))
        win.Unlock_all()
    comm.Barrier()
    free_windows(made, "allocate")
    assert general == []


def test_fetch_and_op_and_compare_and_swap(comm):
    rank, size = comm.rank, comm.size
    win = MPI.Win.Allocate(16 if rank == 0 else 0, 8, comm=comm)
    win.Fence()
    if rank == 0:
        np.frombuffer(win.tomemory(), "i8")[:] = (0, -1)
    win.Fence()
    win.Lock_all()
    prev = np.zeros(1, "i8")
    seen = []
    for _ in range(50):
        win.Fetch_and_op(np.ones(1, "i8"), prev, 0, 0, MPI.SUM)
        win.Flush(0)
        seen.append(int(prev[0]))
    # Every rank tries to claim slot 1; exactly one succeeds.
    old = np.zeros(1, "i8")
    win.Compare_and_swap(np.array([rank], "i8"), np.array([-1], "i8"), old, 0, 1)
    win.Flush(0)
    win.Unlock_all()
    everybody = comm.allgather(seen)
    claims = comm.allgather(int(old[0]))
    flat = sorted(v for s in everybody for v in s)
    assert flat == list(range(50 * size))     # each value fetched exactly once
    assert all(s == sorted(s) for s in everybody)
    winners = [r for r in range(size) if claims[r] == -1]
    assert len(winners) == 1
    if rank == 0:
        assert list(np.frombuffer(win.tomemory(), "i8")) == [50 * size, winners[0]]
    win.Free()


@pytest.mark.parametrize("kind", KINDS)
def test_exclusive_lock_excludes(comm, kind):
    """A read-modify-write made of Get and Put is safe inside an exclusive
    lock.  Where the target's memory lies in the region the locks are taken
    there by the origins: its owner applies no request at all."""
    rank, size = comm.rank, comm.size
    win, mem = one_window(MPI, kind, 8, comm, 8)
    comm.Barrier()
    before = win._st.owner.applied
    rounds = 30
    for _ in range(rounds):
        win.Lock(0, MPI.LOCK_EXCLUSIVE)
        value = np.zeros(1, "i8")
        win.Get(value, 0, 0)
        win.Flush(0)
        win.Put(value + 1, 0, 0)
        win.Unlock(0)
    comm.Barrier()
    if rank == 0:
        assert np.frombuffer(mem, "i8")[0] == rounds * size
        if kind == "create":
            assert win._st.owner.applied > before
        else:
            assert win._st.owner.applied == before
    free_windows([(win, mem)], kind)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_locks_exclude_writers_only(comm, kind):
    """Shared locks are held together (every rank inside one at a barrier,
    which would never end if they excluded each other); an exclusive one
    excludes them: a writer puts its words one at a time, and no reader
    under a shared lock (or Lock_all) sees a mix of two writers' words."""
    rank, size = comm.rank, comm.size
    words = 8
    win, mem = one_window(MPI, kind, 8 * words, comm, 8)
    comm.Barrier()
    win.Lock(0, MPI.LOCK_SHARED)
    comm.Barrier()
    win.Unlock(0)
    win.Lock_all()
    comm.Barrier()
    win.Unlock_all()
    seen = np.zeros(words, "i8")
    for i in range(60):
        if (i + rank) % 3 == 0:
            win.Lock(0, MPI.LOCK_EXCLUSIVE)
            for w in range(words):
                win.Put(np.array([1000 * rank + i], "i8"), 0, w)
                win.Flush(0)
            win.Unlock(0)
        else:
            if (i + rank) % 3 == 1:
                win.Lock(0, MPI.LOCK_SHARED)
            else:
                win.Lock_all()
            win.Get(seen, 0, 0)
            win.Flush(0)
            if (i + rank) % 3 == 1:
                win.Unlock(0)
            else:
                win.Unlock_all()
            assert (seen == seen[0]).all(), f"a mix of writers' words: {seen}"
    comm.Barrier()
    free_windows([(win, mem)], kind)


@pytest.mark.parametrize("waiter", ("exclusive", "shared", "lock_all"))
@pytest.mark.parametrize("kind", ("allocate", "create"))
def test_a_lock_waits_for_its_holder(comm, kind, waiter):
    """Rank 1 holds rank 0's lock while it sleeps, then writes and unlocks:
    every other rank's lock waits, and its Get sees the write."""
    rank = comm.rank
    win, mem = one_window(MPI, kind, 8, comm, 8)
    comm.Barrier()
    if rank == 1:
        win.Lock(0, MPI.LOCK_EXCLUSIVE)
    comm.Barrier()
    if rank == 1:
        time.sleep(0.2)
        win.Put(np.array([42], "i8"), 0, 0)
        win.Unlock(0)
    else:
        if waiter == "lock_all":
            win.Lock_all()
        else:
            win.Lock(0, MPI.LOCK_EXCLUSIVE if waiter == "exclusive" else MPI.LOCK_SHARED)
        seen = np.zeros(1, "i8")
        win.Get(seen, 0, 0)
        win.Unlock_all() if waiter == "lock_all" else win.Unlock(0)
        assert seen[0] == 42
    comm.Barrier()
    free_windows([(win, mem)], kind)


def test_a_corrupt_lock_word_fails_the_lock_naming_its_writer(comm):
    """Rank 1 (a hostile or broken peer) writes a value no lock has into its
    lock word for rank 0's part: rank 0's Lock waits no longer than
    IVMPI_TIMEOUT and says whose word stands in the way."""
    rank = comm.rank
    win = MPI.Win.Allocate(8, 8, comm=comm)
    state = win._st
    word = state.fast.lock_blocks[1] + 16 * state.size + 8 * 0   # docs/layout.md, "Windows"
    if rank == 1:
        state.engine.mem.store(word, 99)
    comm.Barrier()
    if rank == 0:
        engine, saved = state.engine, state.engine.timeout
        engine.timeout = 1.0
        try:
            with pytest.raises(TimeoutError, match=r"rank 0's window lock, held by rank 1 "
                               r"\(a lock word of 99"):
                win.Lock(0, MPI.LOCK_SHARED)
        finally:
            engine.timeout = saved
    comm.Barrier()
    if rank == 1:
        state.engine.mem.store(word, 0)
    comm.Barrier()
    win.Lock(0, MPI.LOCK_SHARED)
    win.Unlock(0)
    win.Free()


def test_passive_target_is_served_while_it_sleeps(comm):
    """Rank 0 makes no MPI call while the others lock its windows and put
    into its user memory (requests its progress thread serves), and
    accumulate and fetch into its region memory (done by the origins under
    the bakery lock).  It waits by looking at its own memory only, so
    without that thread the locks are never granted and it never wakes."""
    rank, size = comm.rank, comm.size
    user = bytearray(64)
    created = MPI.Win.Create(user, 8, comm=comm)                   # owner-carried puts
    allocated = MPI.Win.Allocate(64 if rank == 0 else 0, 8, comm=comm)
    counter = np.frombuffer(allocated.tomemory(), "i8") if rank == 0 else None
    comm.Barrier()
    if rank == 0:
        before = created._st.owner.applied
        deadline = time.monotonic() + 60
        words = np.frombuffer(user, "i8")
        while not (counter[0] == 10 * (size - 1) and all(words[1:size] == 7)):
            assert time.monotonic() < deadline, "the passive target was not served"
            time.sleep(0.01)
        assert created._st.owner.applied > before
    else:
        for _ in range(10):
            allocated.Lock(0, MPI.LOCK_SHARED)
            allocated.Accumulate(np.ones(1, "i8"), 0, 0, MPI.SUM)
            allocated.Unlock(0)
        created.Lock(0, MPI.LOCK_EXCLUSIVE)
        created.Put(np.array([7], "i8"), 0, rank)
        created.Unlock(0)
        allocated.Lock(0, MPI.LOCK_SHARED)
        prev = np.zeros(1, "i8")
        allocated.Fetch_and_op(np.zeros(1, "i8"), prev, 0, 1, MPI.NO_OP)
        allocated.Unlock(0)
        assert prev[0] == 0
    comm.Barrier()
    created.Free()
    allocated.Free()


def _progress_threads():
    import threading
    return [t for t in threading.enumerate() if t.name == "ivmpi-window-progress"]


def test_the_progress_thread_runs_only_for_memory_outside_the_region(comm):
    """Nothing is ever asked of a rank whose part lies in the region (every
    access, lock and accumulate is the origin's own), so such windows start
    no progress thread (which would take messages off the rings whenever a
    long copy lets go of the GIL); a window over user memory needs one."""
    before = len(_progress_threads())     # (another module's window may still need one)
    allocated = MPI.Win.Allocate(64, 8, comm=comm)
    shared = MPI.Win.Allocate_shared(64, 8, comm=comm)
    assert not allocated._st.served and not shared._st.served
    assert len(_progress_threads()) == before
    created = MPI.Win.Create(bytearray(64), 8, comm=comm)
    assert created._st.served
    assert len(_progress_threads()) == 1
    created.Free()
    assert len(_progress_threads()) == before
    shared.Free()
    allocated.Free()


def test_pscw_ring(comm):
    rank, size = comm.rank, comm.size
    win = MPI.Win.Allocate(8 * size, 8, comm=comm)
    np.frombuffer(win.tomemory(), "i8")[:] = -1
    group = win.Get_group()
    right, left = (rank + 1) % size, (rank - 1) % size
    origins = group.Incl(sorted({left}))
    targets = group.Incl(sorted({right}))
    comm.Barrier()
    for step in range(3):
        win.Post(origins)
        win.Start(targets)
        win.Put(np.array([100 * step + rank], "i8"), right, rank)
        win.Complete()
        win.Wait()
        assert np.frombuffer(win.tomemory(), "i8")[left] == 100 * step + left
    origins.Free()
    targets.Free()
    group.Free()
    win.Free()


def test_dynamic_window(comm):
    rank, size = comm.rank, comm.size
    win = MPI.Win.Create_dynamic(comm=comm)
    assert win.Get_attr(MPI.WIN_CREATE_FLAVOR) == MPI.WIN_FLAVOR_DYNAMIC
    block = np.zeros(16, "f8")
    win.Attach(block)
    addresses = comm.allgather(MPI.Get_address(block))
    win.Fence()
    right = (rank + 1) % size
    win.Put(np.full(4, rank + 0.5), right, addresses[right] + 8 * 4)
    win.Accumulate(np.ones(2), right, (addresses[right], 2, MPI.DOUBLE))
    win.Fence()
    left = (rank - 1) % size
    assert list(block[4:8]) == [left + 0.5] * 4 and list(block[:2]) == [1.0, 1.0]
    got = np.zeros(4)
    win.Get(got, right, addresses[right] + 32)
    win.Fence()
    assert list(got) == [rank + 0.5] * 4
    win.Detach(block)
    win.Free()


@pytest.mark.parametrize("kind", ("create", "allocate"))
def test_derived_datatypes_against_the_library(comm, kind):
    rank, size = comm.rank, comm.size
    made = make_windows(kind, 8 * 64, comm)
    results = []
    for (win, mem), mod in zip(made, (MPI, _native)):
        column = mod.DOUBLE.Create_vector(8, 1, 8).Commit()
        every_other = mod.DOUBLE.Create_vector(4, 1, 2).Commit()
        win.Fence()
        right, left = (rank + 1) % size, (rank - 1) % size
        src = np.arange(16, dtype="f8") + 100 * rank
        # Origin with holes into a contiguous target, and the reverse.
        win.Put([src, 1, every_other], right, (0, 4, mod.DOUBLE))
        win.Put(src[:8], right, (8, 1, column))
        win.Fence()
        win.Accumulate(np.ones(8), right, (16, 1, column), op=mod.SUM)
        win.Fence()
        got = np.zeros(16)
        win.Get([got, 2, every_other], left, (8, 1, column))
        win.Fence()
        results.append((bytes(mem), got.tobytes()))
        column.Free()
        every_other.Free()
        win.Fence()
    free_windows(made, kind)
    assert results[0] == results[1]


@pytest.mark.parametrize("kind", ("create", "allocate"))
def test_large_transfers_and_request_forms(comm, kind):
    rank, size = comm.rank, comm.size
    n = 300_000      # 2.4 MB: larger than an eager message and a ring
    made = make_windows(kind, 8 * n, comm)
    win, mem = made[0]
    right, left = (rank + 1) % size, (rank - 1) % size
    win.Lock_all()
    src = np.arange(n, dtype="f8") * (rank + 1)
    req = win.Rput(src, right)
    req.Wait()
    win.Flush(right)
    comm.Barrier()
    win.Sync()
    assert (np.frombuffer(mem, "f8") == np.arange(n) * (left + 1)).all()
    comm.Barrier()
    got = np.zeros(n)
    req = win.Rget(got, right)
    req.Wait()
    assert (got == np.arange(n) * (rank + 1)).all()
    acc = win.Raccumulate(np.ones(n), right, op=MPI.SUM)
    acc.Wait()
    win.Flush(right)
    fetched = np.zeros(n)
    req = win.Rget_accumulate(np.zeros(n), fetched, right, op=MPI.NO_OP)
    req.Wait()
    assert (fetched == np.arange(n) * (rank + 1) + 1).all()
    win.Unlock_all()
    free_windows(made, kind)


def test_mpi_error_cases(comm):
    size = comm.size
    win = MPI.Win.Allocate(64, 8, comm=comm)
    with pytest.raises(MPI.Exception) as info:
        win.Put(np.zeros(1), 0)
    assert info.value.Get_error_class() == MPI.ERR_RMA_SYNC
    with pytest.raises(MPI.Exception) as info:
        win.Unlock(0)
    assert info.value.Get_error_class() == MPI.ERR_RMA_SYNC
    win.Lock(0, MPI.LOCK_SHARED)
    with pytest.raises(MPI.Exception) as info:
        win.Lock(0, MPI.LOCK_SHARED)
    assert info.value.Get_error_class() == MPI.ERR_RMA_SYNC
    with pytest.raises(MPI.Exception) as info:
        win.Put(np.zeros(2), 0, 7)          # bytes 56..72 of a 64-byte window
    assert info.value.Get_error_class() == MPI.ERR_RMA_RANGE
    user_op = MPI.Op.Create(lambda a, b, t: None)
    with pytest.raises(MPI.Exception) as info:
        win.Accumulate(np.zeros(1), 0, op=user_op)
    assert info.value.Get_error_class() == MPI.ERR_OP
    user_op.Free()
    with pytest.raises(MPI.Exception) as info:
        win.Put(np.zeros(1), size)
    assert info.value.Get_error_class() == MPI.ERR_RANK
    win.Unlock(0)
    win.Free()
    # A dynamic window's owner refuses memory nobody attached; the error
    # comes back with the next synchronisation.
    dyn = MPI.Win.Create_dynamic(comm=comm)
    dyn.Lock(0, MPI.LOCK_EXCLUSIVE)
    dyn.Put(np.zeros(1), 0, 4096)
    with pytest.raises(MPI.Exception) as info:
        dyn.Unlock(0)
    assert info.value.Get_error_class() == MPI.ERR_RMA_RANGE
    dyn.Free()


def test_mpi4py_util_sync_counter_and_mutex(comm):
    from mpi4py.util import sync
    counter = sync.Counter(comm=comm)
    values = [next(counter) for _ in range(20)]
    everything = sorted(v for vs in comm.allgather(values) for v in vs)
    assert everything == list(range(20 * comm.size))
    counter.free()
    mutex = sync.Mutex(comm=comm)
    shared = MPI.Win.Allocate(8 if comm.rank == 0 else 0, 8, comm=comm)
    for _ in range(10):
        with mutex:
            shared.Lock(0, MPI.LOCK_SHARED)
            value = np.zeros(1, "i8")
            shared.Get(value, 0)
            shared.Flush(0)
            shared.Put(value + 1, 0)
            shared.Unlock(0)
    comm.Barrier()
    if comm.rank == 0:
        assert np.frombuffer(shared.tomemory(), "i8")[0] == 10 * comm.size
    mutex.free()
    shared.Free()


def test_threads_of_every_rank_accumulate_at_once(comm):
    """Threads of one process share that rank's bakery words: the one-call
    Fetch_and_op and the general Accumulate must still exclude each other."""
    import threading
    win = MPI.Win.Allocate(16 if comm.rank == 0 else 0, 8, comm=comm)
    win.Fence()
    win.Lock_all()
    rounds, nthreads = 200, 3

    def work():
        prev = np.zeros(1, "i8")
        for _ in range(rounds):
            win.Fetch_and_op(np.ones(1, "i8"), prev, 0, 0, MPI.SUM)
            win.Accumulate(np.ones(2, "i8"), 0, 0, MPI.SUM)
            win.Flush(0)
    threads = [threading.Thread(target=work) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    win.Unlock_all()
    comm.Barrier()
    if comm.rank == 0:
        total = rounds * nthreads * comm.size
        assert list(np.frombuffer(win.tomemory(), "i8")) == [2 * total, total]
    win.Free()


def test_a_window_too_large_for_one_rank_fails_everywhere(comm):
    heap = comm._engine.heap
    # Other users of the heap (collectives' staging) may hold some of it.
    free_before = heap.available()
    size = heap.size * 2 if comm.rank == comm.size - 1 else 64
    with pytest.raises(MPI.Exception) as info:
        MPI.Win.Allocate(size, 1, comm=comm)
    assert info.value.Get_error_class() == MPI.ERR_NO_MEM
    # Nothing is left behind: the heap is as it was and windows still work.
    assert heap.available() == free_before
    win = MPI.Win.Allocate(64, 1, comm=comm)
    win.Free()


def test_a_failed_operation_is_raised_by_fence_and_free_without_a_hang(comm):
    """Dynamic windows: the owner finds the range error; the origin's Fence
    raises it after the barrier, so the other ranks are not left waiting."""
    win = MPI.Win.Create_dynamic(comm=comm)
    win.Fence()
    if comm.rank == 0:
        win.Put(np.zeros(1), comm.size - 1, 4096)     # nothing attached there
        with pytest.raises(MPI.Exception) as info:
            win.Fence()
        assert info.value.Get_error_class() == MPI.ERR_RMA_RANGE
    else:
        win.Fence()
    win.Fence()
    win.Free()
