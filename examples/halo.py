"""1-D heat diffusion split across ranks, with halo exchange by Sendrecv.

    mpirun -n 3 python examples/halo.py

Each rank owns a contiguous piece of the rod plus one ghost cell at each end;
every step it swaps edge cells with its neighbours (PROC_NULL at the ends of
the rod, whose temperature stays fixed) and updates its piece.  At the end
rank 0 gathers the rod and checks it against the same computation done
serially: the arithmetic per cell is identical, so the results must be equal.

Written for mpi4py: with `from mpi4py import MPI` instead of the import below
the same program runs over Open MPI's own transport.
"""
import sys

import numpy as np

from ivmpi import MPI

CELLS = 100_000
STEPS = 200
ALPHA = 0.25


def initial():
    x = np.linspace(0.0, 1.0, CELLS)
    return np.exp(-200.0 * (x - 0.3) ** 2) + (x > 0.7)


def step(u):
    """One explicit step on the interior of u (u[0] and u[-1] are fixed or ghosts)."""
    u[1:-1] = u[1:-1] + ALPHA * (u[:-2] - 2.0 * u[1:-1] + u[2:])


def serial():
    u = initial()
    for _ in range(STEPS):
        step(u)
    return u


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    counts = [len(piece) for piece in np.array_split(np.arange(CELLS), size)]
    start = sum(counts[:rank])
    n = counts[rank]
    left = rank - 1 if rank > 0 else MPI.PROC_NULL
    right = rank + 1 if rank < size - 1 else MPI.PROC_NULL

    # u[0] and u[n+1] are ghost cells; at the rod's ends they hold the fixed boundary.
    whole = initial()
    u = np.empty(n + 2)
    u[1:-1] = whole[start:start + n]
    u[0] = whole[start - 1] if rank > 0 else whole[0]
    u[-1] = whole[start + n] if rank < size - 1 else whole[-1]
    first, last = rank == 0, rank == size - 1

    for _ in range(STEPS):
        # Send my first cell left and receive my right ghost from the right, then the mirror.
        comm.Sendrecv(u[1:2], left, 0, u[-1:], right, 0)
        comm.Sendrecv(u[-2:-1], right, 1, u[0:1], left, 1)
        # The rod's own end cells are fixed: skip them in the update.
        lo = 2 if first else 1
        hi = n if last else n + 1
        u[lo:hi] = u[lo:hi] + ALPHA * (u[lo - 1:hi - 1] - 2.0 * u[lo:hi] + u[lo + 1:hi + 1])

    rod = np.empty(CELLS) if rank == 0 else None
    comm.Gatherv(u[1:-1], [rod, counts] if rank == 0 else None, root=0)
    if rank == 0:
        expected = serial()
        diff = float(np.max(np.abs(rod - expected)))
        if diff != 0.0:
            sys.exit(f"halo: result differs from the serial computation by {diff}")
        print(f"halo: {size} ranks, {CELLS} cells, {STEPS} steps verified against serial; "
              f"total heat {rod.sum():.9f}")


if __name__ == "__main__":
    main()
