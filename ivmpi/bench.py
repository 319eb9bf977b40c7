"""Micro-benchmarks for an MPI communicator: ``python -m ivmpi.bench``.

    mpirun -n 2 python -m ivmpi.bench pingpong [options]
    mpirun -n 4 python -m ivmpi.bench collectives [options]
    mpirun -n 2 python -m ivmpi.bench win [options]

``pingpong`` takes the options of ``python -m mpi4py.bench pingpong`` and
prints the same table, so the two can be read side by side.  Every command
also takes ``--transport ivmpi|mpi4py`` (which ``MPI`` module to import: the
code is otherwise identical, so the comparison is fair), ``--repeats R``
(each size is measured R times; the table shows the median) and ``--json
FILE`` (machine-readable results, written by rank 0).

Timing: a repeat times ``loop`` round trips as one block and divides, rather
than reading the clock around each message, because a clock read costs about
as much as a whole small message through shared memory.
"""
import argparse
import json
import statistics
import sys

TRANSPORTS = ("ivmpi", "mpi4py")

# Beyond these sizes, fewer iterations are run (same rule as mpi4py's bench).
LARGE_SIZE = 1 << 14
HUGE_SIZE = 1 << 20

SMALL_DICT = {"step": 42, "name": "halo", "values": [1.5, 2.5], "done": False}


def load_mpi(transport):
    """Return the ``MPI`` module of the chosen transport."""
    if transport == "mpi4py":
        from .lib import MPI
    elif transport == "ivmpi":
        from ivmpi import MPI
    else:
        raise ValueError(f"unknown transport {transport!r}; choose from {TRANSPORTS}")
    return MPI


def parse_size_list(text):
    """'0,8,1K,64KiB,16M' -> [0, 8, 1024, 65536, 16777216]."""
    return [parse_size(item) for item in text.split(",") if item.strip()]


def parse_size(text):
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    number = text.rstrip("KMG")
    suffix = text[len(number):]
    if not number.isdigit() or suffix not in units:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 0, 8, 1K, 16M)")
    return int(number) * units[suffix]


def mpi_library_name(MPI):
    try:
        return MPI.Get_library_version().strip("\x00 \n").splitlines()[0].strip()
    except Exception as exc:  # a drop-in may not provide it; the name is only informative
        return f"unknown ({type(exc).__name__})"


def common_options(parser):
    parser.add_argument("--transport", choices=TRANSPORTS, default="ivmpi",
                        help="communicator to measure: ivmpi's MPI or mpi4py's (default ivmpi)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measure each case this many times; report median and min (default 3)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the results as JSON to FILE (rank 0)")
    parser.add_argument("-q", "--quiet", action="store_false", dest="verbose", default=True,
                        help="quiet output")


def summarize(times, nbytes=None):
    """Median/min of per-repeat times (seconds), with bandwidths when nbytes is given."""
    summary = {"time_median": statistics.median(times), "time_min": min(times),
               "times": list(times)}
    if nbytes is not None:
        summary["bandwidth_median"] = nbytes / summary["time_median"] if nbytes else 0.0
        summary["bandwidth_max"] = nbytes / summary["time_min"] if nbytes else 0.0
    return summary


