"""Differential test: one MPI program, run on mpi4py over Open MPI and on
ivmpi in the same processes, must give the same results.

`program(comm, MPI)` is written once against the mpi4py API (it receives the
module it runs on).  It records everything it observes: received data,
statuses, error classes, results of collectives and of Split.  Integer data
must match exactly; floating-point reductions may differ in the last bits
(the operands are combined in another order), so they are compared with a
tolerance.
"""
import numpy as np
import pytest
from mpi4py import MPI as native_MPI

from ivmpi import MPI as ivmpi_MPI

pytestmark = pytest.mark.mpi(min_size=2)


def program(comm, MPI):
    rank, size = comm.Get_rank(), comm.Get_size()
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    out = {"rank": rank, "size": size}
    status = MPI.Status()

    # Pickled objects around the ring, and a sendrecv.
    req = comm.isend({"from": rank, "data": list(range(rank + 2))}, nxt, tag=3)
    out["recv_obj"] = comm.recv(source=prv, tag=3, status=status)
    out["recv_obj_status"] = (status.Get_source(), status.Get_tag())
    req.wait()
    out["sendrecv_obj"] = comm.sendrecv(("x", rank), dest=nxt, sendtag=4, source=MPI.ANY_SOURCE,
                                        recvtag=MPI.ANY_TAG, status=status)
    out["sendrecv_status"] = (status.Get_source(), status.Get_tag())

    # Buffers of two protocols (eager and rendezvous in ivmpi).
    for n in (10, 50_000):
        send = (np.arange(n, dtype="i8") * (rank + 1)) % 1009
        recv = np.zeros(n, "i8")
        comm.Sendrecv(send, nxt, 5, recv, prv, 5, status)
        out[f"Sendrecv_{n}"] = recv.tolist()
        out[f"Sendrecv_{n}_status"] = (status.Get_source(), status.Get_tag(), status.Get_count(MPI.INT64_T))
    buf = np.full(7, rank, "i4")
    comm.Sendrecv_replace(buf, nxt, 6, prv, 6)
    out["Sendrecv_replace"] = buf.tolist()

    # Every rank sends to rank 0, which receives with ANY_SOURCE.
    reqs = [comm.Isend(np.array([rank, i], "i4"), 0, tag=10 + i) for i in range(3)]
    if rank == 0:
        got = []
        for _ in range(3 * size):
            b = np.zeros(2, "i4")
            comm.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
            probed = (status.Get_source(), status.Get_tag(), status.Get_count(MPI.INT))
            comm.Recv(b, status.Get_source(), status.Get_tag())
            got.append((probed, b.tolist()))
        out["any_source"] = sorted(got)
    MPI.Request.Waitall(reqs)
    comm.Barrier()   # rank 0 probes with ANY_TAG: nothing else may be on its way yet

    # Truncation, PROC_NULL, a cancelled receive.
    sreq = comm.Isend(np.arange(8, dtype="i4"), nxt, 7)
    try:
        comm.Recv(np.zeros(4, "i4"), prv, 7)
        out["truncate"] = None
    except MPI.Exception as exc:
        out["truncate"] = exc.Get_error_class() == MPI.ERR_TRUNCATE
    sreq.Wait()
    comm.Recv(np.zeros(1), MPI.PROC_NULL, 0, status)
    out["proc_null"] = (status.Get_source(), status.Get_tag(), status.Get_count())
    creq = comm.Irecv(np.zeros(1), prv, 999)
    creq.Cancel()
    creq.Wait(status)
    out["cancelled"] = status.Is_cancelled()

    # Collectives.
    comm.Barrier()
    out["bcast"] = comm.bcast({"root": rank} if rank == size - 1 else None, root=size - 1)
    arr = np.arange(6, dtype="i8") * (rank + 1) if rank == 0 else np.zeros(6, "i8")
    comm.Bcast(arr, root=0)
    out["Bcast"] = arr.tolist()
    out["scatter"] = comm.scatter([i * i for i in range(size)] if rank == 0 else None, root=0)
    out["gather"] = comm.gather(rank * 10, root=size - 1)
    out["allgather"] = comm.allgather((rank, "r"))
    out["alltoall"] = comm.alltoall([(rank, j) for j in range(size)])
    out["allreduce_sum"] = comm.allreduce(rank + 1, op=MPI.SUM)
    out["allreduce_max"] = comm.allreduce(rank * 7 % 5, op=MPI.MAX)
    out["reduce_prod"] = comm.reduce(rank + 2, op=MPI.PROD, root=0)
    out["scan"] = comm.scan(rank + 1)
    exscan = comm.exscan(rank + 1)
    out["exscan"] = exscan if rank > 0 else None    # undefined at rank 0
    ints = (np.arange(1000, dtype="i8") + rank * 3) % 97
    for name in ("SUM", "PROD", "MAX", "MIN", "BAND", "BOR", "BXOR"):
        res = np.zeros_like(ints)
        comm.Allreduce(ints % 4 if name == "PROD" else ints, res, op=getattr(MPI, name))
        out[f"Allreduce_{name}"] = res.tolist()
    res = np.zeros(1000, "i8") if rank == 1 else None
    comm.Reduce(ints, res, op=MPI.SUM, root=1)
    out["Reduce"] = res.tolist() if rank == 1 else None
    gathered = np.zeros(4 * size, "i4")
    comm.Allgather(np.full(4, rank, "i4"), gathered)
    out["Allgather"] = gathered.tolist()
    send = np.arange(2 * size, dtype="i4") + 100 * rank
    recv = np.zeros(2 * size, "i4")
    comm.Alltoall(send, recv)
    out["Alltoall"] = recv.tolist()
    scanned = np.zeros(3, "i8")
    comm.Scan(np.array([rank, 1, 2 * rank], "i8"), scanned)
    out["Scan"] = scanned.tolist()
    floats = np.zeros(100)
    comm.Allreduce(np.linspace(0, 1, 100) * (rank + 1) / 3, floats)
    out["float_Allreduce"] = floats

    # Split: colors, reversed keys, and work on the pieces.
    sub = comm.Split(rank % 2, key=-rank)
    out["split"] = (sub.Get_rank(), sub.Get_size(), sub.allgather(rank), sub.allreduce(rank))
    sub_buf = np.zeros(sub.Get_size(), "i8")
    sub.Allgather(np.array([rank * rank], "i8"), sub_buf)
    out["split_Allgather"] = sub_buf.tolist()
    none = comm.Split(MPI.UNDEFINED if rank == 0 else 0, 0)
    out["split_undefined_null"] = none == MPI.COMM_NULL
    if none != MPI.COMM_NULL:
        out["split_undefined"] = (none.Get_rank(), none.Get_size())
        none.Free()
    sub.Free()
    return out


