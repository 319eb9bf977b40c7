"""Ping-pong on each path of a job spanning regions, against plain mpi4py.

    mpirun -n 4 scripts/simulate-hosts 2+2 python -m ivmpi.benchroutes [--sizes 8,65536,4194304]
    mpirun -n 4 scripts/simulate-hosts 2+2 python -m ivmpi.benchroutes --collectives
    mpirun -n 4 --mca btl tcp,self scripts/simulate-hosts 2+2 python -m ivmpi.benchroutes ...

(The last: the library over TCP only, as between machines; simulated hosts
share a kernel, over whose shared memory the library joins the groups.)

Rank 0 ping-pongs with rank 1 (same group: the region path) and with the
first rank of another group (the MPI library path), each over ivmpi and
over plain mpi4py (the library communicator under ivmpi's COMM_WORLD),
in interleaved rounds, with each of the usual point-to-point forms:
Send/Recv, send/recv of objects, Isend/Irecv + Wait, and Sendrecv.
Prints the median round-trip time of each, and the ratio ivmpi / mpi4py.
With --collectives: Allreduce, Bcast and Allgather on all ranks, with two
levels (ivmpi.hierarchy), flat, and over plain mpi4py, in interleaved
rounds (collectives_main).
"""
import argparse
import statistics
import time

import numpy as np


def _send_recv(comm, peer, sbuf, rbuf, obj, first):
    if first:
        comm.Send(sbuf, peer, 1)
        comm.Recv(rbuf, peer, 1)
    else:
        comm.Recv(rbuf, peer, 1)
        comm.Send(sbuf, peer, 1)


def _objects(comm, peer, sbuf, rbuf, obj, first):
    if first:
        comm.send(obj, peer, 1)
        comm.recv(source=peer, tag=1)
    else:
        comm.recv(source=peer, tag=1)
        comm.send(obj, peer, 1)


def _nonblocking(comm, peer, sbuf, rbuf, obj, first):
    # The receive is posted before the send, as programs usually do.
    rreq = comm.Irecv(rbuf, peer, 1)
    if first:
        comm.Isend(sbuf, peer, 1).Wait()
        rreq.Wait()
    else:
        rreq.Wait()
        comm.Isend(sbuf, peer, 1).Wait()


def _sendrecv(comm, peer, sbuf, rbuf, obj, first):
    # Both sides exchange at once: one Sendrecv each per round trip.
    comm.Sendrecv(sbuf, peer, 1, rbuf, peer, 1)


FORMS = {"Send/Recv": _send_recv, "send/recv": _objects, "Isend/Irecv": _nonblocking,
         "Sendrecv": _sendrecv}


def _pingpong(comm, form, me, peer, sbuf, rbuf, obj, iters):
    """Seconds per round trip between me and peer (the others do nothing)."""
    rank = comm.Get_rank()
    if rank == me:
        form(comm, peer, sbuf, rbuf, obj, True)
        t = time.perf_counter()
        for _ in range(iters):
            form(comm, peer, sbuf, rbuf, obj, True)
        return (time.perf_counter() - t) / iters
    if rank == peer:
        for _ in range(iters + 1):
            form(comm, me, sbuf, rbuf, obj, False)
    return None


def _quiet_barrier(comm):
    """A barrier whose waiting ranks sleep between polls: the ranks left out
    of a ping-pong do not take the cores from the pair being timed (the
    machine may have fewer cores than ranks), so each transport is timed
    between its two ranks alone, as on separate hosts."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.0002)


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
    hierarchy.enable(two, True)
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
    parser.add_argument("--forms", default=",".join(FORMS),
                        help="comma-separated among: " + ", ".join(FORMS))
    parser.add_argument("--paths", default="region,mpi", help="region, mpi or both")
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
    wanted = args.paths.split(",")
    forms = args.forms.split(",")
    pairs = []
    if len(mine) > 1 and "region" in wanted:
        pairs.append(("region", mine[1]))
    others = [g for g in groups if 0 not in g]
    if others and "mpi" in wanted:
        pairs.append(("mpi", others[0][0]))
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for nbytes in sizes:
        sbuf = np.zeros(max(nbytes, 1), np.uint8)[:nbytes]
        rbuf = np.zeros(max(nbytes, 1), np.uint8)[:nbytes]
        # Iterations per round from a rough guess of the region path's time.
        iters = max(3, min(20000, int(args.seconds / (2e-6 + nbytes / 2e9))))
        for _ in range(args.rounds):
            for form in forms:
                for path, peer in pairs:
                    for name, comm in (("ivmpi", world), ("mpi4py", plain)):
                        t = _pingpong(comm, FORMS[form], 0, peer, sbuf, rbuf, sbuf, iters)
                        _quiet_barrier(plain)
                        if t is not None:
                            results.setdefault((nbytes, form, path, name), []).append(t)
    if rank == 0:
        print(f"groups: {groups}; pairs: " + ", ".join(f"0-{p} ({path})" for path, p in pairs)
              + f"; medians of {args.rounds} rounds, round trips")
        print(f"{'bytes':>9} {'form':>12} {'path':>6} {'ivmpi us':>10} {'mpi4py us':>10} "
              f"{'ratio':>6}")
        for nbytes in sizes:
            for form in forms:
                for path, _ in pairs:
                    a = statistics.median(results[(nbytes, form, path, "ivmpi")]) * 1e6
                    b = statistics.median(results[(nbytes, form, path, "mpi4py")]) * 1e6
                    print(f"{nbytes:>9} {form:>12} {path:>6} {a:>10.2f} {b:>10.2f} "
                          f"{a / b:>6.2f}")


if __name__ == "__main__":
    main()
