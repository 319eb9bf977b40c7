"""Ping-pong on each path of a job spanning regions, against plain mpi4py.

    mpirun -n 4 scripts/simulate-hosts 2+2 python -m ivmpi.benchroutes [--sizes 8,65536,4194304]

Rank 0 ping-pongs with rank 1 (same group: the region path) and with the
first rank of another group (the MPI library path), each over ivmpi and
over plain mpi4py (the library communicator under ivmpi's COMM_WORLD),
in interleaved rounds.  Prints the median round-trip time per message of
each, and the ratio ivmpi / mpi4py.
"""
import argparse
import statistics
import time

import numpy as np


def _pingpong(comm, me, peer, buf, iters):
    """Seconds per round trip between me and peer (the others do nothing)."""
    if comm.Get_rank() == me:
        comm.Send(buf, peer, 1)
        comm.Recv(buf, peer, 1)
        t = time.perf_counter()
        for _ in range(iters):
            comm.Send(buf, peer, 1)
            comm.Recv(buf, peer, 1)
        return (time.perf_counter() - t) / iters
    if comm.Get_rank() == peer:
        for _ in range(iters + 1):
            comm.Recv(buf, me, 1)
            comm.Send(buf, me, 1)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,1024,65536,1048576,4194304")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.05,
                        help="rough time of one round of one size")
    args = parser.parse_args(argv)
    import ivmpi
    from ivmpi import MPI
    from mpi4py import MPI as native
    world = MPI.COMM_WORLD
    plain = native.Intracomm.fromhandle(world.handle)
    rank = world.Get_rank()
    groups = ivmpi.node_groups()
    mine = next(g for g in groups if 0 in g)
    pairs = []
    if len(mine) > 1:
        pairs.append(("region", mine[1]))
    others = [g for g in groups if 0 not in g]
    if others:
        pairs.append(("mpi", others[0][0]))
    results = {}
    for nbytes in [int(s) for s in args.sizes.split(",")]:
        buf = np.zeros(max(nbytes, 1), np.uint8)[:nbytes]
        # Iterations per round from a first rough measurement on the region path.
        iters = max(3, min(20000, int(args.seconds / (2e-6 + nbytes / 2e9))))
        for _ in range(args.rounds):
            for path, peer in pairs:
                for name, comm in (("ivmpi", world), ("mpi4py", plain)):
                    t = _pingpong(comm, 0, peer, buf, iters)
                    plain.Barrier()
                    if t is not None:
                        results.setdefault((nbytes, path, name), []).append(t)
    if rank == 0:
        print(f"groups: {groups}; pairs: " + ", ".join(f"0-{p} ({path})" for path, p in pairs))
        print(f"{'bytes':>9} {'path':>6} {'ivmpi us':>10} {'mpi4py us':>10} {'ratio':>6}")
        for nbytes in [int(s) for s in args.sizes.split(",")]:
            for path, _ in pairs:
                a = statistics.median(results[(nbytes, path, "ivmpi")]) * 1e6
                b = statistics.median(results[(nbytes, path, "mpi4py")]) * 1e6
                print(f"{nbytes:>9} {path:>6} {a:>10.2f} {b:>10.2f} {a / b:>6.2f}")


if __name__ == "__main__":
    main()