@pytest.fixture(scope="module")
def both_results(world):
    native_comm = native_MPI.COMM_WORLD.Dup()
    ivmpi_comm = world.Dup()
    try:
        expected = program(native_comm, native_MPI)
        actual = program(ivmpi_comm, ivmpi_MPI)
    finally:
        native_comm.Free()
        ivmpi_comm.Free()
    return expected, actual


def test_same_keys(both_results):
    expected, actual = both_results
    assert sorted(actual) == sorted(expected)


def test_same_results(both_results):
    expected, actual = both_results
    mismatches = []
    for key, want in expected.items():
        got = actual.get(key)
        if isinstance(want, np.ndarray):
            if not np.allclose(got, want, rtol=1e-12, atol=1e-12):
                mismatches.append(key)
        elif got != want:
            mismatches.append(f"{key}: ivmpi {got!r} != mpi4py {want!r}")
    assert not mismatches, "\n".join(mismatches)


def test_program_is_not_trivial(both_results):
    """The comparison means something only if the program saw real data."""
    expected, _ = both_results
    size = expected["size"]
    assert expected["truncate"] is True and expected["cancelled"] is True
    assert expected["allreduce_sum"] == size * (size + 1) // 2
    if expected["rank"] == 0:
        assert len(expected["any_source"]) == 3 * size
