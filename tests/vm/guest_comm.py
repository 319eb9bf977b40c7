"""One ivmpi rank, in a guest or on the host; checks everything it receives.

Usage: guest_comm.py MAX_BYTES
Rank and size come from IVMPI_RANK / IVMPI_SIZE, the region from IVMPI_REGION
(ivmpi's standalone mode).  Prints "STEP-name rank=R" after each passed step
and "RANK-R-OK" at the end; any mismatch raises, so the exit code is non-zero.
"""
import os
import sys

import numpy as np

from ivmpi import MPI

SIZES = [0, 1, 7, 8, 4095, 4096, 4097, 65536 + 3, 1 << 20, 8 << 20, 64 << 20]


def data(n, seed):
    # Random bytes: a chunk landing at the wrong offset cannot match by accident.
    return np.frombuffer(np.random.default_rng(seed).bytes(n), dtype=np.uint8)


def step(name, comm):
    print(f"STEP-{name} rank={comm.Get_rank()}", flush=True)


def check(what, got, want):
    if not np.array_equal(got, want):
        bad = int(np.flatnonzero(got != want)[0]) if got.shape == want.shape else -1
        raise SystemExit(f"rank {MPI.COMM_WORLD.Get_rank()}: {what}: wrong content "
                         f"(first bad byte {bad})")


def ping_pong(comm, rounds=50):
    rank = comm.Get_rank()
    if rank > 1:
        return
    peer = 1 - rank
    buf = np.zeros(64, dtype=np.uint8)
    for i in range(rounds):
        msg = data(64, 1000 + i)
        if rank == 0:
            comm.Send(msg, dest=peer, tag=i)
            comm.Recv(buf, source=peer, tag=i)
            check(f"pong {i}", buf, msg[::-1])
        else:
            comm.Recv(buf, source=peer, tag=i)
            check(f"ping {i}", buf, msg)
            comm.Send(np.ascontiguousarray(buf[::-1]), dest=peer, tag=i)


def send_recv_sizes(comm, max_bytes):
    """Rank 0 sends every size to each other rank, which sends it back."""
    rank, size = comm.Get_rank(), comm.Get_size()
    for n in (s for s in SIZES if s <= max_bytes):
        for peer in range(1, size):
            want = data(n, n * 31 + peer)
            if rank == 0:
                comm.Send(want, dest=peer, tag=7)
                back = np.empty(n, dtype=np.uint8)
                status = MPI.Status()
                comm.Recv(back, source=peer, tag=8, status=status)
                assert status.Get_count(MPI.BYTE) == n, (status.Get_count(MPI.BYTE), n)
                check(f"{n} bytes back from rank {peer}", back, want)
            elif rank == peer:
                got = np.empty(n, dtype=np.uint8)
                comm.Recv(got, source=0, tag=7)
                check(f"{n} bytes from rank 0", got, want)
                comm.Send(got, dest=0, tag=8)


def collectives(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    for root in {0, size - 1}:
        obj = comm.bcast({"root": root, "items": list(range(100))} if rank == root else None,
                         root=root)
        assert obj == {"root": root, "items": list(range(100))}, obj
        arr = data(100000, 77 + root) if rank == root else np.empty(100000, dtype=np.uint8)
        comm.Bcast(arr, root=root)
        check(f"Bcast from {root}", arr, data(100000, 77 + root))
    total = comm.allreduce(rank + 1, op=MPI.SUM)
    assert total == size * (size + 1) // 2, total
    values = np.arange(1000, dtype=np.float64) * (rank + 1)
    out = np.empty_like(values)
    comm.Allreduce(values, out, op=MPI.SUM)
    check("Allreduce", out.view(np.uint8),
          (np.arange(1000, dtype=np.float64) * (size * (size + 1) // 2)).view(np.uint8))


def any_source(comm):
    """Every other rank sends its rank; rank 0 takes them in arrival order."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        seen = set()
        for _ in range(size - 1):
            status = MPI.Status()
            msg = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            assert msg == {"from": status.Get_source(), "tag": status.Get_tag()}, \
                (msg, status.Get_source(), status.Get_tag())
            seen.add(status.Get_source())
        assert seen == set(range(1, size)), seen
    else:
        comm.send({"from": rank, "tag": 40 + rank}, dest=0, tag=40 + rank)


def main():
    max_bytes = int(sys.argv[1])
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    assert rank == int(os.environ["IVMPI_RANK"]), rank
    assert size == int(os.environ["IVMPI_SIZE"]), size
    step("init", comm)
    ping_pong(comm)
    step("pingpong", comm)
    send_recv_sizes(comm, max_bytes)
    step("sendrecv", comm)
    collectives(comm)
    step("collectives", comm)
    any_source(comm)
    step("anysource", comm)
    comm.Barrier()
    print(f"RANK-{rank}-OK", flush=True)


if __name__ == "__main__":
    main()
