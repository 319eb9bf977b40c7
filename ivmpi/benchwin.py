"""One-sided communication against mpi4py: ``ivmpi bench win``.

    ivmpi bench win [--rounds 5] [--quick] [--json FILE]

Runs ``python -m ivmpi.bench win`` under mpirun for ivmpi and for mpi4py
over Open MPI's shared memory, alternately, ``--rounds`` times (the order
rotates each round, so slow phases of a busy machine hit both), and prints
the median of the rounds' medians for each case and the ratio ivmpi/mpi4py
(times: below 1 is faster; bandwidths: above 1 is faster).

The cases, between two ranks, rank 0 the origin and rank 1 the target, in a
``Lock_all`` epoch on a window made by ``Win.Allocate``:
- Put + Flush and Get + Flush of 8 B (latency), 1 MiB and 16 MiB (bandwidth);
- a Fetch_and_op counter (SUM of one int64, then Flush): a read-modify-write
  carried out by the target;
- direct stores: numpy assignment of 16 MiB into rank 1's part of an
  ``Allocate_shared`` window through ``Shared_query``, against the same
  assignment between two private arrays of the process (memory speed).
The target waits in a Barrier meanwhile (an MPI call, as in OSU's one-sided
benchmarks).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

CASES = (("put", 8), ("get", 8), ("put", 1 << 20), ("get", 1 << 20), ("put", 16 << 20),
         ("get", 16 << 20), ("fetch_and_op", 8), ("direct_store", 16 << 20))
TRANSPORTS = ("ivmpi", "mpi4py")


def _loops(kind, nbytes, quick):
    if kind == "fetch_and_op":
        loop = 2000
    elif nbytes <= 64:
        loop = 10000
    elif nbytes <= 1 << 20:
        loop = 200
    else:
        loop = 20
    return max(2, loop // 5) if quick else loop


# ------------------------------------------------------------ inside one job

def measure(comm, MPI, args=None):
    """`python -m ivmpi.bench win`: every case, `--repeats` times (rank 0 prints)."""
    import numpy as np
    from .bench import common_options, summarize, write_json, mpi_library_name
    parser = argparse.ArgumentParser(prog="python -m ivmpi.bench win",
                                     description="One-sided Put/Get/Fetch_and_op timings.")
    common_options(parser)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    if comm is None:
        parser.parse_args(args)
        return
    options = parser.parse_args(args)
    rank = comm.Get_rank()
    biggest = max(n for _, n in CASES)
    win = MPI.Win.Allocate(biggest, 1, MPI.INFO_NULL, comm)
    shared = MPI.Win.Allocate_shared(biggest if rank == 1 else 0, 1, MPI.INFO_NULL, comm)
    source = np.full(biggest, 7, dtype="B")
    landing = np.zeros(biggest, dtype="B")
    private = np.zeros_like(source)      # touched now: no page faults while timed
    one, prev = np.ones(1, dtype="i8"), np.zeros(1, dtype="i8")
    results = {}
    win.Lock_all()
    for kind, nbytes in CASES:
        loop = _loops(kind, nbytes, options.quick)
        times = []
        for _ in range(options.repeats + 1):         # the first is a warm-up
            comm.Barrier()
            if rank != 0:
                continue
            if kind == "put":
                buf = source[:nbytes]
                start = time.perf_counter()
                for _ in range(loop):
                    win.Put(buf, 1)
                    win.Flush(1)
            elif kind == "get":
                buf = landing[:nbytes]
                start = time.perf_counter()
                for _ in range(loop):
                    win.Get(buf, 1)
                    win.Flush(1)
            elif kind == "fetch_and_op":
                start = time.perf_counter()
                for _ in range(loop):
                    win.Fetch_and_op(one, prev, 1, 0, MPI.SUM)
                    win.Flush(1)
            else:
                target = np.frombuffer(shared.Shared_query(1)[0], dtype="B")
                start = time.perf_counter()
                for _ in range(loop):
                    private[:] = source
                local = (time.perf_counter() - start) / loop
                start = time.perf_counter()
                for _ in range(loop):
                    target[:] = source
                results.setdefault("memory_speed", []).append(nbytes / local)
            times.append((time.perf_counter() - start) / loop)
        if rank == 0:
            results[f"{kind}_{nbytes}"] = summarize(times[1:], nbytes)
            if kind == "get" and not (landing[:nbytes] == 7).all():
                raise RuntimeError("Get did not bring the bytes Put had stored at the target")
    win.Unlock_all()
    if rank == 0:
        results["memory_speed"] = statistics.median(results["memory_speed"][1:])
        document = {"transport": options.transport, "library": mpi_library_name(MPI),
                    "results": results}
        if options.verbose:
            for name, summary in results.items():
                print(name, summary if not isinstance(summary, dict)
                      else f"{summary['time_median'] * 1e6:.2f} us")
        if options.json:
            write_json(options.json, document)
    comm.Barrier()
    shared.Free()
    win.Free()


# ------------------------------------------------------------ the comparison

def _label(kind, nbytes):
    names = {"put": "Put + Flush", "get": "Get + Flush", "fetch_and_op": "Fetch_and_op + Flush",
             "direct_store": "store into Shared_query"}
    from .benchcompare import size_label
    return f"{names[kind]} {size_label(nbytes)}"


def main(argv=None):
    from .benchcompare import Launcher, find_mpirun, mpirun_version, rotated
    parser = argparse.ArgumentParser(prog="ivmpi bench win", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both transports")
    parser.add_argument("--repeats", type=int, default=3, help="repeats inside each job")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    options = parser.parse_args(argv)
    mpirun = find_mpirun()
    family, version = mpirun_version(mpirun)
    rounds = {t: [] for t in TRANSPORTS}
    with tempfile.TemporaryDirectory(prefix="ivmpi-benchwin-") as work:
        launcher = Launcher(mpirun, family, version, "/dev/shm")
        json_path = os.path.join(work, "run.json")
        args = ["win", "--repeats", str(options.repeats)] + (["--quick"] if options.quick else [])
        for index in range(options.rounds):
            for transport in rotated(list(TRANSPORTS), index):
                document = launcher.run(transport, 2, args, json_path)
                rounds[transport].append(document["results"])
                print(f"round {index + 1}/{options.rounds}: {transport} done", file=sys.stderr)
    summary = {}
    for kind, nbytes in CASES:
        key = f"{kind}_{nbytes}"
        row = {}
        for t in TRANSPORTS:
            row[t] = statistics.median(r[key]["time_median"] for r in rounds[t])
        row["ratio"] = row["ivmpi"] / row["mpi4py"]
        summary[key] = row
    memory = statistics.median(r["memory_speed"] for t in TRANSPORTS for r in rounds[t])
    print(f"\nOne-sided, 2 ranks, {options.rounds} rounds (medians); load {os.getloadavg()[0]:.2f}")
    print(f"{'case':38s} {'ivmpi':>12s} {'mpi4py':>12s} {'ivmpi/mpi4py':>13s}")
    for kind, nbytes in CASES:
        row = summary[f"{kind}_{nbytes}"]
        if nbytes <= 64:
            cells = [f"{row[t] * 1e6:9.2f} us" for t in TRANSPORTS]
            ratio = f"{row['ratio']:.2f}x time"
        else:
            cells = [f"{nbytes / row[t] / 1e9:8.2f} GB/s" for t in TRANSPORTS]
            ratio = f"{1 / row['ratio']:.2f}x bw"
        print(f"{_label(kind, nbytes):38s} {cells[0]:>12s} {cells[1]:>12s} {ratio:>13s}")
    print(f"{'private numpy copy (memory speed)':38s} {memory / 1e9:8.2f} GB/s")
    if options.json:
        from .bench import write_json
        write_json(options.json, {"rounds": rounds, "summary": summary, "memory_speed": memory})
    return 0


if __name__ == "__main__":
    sys.exit(main())
