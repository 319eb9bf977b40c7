"""2-D heat equation on a Cartesian grid of ranks.

    mpirun -n 4 python examples/heat2d.py [--size 240x200] [--steps 300] [--out heat2d.bin]

The plate is split into blocks over a grid of ranks (`Compute_dims`,
`Create_cart`, `Shift`).  Each rank keeps its block with one ghost layer
and, every step:

1. posts the halo exchange with its four neighbours: `Irecv`/`Isend` of
   subarray datatypes that pick a row or a column of the block straight out
   of the array (no packing in user code);
2. updates the interior cells, which need no ghost, while the halos travel
   and while the `Iallreduce` of the previous step's residual completes;
3. waits for the halos, updates the cells along the block's edges, and
   starts the `Iallreduce` of this step's residual.

The plate's edges are held at fixed temperatures (the top edge hot).  At
the end every rank writes its block into one file with MPI-IO (a file view
per rank, one collective write), and rank 0 checks the file and the
residual history against the same computation done serially: the
arithmetic per cell is identical, so the field must be equal bit for bit.

Written for mpi4py: with `from mpi4py import MPI` instead of the import below
the same program runs over Open MPI's own transport.
"""
import argparse
import os
import tempfile

import numpy as np

from ivmpi import MPI

ALPHA = 0.2   # explicit scheme: stable for ALPHA <= 0.25


def initial(ny, nx):
    """The whole plate with its fixed edges: hot top edge, a warm spot."""
    u = np.zeros((ny + 2, nx + 2))
    u[0, :] = 1.0
    y, x = np.mgrid[0:ny, 0:nx]
    u[1:-1, 1:-1] = 0.5 * np.exp(-((y - ny / 3) ** 2 + (x - nx / 2) ** 2) / (0.02 * nx * ny))
    return u


def update(new, u, rows, cols):
    """One Jacobi step of the cells new[rows, cols] from u (the same
    expression, in the same order, serially and in parallel)."""
    up = (slice(rows.start - 1, rows.stop - 1), cols)
    down = (slice(rows.start + 1, rows.stop + 1), cols)
    left = (rows, slice(cols.start - 1, cols.stop - 1))
    right = (rows, slice(cols.start + 1, cols.stop + 1))
    centre = u[rows, cols]
    new[rows, cols] = centre + ALPHA * ((u[up] + u[down] + u[left] + u[right]) - 4.0 * centre)


def serial(ny, nx, steps):
    u = initial(ny, nx)
    new = u.copy()
    residuals = []
    for _ in range(steps):
        update(new, u, slice(1, ny + 1), slice(1, nx + 1))
        residuals.append(float(np.sum((new[1:-1, 1:-1] - u[1:-1, 1:-1]) ** 2)))
        u, new = new, u
    return u[1:-1, 1:-1], residuals


def split(n, parts, index):
    """Start and length of block `index` when n cells are split in `parts`."""
    base, extra = divmod(n, parts)
    return index * base + min(index, extra), base + (index < extra)


class Halo:
    """Subarray datatypes for the four edges of a block and its ghosts."""

    def __init__(self, ny, nx):
        shape = [ny + 2, nx + 2]

        def sub(sizes, starts):
            return MPI.DOUBLE.Create_subarray(shape, sizes, starts).Commit()

        row, col = [1, nx], [ny, 1]
        # (what to send, where the neighbour's cells land) per direction.
        self.north = sub(row, [1, 1]), sub(row, [0, 1])
        self.south = sub(row, [ny, 1]), sub(row, [ny + 1, 1])
        self.west = sub(col, [1, 1]), sub(col, [1, 0])
        self.east = sub(col, [1, nx]), sub(col, [1, nx + 1])

    def start(self, cart, u, neighbours):
        """Post the exchange of u's edges: four receives, then four sends."""
        north, south, west, east = neighbours
        pairs = ((north, self.north, 0), (south, self.south, 1),
                 (west, self.west, 2), (east, self.east, 3))
        requests = [cart.Irecv([u, 1, ghost], peer, tag ^ 1)
                    for peer, (_, ghost), tag in pairs]
        requests += [cart.Isend([u, 1, edge], peer, tag) for peer, (edge, _), tag in pairs]
        return requests

    def free(self):
        for pair in (self.north, self.south, self.west, self.east):
            for datatype in pair:
                datatype.Free()


