"""Buffers inside the region (Alloc_mem, ivmpi.alloc) under mpirun: sends from
them skip the sender's copy and must deliver exactly what a normal send does."""
import time

import numpy as np
import pytest

import ivmpi
from ivmpi import MPI, layout


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("nbytes", [100, layout.MAX_EAGER, layout.MAX_EAGER + 1, 1 << 20, 16 << 20])
def test_ring_of_sends_from_region_buffers(comm, nbytes):
    rank, size = comm.rank, comm.size
    src = ivmpi.alloc(nbytes)
    src[:] = np.random.default_rng(rank * 7 + nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.empty(nbytes, np.uint8)
    left, right = (rank - 1) % size, (rank + 1) % size
    status = MPI.Status()
    comm.Sendrecv(src, right, 4, out, left, 4, status)
    expected = np.random.default_rng(left * 7 + nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    assert np.array_equal(out, expected)
    assert status.Get_source() == left and status.Get_count(MPI.BYTE) == nbytes
    ivmpi.free(src)


@pytest.mark.mpi(min_size=2)
def test_alloc_mem_buffer_as_numpy_array_any_source(comm):
    rank, size = comm.rank, comm.size
    n = 300000
    if rank != 0:
        mem = comm.Alloc_mem(n * 8)
        arr = np.frombuffer(mem, dtype="f8")
        arr[:] = np.arange(n) * rank
        comm.Send(arr, 0, tag=rank)
        comm.Free_mem(mem)
    else:
        seen = set()
        buf = np.empty(n, "f8")
        for _ in range(size - 1):
            st = MPI.Status()
            comm.Recv(buf, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            src = st.Get_source()
            assert st.Get_tag() == src and np.array_equal(buf, np.arange(n) * src)
            seen.add(src)
        assert seen == set(range(1, size))


@pytest.mark.mpi(min_size=2)
def test_truncated_receive_from_region_buffer(comm):
    if comm.rank == 0:
        src = ivmpi.alloc(50000)
        src[:] = 9
        comm.Send(src, 1, 2)
        ivmpi.free(src)
    elif comm.rank == 1:
        small = np.empty(1000, np.uint8)
        with pytest.raises(MPI.Exception) as info:
            comm.Recv(small, 0, 2)
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
    comm.Barrier()
    # The communicator keeps working.
    assert comm.allreduce(1) == comm.size


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("arrival", ["at the head of the ring", "unexpected"])
def test_blocking_receive_copies_from_the_senders_heap(comm, arrival, monkeypatch):
    """A blocking Recv of a send from a region buffer copies the message
    straight out of the sender's heap itself, whether the announcement is
    next in the ring or already in the unexpected queue (an earlier receive
    of another tag read past it): the status is right, the sender completes
    on the acknowledgement, the engine's own copy is not used."""
    engine = comm._engine
    if engine.mem.strict:
        pytest.skip("strict mode has no region buffers")
    n = 200003
    pattern = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    if comm.rank == 0:
        src = ivmpi.alloc(n)
        src[:] = pattern
        request = comm.Isend(src, 1, 7)
        comm.Send(np.arange(3.0), 1, 8)
        request.Wait()
        ivmpi.free(src)
    elif comm.rank == 1:
        copies = []
        engine_copy = engine._copy_from_heap
        monkeypatch.setattr(engine, "_copy_from_heap",
                            lambda *args: (copies.append(args), engine_copy(*args))[1])
        small = np.empty(3)
        if arrival == "unexpected":
            comm.Recv(small, 0, 8)
        else:
            # Until the announcement is next in the ring (a probe leaves it
            # there): a receive that waited longer than its fast polls would
            # leave it to the engine.
            deadline = time.monotonic() + 30
            while not comm.Iprobe(0, 7) and time.monotonic() < deadline:
                pass
        waiting = [msg.tag for msg in engine.unexpected]
        out = np.full(n + 16, 7, np.uint8)
        status = MPI.Status()
        comm.Recv(out, 0, 7, status)
        if arrival != "unexpected":
            comm.Recv(small, 0, 8)
    comm.Barrier()          # every message received before anything is checked
    if comm.rank == 1:
        assert (7 in waiting) == (arrival == "unexpected")
        assert np.array_equal(out[:n], pattern) and (out[n:] == 7).all()
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == (0, 7, n)
        assert np.array_equal(small, np.arange(3.0))
        assert not copies
    assert not engine.awaiting_ack
