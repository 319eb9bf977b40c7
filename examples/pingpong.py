"""Ping-pong between ranks 0 and 1: latency and bandwidth per message size.

    mpirun -n 2 python examples/pingpong.py

Written for mpi4py: with `from mpi4py import MPI` instead of the import below
the same program runs over Open MPI's own transport, for comparison.
Other ranks, if any, only wait.  Takes about 3 to 5 seconds.
"""
import sys
import numpy as np

from ivmpi import MPI

SIZES = [8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20]
SECONDS_PER_SIZE = 0.3
MAX_ROUNDS = 50_000


def pingpong(comm, buf, peer, rounds):
    """Time `rounds` round trips of len(buf) bytes; returns seconds per one-way trip."""
    start = MPI.Wtime()
    for _ in range(rounds):
        if comm.rank == 0:
            comm.Send(buf, peer, 1)
            comm.Recv(buf, peer, 1)
        else:
            comm.Recv(buf, peer, 1)
            comm.Send(buf, peer, 1)
    return (MPI.Wtime() - start) / (2 * rounds)


def format_mbps(mbps):
    """One decimal, but significant digits below 1 MB/s: a slow small message
    on a busy machine must not print as 0.0."""
    return f"{mbps:.1f}" if mbps >= 1 else f"{mbps:.3g}"


def main():
    comm = MPI.COMM_WORLD
    if comm.size < 2:
        sys.exit("pingpong needs at least 2 ranks: mpirun -n 2 python examples/pingpong.py")
    if comm.rank > 1:
        comm.Barrier()
        return
    peer = 1 - comm.rank
    if comm.rank == 0:
        print(f"{'bytes':>10} {'rounds':>7} {'latency us':>11} {'MB/s':>9}")
    results = []
    for size in SIZES:
        buf = np.zeros(size, np.uint8)
        # Check the content once: rank 0 sends a pattern, rank 1 echoes it back.
        pattern = (np.arange(size) % 251).astype(np.uint8)
        if comm.rank == 0:
            buf[:] = pattern
        pingpong(comm, buf, peer, 1)
        if not np.array_equal(buf, pattern):
            sys.exit(f"pingpong: rank {comm.rank}: wrong data for {size} bytes")
        # Calibrate: grow the number of rounds until a run takes a measurable
        # time, then size three runs to about SECONDS_PER_SIZE in all.
        rounds = 4
        while True:
            elapsed = comm.bcast(2 * rounds * pingpong(comm, buf, peer, rounds), root=0)
            if elapsed > 0.02 or rounds >= MAX_ROUNDS:
                break
            rounds *= 4
        rounds = max(1, min(MAX_ROUNDS, int(rounds * SECONDS_PER_SIZE / 3 / elapsed)))
        # The median of three runs, so that one disturbed run does not count.
        seconds = sorted(pingpong(comm, buf, peer, rounds) for _ in range(3))[1]
        if comm.rank == 0:
            mbps = size / seconds / 1e6
            results.append((size, seconds, mbps))
            print(f"{size:>10} {rounds:>7} {seconds * 1e6:>11.2f} {format_mbps(mbps):>9}", flush=True)
    if comm.rank == 0:
        latency = results[0][1] * 1e6
        bandwidth = max(r[2] for r in results)
        print(f"pingpong: data verified; latency {latency:.2f} us (8 B), "
              f"peak bandwidth {bandwidth:.0f} MB/s")
    if comm.size > 2:
        comm.Barrier()


if __name__ == "__main__":
    main()
