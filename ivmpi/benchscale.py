"""Does a ping-pong slow down when the region is laid out for many ranks?

`python -m ivmpi.benchscale` (or `ivmpi bench scale`) lays a region out for
N ranks (2, 8, 64 by default) but starts only ranks 0 and 1, each in its own
process on its own core, and times their ping-pong through the region with
a known source and with ANY_SOURCE.  The ratio against the 2-rank layout
shows what the other N-2 peers cost the progress engine (they are idle, so
any cost is looking for frames: an ANY_SOURCE receive reads its head array,
docs/layout.md "Head arrays", a known source's receive one ring).

The ranks are built directly on the layout (no launcher, no start-up
protocol), which is why this needs neither mpirun nor N processes.

`--in-process` runs both ranks in this one process on an anonymous mapping
instead: each round is a Send by rank 1 then a Recv by rank 0, with no
cross-core traffic and no waiting, so it shows the cost of finding the
message alone and stays steady on a busy machine.
"""
import argparse
import mmap
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np


def _rank_main(rank, nranks, shm_path, rounds, count, nbytes, results, start):
    os.environ["IVMPI_PEER_TIMEOUT"] = "0"      # the absent ranks never beat
    from .lib import MPI
    from . import _fastcopy, layout
    from .comm import Intracomm
    from .engine import Engine
    try:
        os.sched_setaffinity(0, {rank % os.cpu_count()})
    except (AttributeError, OSError):
        pass
    fd = os.open(shm_path, os.O_RDWR)
    mm = mmap.mmap(fd, os.fstat(fd).st_size)
    os.close(fd)
    mem = _fastcopy.Mapping(mm)

    class _Stand:
        pass
    stand = _Stand()
    stand.mem = mem
    geo, _ = layout.read_header(mem)
    comm = Intracomm._create(Engine(stand, geo, rank), range(nranks), 0)
    buf = np.zeros(nbytes, "u1")
    other = 1 - rank
    timings = {"source": [], "any": []}
    start.wait()
    for _ in range(rounds):
        for mode in ("source", "any"):
            source = other if mode == "source" else MPI.ANY_SOURCE
            t0 = time.perf_counter()
            for _ in range(count):
                if rank == 0:
                    comm.Send(buf, other, 1)
                    comm.Recv(buf, source, 1)
                else:
                    comm.Recv(buf, source, 1)
                    comm.Send(buf, other, 1)
            timings[mode].append((time.perf_counter() - t0) / (2 * count))
    if rank == 0:
        results.put(timings)
    mem.release()
    mm.close()


class InProcess:
    """Ranks 0 and 1 of an nranks layout, both in this process on one
    anonymous mapping (what --in-process times)."""

    def __init__(self, nranks, nbytes):
        from . import _fastcopy, layout
        from .comm import Intracomm
        from .engine import Engine
        os.environ["IVMPI_PEER_TIMEOUT"] = "0"      # the absent ranks never beat
        geo = layout.Geometry.choose(64 << 20, nranks)
        self.mm = mmap.mmap(-1, max(geo.rings_end, 1 << 20) + (1 << 20))
        mem = _fastcopy.Mapping(self.mm)

        class _Stand:
            pass
        stand = _Stand()
        stand.mem = mem
        geo = layout.Geometry.choose(mem.size, nranks)
        layout.write_header(mem, geo, layout.new_job_id())
        self.receiver = Intracomm._create(Engine(stand, geo, 0), range(nranks), 0)
        self.sender = Intracomm._create(Engine(stand, geo, 1), range(nranks), 0)
        self.buf = np.zeros(nbytes, "u1")

    def measure(self, count):
        """Seconds of a Send by rank 1 plus a Recv by rank 0 (known source,
        ANY_SOURCE), each the mean over count pairs."""
        from .lib import MPI
        out = []
        for source in (1, MPI.ANY_SOURCE):
            send, recv, buf = self.sender.Send, self.receiver.Recv, self.buf
            t0 = time.perf_counter()
            for _ in range(count):
                send(buf, 0, 1)
                recv(buf, source, 1)
            out.append((time.perf_counter() - t0) / count)
        return tuple(out)


def measure(nranks, rounds, count, nbytes):
    """Median half round-trip seconds (known source, ANY_SOURCE) for one layout."""
    from . import _fastcopy, layout
    geo = layout.Geometry.choose(64 << 20, nranks)
    path = f"/dev/shm/ivmpi-scale-{os.getpid()}-{nranks}"
    with open(path, "wb") as f:
        f.truncate(max(geo.rings_end, 1 << 20) + (1 << 20))
    try:
        fd = os.open(path, os.O_RDWR)
        mm = mmap.mmap(fd, os.fstat(fd).st_size)
        os.close(fd)
        mem = _fastcopy.Mapping(mm)
        geo = layout.Geometry.choose(mem.size, nranks)
        layout.write_header(mem, geo, layout.new_job_id())
        mem.release()
        mm.close()
        ctx = multiprocessing.get_context("fork")
        results, start = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_rank_main,
                             args=(r, nranks, path, rounds, count, nbytes, results, start))
                 for r in (0, 1)]
        for p in procs:
            p.start()
        start.set()
        timings = results.get(timeout=600)
        for p in procs:
            p.join(60)
    finally:
        os.unlink(path)
    return statistics.median(timings["source"]), statistics.median(timings["any"])


def _load():
    """The 1-minute load average (the bench needs two idle cores to mean much)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="ivmpi bench scale",
        description="Ping-pong between ranks 0 and 1 of region layouts for N ranks.")
    parser.add_argument("--ranks", default="2,8,64", help="layout sizes (default 2,8,64)")
    parser.add_argument("--rounds", type=int, default=7, help="repeats; medians are shown")
    parser.add_argument("--count", type=int, default=20000, help="round trips per repeat")
    parser.add_argument("--size", type=int, default=8, help="message bytes (default 8)")
    parser.add_argument("--in-process", action="store_true",
                        help="both ranks in this process: Send then Recv, no cross-core traffic")
    options = parser.parse_args(argv)
    sizes = [int(x) for x in options.ranks.split(",")]
    # Rounds interleave the layouts, so that drift on a shared machine (and
    # where the hypervisor puts the two vCPUs) hits every layout alike.
    samples = {n: ([], []) for n in sizes}
    load_before = _load()
    local = {n: InProcess(n, options.size) for n in sizes} if options.in_process else None
    for r in range(options.rounds):
        print(f"# round {r + 1}/{options.rounds}", file=sys.stderr, flush=True)
        for n in sizes:
            if local:
                t_source, t_any = local[n].measure(options.count)
            else:
                t_source, t_any = measure(n, 1, options.count, options.size)
            samples[n][0].append(t_source)
            samples[n][1].append(t_any)
    rows = [(n, statistics.median(samples[n][0]), statistics.median(samples[n][1]))
            for n in sizes]
    base_source, base_any = rows[0][1], rows[0][2]
    what = "Send + Recv in one process" if options.in_process else "Half round trip"
    print(f"{what} of {options.size} B between ranks 0 and 1, us (median of "
          f"{options.rounds}); ratio against the {rows[0][0]}-rank layout; "
          f"load average {load_before} before, {_load()} after")
    print(f"{'layout ranks':>12}  {'known source':>12}  {'ratio':>6}  {'ANY_SOURCE':>10}  {'ratio':>6}")
    for n, t_source, t_any in rows:
        print(f"{n:>12}  {t_source * 1e6:>12.3f}  {t_source / base_source:>6.2f}  "
              f"{t_any * 1e6:>10.3f}  {t_any / base_any:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
