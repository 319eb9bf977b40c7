"""Sum numpy arrays across all ranks with Allreduce, and check the result.

    mpirun -n 2 python examples/allreduce.py

Written for mpi4py: with `from mpi4py import MPI` instead of the import below
the same program runs over Open MPI's own transport.
"""
import sys

import numpy as np

from ivmpi import MPI

N = 1_000_000


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    # Integers: every rank contributes (rank + 1) * i, so the sum is i * size*(size+1)/2.
    mine = np.arange(N, dtype=np.int64) * (rank + 1)
    total = np.empty_like(mine)
    comm.Allreduce(mine, total, op=MPI.SUM)
    expected = np.arange(N, dtype=np.int64) * (size * (size + 1) // 2)
    if not np.array_equal(total, expected):
        sys.exit(f"allreduce: rank {rank}: wrong integer sum")

    # Floating point: the maximum of a per-rank curve, and a global mean.
    x = np.linspace(0.0, 1.0, N)
    curve = np.sin(np.pi * x * (rank + 1))
    peak = np.empty_like(curve)
    comm.Allreduce(curve, peak, op=MPI.MAX)
    serial = np.max([np.sin(np.pi * x * (r + 1)) for r in range(size)], axis=0)
    if not np.array_equal(peak, serial):
        sys.exit(f"allreduce: rank {rank}: wrong maximum")
    mean = comm.allreduce(float(curve.sum()), op=MPI.SUM) / (N * size)

    if rank == 0:
        print(f"allreduce: {size} ranks x {N} elements verified; "
              f"checksum {int(total.sum() % 1_000_000_007)}; mean {mean:.6f}")


if __name__ == "__main__":
    main()
