"""One ivmpi rank, in a guest or on the host, using MPI windows over the region.

Rank and size come from IVMPI_RANK / IVMPI_SIZE, the region from IVMPI_REGION
(ivmpi's standalone mode).  Checks that each rank sees the others' stores
through an Allocate_shared window, that Lock/Put/Unlock lands in another
rank's Allocate window, and that Fetch_and_op counts every increment.
Prints "STEP-name rank=R" after each passed step and "RANK-R-OK" at the end.
"""
import numpy as np

from ivmpi import MPI

N = 1024     # int64 per rank


def step(name, comm):
    print(f"STEP-{name} rank={comm.Get_rank()}", flush=True)


def pattern(rank):
    return np.arange(N, dtype=np.int64) * 1000 + rank


def shared_stores(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    win = MPI.Win.Allocate_shared(N * 8, 8, comm=comm)
    win.Fence()
    mine = np.frombuffer(win.Shared_query(rank)[0], np.int64)
    mine[:] = pattern(rank)                  # plain stores into the region
    win.Fence()
    for other in range(size):
        seen = np.frombuffer(win.Shared_query(other)[0], np.int64)
        if not np.array_equal(seen, pattern(other)):
            raise SystemExit(f"rank {rank}: rank {other}'s stores not seen")
    win.Fence()
    win.Free()


def lock_put_unlock(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    win = MPI.Win.Allocate(N * 8 * size, 8, comm=comm)
    local = np.frombuffer(win.tomemory(), np.int64)
    local[:] = -1
    comm.Barrier()
    for target in range(size):
        if target != rank:
            win.Lock(target, MPI.LOCK_EXCLUSIVE)
            win.Put(pattern(rank), target, target=(rank * N, N, MPI.INT64_T))
            win.Unlock(target)
    comm.Barrier()
    win.Lock(rank, MPI.LOCK_SHARED)
    for origin in range(size):
        block = local[origin * N:(origin + 1) * N]
        want = np.full(N, -1, np.int64) if origin == rank else pattern(origin)
        if not np.array_equal(block, want):
            raise SystemExit(f"rank {rank}: rank {origin}'s Put did not land")
    win.Unlock(rank)
    win.Free()


def fetch_and_op(comm, rounds=50):
    rank, size = comm.Get_rank(), comm.Get_size()
    win = MPI.Win.Allocate(8, 8, comm=comm)
    np.frombuffer(win.tomemory(), np.int64)[:] = 0
    comm.Barrier()
    one, previous = np.ones(1, np.int64), np.zeros(1, np.int64)
    seen = set()
    win.Lock_all()
    for _ in range(rounds):
        for target in range(size):
            win.Fetch_and_op(one, previous, target, 0, MPI.SUM)
            win.Flush(target)
            if target == 0:
                seen.add(int(previous[0]))
    win.Unlock_all()
    comm.Barrier()
    counter = int(np.frombuffer(win.tomemory(), np.int64)[0])
    if counter != rounds * size:
        raise SystemExit(f"rank {rank}: counter {counter}, expected {rounds * size}")
    # Every increment of rank 0's counter returned a distinct old value.
    everyone = comm.allgather(sorted(seen))
    values = sorted(v for part in everyone for v in part)
    if values != list(range(rounds * size)):
        raise SystemExit(f"rank {rank}: Fetch_and_op returned values twice or skipped some")
    win.Free()


def main():
    comm = MPI.COMM_WORLD
    step("init", comm)
    shared_stores(comm)
    step("shared", comm)
    lock_put_unlock(comm)
    step("lockput", comm)
    fetch_and_op(comm)
    step("fetchop", comm)
    comm.Barrier()
    print(f"RANK-{comm.Get_rank()}-OK", flush=True)


if __name__ == "__main__":
    main()