def write_json(path, document):
    with open(path, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")


# ----------------------------------------------------------------- pingpong

def pingpong_parser():
    parser = argparse.ArgumentParser(prog="python -m ivmpi.bench pingpong",
                                     description="Time messages between ranks 0 and 1.")
    common_options(parser)
    parser.add_argument("-m", "--min-size", type=parse_size, default=1, help="minimum message size")
    parser.add_argument("-n", "--max-size", type=parse_size, default=1 << 30, help="maximum message size")
    parser.add_argument("--zero-size", action="store_true", help="also measure 0-byte messages")
    parser.add_argument("--sizes", type=parse_size_list, default=None, metavar="LIST",
                        help="explicit sizes, e.g. 0,8,1K,64K,16M (instead of powers of two)")
    parser.add_argument("-s", "--skip", type=int, default=100, help="number of warm-up iterations")
    parser.add_argument("-l", "--loop", "--count", type=int, dest="loop", default=10000,
                        help="number of iterations per repeat")
    parser.add_argument("-a", "--array", choices=["numpy", "none"], default="numpy",
                        help="message buffers: numpy arrays or bytearrays")
    parser.add_argument("-p", "--pickle", action="store_true",
                        help="use pickle-based send and receive")
    parser.add_argument("--protocol", type=int, default=None, help="pickle protocol version")
    parser.add_argument("--skip-large", type=int, default=10)
    parser.add_argument("--loop-large", type=int, default=1000)
    parser.add_argument("--large-size", type=int, default=LARGE_SIZE)
    parser.add_argument("--skip-huge", type=int, default=1)
    parser.add_argument("--loop-huge", type=int, default=10)
    parser.add_argument("--huge-size", type=int, default=HUGE_SIZE)
    parser.add_argument("--alloc-mem", action="store_true",
                        help="buffers from MPI.Alloc_mem (with ivmpi: inside the region, so "
                             "large sends skip the sender's copy)")
    parser.add_argument("--small-dict", action="store_true",
                        help="also time pickled send/recv of a small 4-item dict")
    parser.add_argument("--halo", action="store_true",
                        help="also time halo exchanges with derived datatypes (a column of "
                             "1024x1024 float64, a face of 128^3)")
    parser.add_argument("--exchange", action="store_true",
                        help="also time an 8-byte exchange between ranks 0 and 1 written as "
                             "Irecv + Isend + Request.Waitall (the nonblocking general path)")
    parser.add_argument("--no-header", action="store_false", dest="print_header", default=True)
    parser.add_argument("--no-stats", action="store_false", dest="print_stats", default=True)
    return parser


def pingpong_sizes(options):
    if options.sizes is not None:
        return sorted(set(options.sizes))
    sizes = [1 << i for i in range(33) if options.min_size <= 1 << i <= options.max_size]
    if options.zero_size:
        sizes.insert(0, 0)
    return sizes


def iterations_for(nbytes, options):
    """(skip, loop) for a message size: fewer iterations for big messages."""
    skip, loop = options.skip, options.loop
    if nbytes > options.large_size:
        skip, loop = min(skip, options.skip_large), min(loop, options.loop_large)
    if nbytes > options.huge_size:
        skip, loop = min(skip, options.skip_huge), min(loop, options.loop_huge)
    return skip, max(loop, 1)


def make_buffer(nbytes, kind, fill):
    if kind == "numpy":
        import numpy
        return numpy.full(nbytes, fill, dtype="B")
    return bytearray([fill]) * nbytes


def region_buffer(MPI, nbytes, fill):
    """A numpy buffer from MPI.Alloc_mem, filled (kept until the process ends)."""
    import numpy
    buf = numpy.frombuffer(MPI.Alloc_mem(max(nbytes, 1)), dtype="B")[:nbytes]
    buf[:] = fill
    return buf


def time_round_trips(comm, MPI, send_obj, recv_buf, count, use_pickle):
    """Half round-trip time averaged over `count` round trips (rank 0's clock).

    Rank 1 echoes what it received, so rank 0 can check the payload afterwards.
    Returns None on ranks other than 0.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    wtime = MPI.Wtime
    if use_pickle:
        send, recv = comm.send, comm.recv
    else:
        send, recv = comm.Send, comm.Recv
    received = None
    t_start = wtime()
    if size == 1:
        for _ in range(count):
            if use_pickle:
                received = comm.sendrecv(send_obj, 0, 0, None, 0, 0)
            else:
                comm.Sendrecv(send_obj, 0, 0, recv_buf, 0, 0)
    elif rank == 0:
        for _ in range(count):
            send(send_obj, 1, 0)
            if use_pickle:
                received = recv(source=1, tag=0)
            else:
                recv(recv_buf, 1, 0)
    elif rank == 1:
        for _ in range(count):
            if use_pickle:
                received = recv(source=0, tag=0)
                send(received, 0, 0)
            else:
                recv(recv_buf, 0, 0)
                send(recv_buf, 0, 0)
    t_end = wtime()
    if rank != 0:
        return None, None
    return (t_end - t_start) / (2 * max(count, 1)), received


def check_echo(expected, received_obj, recv_buf, use_pickle, what):
    """Rank 0: the echoed payload must equal what was sent (a lossy transport can't look fast)."""
    got = received_obj if use_pickle else recv_buf
    if use_pickle and not isinstance(expected, dict):
        equal = bytes(memoryview(got).cast("B")) == bytes(memoryview(expected).cast("B"))
    elif use_pickle:
        equal = got == expected
    else:
        equal = bytes(memoryview(got[0]).cast("B")) == bytes(memoryview(expected[0]).cast("B"))
    if not equal:
        raise RuntimeError(f"pingpong {what}: the echoed message differs from the one sent")


def repeat_timing(comm, options, skip, loop, run):
    """Warm up with run(skip), then time run(loop) once per repeat, each
    after a barrier; run returns (seconds, what it received).  Returns the
    times and what the last repeat received."""
    comm.Barrier()
    run(skip)
    times = []
    for _ in range(options.repeats):
        comm.Barrier()
        elapsed, received = run(loop)
        times.append(elapsed)
    return times, received


def measure_size(comm, MPI, nbytes, options):
    """Time one message size; returns the per-repeat half round-trip times (rank 0)."""
    skip, loop = iterations_for(nbytes, options)
    fill = (nbytes * 7 + 1) & 0xFF
    if options.pickle:
        send_obj, recv_buf = make_buffer(nbytes, options.array, fill), None
    elif options.alloc_mem:
        send_obj = [region_buffer(MPI, nbytes, fill), nbytes, MPI.BYTE]
        recv_buf = [region_buffer(MPI, nbytes, 0), nbytes, MPI.BYTE]
    else:
        send_obj = [make_buffer(nbytes, options.array, fill), nbytes, MPI.BYTE]
        recv_buf = [make_buffer(nbytes, options.array, 0), nbytes, MPI.BYTE]
    times, received = repeat_timing(
        comm, options, skip, loop,
        lambda count: time_round_trips(comm, MPI, send_obj, recv_buf, count, options.pickle))
    if comm.Get_rank() == 0:
        check_echo(send_obj, received, recv_buf, options.pickle, f"{nbytes} B")
    return loop, times


def time_exchanges(comm, MPI, count):
    """Seconds per exchange of 8 bytes with the other rank of the pair (0, 1),
    both sending at once: Irecv, Isend, Waitall."""
    import numpy
    rank = comm.Get_rank()
    if rank > 1:
        return 0.0, None
    other = 1 - rank
    send = numpy.full(1, rank + 1.0)
    recv = numpy.zeros(1)
    waitall = MPI.Request.Waitall
    t_start = MPI.Wtime()
    for _ in range(count):
        waitall([comm.Irecv(recv, other, 5), comm.Isend(send, other, 5)])
    return (MPI.Wtime() - t_start) / max(count, 1), recv


def measure_exchange(comm, MPI, options):
    skip, loop = iterations_for(0, options)
    times, received = repeat_timing(comm, options, skip, loop,
                                    lambda count: time_exchanges(comm, MPI, count))
    if comm.Get_rank() == 0 and received[0] != 2.0:
        raise RuntimeError("exchange: rank 0 did not receive rank 1's value")
    return loop, times


# Halo exchanges with derived datatypes: a column of a 1024 x 1024 float64
# array (a vector: 1024 blocks of one double, stride 1024) and a face of a
# 128^3 float64 array (a subarray, the face across the fastest axis, so
# 16384 single doubles).  Each rank sends its first column/face and
# receives the peer's into its last; one Sendrecv on each rank at once.
HALO_CASES = {
    "column": ((1024, 1024), 1024 * 8),
    "face": ((128, 128, 128), 128 * 128 * 8),
}


def halo_types(MPI, kind):
    """(array, send type, receive type) of a halo case."""
    import numpy
    shape, _ = HALO_CASES[kind]
    array = numpy.zeros(shape)
    if kind == "column":
        column = MPI.DOUBLE.Create_vector(shape[0], 1, shape[1])
        first = column.Create_resized(0, 8).Commit()
        column.Free()
        return array, [array, (1, 0), first], [array, (1, shape[1] - 1), first]
    sizes, sub = list(shape), list(shape[:-1]) + [1]
    first = MPI.DOUBLE.Create_subarray(sizes, sub, [0, 0, 0]).Commit()
    last = MPI.DOUBLE.Create_subarray(sizes, sub, [0, 0, shape[-1] - 1]).Commit()
    return array, [array, 1, first], [array, 1, last]


def time_halo(comm, MPI, count, halo):
    rank = comm.Get_rank()
    if rank > 1:
        return 0.0, None
    other = 1 - rank
    array, send, recv = halo
    sendrecv = comm.Sendrecv
    t_start = MPI.Wtime()
    for _ in range(count):
        sendrecv(send, other, 6, recv, other, 6)
    elapsed = (MPI.Wtime() - t_start) / max(count, 1)
    return elapsed, array[..., -1].copy()


def measure_halo(kind):
    def measure(comm, MPI, options):
        skip, loop = iterations_for(HALO_CASES[kind][1], options)
        halo = halo_types(MPI, kind)
        halo[0][...] = comm.Get_rank() + 1.0
        try:
            times, received = repeat_timing(comm, options, skip, loop,
                                            lambda count: time_halo(comm, MPI, count, halo))
        finally:
            halo[1][2].Free()
            if halo[2][2] != halo[1][2]:
                halo[2][2].Free()
        if comm.Get_rank() == 0 and not (received == 2.0).all():
            raise RuntimeError(f"halo {kind}: rank 0 did not receive rank 1's values")
        return loop, times
    return measure


def measure_small_dict(comm, MPI, options):
    skip, loop = iterations_for(0, options)
    times, received = repeat_timing(
        comm, options, skip, loop,
        lambda count: time_round_trips(comm, MPI, SMALL_DICT, None, count, True))
    if comm.Get_rank() == 0:
        check_echo(SMALL_DICT, received, None, True, "small dict")
    return loop, times


def print_pingpong_row(nbytes, loop, summary, options):
    if options.print_header:
        options.print_header = False
        print(f"# MPI PingPong Test ({options.transport})")
        header = "# Size [B]  Bandwidth [MB/s]"
        if options.print_stats:
            header += " | Time Median [s] \u00b1 StdDev [s]  Samples"
        print(header, flush=True)
    times = summary["times"]
    stdev = statistics.stdev(times) if len(times) > 1 else 0.0
    line = f"{nbytes:10d}{summary['bandwidth_median'] / 1e6:18.2f}"
    if options.print_stats:
        line += f" | {summary['time_median']:.7e} \u00b1 {stdev:.4e} {loop * len(times):8d}"
    print(line, flush=True)


def extra_case(comm, MPI, options, wanted, measure, label):
    """One of the extra timings (--small-dict, --exchange): its summary on
    rank 0, printed as a comment line; None when not asked for."""
    if not wanted:
        return None
    loop, times = measure(comm, MPI, options)
    if comm.Get_rank() != 0:
        return None
    summary = {"loop": loop, "repeats": options.repeats, **summarize(times)}
    if options.verbose:
        print(f"# {label}: {summary['time_median'] * 1e6:.3f} us"
              f" (min {summary['time_min'] * 1e6:.3f} us)", flush=True)
    return summary


def pingpong(comm, MPI, args=None):
    options = pingpong_parser().parse_args(args)
    if options.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if options.protocol is not None:
        MPI.pickle.PROTOCOL = options.protocol
    rank = comm.Get_rank()
    results = []
    for nbytes in pingpong_sizes(options):
        loop, times = measure_size(comm, MPI, nbytes, options)
        if rank == 0:
            summary = summarize(times, nbytes)
            results.append({"size": nbytes, "loop": loop, "repeats": options.repeats, **summary})
            if options.verbose:
                print_pingpong_row(nbytes, loop, summary, options)
    small_dict = extra_case(comm, MPI, options, options.small_dict, measure_small_dict,
                            "pickled small dict send/recv")
    exchange = extra_case(comm, MPI, options, options.exchange, measure_exchange,
                          "Irecv+Isend+Waitall exchange of 8 B")
    halos = {f"halo_{kind}": extra_case(comm, MPI, options, options.halo, measure_halo(kind),
                                        f"Sendrecv halo {kind}")
             for kind in HALO_CASES}
    if rank == 0 and options.json:
        write_json(options.json, {
            "benchmark": "pingpong", "transport": options.transport,
            "mpi_library": mpi_library_name(MPI), "comm_size": comm.Get_size(),
            "pickle": options.pickle, "array": options.array,
            "time_unit": "s, half round trip", "bandwidth_unit": "B/s",
            "results": results, "small_dict": small_dict, "exchange": exchange, **halos,
        })
    return results


# -------------------------------------------------------------- collectives

COLLECTIVE_OPS = ("Barrier", "Allreduce", "Bcast", "Bcast small", "Reduce", "Allgather",
                  "Alltoall")


def collectives_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ivmpi.bench collectives",
        description="Time Barrier, Allreduce of 8 doubles, Bcast of 1 MiB, and Bcast, "
                    "Reduce, Allgather and Alltoall of 8 doubles per rank over all ranks "
                    "of COMM_WORLD.")
    common_options(parser)
    parser.add_argument("-s", "--skip", type=int, default=10, help="number of warm-up iterations")
    parser.add_argument("-l", "--loop", "--count", type=int, dest="loop", default=1000,
                        help="iterations per repeat for Barrier and Allreduce")
    parser.add_argument("--loop-bcast", type=int, default=100,
                        help="iterations per repeat for the 1 MiB Bcast")
    parser.add_argument("--bcast-size", type=parse_size, default=1 << 20,
                        help="Bcast message size (default 1M)")
    return parser


def collective_runner(comm, MPI, op, options):
    """(callable doing one operation, iterations per repeat) for a named collective."""
    import numpy
    send = numpy.arange(8, dtype="f8")
    recv = numpy.empty(8, dtype="f8")
    if op == "Barrier":
        return comm.Barrier, options.loop
    if op == "Allreduce":
        return (lambda: comm.Allreduce(send, recv, op=MPI.SUM)), options.loop
    if op == "Bcast":
        buf = numpy.zeros(options.bcast_size, dtype="B")
        return (lambda: comm.Bcast(buf, root=0)), options.loop_bcast
    # The small cases: 8 doubles per rank.
    size = comm.Get_size()
    if op == "Bcast small":
        return (lambda: comm.Bcast(send, root=0)), options.loop
    if op == "Reduce":
        return (lambda: comm.Reduce(send, recv, op=MPI.SUM, root=0)), options.loop
    if op == "Allgather":
        gathered = numpy.empty(8 * size, dtype="f8")
        return (lambda: comm.Allgather(send, gathered)), options.loop
    if op == "Alltoall":
        outgoing = numpy.arange(8 * size, dtype="f8")
        incoming = numpy.empty(8 * size, dtype="f8")
        return (lambda: comm.Alltoall(outgoing, incoming)), options.loop
    raise ValueError(op)


def time_collective(comm, MPI, run, count):
    """Seconds per operation: the slowest rank's average over `count` calls."""
    comm.Barrier()
    t_start = MPI.Wtime()
    for _ in range(count):
        run()
    elapsed = (MPI.Wtime() - t_start) / max(count, 1)
    slowest = comm.gather(elapsed, root=0)
    return max(slowest) if slowest is not None else None


def collectives(comm, MPI, args=None):
    options = collectives_parser().parse_args(args)
    if options.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    rank = comm.Get_rank()
    results = {}
    for op in COLLECTIVE_OPS:
        run, count = collective_runner(comm, MPI, op, options)
        time_collective(comm, MPI, run, options.skip)
        times = [time_collective(comm, MPI, run, count) for _ in range(options.repeats)]
        if rank == 0:
            results[op] = {"loop": count, "repeats": options.repeats, **summarize(times)}
            if options.verbose:
                print(f"{op:10s} {results[op]['time_median'] * 1e6:12.3f} us"
                      f"  (min {results[op]['time_min'] * 1e6:.3f} us, {comm.Get_size()} ranks,"
                      f" {options.transport})", flush=True)
    if rank == 0 and options.json:
        write_json(options.json, {
            "benchmark": "collectives", "transport": options.transport,
            "mpi_library": mpi_library_name(MPI), "comm_size": comm.Get_size(),
            "allreduce_count": 8, "bcast_size": options.bcast_size,
            "time_unit": "s per operation (slowest rank)", "results": results,
        })
    return results


def win(comm, MPI, args=None):
    """One-sided Put/Get/Fetch_and_op between ranks 0 and 1 (ivmpi.benchwin)."""
    from .benchwin import measure
    measure(comm, MPI, args)


COMMANDS = {"pingpong": pingpong, "collectives": collectives, "win": win}


def transport_of(args):
    """The --transport value in a command's arguments (parsed before MPI is imported)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--transport", choices=TRANSPORTS, default="ivmpi")
    known, _ = peek.parse_known_args(args)
    return known.transport


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ivmpi.bench", usage="%(prog)s <command> [options]",
        description="MPI micro-benchmarks; run under mpirun. Commands: "
                    + ", ".join(COMMANDS) + ". Use '<command> --help' for options.")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="<command>")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="[options]")
    options = parser.parse_args(argv)
    command = COMMANDS[options.command]
    if any(a in ("-h", "--help") for a in options.args):
        command(None, None, options.args)  # argparse prints the help and exits first
    MPI = load_mpi(transport_of(options.args))
    command(MPI.COMM_WORLD, MPI, options.args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
