"""Ping-pong on each path of a job spanning regions, against plain mpi4py.

    mpirun -n 4 scripts/simulate-hosts 2+2 python -m ivmpi.benchroutes [--sizes 8,65536,4194304]
    mpirun -n 4 scripts/simulate-hosts 2+2 python -m ivmpi.benchroutes --collectives

Rank 0 ping-pongs with rank 1 (same group: the region path) and with the
first rank of another group (the MPI library path), each over ivmpi and
over plain mpi4py (the library communicator under ivmpi's COMM_WORLD),
in interleaved rounds.  Prints the median round-trip time per message of
each, and the ratio ivmpi / mpi4py.  With --collectives: Allreduce, Bcast
and Allgather on all ranks, with two levels (ivmpi.hierarchy), flat, and
over plain mpi4py, in interleaved rounds (collectives_main).
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


# --- collectives: two levels against flat against plain mpi4py ----------------------------

COLLECTIVE_SIZES = "8,65536,1048576"
COLLECTIVE_KINDS = ("Allreduce", "Bcast", "Allgather")
WAYS = ("two-level", "flat", "mpi4py")


def _collective_call(kind, comm, nbytes):
    """A call of one collective kind on comm with nbytes of data per rank
    (Allreduce: float64 sums; Bcast from rank 0; Allgather: nbytes a block)."""
    import numpy as np
    size = comm.Get_size()
    if kind == "Allreduce":
        send = np.ones(max(1, nbytes // 8))
        recv = np.empty_like(send)
        return lambda: comm.Allreduce(send, recv)
    if kind == "Bcast":
        buf = np.zeros(nbytes, np.uint8)
        return lambda: comm.Bcast(buf, 0)
    block = np.ones(nbytes, np.uint8)
    recv = np.empty(nbytes * size, np.uint8)
    return lambda: comm.Allgather(block, recv)


def _time_calls(call, iters, sync):
    """Seconds per call on the slowest rank (every rank times its loop)."""
    sync.Barrier()
    call()
    sync.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        call()
    t = (time.perf_counter() - t) / iters
    return sync.allreduce(t, op=_MAX())


def _MAX():
    from mpi4py import MPI as native
    return native.MAX


def collectives_main(args):
    """Allreduce, Bcast and Allgather on all ranks, each three ways in
    interleaved rounds (the order rotated from round to round): ivmpi with
    two levels (ivmpi.hierarchy), ivmpi flat (the library's call on the
    whole communicator, what a communicator spanning groups did before),
    and plain mpi4py on the same processes.  Prints medians over rounds."""
    import os
    import ivmpi
    from ivmpi import MPI, hierarchy
    from mpi4py import MPI as native
    world = MPI.COMM_WORLD
    two = world.Dup()
    flat = world.Dup()
    hierarchy.enable(flat, False)
    plain = native.Intracomm.fromhandle(world.handle).Dup()
    sync = native.Intracomm.fromhandle(world.handle).Dup()
    comms = {"two-level": two, "flat": flat, "mpi4py": plain}
    sizes = [int(x) for x in args.sizes.split(",")]
    load_before = os.getloadavg()[0]
    results = {}
    for r in range(args.rounds):
        for kind in COLLECTIVE_KINDS:
            for nbytes in sizes:
                iters = max(3, min(3000, int(args.seconds / (10e-6 + nbytes / 1e9))))
                order = WAYS[r % 3:] + WAYS[:r % 3]
                for way in order:
                    t = _time_calls(_collective_call(kind, comms[way], nbytes), iters, sync)
                    results.setdefault((kind, nbytes, way), []).append(t)
    used = hierarchy.stats(two)
    if world.Get_rank() == 0:
        print(f"ranks: {world.Get_size()}, groups: {ivmpi.node_groups()}, two levels used: "
              f"{bool(used and used['two_level'])}; {args.rounds} rounds, medians of the "
              f"slowest rank's time per call; load average {load_before:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after")
        print(f"{'collective':>10} {'bytes':>8} {'2-level us':>11} {'flat us':>9} "
              f"{'mpi4py us':>10} {'2-lvl/mpi4py':>13} {'flat/mpi4py':>12}")
        for kind in COLLECTIVE_KINDS:
            for nbytes in sizes:
                med = {w: statistics.median(results[(kind, nbytes, w)]) * 1e6 for w in WAYS}
                print(f"{kind:>10} {nbytes:>8} {med['two-level']:>11.1f} {med['flat']:>9.1f} "
                      f"{med['mpi4py']:>10.1f} {med['two-level'] / med['mpi4py']:>13.2f} "
                      f"{med['flat'] / med['mpi4py']:>12.2f}")
    for comm in (two, flat):
        comm.Free()
    plain.Free()
    sync.Free()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectives", action="store_true",
                        help="time Allreduce, Bcast and Allgather with two levels, flat and "
                             "over plain mpi4py instead of the ping-pongs")
    parser.add_argument("--sizes", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.05,
                        help="rough time of one round of one size")
    args = parser.parse_args(argv)
    if args.collectives:
        args.sizes = args.sizes or COLLECTIVE_SIZES
        return collectives_main(args)
    args.sizes = args.sizes or "8,1024,65536,1048576,4194304"
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