def solve(cart, NY, NX, steps):
    """This rank's block after `steps` steps, its placement, and the
    residual after every step (sum over the plate of the squared change)."""
    py, px = cart.Get_coords(cart.Get_rank())
    (Py, Px) = cart.Get_topo()[0]
    y0, ny = split(NY, Py, py)
    x0, nx = split(NX, Px, px)
    # The block with its ghost layer, cut out of the initial plate, so the
    # plate's fixed edges are already in the ghosts of the blocks along it.
    u = initial(NY, NX)[y0:y0 + ny + 2, x0:x0 + nx + 2].copy()
    new = u.copy()
    north, south = cart.Shift(0, 1)
    west, east = cart.Shift(1, 1)
    halo = Halo(ny, nx)
    residuals = []
    local, total = np.zeros(1), np.zeros(1)
    pending = MPI.REQUEST_NULL
    inner_rows, inner_cols = slice(2, ny), slice(2, nx)
    for _ in range(steps):
        requests = halo.start(cart, u, (north, south, west, east))
        update(new, u, inner_rows, inner_cols)      # overlaps the halos and the Iallreduce
        if pending != MPI.REQUEST_NULL:
            pending.Wait()
            residuals.append(float(total[0]))
        MPI.Request.Waitall(requests)
        all_rows, all_cols = slice(1, ny + 1), slice(1, nx + 1)
        for rows, cols in ((slice(1, 2), all_cols), (slice(ny, ny + 1), all_cols),
                           (all_rows, slice(1, 2)), (all_rows, slice(nx, nx + 1))):
            update(new, u, rows, cols)
        local[0] = np.sum((new[1:-1, 1:-1] - u[1:-1, 1:-1]) ** 2)
        pending = cart.Iallreduce(local, total, op=MPI.SUM)
        u, new = new, u
    pending.Wait()
    residuals.append(float(total[0]))
    halo.free()
    return u, (y0, ny, x0, nx), residuals


def write(cart, path, u, placement, NY, NX):
    """Every rank's block into one file of NY x NX doubles, collectively."""
    y0, ny, x0, nx = placement
    filetype = MPI.DOUBLE.Create_subarray([NY, NX], [ny, nx], [y0, x0]).Commit()
    block = MPI.DOUBLE.Create_subarray([ny + 2, nx + 2], [ny, nx], [1, 1]).Commit()
    fh = MPI.File.Open(cart, path, MPI.MODE_CREATE | MPI.MODE_WRONLY)
    fh.Set_size(0)
    fh.Set_view(0, MPI.DOUBLE, filetype)
    fh.Write_all([u, 1, block])
    fh.Close()
    filetype.Free()
    block.Free()


def main():
    parser = argparse.ArgumentParser(description="2-D heat equation on a grid of ranks")
    parser.add_argument("--size", default="240x200", help="plate size, rows x columns")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", help="file for the final field (default: a temporary one)")
    args = parser.parse_args()
    NY, NX = (int(n) for n in args.size.lower().split("x"))
    comm = MPI.COMM_WORLD
    dims = MPI.Compute_dims(comm.Get_size(), 2)
    cart = comm.Create_cart(dims, periods=[False, False])
    if min(NY // dims[0], NX // dims[1]) < 1:
        raise SystemExit(f"heat2d: a {NY}x{NX} plate is too small for a {dims} grid of ranks")
    start = MPI.Wtime()
    u, placement, residuals = solve(cart, NY, NX, args.steps)
    seconds = MPI.Wtime() - start
    path = args.out
    if path is None:
        # One file for all ranks: rank 0 makes it.
        if cart.Get_rank() == 0:
            fd, path = tempfile.mkstemp(prefix="heat2d-", suffix=".bin")
            os.close(fd)
        path = cart.bcast(path)
    write(cart, path, u, placement, NY, NX)
    cart.Barrier()
    if cart.Get_rank() == 0:
        field = np.fromfile(path, dtype=np.float64).reshape(NY, NX)
        expected, expected_residuals = serial(NY, NX, args.steps)
        if not np.array_equal(field, expected):
            worst = np.abs(field - expected).max()
            raise SystemExit(f"heat2d: the field differs from the serial one (by up to {worst})")
        # Sums over blocks add in another order than the serial sum.
        if not np.allclose(residuals, expected_residuals, rtol=1e-10, atol=0):
            raise SystemExit("heat2d: the residual history differs from the serial one")
        if args.out is None:
            os.unlink(path)
        print(f"heat2d: {cart.Get_size()} ranks ({dims[0]}x{dims[1]}), {NY}x{NX} plate, "
              f"{args.steps} steps, final residual {residuals[-1]:.6e}, "
              f"field written with MPI-IO and verified against serial")
        print(f"time: {seconds:.3f} s for the steps", flush=True)
    cart.Free()


if __name__ == "__main__":
    main()
